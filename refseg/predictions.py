"""One image's predictions as a single validated, columnar object."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Predictions:
    """Instance predictions of one image, indexed together.

    Attributes:
        boxes: (N, 4) float32 XYXY tight boxes of the masks, original-image pixels, x2 and y2
            exclusive (the research code's one-pixel-short box is an evaluation setting:
            ``refseg.evaluate(..., legacy_coco_box=True)``).
        masks: length-N tuple of (h_i, w_i) bool arrays, each the instance mask cropped to its
            box ``boxes[i]`` rounded to whole pixels, as FiftyOne stores masks.
        scores: (N,) float32 final scores in [0, 1], descending.
        labels: (N,) int64 class indices into ``class_names``.
        class_names: the memory bank's class names.
        image_size: (H, W) of the original image, pixels.
    """

    boxes: np.ndarray
    masks: tuple[np.ndarray, ...]
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        n = len(self.scores)
        _check_shape("boxes", self.boxes, (n, 4))
        _check_shape("scores", self.scores, (n,))
        _check_shape("labels", self.labels, (n,))
        if len(self.masks) != n:
            raise ValueError(f"Predictions: expected {n} masks, got {len(self.masks)}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(
                f"Predictions: labels must index {len(self.class_names)} classes, "
                f"got range [{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, class_names: tuple[str, ...], image_size: tuple[int, int]) -> "Predictions":
        """No detections (an image where no candidate survived)."""
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            masks=(),
            scores=np.zeros((0,), np.float32),
            labels=np.zeros((0,), np.int64),
            class_names=class_names,
            image_size=image_size,
        )

    def full_mask(self, index: int) -> np.ndarray:
        """Mask ``index`` pasted into an (H, W) bool array."""
        height, width = self.image_size
        full = np.zeros((height, width), dtype=bool)
        x1, y1 = int(self.boxes[index, 0]), int(self.boxes[index, 1])
        crop = self.masks[index]
        full[y1 : y1 + crop.shape[0], x1 : x1 + crop.shape[1]] = crop
        return full


def _check_shape(name: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
    if array.shape != expected:
        raise ValueError(f"Predictions: expected {name} of shape {expected}, got {array.shape}")
