"""Image decoding as the paper did it, and the DataLoader that prepares target batches."""

from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from refseg.failures import ImageReadError

ImageSource = Union[str, np.ndarray, Image.Image]
"""An image file path, an (H, W) / (H, W, C) array (uint8, uint16 or float RGB(A) or gray), or a
PIL image."""


def load_image(path: ImageSource, size: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reads an image as the research code did: PIL, RGB, optional resize, scaled to [0, 1].

    Any mode PIL reads is accepted: grayscale, palette, RGBA (alpha dropped), CMYK and bilevel
    go through PIL's own conversion to RGB, as in the paper; 16-bit and 32-bit integer and float
    images are first scaled to 8 bits by their value range (PIL's own conversion would clip them).

    Args:
        path: image file (or an array or PIL image already in memory).
        size: if given, resize anisotropically to size x size with PIL's default filter
            (bicubic for RGB), as the paper's target images.

    Returns:
        (3, h, w) float32 RGB in [0, 1] (h = w = size when resized), and the original (H, W).

    Raises:
        ImageReadError: the file is missing, empty, not an image, truncated or undecodable;
            the message names the file and the reason.
    """
    rgb = read_rgb(path) if isinstance(path, (str, os.PathLike)) else image_to_rgb(path)
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


def image_to_rgb(image: np.ndarray | Image.Image) -> Image.Image:
    """An in-memory image in PIL's RGB mode (arrays are read as by ``Image.fromarray``).

    Raises:
        ImageReadError: the array has no image shape or dtype.
    """
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3 and array.dtype != np.uint8:
        array = _scaled_to_uint8(array.astype(np.float64), "F" if array.dtype.kind == "f" else "I")
    if array.ndim not in (2, 3) or min(array.shape[:2], default=0) == 0:
        raise ImageReadError("<array>", f"an array of shape {array.shape} is not an image")
    try:
        return _to_rgb(Image.fromarray(array))
    except (TypeError, ValueError) as error:
        raise ImageReadError("<array>", f"cannot read an array as an image ({error})") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    """PIL's RGB conversion, with high-bit-depth modes scaled to 8 bits first."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(_scaled_to_uint8(values, image.mode))  # (H, W) uint8: "L"
    return image.convert("RGB")


def _scaled_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Values of a high-bit-depth image mapped to 0-255 by :func:`_range_top`."""
    top = _range_top(mode, float(values.max(initial=0.0)))
    return np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)


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
