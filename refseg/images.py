"""Image decoding as the paper did it, and the DataLoader that prepares target batches."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image


def load_image(path: str, size: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reads an image as the research code did: PIL, RGB, optional resize, scaled to [0, 1].

    Args:
        path: image file.
        size: if given, resize anisotropically to size x size with PIL's default filter
            (bicubic for RGB), as the paper's target images.

    Returns:
        (3, h, w) float32 RGB in [0, 1] (h = w = size when resized), and the original (H, W).
    """
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    original = (rgb.height, rgb.width)
    if size is not None:
        rgb = rgb.resize((size, size))
    array = np.asarray(rgb) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).to(torch.float32), original


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
