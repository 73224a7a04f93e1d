"""Reference labels as pixels: full-image masks from FiftyOne labels, or from boxes via SAM2."""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import torch
import torch.nn.functional as F

from refseg.components import MaskProposer
from refseg.images import load_image


def absolute_box(detection: fo.Detection, width: int, height: int) -> tuple[float, ...]:
    """The detection's box as (x, y, w, h) in pixels of a width x height image.

    Values are rounded to 6 decimals, so COCO boxes imported by FiftyOne (stored relative, as
    x / W) come back exactly as written in the annotation file (57.5 / 180 * 180 gives
    57.49999999999999 otherwise, which truncates and rounds differently).
    """
    x, y, w, h = detection.bounding_box
    return tuple(round(v, 6) for v in (x * width, y * height, w * width, h * height))


def label_mask(detection: fo.Detection, width: int, height: int) -> np.ndarray:
    """The detection's instance mask pasted into the full image.

    A mask whose shape equals its box rounded to whole pixels (as FiftyOne's importers and
    refseg store them) is pasted pixel for pixel at the rounded box corner, so a COCO mask
    comes back exactly as the importer cropped it; any other mask is resized into its box
    as FiftyOne renders it.

    Returns:
        (H, W) bool.
    """
    x, y, w, h = absolute_box(detection, width, height)
    x1, y1, x2, y2 = (int(round(v)) for v in (x, y, x + w, y + h))
    mask = np.asarray(detection.mask).astype(bool)
    if mask.shape != (y2 - y1, x2 - x1):
        return detection.to_segmentation(frame_size=(width, height), target=1).mask > 0
    full = np.zeros((height, width), dtype=bool)
    top, left = max(y1, 0), max(x1, 0)
    bottom, right = min(y2, height), min(x2, width)
    full[top:bottom, left:right] = mask[top - y1 : bottom - y1, left - x1 : right - x1]
    return full


@torch.inference_mode()
def masks_from_boxes(
    proposer: MaskProposer, filepath: str, boxes: list[tuple[float, ...]]
) -> list[np.ndarray]:
    """Masks of box-only references: SAM2 prompted with each box, single-mask output.

    The image is resized to the proposer's S x S frame as target images are, the boxes are
    scaled into that frame, and the low-resolution logits are upsampled (bilinear) to the
    original size and thresholded at 0.

    Args:
        proposer: the mask proposer.
        filepath: the image.
        boxes: (x, y, w, h) boxes in original-image pixels.

    Returns:
        One (H, W) bool mask per box.
    """
    image, (height, width) = load_image(filepath, proposer.image_size)
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
