"""A small synthetic dataset of coloured shapes, for offline smoke runs and tests.

Each image has a noisy grey background and a few non-overlapping shapes. Three classes are
"red_square", "green_disc" and "blue_triangle"; "yellow_square" appears only on negative
images (images with none of the three classes). On request, positive images also hold
confusers: "orange_square", a square of a hue close to red that is no class and is not in the
ground truth (a look-alike, for negative references). Ground truth is a ``fo.Detections``
field with masks cropped to their boxes. Drawing needs only numpy and PIL; FiftyOne is
imported by the two functions that make its objects, so engine benchmarks can draw images
where it is not installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import fiftyone as fo

PALETTE = {
    "background": (0.5, 0.5, 0.5),
    "red_square": (0.85, 0.15, 0.15),
    "green_disc": (0.15, 0.8, 0.2),
    "blue_triangle": (0.15, 0.25, 0.9),
    "yellow_square": (0.9, 0.85, 0.1),
}
"""RGB in [0, 1] of the background and of each shape class."""

CLASSES = ("red_square", "green_disc", "blue_triangle")
NEGATIVE_CLASS = "yellow_square"

CONFUSERS = {"orange_square": (0.87, 0.45, 0.13)}
"""RGB of each look-alike: not in ``PALETTE`` (so not a colour a palette encoder knows), close
to the class it imitates (``CONFUSER_OF``)."""

CONFUSER_OF = {"orange_square": "red_square"}
"""The class each confuser looks like."""

_COLOURS = {**PALETTE, **CONFUSERS}


@dataclass(frozen=True)
class Shape:
    """One drawn instance: class name and (H, W) bool mask over the image."""

    label: str
    mask: np.ndarray


def shape_mask(label: str, height: int, width: int, x: int, y: int, size: int) -> np.ndarray:
    """(H, W) bool mask of a shape with top-left (x, y) and side ``size`` pixels."""
    rows, cols = np.mgrid[0:height, 0:width]
    u, v = cols - x, rows - y
    inside = (u >= 0) & (u < size) & (v >= 0) & (v < size)
    if label.endswith("disc"):
        r = size / 2.0
        return (u + 0.5 - r) ** 2 + (v + 0.5 - r) ** 2 <= r * r
    if label.endswith("triangle"):
        return inside & (np.abs(u + 0.5 - size / 2.0) <= (v + 0.5) / 2.0)
    return inside


def render(shapes: list[Shape], height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 image of the shapes on a noisy grey background."""
    image = np.empty((height, width, 3), np.float32)
    image[:] = PALETTE["background"]
    for shape in shapes:
        image[shape.mask] = _COLOURS[shape.label]
    image += rng.normal(0.0, 0.03, image.shape).astype(np.float32)
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def random_shapes(
    labels: list[str], height: int, width: int, rng: np.random.Generator
) -> list[Shape]:
    """Non-overlapping shapes of the given classes, 36-56 px, 12 px or more from the border."""
    shapes: list[Shape] = []
    occupied = np.zeros((height, width), bool)
    for label in labels:
        for _ in range(100):
            size = int(rng.integers(36, 57))
            x = int(rng.integers(12, width - size - 12))
            y = int(rng.integers(12, height - size - 12))
            mask = shape_mask(label, height, width, x, y, size)
            if not (occupied[max(0, y - 4) : y + size + 4, max(0, x - 4) : x + size + 4]).any():
                occupied |= mask
                shapes.append(Shape(label, mask))
                break
    return shapes


def to_detection(shape: Shape, height: int, width: int) -> fo.Detection:
    """The shape as a FiftyOne detection with a mask cropped to its tight box."""
    import fiftyone as fo

    rows, cols = np.nonzero(shape.mask)
    y1, y2, x1, x2 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return fo.Detection(
        label=shape.label,
        bounding_box=[x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height],
        mask=shape.mask[y1:y2, x1:x2],
    )


def make_shapes_dataset(
    name: str,
    image_dir: str,
    *,
    num_positive: int = 12,
    num_negative: int = 4,
    seed: int = 0,
    gt_field: str = "ground_truth",
    persistent: bool = False,
    confusers: int = 0,
) -> fo.Dataset:
    """Writes the images and returns a FiftyOne dataset of them with ground truth.

    Positive images hold 1-3 shapes of ``CLASSES`` (every class appears often enough for a
    few shots); negative images hold only ``NEGATIVE_CLASS`` shapes and are tagged "negative".
    With ``confusers`` > 0, each positive image also holds that many "orange_square"
    confusers (placed after its shapes, left out of the ground truth; images that hold some
    are tagged "confuser"). ``confusers=0`` draws exactly the dataset of earlier versions.
    """
    import fiftyone as fo

    rng = np.random.default_rng(seed)
    os.makedirs(image_dir, exist_ok=True)
    dataset = fo.Dataset(name, persistent=persistent)
    samples = []
    for index in range(num_positive + num_negative):
        height, width = int(rng.integers(140, 200)), int(rng.integers(160, 240))
        negative = index >= num_positive
        count = int(rng.integers(1, 4))
        labels = [NEGATIVE_CLASS] * count if negative else list(rng.choice(CLASSES, count))
        if confusers and not negative:
            labels += list(CONFUSERS)[:1] * confusers
        shapes = random_shapes(labels, height, width, rng)
        path = os.path.join(image_dir, f"shapes_{index:03d}.png")
        Image.fromarray(render(shapes, height, width, rng)).save(path)
        detections = [to_detection(s, height, width) for s in shapes if s.label not in CONFUSERS]
        tags = ["negative"] if negative else []
        if any(s.label in CONFUSERS for s in shapes):
            tags.append("confuser")
        sample = fo.Sample(filepath=path, tags=tags)
        sample[gt_field] = fo.Detections(detections=detections)
        samples.append(sample)
    dataset.add_samples(samples)
    dataset.compute_metadata()
    return dataset
