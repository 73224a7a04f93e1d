"""Agreement between two sets of predictions of the same image (fast path vs reference path)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refseg.predictions import Predictions


@dataclass(frozen=True)
class Agreement:
    """How well predictions ``b`` reproduce predictions ``a``.

    Attributes:
        matched: detections of ``a`` with a same-label detection of ``b`` at mask IoU >= the
            threshold (greedy, in ``a``'s score order, each ``b`` detection used once).
        total_a, total_b: detection counts.
        min_mask_iou: lowest mask IoU among matched pairs (1.0 when none).
        max_score_diff: largest |score_a - score_b| among matched pairs (0.0 when none).
    """

    matched: int
    total_a: int
    total_b: int
    min_mask_iou: float
    max_score_diff: float


def agreement(a: Predictions, b: Predictions, iou_threshold: float = 0.98) -> Agreement:
    """Matches the detections of ``b`` to those of ``a`` by label and full-image mask IoU."""
    masks_b = [b.full_mask(j) for j in range(len(b))]
    used: set[int] = set()
    ious, diffs = [], []
    for i in range(len(a)):
        mask_a = a.full_mask(i)
        best, best_iou = None, iou_threshold
        for j, mask_b in enumerate(masks_b):
            if j in used or b.class_names[b.labels[j]] != a.class_names[a.labels[i]]:
                continue
            iou = _mask_iou(mask_a, mask_b)
            if iou >= best_iou:
                best, best_iou = j, iou
        if best is not None:
            used.add(best)
            ious.append(best_iou)
            diffs.append(abs(float(a.scores[i]) - float(b.scores[best])))
    return Agreement(
        matched=len(used),
        total_a=len(a),
        total_b=len(b),
        min_mask_iou=min(ious, default=1.0),
        max_score_diff=max(diffs, default=0.0),
    )


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0
