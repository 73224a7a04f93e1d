"""Accept predictions into ground truth, with provenance, and undo an accept exactly.

:func:`accept` copies predictions into a ground-truth ``fo.Detections`` field: new labels are
appended to each sample's list, the labels already there are left as they are (same ids, same
attributes). Each accepted label is a fresh label (new id, no confidence, no tags: it is an
annotation now, so a bank built from it protects its field) carrying its provenance as
attributes:

- ``refseg_accept_id``: the accept batch (``AcceptResult.accept_id``), for :func:`undo_accept`;
- ``refseg_source_field`` and ``refseg_source_id``: the prediction field and label it copies;
- ``refseg_score``: the prediction's confidence;
- ``refseg_bank``: the name of the memory bank that made the predictions, when given.

A prediction is skipped, never added twice, when its label was already accepted into the field
(same source field and label id), and, unless ``skip_overlapping=False``, when its mask IoU
with a label of the same class already in the field, or accepted before it in the same call
(predictions go by descending score), is at or above ``iou`` (0.5 by default). Masks are
compared at full image size as ``refseg.evaluate`` places them; a label without a mask counts as
its box.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import fiftyone as fo
from fiftyone import ViewField as F
from fiftyone.core.collections import SampleCollection
from pycocotools import mask as mask_utils

from refseg.coco_metrics import full_image_rle
from refseg.evaluation import check_detections_field
from refseg.field_safety import field_name_problem
from refseg.locks import RunLock
from refseg.memory import MemoryBank
from refseg.thresholds import ThresholdTable, thresholds_of

ACCEPT_ID = "refseg_accept_id"
SOURCE_FIELD = "refseg_source_field"
SOURCE_ID = "refseg_source_id"
SCORE = "refseg_score"
BANK = "refseg_bank"


@dataclass(frozen=True)
class SkippedPrediction:
    """A prediction :func:`accept` did not add.

    Attributes:
        sample_id: its sample.
        label_id: its label id in the prediction field.
        label: its class.
        reason: why ("overlaps ground truth <id> (IoU 0.83)", "already accepted as <id>").
    """

    sample_id: str
    label_id: str
    label: str
    reason: str


@dataclass(frozen=True)
class AcceptResult:
    """What one :func:`accept` call did.

    Attributes:
        accept_id: the batch id written on every added label; pass it to :func:`undo_accept`.
        gt_field: the field written.
        added: label ids of the new ground-truth labels.
        skipped: the chosen predictions not added, with the reason.
    """

    accept_id: str
    gt_field: str
    added: tuple[str, ...]
    skipped: tuple[SkippedPrediction, ...]


def accept(
    view: SampleCollection,
    pred_field: str,
    gt_field: str,
    *,
    label_ids: Iterable[str] | None = None,
    tag: str | None = None,
    thresholds: Mapping[str, float] | ThresholdTable | MemoryBank | None = None,
    bank: str | None = None,
    iou: float = 0.5,
    skip_overlapping: bool = True,
) -> AcceptResult:
    """Copies predictions of ``view`` into the ground-truth field ``gt_field``.

    Which predictions: those of ``pred_field`` in ``view`` (a filtered view, e.g. from
    :func:`refseg.threshold_view` or the App, restricts them), narrowed by each of these that
    is given: ``label_ids`` (e.g. the App's selected labels), ``tag`` (a label tag they carry),
    ``thresholds`` (only scores above their class's threshold; classes without one are not
    narrowed). See the module docstring for the labels written and the skip rules.

    Args:
        view: the samples.
        pred_field: the predictions (``fo.Detections``).
        gt_field: the ground-truth ``fo.Detections`` field; created when missing.
        label_ids: only these predictions.
        tag: only predictions carrying this label tag.
        thresholds: ``{class: threshold}``, a ``ThresholdTable`` or a ``MemoryBank`` (its
            stored thresholds).
        bank: the name of the bank that made the predictions, recorded as ``refseg_bank``.
        iou: mask IoU at or above which a prediction duplicates a label of its class.
        skip_overlapping: False adds overlapping predictions too (never one already accepted).

    Returns:
        An :class:`AcceptResult` (its ``accept_id`` undoes it).

    Raises:
        ValueError: a field is missing or not Detections (``gt_field`` may be missing), both
            fields are the same, ``gt_field`` is not a name refseg may create, bad ``iou``, or
            ``label_ids`` not predictions of the view.
        RunLockedError: a refseg run is writing ``gt_field``.
    """
    _check_fields(view, pred_field, gt_field)
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou!r}")
    chosen = _chosen(view, pred_field, label_ids, tag, thresholds)
    dataset = view._dataset
    accept_id = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    lock = RunLock(dataset, f"field:{gt_field}", description=f"refseg.accept into {gt_field!r}")
    with lock:
        if gt_field not in dataset.get_field_schema():
            dataset.add_sample_field(
                gt_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections
            )
        added, skipped, updates = [], [], {}
        existing = _existing(dataset, gt_field, list(chosen))
        for sample_id, (size, predictions) in chosen.items():
            labels = list(existing[sample_id])
            new, masks = [], _MaskCache(size)
            for det in sorted(predictions, key=_score, reverse=True):
                reason = _duplicate(det, labels, pred_field, masks, iou, skip_overlapping)
                if reason:
                    skipped.append(SkippedPrediction(sample_id, det.id, det.label, reason))
                    continue
                copy = _accepted(det, accept_id, pred_field, bank)
                labels.append(copy)
                new.append(copy)
            if new:
                updates[sample_id] = fo.Detections(detections=labels)
                added.extend(d.id for d in new)
        if updates:
            dataset.set_values(gt_field, updates, key_field="id")
    return AcceptResult(accept_id, gt_field, tuple(added), tuple(skipped))


def undo_accept(
    dataset: fo.Dataset, accept_id: str, gt_field: str | None = None
) -> dict[str, list[str]]:
    """Removes exactly the labels one :func:`accept` added (those carrying its ``accept_id``,
    edited or not); every other label stays as it is.

    Args:
        dataset: the dataset (the whole dataset is searched, not a view).
        accept_id: ``AcceptResult.accept_id``.
        gt_field: the field it wrote; None searches every Detections field.

    Returns:
        ``{field: [removed label ids]}``.

    Raises:
        ValueError: no label carries ``accept_id`` (a wrong id, or already undone).
    """
    dataset = dataset._dataset
    fields = (
        [gt_field]
        if gt_field
        else sorted(dataset.get_field_schema(embedded_doc_type=fo.Detections))
    )
    removed = {}
    for field in fields:
        check_detections_field(dataset, field)
        ids = dataset.filter_labels(field, F(ACCEPT_ID) == accept_id).values(
            f"{field}.detections.id", unwind=True
        )
        if ids:
            dataset.delete_labels(ids=ids, fields=field)
            removed[field] = ids
    if not removed:
        where = f"field {gt_field!r}" if gt_field else "any Detections field"
        raise ValueError(
            f"No label of {where} of dataset {dataset.name!r} carries accept id {accept_id!r}: "
            "a wrong id, or that accept was already undone"
        )
    return removed


def list_accepts(dataset: fo.Dataset) -> dict[str, dict[str, int]]:
    """The accepts whose labels are still in the dataset: ``{accept_id: {field: number of
    labels}}``, oldest first (accept ids start with their UTC time)."""
    dataset = dataset._dataset
    found: dict[str, dict[str, int]] = {}
    for field in sorted(dataset.get_field_schema(embedded_doc_type=fo.Detections)):
        view = dataset.filter_labels(field, F(ACCEPT_ID).exists())
        for detections in view.values(field):
            for det in detections.detections if detections is not None else []:
                batch = found.setdefault(det[ACCEPT_ID], {})
                batch[field] = batch.get(field, 0) + 1
    return dict(sorted(found.items()))


def _check_fields(view: SampleCollection, pred_field: str, gt_field: str) -> None:
    check_detections_field(view, pred_field)
    if gt_field == pred_field:
        raise ValueError(
            f"gt_field and pred_field are both {gt_field!r}: accept into another field"
        )
    problem = field_name_problem(view, gt_field, what="gt_field")
    if problem:
        raise ValueError(problem)
    if gt_field in view._dataset.get_field_schema():
        check_detections_field(view, gt_field)


def _chosen(view, pred_field, label_ids, tag, thresholds) -> dict[str, tuple]:
    """``{sample id: ((width, height), [predictions])}`` of the chosen predictions."""
    if label_ids is not None:
        label_ids = set(label_ids)
    limits = None if thresholds is None else thresholds_of(thresholds)
    if len(view.exists("metadata.width", False)):
        view.exists("metadata.width", False).compute_metadata(warn_failures=False, progress=False)
    paths = ["id", "metadata.width", "metadata.height", pred_field]
    chosen, seen = {}, set()
    for sample_id, width, height, labels in zip(*view.values(paths)):
        picked = []
        for det in labels.detections if labels is not None else []:
            seen.add(det.id)
            if label_ids is not None and det.id not in label_ids:
                continue
            if tag is not None and tag not in (det.tags or []):
                continue
            if limits is not None and det.label in limits and not _score(det) > limits[det.label]:
                continue
            picked.append(det)
        if picked:
            if width is None or height is None:
                raise ValueError(f"Sample {sample_id} has no image size; its image is unreadable")
            chosen[sample_id] = ((width, height), picked)
    missing = sorted(label_ids - seen) if label_ids is not None else []
    if missing:
        raise ValueError(f"Labels {missing} are not predictions of {pred_field!r} in the view")
    return chosen


def _existing(dataset: fo.Dataset, gt_field: str, sample_ids: list[str]) -> dict[str, list]:
    """Every label already in ``gt_field`` of these samples, read from the dataset (not the
    view: a label a view filters out must be written back too)."""
    ids, values = dataset.select(sample_ids).values(["id", gt_field])
    return {i: list(v.detections) if v is not None else [] for i, v in zip(ids, values)}


class _MaskCache:
    """Full-image RLEs of one image's labels, each made once."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.width, self.height = size
        self._rles: dict[str, dict] = {}

    def __call__(self, label: fo.Detection) -> dict:
        if label.id not in self._rles:
            self._rles[label.id] = full_image_rle(label, self.width, self.height)
        return self._rles[label.id]


def _duplicate(det, labels, pred_field, masks: _MaskCache, iou, skip_overlapping) -> str | None:
    """Why ``det`` would duplicate one of ``labels``, or None."""
    for label in labels:
        source = (
            label.get_attribute_value(SOURCE_FIELD, None),
            label.get_attribute_value(SOURCE_ID, None),
        )
        if source == (pred_field, det.id):
            return f"already accepted as {label.id}"
    if not skip_overlapping:
        return None
    same = [label for label in labels if label.label == det.label]
    if not same:
        return None
    ious = mask_utils.iou([masks(det)], [masks(label) for label in same], [0] * len(same))[0]
    best = int(ious.argmax())
    if ious[best] >= iou:
        return f"overlaps {same[best].label} label {same[best].id} (mask IoU {ious[best]:.2f})"
    return None


def _accepted(det: fo.Detection, accept_id: str, pred_field: str, bank: str | None):
    """A new ground-truth label copying the prediction's class, box and mask, with provenance."""
    provenance = {
        ACCEPT_ID: accept_id,
        SOURCE_FIELD: pred_field,
        SOURCE_ID: det.id,
        SCORE: det.confidence,
    }
    if bank is not None:
        provenance[BANK] = bank
    return fo.Detection(
        label=det.label,
        bounding_box=list(det.bounding_box),
        mask=None if det.mask is None else det.mask.copy(),
        mask_path=det.mask_path,
        **provenance,
    )


def _score(det: fo.Detection) -> float:
    return -1.0 if det.confidence is None else float(det.confidence)
