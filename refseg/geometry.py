"""Pixel geometry shared by the stages: the prompt grid, boxes of masks, context crops."""

from __future__ import annotations

import torch


def point_grid(points_per_side: int, image_size: int) -> torch.Tensor:
    """The paper's prompt grid: ``points_per_side ** 2`` points, edges included.

    Coordinates are ``linspace(0, image_size - 1, n) + 0.5`` on both axes, combined with
    ``meshgrid(..., indexing="ij")`` and stacked as (x, y) before flattening: the first axis of
    the mesh is x, so the flattened order runs over y fastest. That order decides NMS ties and
    the order of the soft merge, so it is kept exactly.

    Args:
        points_per_side: n, the number of points along each side.
        image_size: S, side of the square input frame in pixels.

    Returns:
        (n * n, 2) float32 XY, pixels in the S x S frame.
    """
    axis = torch.linspace(0, image_size - 1, points_per_side)
    x, y = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack((x.reshape(-1), y.reshape(-1)), dim=-1) + 0.5


def masks_to_boxes(masks: torch.Tensor, *, exclusive_max: bool) -> torch.Tensor:
    """Tight boxes of binary masks.

    Args:
        masks: (N, H, W) bool.
        exclusive_max: True gives the tight box (x2 = last column + 1, so w = number of
            columns); False gives inclusive maxima (x2 = last column), as the research code
            computed its boxes for NMS and for its COCO output.

    Returns:
        (N, 4) float32 XYXY in pixels of the mask frame; an empty mask gives (0, 0, 0, 0).
    """
    n, height, width = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    y1, y2 = _first_last(rows, height)
    x1, x2 = _first_last(cols, width)
    boxes = torch.stack((x1, y1, x2, y2), dim=1).to(torch.float32)
    if exclusive_max:
        boxes[:, 2:] += 1
    empty = ~rows.any(dim=1)
    boxes[empty] = 0.0
    return boxes


def _first_last(occupied: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last True index along dim 1 of an (N, L) bool tensor (0 where none)."""
    index = torch.arange(length, device=occupied.device)
    last = torch.where(occupied, index, -1).max(dim=1).values.clamp(min=0)
    first = torch.where(occupied, index, length).min(dim=1).values.clamp(max=length - 1)
    return first, last


def context_crop(
    box: tuple[float, float, float, float], image_width: int, image_height: int, ratio: float
) -> tuple[int, int, int, int]:
    """The square context crop around a reference box, clipped to the image (method.md stage 1).

    The box is first snapped as the research code read COCO boxes (x1 = int(x), x2 = int(x + w));
    the square's side is ``(1 + ratio) * max(box w, box h)`` around the box centre; its ends are
    truncated to integers and clipped, so a crop at the border is no longer square.

    Args:
        box: (x, y, w, h) in original-image pixels.
        image_width, image_height: the image size in pixels.
        ratio: context ratio (0.2 in the paper).

    Returns:
        (x1, y1, x2, y2) int pixel bounds, x2/y2 exclusive, with x1 < x2 and y1 < y2.
    """
    x, y, w, h = box
    bx1, by1, bx2, by2 = int(x), int(y), int(x + w), int(y + h)
    side = max(bx2 - bx1, by2 - by1) * (1.0 + ratio)
    cx, cy = (bx1 + bx2) / 2.0, (by1 + by2) / 2.0
    x1, x2 = max(0, int(cx - side / 2)), min(image_width, int(cx + side / 2))
    y1, y2 = max(0, int(cy - side / 2)), min(image_height, int(cy + side / 2))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(
            f"Reference box {box} gives an empty crop in a {image_width}x{image_height} image; "
            "check that the box lies inside the image"
        )
    return x1, y1, x2, y2
