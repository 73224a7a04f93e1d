"""Data for the panel tests: predictions made from the ground truth, and banks made without
models.

The panel is under test, not the models: ``add_predictions`` finds each instance of a bank
class with a seeded score and adds one false positive per image (an instance's mask moved
beside it, where there is none, under another class), so an evaluation gives AP values below
1 and thresholds visibly filter. ``fake_bank`` files ground-truth labels as references of a
bank with made-up prototypes (nothing is encoded: only counts, boxes and files matter to the
panel's overview).
"""

from __future__ import annotations

import fiftyone as fo
import numpy as np

from refseg.memory import MemoryBank, ReferenceRecord
from refseg.models import RANDOM_WEIGHTS
from refseg.synthetic import CLASSES


def add_predictions(dataset: fo.Dataset, field: str, seed: int = 0) -> None:
    """Writes ``field``: every bank-class instance found (score in [0.5, 1)), plus one false
    positive per image where there is room (score in [0.55, 0.95))."""
    rng = np.random.default_rng(seed)
    for sample in dataset.iter_samples(autosave=True):
        truth = sample.ground_truth.detections
        found = [
            _prediction(d, d.label, rng.uniform(0.5, 1.0)) for d in truth if d.label in CLASSES
        ]
        wrong = _false_positive(truth, rng.uniform(0.55, 0.95), rng)
        sample[field] = fo.Detections(detections=found + ([wrong] if wrong else []))


def fake_bank(
    dataset: fo.Dataset, positives: list[fo.Detection], negatives: list[fo.Detection] = ()
) -> MemoryBank:
    """A bank whose references are these labels of ``dataset``'s ``ground_truth`` (negatives
    as "not their class"), with random prototypes; classes in order of first appearance."""
    owners = dict(zip(*dataset.values(["ground_truth.detections.id", "id"], unwind=True)))
    paths = dict(zip(*dataset.values(["id", "filepath"])))
    dataset.compute_metadata()
    sizes = dict(zip(*dataset.values(["id", "metadata"])))
    labels = list(positives) + list(negatives)
    names = tuple(dict.fromkeys(d.label for d in labels))
    records = []
    for index, label in enumerate(labels):
        sample_id = owners[label.id]
        width, height = sizes[sample_id].width, sizes[sample_id].height
        x, y, w, h = label.bounding_box
        records.append(
            ReferenceRecord(
                dataset.name,
                sample_id,
                label.id,
                label.label,
                paths[sample_id],
                (x * width, y * height, w * width, h * height),
                field="ground_truth",
                negative=index >= len(positives),
            )
        )
    return MemoryBank(
        class_names=names,
        prototypes=np.random.default_rng(0).normal(size=(len(labels), 8)).astype(np.float32),
        labels=np.array([names.index(d.label) for d in labels], dtype=np.int64),
        references=tuple(records),
        encoder={"name": "dinov2_vits14", "weights": RANDOM_WEIGHTS},
        proposer={"name": "sam2.1_hiera_tiny", "weights": RANDOM_WEIGHTS},
    )


def labels_of(dataset: fo.Dataset, label: str) -> list[fo.Detection]:
    """The ground-truth instances of class ``label``, in sample order."""
    return [d for s in dataset for d in s.ground_truth.detections if d.label == label]


def _prediction(truth: fo.Detection, label: str, score: float, box=None) -> fo.Detection:
    """A new detection (its own id) with the mask of ``truth``, at its box or at ``box``."""
    return fo.Detection(
        label=label,
        bounding_box=list(box or truth.bounding_box),
        mask=truth.mask,
        confidence=float(score),
    )


def _false_positive(truth: list[fo.Detection], score: float, rng) -> fo.Detection | None:
    """The first instance's mask, moved beside it where it overlaps no instance, labelled as
    another class (drawn with ``rng``); None when there is no such place (or no instance)."""
    if not truth:
        return None
    x, y, w, h = truth[0].bounding_box
    other = str(rng.choice([c for c in CLASSES if c != truth[0].label]))
    for dx, dy in ((1.2 * w, 0), (-1.2 * w, 0), (0, 1.2 * h), (0, -1.2 * h)):
        box = (x + dx, y + dy, w, h)
        inside = box[0] >= 0 and box[1] >= 0 and box[0] + w <= 1 and box[1] + h <= 1
        if inside and not any(_overlap(box, t.bounding_box) for t in truth):
            return _prediction(truth[0], other, score, box)
    return None


def _overlap(a, b) -> bool:
    """Whether two [x, y, w, h] boxes intersect."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
