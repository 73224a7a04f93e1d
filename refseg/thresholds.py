"""Per-class score thresholds: suggested from an evaluation, stored with the bank, applied.

A threshold ``t`` of a class keeps that class's detections whose score is above ``t`` (scores
at or below are dropped), everywhere it is applied: ``predict`` with
``PredictConfig(use_bank_thresholds=True)`` and :func:`threshold_view` over stored predictions.

:func:`suggest_thresholds` matches predictions to ground truth as COCO does at one IoU
(``refseg.match_predictions``) and, per class, tries every threshold that changes what is kept
(0 and each distinct score): precision = kept true positives / kept, recall = kept true
positives / ground-truth instances. It suggests the threshold of highest F1 (the lowest one on
ties, keeping more), or, given ``target_precision``, the lowest threshold whose precision
reaches it. Storing: ``bank.with_thresholds(table.thresholds)`` then ``refseg.save_bank``.
The thresholds live in the bank file (format version 3): they are calibrated on the bank's
scores, so they travel and are checksummed with it, in files and in the stored run alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from fiftyone import ViewField as F
from fiftyone.core.collections import SampleCollection

from refseg.coco_metrics import IGNORED, MATCHED
from refseg.evaluation import check_detections_field
from refseg.matches import Matches, match_predictions
from refseg.memory import MemoryBank


@dataclass(frozen=True)
class ClassThreshold:
    """The suggested threshold of one class and what it keeps.

    Attributes:
        label: the class.
        threshold: the suggested threshold in [0, 1] (scores at or below are dropped); None
            when there is none to suggest (see ``note``).
        precision, recall, f1: of the predictions kept by ``threshold`` (0 when nothing is
            kept or there is no suggestion).
        num_kept: predictions of the class scoring above ``threshold``.
        num_true_positives: those matched to ground truth.
        num_predictions: predictions of the class evaluated (crowd matches left out).
        num_ground_truth: non-crowd ground-truth instances of the class.
        note: why there is no suggestion ("" when there is one).
    """

    label: str
    threshold: float | None
    precision: float
    recall: float
    f1: float
    num_kept: int
    num_true_positives: int
    num_predictions: int
    num_ground_truth: int
    note: str = ""


@dataclass(frozen=True)
class ThresholdTable:
    """Suggested per-class thresholds with precision and recall at them.

    Attributes:
        rows: one per class with ground truth or predictions, sorted by class.
        iou: the IoU of the matching.
        iou_type: ``"segm"`` or ``"bbox"``.
        target_precision: the precision asked for; None when F1 was maximised.
    """

    rows: tuple[ClassThreshold, ...]
    iou: float
    iou_type: str
    target_precision: float | None = None

    @property
    def thresholds(self) -> dict[str, float]:
        """``{class: threshold}`` of the classes with a suggestion, to store or apply."""
        return {r.label: r.threshold for r in self.rows if r.threshold is not None}

    def row(self, label: str) -> ClassThreshold:
        """The row of ``label``; ValueError naming the classes when there is none."""
        for row in self.rows:
            if row.label == label:
                return row
        raise ValueError(f"No row for class {label!r}; classes: {[r.label for r in self.rows]}")

    def to_markdown(self) -> str:
        """A markdown table: class, threshold, precision, recall, F1, kept / predictions,
        true positives / ground truth, note."""
        rule = (
            f"lowest threshold reaching precision {self.target_precision:g}"
            if self.target_precision is not None
            else "threshold of highest F1"
        )
        lines = [
            f"Matching at {self.iou_type} IoU {self.iou:g}; {rule}.",
            "",
            "| class | threshold | precision | recall | F1 | kept | TP / GT | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            value = "-" if r.threshold is None else f"{r.threshold:.4f}"
            lines.append(
                f"| {r.label} | {value} | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} | "
                f"{r.num_kept} / {r.num_predictions} | {r.num_true_positives} / "
                f"{r.num_ground_truth} | {r.note} |"
            )
        return "\n".join(lines)


def suggest_thresholds(
    view: SampleCollection,
    pred_field: str,
    gt_field: str,
    *,
    iou: float = 0.5,
    iou_type: str = "segm",
    target_precision: float | None = None,
    classes: Sequence[str] | None = None,
) -> ThresholdTable:
    """Suggests a score threshold per class from the predictions and ground truth of ``view``.

    See the module docstring for the rule. Matching is COCO's at IoU ``iou``
    (``refseg.match_predictions``): a prediction counted as a true positive here is one in COCO
    AP at that IoU.

    Args:
        view: samples with both fields (held-out from the references, for honest numbers).
        pred_field: the predictions (``fo.Detections`` with confidences).
        gt_field: the ground truth.
        iou: the IoU threshold of the matching, in (0, 1); 0.5 by default (AP50's).
        iou_type: ``"segm"`` (mask IoU) or ``"bbox"``.
        target_precision: None maximises F1; a value in (0, 1] asks for the lowest threshold
            whose precision reaches it (None with a note where no threshold does).
        classes: only these classes (all when None).

    Returns:
        A :class:`ThresholdTable`. Classes without ground truth in the view, or without
        predictions, get no suggestion (a note says why).

    Raises:
        ValueError: bad ``target_precision``, or as :func:`refseg.match_predictions`.
    """
    if target_precision is not None and not (
        isinstance(target_precision, (int, float)) and 0.0 < target_precision <= 1.0
    ):
        raise ValueError(f"target_precision must be in (0, 1] or None, got {target_precision!r}")
    matches = match_predictions(
        view, pred_field, gt_field, iou=iou, iou_type=iou_type, classes=classes
    )
    rows = tuple(_row(matches, label, target_precision) for label in matches.classes)
    return ThresholdTable(rows, iou, iou_type, target_precision)


def _row(matches: Matches, label: str, target: float | None) -> ClassThreshold:
    counted = [p for p in matches.predictions if p.label == label and p.status != IGNORED]
    scores = np.array([p.score for p in counted], dtype=np.float64)
    hits = np.array([p.status == MATCHED for p in counted], dtype=bool)
    num_gt = matches.num_ground_truth.get(label, 0)
    empty = dict(label=label, num_predictions=len(counted), num_ground_truth=num_gt)
    if num_gt == 0:
        return _none(empty, "no ground truth of this class in the view")
    if not len(counted):
        return _none(empty, "no predictions of this class")
    candidates = np.unique(np.concatenate([[0.0], scores]))  # ascending
    kept = scores[None, :] > candidates[:, None]  # (T, P)
    num_kept = kept.sum(axis=1)
    tp = (kept & hits[None, :]).sum(axis=1)
    precision = np.divide(tp, num_kept, out=np.zeros(len(candidates)), where=num_kept > 0)
    recall = tp / num_gt
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros(len(candidates)),
        where=precision + recall > 0,
    )
    if target is None:
        best = int(np.argmax(f1))  # the first, i.e. lowest, threshold on ties
    else:
        reaching = np.flatnonzero((precision >= target) & (tp > 0))
        if not reaching.size:
            return _none(
                empty,
                f"no threshold reaches precision {target:g} (best {precision.max():.3f})",
            )
        best = int(reaching[0])
    return ClassThreshold(
        threshold=float(candidates[best]),
        precision=float(precision[best]),
        recall=float(recall[best]),
        f1=float(f1[best]),
        num_kept=int(num_kept[best]),
        num_true_positives=int(tp[best]),
        **empty,
    )


def _none(empty: dict, note: str) -> ClassThreshold:
    return ClassThreshold(
        threshold=None,
        precision=0.0,
        recall=0.0,
        f1=0.0,
        num_kept=0,
        num_true_positives=0,
        note=note,
        **empty,
    )


def threshold_view(
    view: SampleCollection,
    pred_field: str,
    thresholds: Mapping[str, float] | ThresholdTable | MemoryBank,
):
    """The view with the predictions at or below their class's threshold filtered out.

    Nothing is re-run or written: a ``filter_labels`` stage over ``pred_field``
    (``only_matches=False``: samples left without predictions stay in the view). Classes
    without a threshold keep every prediction.

    Args:
        view: the samples.
        pred_field: the predictions field.
        thresholds: ``{class: threshold}``, a :class:`ThresholdTable` (its suggestions) or a
            ``MemoryBank`` (its stored thresholds).

    Returns:
        A ``DatasetView``.

    Raises:
        ValueError: ``pred_field`` is not a Detections field, or a threshold is not a number.
    """
    check_detections_field(view, pred_field)
    values = thresholds_of(thresholds)
    keep = ~F("label").is_in(sorted(values))
    for label, value in sorted(values.items()):
        keep = keep | ((F("label") == label) & (F("confidence") > value))
    return view.filter_labels(pred_field, keep, only_matches=False)


def thresholds_of(thresholds) -> dict[str, float]:
    if isinstance(thresholds, ThresholdTable):
        return thresholds.thresholds
    if isinstance(thresholds, MemoryBank):
        return dict(thresholds.thresholds)
    if not isinstance(thresholds, Mapping):
        raise ValueError(
            "thresholds must be a {class: threshold} mapping, a ThresholdTable or a MemoryBank, "
            f"got {type(thresholds).__name__}"
        )
    values = {}
    for label, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"the threshold of {label!r} must be a number, got {value!r}")
        values[str(label)] = float(value)
    return values
