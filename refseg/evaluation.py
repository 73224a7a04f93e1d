"""COCO evaluation of a predictions field against a ground-truth field of a FiftyOne view.

:func:`evaluate` reads both ``fo.Detections`` fields in one pass, evaluates them with
pycocotools (``refseg.coco_metrics``: the bbox and segm tables users compare with papers, and
per-class AP) and, given an ``eval_key``, also stores a FiftyOne evaluation run
(``evaluate_detections(method="coco", use_masks=True, compute_mAP=True)``) so the App's Model
Evaluation panel shows it. The run's mAP is returned as ``report.fiftyone_map``.

FiftyOne's mAP against pycocotools (fiftyone 1.22.1, pycocotools 2.0.11; checked by runs, and
pinned by ``tests/test_evaluate.py``). FiftyOne's mAP is COCO AP over IoU .50:.95, area "all",
at most 100 predictions per image and class, averaged over the classes that have ground truth,
so it is to be compared with ``report.segm["AP"]`` (masks) or ``report.bbox["AP"]`` (boxes).
The pycocotools results are fed as the research code fed them (``refseg.coco_metrics``): each
result carries its box and its mask, and ``COCO.loadRes`` gives it its box area, which sorts it
into the small / medium / large ranges of both tables; area "all" (the mAP) does not use areas.

- Ordinary data (distinct confidences, masks cropped to pixel-aligned boxes as
  ``fo.Detection.from_mask`` makes them): equal to 1e-6, including shifted, missing, extra and
  wrong-class predictions, samples whose fields are None, and ``classes=``.
- Classes absent from the ground truth: both give them precision -1 and leave them out of the
  mean (the paper's rule). A class with only crowd ground truth counts as absent in both.
  Nothing to average at all gives -1 in both.
- Crowd regions with boxes (``use_masks=False``): equal. Both read the ``iscrowd`` attribute,
  match a prediction to a crowd region by intersection over the prediction's area, and ignore
  such predictions.
- Crowd regions with masks (``use_masks=True``): they differ. FiftyOne's dense mask IoU drops
  the crowd flag and uses plain IoU, so a prediction lying inside a large crowd region is a
  false positive for FiftyOne but ignored by pycocotools. Seen: one true positive at score 0.9
  plus one prediction inside a crowd region at 0.95: pycocotools segm AP 1.0, FiftyOne 0.5.
- Tied confidences: FiftyOne ranks tied true positives before tied false positives;
  pycocotools keeps image order. One true positive and one false positive at the same score:
  FiftyOne 0.505 either way, pycocotools 0.252 (false positive's image first) or 0.505.
- Masks whose shape differs from their box's pixel size (e.g. ground truth imported with
  fractional COCO boxes): FiftyOne infers a frame size per mask (mask size / relative box size)
  and resizes, ``refseg`` pastes the mask at the rounded box. Seen on one such case: FiftyOne
  0.95, pycocotools 1.0.
- A detection without a mask: FiftyOne's mask IoU raises AttributeError, so with
  ``use_masks=True`` :func:`evaluate` refuses before storing a run (use ``use_masks=False``).
- IoU thresholds: pycocotools' 0.9 is the float 0.8999999999999999, FiftyOne's is 0.9; only
  an IoU strictly between the two could be matched differently (not tested).
- ``legacy_coco_box=True``: ``report.bbox`` measures the research code's one-pixel-short
  boxes while a box-IoU FiftyOne run (``use_masks=False``) measures the labels' own boxes, so
  those two differ; ``report.segm`` and a mask-IoU run are unaffected.
- Only pycocotools reports the other 11 statistics (AP50, AP75, areas, AR) and per-class AP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import fiftyone as fo
from fiftyone.core.collections import SampleCollection

from refseg import arguments
from refseg.coco_metrics import EvaluationReport, ImageRecord, evaluate_records
from refseg.failures import FailureReport, ImageReadError, SampleError, SampleFailure
from refseg.field_safety import check_eval_key
from refseg.images import read_rgb


def evaluate(
    view: SampleCollection,
    pred_field: str,
    gt_field: str,
    *,
    eval_key: str | None = None,
    classes: Sequence[str] | None = None,
    use_masks: bool = True,
    overwrite: bool = False,
    legacy_coco_box: bool = False,
    skip_failures: bool = True,
    failures: FailureReport | None = None,
) -> EvaluationReport:
    """Evaluates ``pred_field`` against ``gt_field`` on ``view`` with COCO AP (bbox and segm).

    Image sizes come from ``metadata``; samples without it get ``compute_metadata()`` first.
    Only the size is needed, not the pixels: a sample whose size cannot be read (missing,
    empty or unrecognisable file) cannot be evaluated and is left out of both the pycocotools
    tables and the FiftyOne run, logged and recorded in ``failures`` (or raised, with
    ``skip_failures=False``); a truncated image whose header gives its size is evaluated.
    Samples whose fields are None count as images with no detections.

    Args:
        view: the samples (a dataset or a view) to evaluate.
        pred_field: an ``fo.Detections`` field of predictions, each with a ``confidence``.
        gt_field: an ``fo.Detections`` field of ground truth; masks are optional (a box stands
            in for a missing mask), ``iscrowd`` attributes mark crowd regions.
        eval_key: when given, also store a FiftyOne COCO evaluation run under this key and
            report its mAP as ``fiftyone_map``.
        classes: evaluate only these classes (e.g. the 20 novel classes of COCO-FSOD);
            all classes found in either field when None.
        use_masks: whether the FiftyOne run matches by mask IoU (True: compare its mAP with
            ``report.segm["AP"]``; every detection needs a mask) or by box IoU (False: compare
            with ``report.bbox["AP"]``). Only used with ``eval_key``.
        overwrite: replace an existing evaluation run named ``eval_key``.
        legacy_coco_box: measure the bbox table on the research code's boxes, one pixel short
            in width and height (derived from each prediction's mask, as the research code
            did; ``refseg.config.PAPER_EVALUATE`` sets it), to reproduce its published bbox
            numbers. The labels and the masks are not changed. False uses the labels' boxes.
        skip_failures: True (default) leaves out samples whose image cannot be read and
            reports them; False raises a ``SampleError`` naming the first such file.
        failures: a report that receives the skipped samples (sample id, path, reason); pass
            ``FailureReport("evaluate")`` and read it afterwards.

    Returns:
        The :class:`~refseg.coco_metrics.EvaluationReport`; ``report.table()`` prints it.

    Raises:
        ValueError: a field is missing or not ``fo.Detections``, ``eval_key`` exists and
            ``overwrite`` is False, ``eval_key`` would write a reserved field or an attribute
            that holds data (``refseg.field_safety``), the view is empty or no sample is
            readable, or a prediction has no confidence.
        SampleError: ``skip_failures=False`` and an image cannot be read.
    """
    view = arguments.sample_collection(view, "view")
    for name in (pred_field, gt_field):
        check_detections_field(view, name)
    if eval_key is not None:
        check_eval_key(
            view, eval_key, pred_field=pred_field, gt_field=gt_field, overwrite=overwrite
        )
    report = failures if failures is not None else FailureReport("evaluate")
    records, skipped = _read_records(view, pred_field, gt_field, skip_failures, report)
    result = evaluate_records(records, classes=classes, legacy_coco_box=legacy_coco_box)
    if eval_key is None:
        return result
    if use_masks:
        _check_masks(records)
    if skipped:
        view = view.exclude(skipped)
    fiftyone_map = _run_fiftyone_evaluation(
        view, pred_field, gt_field, eval_key, classes=classes, use_masks=use_masks
    )
    iou_type = "segm" if use_masks else "bbox"
    return dataclasses.replace(result, fiftyone_map=fiftyone_map, fiftyone_iou_type=iou_type)


def check_detections_field(view: SampleCollection, name: str) -> None:
    """Raises a ValueError naming the field unless it is an ``fo.Detections`` field."""
    schema_field = view.get_field(name)
    if schema_field is None:
        fields = sorted(view.get_field_schema(embedded_doc_type=fo.Detections))
        raise ValueError(f"field {name!r} does not exist; the fo.Detections fields are {fields}")
    document_type = getattr(schema_field, "document_type", None)
    if not (isinstance(document_type, type) and issubclass(document_type, fo.Detections)):
        actual = getattr(document_type, "__name__", type(schema_field).__name__)
        raise ValueError(
            f"field {name!r} holds {actual}, not fo.Detections; pass a Detections field"
        )


def _read_records(
    view: SampleCollection,
    pred_field: str,
    gt_field: str,
    skip_failures: bool,
    report: FailureReport,
) -> tuple[list[ImageRecord], list[str]]:
    """Reads sizes and detections of every sample in one ``values()`` pass (two if metadata
    has to be computed first).

    Returns:
        The records of the samples with a size, and the ids of those without one (their image
        cannot be read), each reported in ``report``.

    Raises:
        SampleError: ``skip_failures=False`` and an image cannot be read.
    """
    paths = ["id", "filepath", "metadata.width", "metadata.height", gt_field, pred_field]
    columns = view.values(paths)
    if any(w is None or h is None for w, h in zip(columns[2], columns[3])):
        view.exists("metadata.width", False).compute_metadata(warn_failures=False, progress=False)
        columns = view.values(paths)
    records, skipped = [], []
    for sample_id, filepath, width, height, gt, pred in zip(*columns):
        if width is None or height is None:
            failure = SampleFailure(sample_id, filepath, _unreadable_reason(filepath))
            if not skip_failures:
                raise SampleError(failure)
            report.add(failure)
            skipped.append(sample_id)
            continue
        records.append(
            ImageRecord(
                width=width,
                height=height,
                ground_truth=_detections(gt),
                predictions=_detections(pred),
                name=filepath,
            )
        )
    if skipped and not records:
        raise ValueError(
            f"nothing to evaluate: no image of the view can be read.\n{report.summary()}"
        )
    return records, skipped


def _unreadable_reason(filepath: str) -> str:
    """Why FiftyOne could not compute an image's size (the decoder's own words)."""
    try:
        read_rgb(filepath)
    except ImageReadError as error:
        return f"{error}, so its size is unknown"
    return f"FiftyOne cannot compute the size of {filepath!r} (its metadata)"


def _check_masks(records: Sequence[ImageRecord]) -> None:
    """FiftyOne's mask IoU fails on a detection without a mask: refuse before storing a run."""
    for record in records:
        kinds = (("ground truth", record.ground_truth), ("prediction", record.predictions))
        for kind, dets in kinds:
            if any(det.mask is None and det.mask_path is None for det in dets):
                raise ValueError(
                    f"a {kind} detection of {record.name!r} has no mask, so FiftyOne cannot "
                    "match by mask IoU; pass use_masks=False to store a box-IoU run instead"
                )


def _detections(labels: fo.Detections | None) -> list[fo.Detection]:
    return [] if labels is None else list(labels.detections)


def _run_fiftyone_evaluation(
    view: SampleCollection,
    pred_field: str,
    gt_field: str,
    eval_key: str,
    *,
    classes: Sequence[str] | None,
    use_masks: bool,
) -> float:
    """Stores FiftyOne's COCO evaluation run (with mAP) and returns its mAP in [0, 1]."""
    if view.has_evaluation(eval_key):
        view.delete_evaluation(eval_key)
    options: dict[str, Any] = {"classes": list(classes)} if classes is not None else {}
    results = view.evaluate_detections(
        pred_field,
        gt_field=gt_field,
        eval_key=eval_key,
        method="coco",
        use_masks=use_masks,
        compute_mAP=True,
        progress=False,
        **options,
    )
    return float(results.mAP())
