"""Stages 3.6-3.9: suppression, full-resolution masks, the semantic soft merge and top-k."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from refseg.geometry import masks_to_boxes

FULL_RES_CHUNK_PIXELS = 2**26
"""Upsampled logits held at once while making full-resolution masks (256 MB of float32)."""


def suppress(
    low_res_masks: torch.Tensor,
    ranking: torch.Tensor,
    labels: torch.Tensor,
    *,
    iou_threshold: float,
    max_kept: int,
) -> torch.Tensor:
    """Class-aware box NMS on the low-resolution masks' boxes, ranked by predicted IoU.

    Boxes are the masks' tight boxes with inclusive maxima, as the paper computed them.

    Args:
        low_res_masks: (N, m, m) bool, non-empty.
        ranking: (N,) float predicted IoU (the NMS ranking, not the semantic score).
        labels: (N,) int64 class indices.
        iou_threshold: box IoU above which the lower-ranked box is suppressed.
        max_kept: the most indices returned.

    Returns:
        (K,) int64 indices into the inputs, K <= max_kept, by descending ``ranking``.
    """
    boxes = masks_to_boxes(low_res_masks, exclusive_max=False)
    keep = batched_nms(boxes, ranking.float(), labels, iou_threshold)
    return keep[:max_kept]


def full_resolution_masks(
    logits: torch.Tensor, image_size: tuple[int, int]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Upsamples low-resolution logits to the image and crops each mask to its tight box.

    The upsampling is the paper's (bilinear, align_corners=False, antialias=True, then > 0);
    it runs in chunks so that only the crops are kept, which bounds memory on large images.

    Args:
        logits: (N, m, m) float mask logits.
        image_size: (H, W) original image size, pixels.

    Returns:
        crops: N (h_i, w_i) bool arrays, each the mask inside its box (empty masks give a
            (0, 0) array); boxes: (N, 4) int64 XYXY tight boxes, x2/y2 exclusive, pixels.
    """
    height, width = image_size
    chunk = max(1, FULL_RES_CHUNK_PIXELS // max(1, height * width))
    crops: list[np.ndarray] = []
    boxes = []
    for start in range(0, logits.shape[0], chunk):
        masks = (
            F.interpolate(
                logits[start : start + chunk].float().unsqueeze(1),
                size=(height, width),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            ).squeeze(1)
            > 0
        )
        chunk_boxes = masks_to_boxes(masks, exclusive_max=True).long()
        for mask, (x1, y1, x2, y2) in zip(masks, chunk_boxes.tolist()):
            crops.append(mask[y1:y2, x1:x2].cpu().numpy())
        boxes.append(chunk_boxes.cpu())
    all_boxes = torch.cat(boxes) if boxes else torch.zeros((0, 4), dtype=torch.long)
    return crops, all_boxes.numpy()


def semantic_decay(
    crops: list[np.ndarray],
    boxes: np.ndarray,
    labels: np.ndarray,
    features: np.ndarray,
) -> np.ndarray:
    """The soft merge's overlap term d_i for masks in their suppression order.

    d_i = max over earlier masks j of the same class of IoS_ij * max(0, <f_i, f_j>), where
    IoS_ij = |m_i and m_j| / |m_i| is measured on the full-resolution masks; 0 when no earlier
    mask of the class overlaps. Intersections are counted only inside overlapping boxes.

    Args:
        crops: N non-empty (h_i, w_i) bool masks cropped to ``boxes``.
        boxes: (N, 4) int64 XYXY tight boxes, exclusive maxima, pixels.
        labels: (N,) int64 class indices.
        features: (N, D) float32 unit-length mask features.

    Returns:
        (N,) float32 in [0, 1].
    """
    n = len(crops)
    decay = np.zeros(n, dtype=np.float32)
    areas = np.array([crop.sum() for crop in crops], dtype=np.float64)
    similarity = np.clip(features @ features.T, 0.0, None)
    for i, j in _overlapping_earlier_pairs(boxes, labels):
        inter = _intersection(crops[i], boxes[i], crops[j], boxes[j])
        decay[i] = max(decay[i], inter / areas[i] * similarity[i, j])
    return decay


def semantic_decay_dense(
    masks: torch.Tensor, labels: torch.Tensor, features: torch.Tensor
) -> torch.Tensor:
    """The soft merge's d_i (see :func:`semantic_decay`) from dense masks, all pairs at once.

    Used on the proposer's low-resolution grid by the fast path, where a matrix product over
    m * m pixels is cheap.

    Args:
        masks: (N, m, m) bool, non-empty, in suppression order.
        labels: (N,) int64 class indices.
        features: (N, D) float unit-length mask features.

    Returns:
        (N,) float32 in [0, 1], on the masks' device.
    """
    flat = masks.flatten(1).float()
    intersection = flat @ flat.t()
    ios = intersection / flat.sum(dim=1, keepdim=True)
    similarity = (features.float() @ features.float().t()).clamp(min=0.0)
    earlier_same_class = (labels[:, None] == labels[None]) & torch.ones_like(
        intersection, dtype=torch.bool
    ).tril(diagonal=-1)
    weighted = torch.where(earlier_same_class, ios * similarity, torch.zeros_like(ios))
    return weighted.max(dim=1).values if len(flat) else weighted.new_zeros(0)


def _overlapping_earlier_pairs(boxes: np.ndarray, labels: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i, j), j < i, of the same class whose boxes overlap."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    overlap_x = np.minimum(x2[:, None], x2[None]) > np.maximum(x1[:, None], x1[None])
    overlap_y = np.minimum(y2[:, None], y2[None]) > np.maximum(y1[:, None], y1[None])
    same = labels[:, None] == labels[None]
    earlier = np.tri(len(labels), k=-1, dtype=bool)
    return list(zip(*np.nonzero(overlap_x & overlap_y & same & earlier)))


def _intersection(
    crop_a: np.ndarray, box_a: np.ndarray, crop_b: np.ndarray, box_b: np.ndarray
) -> int:
    """Pixels set in both masks, each given as a crop at its box."""
    x1, y1 = max(box_a[0], box_b[0]), max(box_a[1], box_b[1])
    x2, y2 = min(box_a[2], box_b[2]), min(box_a[3], box_b[3])
    part_a = crop_a[y1 - box_a[1] : y2 - box_a[1], x1 - box_a[0] : x2 - box_a[0]]
    part_b = crop_b[y1 - box_b[1] : y2 - box_b[1], x1 - box_b[0] : x2 - box_b[0]]
    return int(np.count_nonzero(part_a & part_b))


def apply_decay(scores: np.ndarray, decay: np.ndarray, exponent: float) -> np.ndarray:
    """score_i * (1 - d_i) ** exponent, float32."""
    return (scores * np.power(1.0 - decay, exponent)).astype(np.float32)


def top_k(scores: np.ndarray, k: int, threshold: float | np.ndarray | None = None) -> np.ndarray:
    """Indices of the k highest scores above ``threshold`` (all when None), descending
    (stable on ties). ``threshold`` is one number, or an array aligned with ``scores`` (a
    threshold per score: per-class thresholds)."""
    order = np.argsort(-scores, kind="stable")
    if isinstance(threshold, np.ndarray):
        order = order[scores[order] > threshold[order]]
    elif threshold is not None:
        order = order[scores[order] > threshold]
    return order[:k]
