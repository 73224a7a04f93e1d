"""Which predictions of a FiftyOne view are true or false positives at one IoU, as COCO says.

:func:`match_predictions` reads a predictions field and a ground-truth field in one pass and
lets pycocotools match them at one IoU threshold (``refseg.coco_metrics.match_results``), so a
true positive here is exactly a detection that counts as one in COCO AP at that IoU
(``refseg.evaluate`` reads the same records). Thresholds (``refseg.thresholds``) and the
marking of false positives as negative references (``refseg.negatives``) are built on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import fiftyone as fo
from fiftyone.core.collections import SampleCollection

from refseg.coco_metrics import IGNORED, MATCHED, UNMATCHED, ImageRecord, match_results, to_coco
from refseg.evaluation import check_detections_field


@dataclass(frozen=True)
class PredictionMatch:
    """One prediction and what COCO matching made of it.

    Attributes:
        sample_id: the sample holding it.
        label_id: its label id in the predictions field.
        label: its class.
        score: its confidence.
        status: ``"tp"``, ``"fp"`` or ``"ignored"`` (matched to a crowd region).
    """

    sample_id: str
    label_id: str
    label: str
    score: float
    status: str


@dataclass(frozen=True)
class Matches:
    """The predictions of a view matched to its ground truth at one IoU.

    Attributes:
        predictions: every evaluated prediction (those beyond the 100 highest-scoring of an
            image and class, which COCO does not evaluate, are left out; ``predict`` writes at
            most ``max_detections`` = 100 per image).
        num_ground_truth: non-crowd ground-truth instances of each class.
        iou: the IoU threshold.
        iou_type: ``"segm"`` (mask IoU) or ``"bbox"`` (box IoU).
        num_skipped: samples left out because their image size is unknown and unreadable.
    """

    predictions: tuple[PredictionMatch, ...]
    num_ground_truth: dict[str, int]
    iou: float
    iou_type: str
    num_skipped: int = 0

    @property
    def classes(self) -> tuple[str, ...]:
        """Every class with ground truth or predictions, sorted."""
        return tuple(sorted(set(self.num_ground_truth) | {p.label for p in self.predictions}))

    def false_positives(self) -> list[PredictionMatch]:
        """The predictions matched to no ground truth of their class."""
        return [p for p in self.predictions if p.status == UNMATCHED]

    def true_positives(self) -> list[PredictionMatch]:
        """The predictions matched to ground truth of their class."""
        return [p for p in self.predictions if p.status == MATCHED]


def match_predictions(
    view: SampleCollection,
    pred_field: str,
    gt_field: str,
    *,
    iou: float = 0.5,
    iou_type: str = "segm",
    classes: Sequence[str] | None = None,
) -> Matches:
    """Matches the predictions of ``view`` to its ground truth as COCO does at IoU ``iou``.

    The matching is pycocotools' (``COCOeval.evaluateImg``, area "all", 100 detections per
    image and class): per image and class, predictions by descending confidence each take the
    unmatched ground-truth instance of highest IoU at or above ``iou``; a prediction matching
    only a crowd region is ignored. Masks are compared with ``iou_type="segm"`` (a label
    without a mask counts as its box, as in ``refseg.evaluate``), boxes with ``"bbox"``.

    Args:
        view: the samples.
        pred_field: an ``fo.Detections`` field of predictions, each with a ``confidence``.
        gt_field: an ``fo.Detections`` field of ground truth.
        iou: the IoU threshold, in (0, 1).
        iou_type: ``"segm"`` or ``"bbox"``.
        classes: only these classes (all when None).

    Raises:
        ValueError: a field is missing or not Detections, a prediction has no confidence or
            no label, bad ``iou`` / ``iou_type``, or no sample of the view has a known size.
    """
    for name in (pred_field, gt_field):
        check_detections_field(view, name)
    records, keys, skipped = _read(view, pred_field, gt_field)
    if not records:
        raise ValueError(
            f"nothing to match: the view has {len(view)} samples and none with a known image "
            "size (compute_metadata() found none readable)"
        )
    inputs = to_coco(records, classes or ())
    matched = match_results(inputs, iou=iou, iou_type=iou_type, classes=classes)
    predictions = tuple(
        PredictionMatch(sample_id, label_id, label, score, status)
        for (sample_id, label_id, label, score), status in zip(keys, matched.status)
        if status in (MATCHED, UNMATCHED, IGNORED)
    )
    return Matches(predictions, matched.num_ground_truth, iou, iou_type, skipped)


def _read(view: SampleCollection, pred_field: str, gt_field: str):
    """(records, one key (sample id, label id, label, score) per prediction in record order,
    number of samples without a size)."""
    paths = ["id", "filepath", "metadata.width", "metadata.height", gt_field, pred_field]
    columns = view.values(paths)
    if any(w is None or h is None for w, h in zip(columns[2], columns[3])):
        view.exists("metadata.width", False).compute_metadata(warn_failures=False, progress=False)
        columns = view.values(paths)
    records, keys, skipped = [], [], 0
    for sample_id, filepath, width, height, gt, pred in zip(*columns):
        if width is None or height is None:
            skipped += 1
            continue
        predictions = _detections(pred)
        records.append(ImageRecord(width, height, _detections(gt), predictions, name=filepath))
        keys.extend((sample_id, d.id, d.label, d.confidence) for d in predictions)
    return records, keys, skipped


def _detections(labels: fo.Detections | None) -> list[fo.Detection]:
    return [] if labels is None else list(labels.detections)
