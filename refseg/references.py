"""Reference labels as pixels: full-image masks from FiftyOne labels, or from boxes via SAM2.

What a reference label needs, checked by :func:`check_references` before any model or image is
loaded (each problem is an :class:`InvalidReferenceError` naming the sample, the label and the
fix):

- a class name;
- a box: four finite numbers with positive width and height, not wholly outside the image, at
  least one pixel wide and high in its image. A box partly outside the image works: it is
  clipped to the image;
- a mask, if it has one (``mask`` or ``mask_path``): 2-D, readable, with at least one pixel set.
  A mask whose shape does not fit its box works: it is resized into the box as FiftyOne renders
  it. A one-pixel mask works (its crop is at least a pixel, and ``mask_downsample="area"`` gives
  it a positive weight); box-only labels get their mask from SAM2.

Problems that only show on the pixels (a box under one pixel, a mask that ends up empty once
placed in the image, a SAM2 mask that is empty, a mask with no weight on the encoder's patch
grid) raise the same error while the references are encoded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import fiftyone as fo
import numpy as np
import torch
import torch.nn.functional as F

from refseg.components import MaskProposer
from refseg.images import load_image
from refseg.sampling import ReferenceLabel

FIX = (
    "Fix the label in the App (give it a class, a box inside the image, or a non-empty mask), "
    "or leave it out of the references (untag it, or pass a view without it)"
)
"""What to do about an unusable reference label, ending every InvalidReferenceError."""

_LISTED = 5


class InvalidReferenceError(ValueError):
    """Reference labels that cannot be encoded.

    Attributes:
        problems: ``(sample id, label id, what is wrong)`` for each label, in view order.
    """

    def __init__(self, problems: Sequence[tuple[str, str, str]]) -> None:
        self.problems = list(problems)
        lines = [
            f"- label {label_id} of sample {sample_id}: {problem}"
            for sample_id, label_id, problem in self.problems[:_LISTED]
        ]
        if len(self.problems) > _LISTED:
            lines.append(f"- ... and {len(self.problems) - _LISTED} more")
        count = len(self.problems)
        super().__init__(
            f"{count} reference label{'s' if count > 1 else ''} cannot be used:\n"
            + "\n".join(lines)
            + f"\n{FIX}."
        )

    @classmethod
    def of(cls, label: ReferenceLabel, problem: str) -> "InvalidReferenceError":
        """The error for one label."""
        return cls([(label.sample_id, label.detection.id, _describe(label, problem))])


def check_references(labels: Iterable[ReferenceLabel], *, need_class: bool = True) -> None:
    """Checks every label's class, box and mask (module docstring) without reading images.

    Args:
        labels: the labels.
        need_class: False accepts labels without a class name (making masks needs none).

    Raises:
        InvalidReferenceError: listing every unusable label.
    """
    problems = []
    for label in labels:
        problem = reference_problem(label.detection, need_class=need_class)
        if problem:
            problems.append((label.sample_id, label.detection.id, _describe(label, problem)))
    if problems:
        raise InvalidReferenceError(problems)


def reference_problem(detection: fo.Detection, *, need_class: bool = True) -> str | None:
    """What makes ``detection`` unusable as a reference (module docstring), or None."""
    if need_class and not detection.label:
        return "it has no class label"
    has_mask = detection.mask is not None or detection.mask_path is not None
    box = detection.bounding_box
    if box is None or len(box) == 0:
        return "it has neither a box nor a mask" if not has_mask else "it has a mask but no box"
    if len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
        return f"its box {list(box)} is not four finite numbers [x, y, w, h]"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return f"its box {list(box)} has zero area (width and height must be > 0)"
    if x >= 1 or y >= 1 or x + w <= 0 or y + h <= 0:
        return f"its box {list(box)} lies outside the image (relative coordinates are in [0, 1])"
    if has_mask:
        return _mask_problem(detection)
    return None


def detection_mask(detection: fo.Detection) -> np.ndarray | None:
    """The label's instance mask (from ``mask`` or the file at ``mask_path``) as (h, w) bool,
    or None for a box-only label.

    Raises:
        ValueError: the mask file cannot be read.
    """
    if detection.mask is None and detection.mask_path is None:
        return None
    try:
        mask = detection.get_mask()
    except (OSError, ValueError) as error:
        raise ValueError(
            f"its mask file {detection.mask_path!r} cannot be read ({error})"
        ) from error
    return None if mask is None else np.asarray(mask)


def _mask_problem(detection: fo.Detection) -> str | None:
    try:
        mask = detection_mask(detection)
    except ValueError as error:
        return str(error)
    if mask is None:
        return "its mask file holds no mask"
    if mask.ndim != 2:
        return f"its mask has shape {mask.shape}; a mask is 2-D (height, width)"
    if mask.size == 0 or not mask.astype(bool).any():
        return f"its mask (shape {mask.shape}) is empty: no pixel is set"
    return None


def _describe(label: ReferenceLabel, problem: str) -> str:
    return f"{problem} (class {label.detection.label!r}, image {label.filepath})"


def absolute_box(detection: fo.Detection, width: int, height: int) -> tuple[float, ...]:
    """The detection's box as (x, y, w, h) in pixels of a width x height image.

    Values are rounded to 6 decimals, so COCO boxes imported by FiftyOne (stored relative, as
    x / W) come back exactly as written in the annotation file (57.5 / 180 * 180 gives
    57.49999999999999 otherwise, which truncates and rounds differently).
    """
    x, y, w, h = detection.bounding_box
    return tuple(round(v, 6) for v in (x * width, y * height, w * width, h * height))


def label_mask(
    detection: fo.Detection, width: int, height: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """The detection's instance mask pasted into the full image.

    A mask whose shape equals its box rounded to whole pixels (as FiftyOne's importers and
    refseg store them) is pasted pixel for pixel at the rounded box corner, so a COCO mask
    comes back exactly as the importer cropped it; any other mask is resized into its box
    as FiftyOne renders it. Parts outside the image are dropped.

    Args:
        detection: the label, with a box.
        width, height: the image size in pixels.
        mask: its (h, w) mask when already loaded; default ``detection.mask``.

    Returns:
        (H, W) bool.
    """
    x, y, w, h = absolute_box(detection, width, height)
    x1, y1, x2, y2 = (int(round(v)) for v in (x, y, x + w, y + h))
    mask = np.asarray(detection.mask if mask is None else mask).astype(bool)
    if mask.shape != (y2 - y1, x2 - x1):
        box_only = fo.Detection(bounding_box=detection.bounding_box, mask=mask)
        return box_only.to_segmentation(frame_size=(width, height), target=1).mask > 0
    full = np.zeros((height, width), dtype=bool)
    top, left = max(y1, 0), max(x1, 0)
    bottom, right = min(y2, height), min(x2, width)
    if bottom > top and right > left:
        full[top:bottom, left:right] = mask[top - y1 : bottom - y1, left - x1 : right - x1]
    return full


def crop_to_box(full: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    """The part of a full-image mask inside a box, as FiftyOne stores a detection's mask.

    The inverse of :func:`label_mask`'s paste: the box is rounded to whole pixels (at least one
    pixel each way); rows and columns of the box outside the image are False.

    Args:
        full: (H, W) bool mask of the whole image.
        box: (x, y, w, h) in pixels.

    Returns:
        (h, w) bool.
    """
    height, width = full.shape
    x, y, w, h = box
    x1, y1 = int(round(x)), int(round(y))
    x2, y2 = max(x1 + 1, int(round(x + w))), max(y1 + 1, int(round(y + h)))
    crop = np.zeros((y2 - y1, x2 - x1), dtype=bool)
    top, left = max(y1, 0), max(x1, 0)
    bottom, right = min(y2, height), min(x2, width)
    if bottom > top and right > left:
        crop[top - y1 : bottom - y1, left - x1 : right - x1] = full[top:bottom, left:right]
    return crop


@torch.inference_mode()
def masks_from_boxes(
    proposer: MaskProposer, filepath: str, boxes: list[tuple[float, ...]]
) -> list[np.ndarray]:
    """Masks of box-only references: SAM2 prompted with each box, single-mask output.

    Reads the image resized to the proposer's S x S frame, as target images are, then calls
    :func:`masks_from_boxes_on`.

    Args:
        proposer: the mask proposer.
        filepath: the image.
        boxes: (x, y, w, h) boxes in original-image pixels.

    Returns:
        One (H, W) bool mask per box.

    Raises:
        ImageReadError: the image cannot be read.
    """
    image, original_size = load_image(filepath, proposer.image_size)
    return masks_from_boxes_on(proposer, image, original_size, boxes)


@torch.inference_mode()
def masks_from_boxes_on(
    proposer: MaskProposer,
    image: torch.Tensor,
    original_size: tuple[int, int],
    boxes: list[tuple[float, ...]],
) -> list[np.ndarray]:
    """SAM2 prompted with each box on one image already in the proposer's frame.

    The boxes are scaled into the S x S frame, and the low-resolution logits are upsampled
    (bilinear) to the original size and thresholded at 0.

    Args:
        proposer: the mask proposer.
        image: (3, S, S) float32 RGB in [0, 1], S = ``proposer.image_size``.
        original_size: (H, W) of the original image, pixels.
        boxes: (x, y, w, h) boxes in original-image pixels.

    Returns:
        One (H, W) bool mask per box.
    """
    height, width = original_size
    embedding = proposer.select_image(proposer.encode_images(image[None].to(proposer.device)), 0)
    scale = torch.tensor(
        [proposer.image_size / width, proposer.image_size / height] * 2, dtype=torch.float32
    )
    xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32)
    logits, _ = proposer.decode_boxes(embedding, (xyxy * scale).to(proposer.device))
    masks = (
        F.interpolate(
            logits[:, None].float(), size=(height, width), mode="bilinear", align_corners=False
        )[:, 0]
        > 0
    )
    return list(masks.cpu().numpy())
