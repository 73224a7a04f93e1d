"""Image decoding as the paper did it, and the DataLoader that prepares target batches."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from refseg.failures import ImageReadError


def load_image(path: str, size: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reads an image as the research code did: PIL, RGB, optional resize, scaled to [0, 1].

    Any mode PIL reads is accepted: grayscale, palette, RGBA (alpha dropped), CMYK and bilevel
    go through PIL's own conversion to RGB, as in the paper; 16-bit and 32-bit integer and float
    images are first scaled to 8 bits by their value range (PIL's own conversion would clip them).

    Args:
        path: image file.
        size: if given, resize anisotropically to size x size with PIL's default filter
            (bicubic for RGB), as the paper's target images.

    Returns:
        (3, h, w) float32 RGB in [0, 1] (h = w = size when resized), and the original (H, W).

    Raises:
        ImageReadError: the file is missing, empty, not an image, truncated or undecodable;
            the message names the file and the reason.
    """
    rgb = read_rgb(path)
    original = (rgb.height, rgb.width)
    if size is not None:
        rgb = rgb.resize((size, size))
    array = np.asarray(rgb) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).to(torch.float32), original


def read_rgb(path: str) -> Image.Image:
    """The fully decoded image at ``path`` in PIL's RGB mode.

    Raises:
        ImageReadError: see :func:`load_image`.
    """
    if not os.path.isfile(path):
        raise ImageReadError(path, "the file does not exist")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "the file is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image format PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise ImageReadError(path, f"the image cannot be decoded ({error})") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    """PIL's RGB conversion, with high-bit-depth modes scaled to 8 bits first."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        top = _range_top(image.mode, float(values.max(initial=0.0)))
        scaled = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(scaled)  # uint8 (H, W): mode "L"
    return image.convert("RGB")


_HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _range_top(mode: str, peak: float) -> float:
    """The value that maps to white: the bit depth's top, or the image's own peak beyond it.

    16-bit modes use 65535. Mode "I" (32-bit integer) and "F" (float) carry no bit depth, so
    the smallest of 1 (float data in [0, 1]), 255, 65535 and the peak that holds the data is used.
    """
    if mode.startswith("I;16"):
        return 65535.0
    candidates = (1.0, 255.0, 65535.0) if mode == "F" else (255.0, 65535.0)
    return next((top for top in candidates if peak <= top), max(peak, 1.0))


class TargetImages(torch.utils.data.Dataset):
    """Target images decoded and resized to the proposer's frame, for a DataLoader.

    Each item is ``(index, image, (H, W))`` with ``image`` a (3, S, S) float32 tensor in
    [0, 1]. Decoding runs in the DataLoader's workers.
    """

    def __init__(self, filepaths: Sequence[str], size: int) -> None:
        self.filepaths = list(filepaths)
        self.size = size

    def __len__(self) -> int:
        return len(self.filepaths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, tuple[int, int]]:
        image, original = load_image(self.filepaths[index], self.size)
        return index, image, original


def collate_targets(
    items: list[tuple[int, torch.Tensor, tuple[int, int]]],
) -> tuple[list[int], torch.Tensor, list[tuple[int, int]]]:
    """Stacks items of :class:`TargetImages` into (indices, (B, 3, S, S) images, sizes)."""
    indices, images, sizes = zip(*items)
    return list(indices), torch.stack(images), list(sizes)


def target_loader(
    filepaths: Sequence[str], size: int, *, batch_size: int, num_workers: int
) -> torch.utils.data.DataLoader:
    """A DataLoader over target images in order, decoding in ``num_workers`` processes."""
    return torch.utils.data.DataLoader(
        TargetImages(filepaths, size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_targets,
        persistent_workers=False,
    )
