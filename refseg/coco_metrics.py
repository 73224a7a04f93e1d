"""COCO AP with pycocotools, from per-image detections: the pure layer of ``refseg.evaluate``.

Nothing here touches a database. :func:`to_coco` turns :class:`ImageRecord` s (an image size
plus ground-truth and predicted ``fo.Detection`` objects) into the two inputs of pycocotools: a
ground-truth dataset dict and a list of result dicts. :func:`evaluate_coco` runs ``COCOeval``
for ``"bbox"`` and ``"segm"`` with its default parameters (IoU 0.50:0.95 in steps of 0.05,
maxDets 1/10/100, areas all/small/medium/large) and returns an :class:`EvaluationReport`.

Conventions (the ones of COCO and detectron2, so numbers compare with papers):
- Categories are the sorted union of ground-truth labels, predicted labels and the requested
  ``classes``, with ids 1..C in that order. ``classes`` restricts the evaluated categories
  (COCOeval's ``params.catIds``); predictions of other classes then have no effect.
- A category without (non-crowd) ground truth gets precision -1 in COCOeval and is left out of
  every mean, exactly as in the paper's evaluation (its 20 novel classes have ground truth).
  Its per-class AP is reported as NaN.
- Results are fed as the research code feeds them: one list of dicts carrying both ``bbox``
  and ``segmentation``, loaded once with ``COCO.loadRes`` and used for both evaluations.
  ``loadRes`` then sets every result's ``area`` to its box area ``w * h``, so the area ranges
  (small / medium / large) of the ``"segm"`` statistics also sort results by box area. The
  ground truth's ``area`` is the label's ``area`` attribute where it has one (the value of the
  annotation file, which the research code reads and which ``refseg reproduce`` stores on each
  label), else its mask's pixel area; both evaluations use it.
- ``legacy_coco_box=True`` gives each bbox result the research code's box, measured on the
  result's mask with inclusive maxima: ``[x1, y1, x2 - x1, y2 - y1]`` with x2, y2 the last
  mask column and row, one pixel short of the tight box (its area is then the short box's
  too). The ``segmentation`` is the exact mask either way.
- Absolute box coordinates within 1e-6 pixel of an integer are snapped to it: FiftyOne stores
  relative boxes, and a pixel-aligned box read back is off by ~1e-13 pixel, which would move
  a box of area exactly 32^2 or 96^2 (counted in both neighbouring COCO area ranges) into one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)

IOU_TYPES: tuple[str, ...] = ("bbox", "segm")

STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip
"""Names of ``COCOeval.stats`` in order (AP/AR over IoU .50:.95 unless named otherwise)."""

PIXEL_SNAP = 1e-6
"""Absolute box coordinates this close to an integer (pixels) are taken as that integer."""

_STAT_LINES: tuple[tuple[str, str, str, int], ...] = (
    ("Average Precision  (AP)", "0.50:0.95", "all", 100),
    ("Average Precision  (AP)", "0.50", "all", 100),
    ("Average Precision  (AP)", "0.75", "all", 100),
    ("Average Precision  (AP)", "0.50:0.95", "small", 100),
    ("Average Precision  (AP)", "0.50:0.95", "medium", 100),
    ("Average Precision  (AP)", "0.50:0.95", "large", 100),
    ("Average Recall     (AR)", "0.50:0.95", "all", 1),
    ("Average Recall     (AR)", "0.50:0.95", "all", 10),
    ("Average Recall     (AR)", "0.50:0.95", "all", 100),
    ("Average Recall     (AR)", "0.50:0.95", "small", 100),
    ("Average Recall     (AR)", "0.50:0.95", "medium", 100),
    ("Average Recall     (AR)", "0.50:0.95", "large", 100),
)


@dataclass(frozen=True)
class ImageRecord:
    """One evaluated image.

    Attributes:
        width: image width in pixels.
        height: image height in pixels.
        ground_truth: ground-truth detections (relative ``[x, y, w, h]`` boxes in [0, 1],
            optional box-cropped boolean ``mask``, optional ``iscrowd`` attribute).
        predictions: predicted detections; each needs a ``confidence``.
        name: how the image is named in error messages and in the COCO ``file_name``.
    """

    width: int
    height: int
    ground_truth: Sequence[fo.Detection] = ()
    predictions: Sequence[fo.Detection] = ()
    name: str = ""


@dataclass(frozen=True)
class CocoInputs:
    """What pycocotools consumes.

    Attributes:
        dataset: a COCO ground-truth dict (``images``, ``annotations``, ``categories``).
        results: COCO result dicts, each with ``image_id``, ``category_id``, ``score``,
            ``bbox`` (absolute ``[x, y, w, h]`` pixels: the detection's box, or the research
            code's one-pixel-short box with ``legacy_coco_box``) and ``segmentation``
            (full-image RLE of the exact mask).
    """

    dataset: dict[str, Any]
    results: list[dict[str, Any]]


@dataclass(frozen=True)
class EvaluationReport:
    """COCO metrics of one evaluation.

    Attributes:
        bbox: the 12 ``COCOeval`` statistics of box AP/AR keyed by :data:`STAT_NAMES`, in
            [0, 1], or -1 where COCOeval has nothing to average (no ground truth).
        segm: the same for mask AP/AR.
        per_class_ap: ``per_class_ap[iou_type][class]`` = AP over IoU .50:.95 (area all,
            maxDets 100) in [0, 1]; NaN for a class without ground truth.
        classes: the evaluated class names, sorted.
        num_images: number of evaluated images.
        fiftyone_map: the mAP of the FiftyOne evaluation run stored with the report, in [0, 1];
            None when none was run. See ``refseg.evaluate`` for how it relates to pycocotools.
        fiftyone_iou_type: what that run matched: ``"segm"`` (masks) or ``"bbox"``; else None.
    """

    bbox: dict[str, float]
    segm: dict[str, float]
    per_class_ap: dict[str, dict[str, float]]
    classes: tuple[str, ...]
    num_images: int
    fiftyone_map: float | None = None
    fiftyone_iou_type: str | None = None

    def table(self) -> str:
        """Returns a printable text table: the 12 COCO lines (bbox | segm), then per-class AP %."""
        lines = [f"COCO evaluation of {self.num_images} images, {len(self.classes)} classes"]
        labels = [
            f" {kind} @[ IoU={iou:<9} | area={area:>6} | maxDets={dets:>3} ]"
            for kind, iou, area, dets in _STAT_LINES
        ]
        lines.append(f"{'':{len(labels[0])}}  {'bbox':>6} | {'segm':>6}")
        for name, label in zip(STAT_NAMES, labels):
            lines.append(f"{label}  {self.bbox[name]:6.3f} | {self.segm[name]:6.3f}")
        if self.fiftyone_map is not None:
            lines.append(
                f"FiftyOne {self.fiftyone_iou_type} mAP (IoU=0.50:0.95): {self.fiftyone_map:.3f}"
            )
        width = max([len("class"), *(len(c) for c in self.classes)])
        lines.append("\nPer-class AP (IoU=0.50:0.95), %")
        lines.append(f"{'class':<{width}}  {'bbox':>6}  {'segm':>6}")
        for name in self.classes:
            box, seg = (100 * self.per_class_ap[t][name] for t in IOU_TYPES)
            lines.append(f"{name:<{width}}  {box:6.1f}  {seg:6.1f}")
        return "\n".join(lines)


def to_coco(
    records: Sequence[ImageRecord], classes: Sequence[str] = (), *, legacy_coco_box: bool = False
) -> CocoInputs:
    """Converts per-image detections to COCO dicts; image ids are 1..N in record order.

    Boxes: relative box times the image size, not rounded (but snapped to whole pixels within
    1e-6, see the module docstring); with ``legacy_coco_box`` a result's bbox is the research
    code's box of its mask instead. Masks: the box-cropped mask is
    pasted into an all-false (H, W) image at the box's rounded pixel corners (resized with
    nearest neighbour first if its shape differs from the box's pixel size, clipped to the
    image) and stored as RLE. A detection without a mask falls back to its box: a filled
    rectangle RLE over the box's rounded pixel corners. Ground truth ``area`` is the mask area;
    ``iscrowd`` is the detection's ``iscrowd`` attribute (False when absent).

    Args:
        records: the images, each with ground truth and predictions.
        classes: extra category names to create even if no detection carries them.
        legacy_coco_box: give results the research code's one-pixel-short box (computed from
            the mask: ``[x1, y1, x2 - x1, y2 - y1]``, inclusive maxima; ``[0, 0, 0, 0]`` for an
            empty mask, as the research code's ``batched_mask_to_box``). Masks are unchanged.

    Raises:
        ValueError: a detection has no label, a prediction has no confidence, or an image
            size is not positive.
    """
    names = {d.label for r in records for d in (*r.ground_truth, *r.predictions)}
    if None in names:
        raise ValueError("every detection needs a label; found one with label None")
    category_ids = {name: i for i, name in enumerate(sorted(names | set(classes)), start=1)}
    images, annotations, results = [], [], []
    for image_id, record in enumerate(records, start=1):
        _check_size(record)
        size = {"width": record.width, "height": record.height}
        images.append({"id": image_id, **size, "file_name": record.name})
        for det in record.ground_truth:
            annotations.append(_gt_annotation(det, record, image_id, category_ids))
        for det in record.predictions:
            results.append(_result(det, record, image_id, category_ids, legacy_coco_box))
    for ann_id, ann in enumerate(annotations, start=1):
        ann["id"] = ann_id
    categories = [{"id": i, "name": name} for name, i in category_ids.items()]
    dataset = {"images": images, "annotations": annotations, "categories": categories}
    return CocoInputs(dataset=dataset, results=results)


def evaluate_records(
    records: Sequence[ImageRecord],
    *,
    classes: Sequence[str] | None = None,
    legacy_coco_box: bool = False,
) -> EvaluationReport:
    """Converts ``records`` with :func:`to_coco` and evaluates them with :func:`evaluate_coco`."""
    inputs = to_coco(records, classes or (), legacy_coco_box=legacy_coco_box)
    return evaluate_coco(inputs, classes=classes)


def evaluate_coco(inputs: CocoInputs, *, classes: Sequence[str] | None = None) -> EvaluationReport:
    """Runs pycocotools ``COCOeval`` (default parameters) for ``"bbox"`` and ``"segm"``, on
    results loaded once with ``COCO.loadRes`` (see the module docstring for their areas).

    Args:
        inputs: ground truth and results, e.g. from :func:`to_coco`.
        classes: evaluate only these category names (all categories when None). Names that
            no ground truth or prediction carries are logged and evaluate to NaN.

    Raises:
        ValueError: ``inputs`` has no image, ``classes`` is empty, or a name in ``classes``
            has no category.
    """
    if not inputs.dataset["images"]:
        raise ValueError("nothing to evaluate: no images; pass a non-empty view or records")
    if classes is not None and len(classes) == 0:
        raise ValueError("classes is empty; pass None to evaluate every class")
    name_of = {c["id"]: c["name"] for c in inputs.dataset["categories"]}
    cat_ids = _select_categories(name_of, inputs.dataset["annotations"], inputs.results, classes)
    ground_truth = _coco_index(inputs.dataset)
    detections = _load_results(ground_truth, inputs)
    stats, per_class = {}, {}
    for iou_type in IOU_TYPES:
        stats[iou_type], per_class[iou_type] = _run_cocoeval(
            ground_truth, detections, iou_type, cat_ids, name_of
        )
    return EvaluationReport(
        bbox=stats["bbox"],
        segm=stats["segm"],
        per_class_ap=per_class,
        classes=tuple(name_of[i] for i in cat_ids),
        num_images=len(inputs.dataset["images"]),
    )


MATCHED, UNMATCHED, IGNORED, UNEVALUATED = "tp", "fp", "ignored", "unevaluated"
"""What :func:`match_results` says of each result."""


@dataclass(frozen=True)
class ResultMatches:
    """COCO's matching of results to ground truth at one IoU threshold.

    Attributes:
        status: one entry per result of the inputs, in their order: ``"tp"`` (matched to
            ground truth of its class), ``"fp"`` (not matched), ``"ignored"`` (matched to a
            crowd region: COCO counts it neither way) or ``"unevaluated"`` (beyond the 100
            highest-scoring results of its image and class, or of a class not evaluated).
        num_ground_truth: non-crowd ground-truth instances per evaluated class name.
    """

    status: tuple[str, ...]
    num_ground_truth: dict[str, int]


def match_results(
    inputs: CocoInputs,
    *,
    iou: float,
    iou_type: str = "segm",
    classes: Sequence[str] | None = None,
) -> ResultMatches:
    """Which results ``COCOeval`` matches to ground truth at IoU ``iou``: its own greedy
    matching (results by descending score per image and class, each to the unmatched ground
    truth of highest IoU at or above ``iou``, non-crowd first; area "all", at most 100 results
    per image and class), the matching behind AP at that IoU.

    Args:
        inputs: ground truth and results, e.g. from :func:`to_coco`.
        iou: the IoU threshold, in (0, 1).
        iou_type: ``"segm"`` (mask IoU; a detection without a mask counts as its box) or
            ``"bbox"``.
        classes: match only these category names (all when None).

    Raises:
        ValueError: ``iou`` outside (0, 1), an unknown ``iou_type``, no image, or a name in
            ``classes`` without category.
    """
    if not 0.0 < iou < 1.0:
        raise ValueError(f"iou must be in (0, 1), got {iou!r}")
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if not inputs.dataset["images"]:
        raise ValueError("nothing to match: no images; pass a non-empty view or records")
    name_of = {c["id"]: c["name"] for c in inputs.dataset["categories"]}
    cat_ids = _select_categories(name_of, inputs.dataset["annotations"], inputs.results, classes)
    ground_truth = _coco_index(inputs.dataset)
    coco_eval = COCOeval(ground_truth, _load_results(ground_truth, inputs), iouType=iou_type)
    coco_eval.params.catIds = cat_ids
    coco_eval.params.iouThrs = np.array([iou])
    coco_eval.params.areaRng = [[0.0, 1e10]]
    coco_eval.params.areaRngLbl = ["all"]
    coco_eval.params.maxDets = [100]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
    status = [UNEVALUATED] * len(inputs.results)
    counts = {name_of[i]: 0 for i in cat_ids}
    for image in coco_eval.evalImgs:
        if image is None:
            continue
        counts[name_of[image["category_id"]]] += int(
            np.count_nonzero(np.asarray(image["gtIgnore"]) == 0)
        )
        for k, result_id in enumerate(image["dtIds"]):
            # loadRes numbers the results 1..N in the order given
            if image["dtIgnore"][0, k]:
                status[result_id - 1] = IGNORED
            else:
                status[result_id - 1] = MATCHED if image["dtMatches"][0, k] else UNMATCHED
    return ResultMatches(status=tuple(status), num_ground_truth=counts)


def _check_size(record: ImageRecord) -> None:
    if record.width <= 0 or record.height <= 0:
        raise ValueError(
            f"image {record.name!r} has size {record.width}x{record.height}; "
            "width and height must be positive (recompute the sample metadata)"
        )


def _gt_annotation(
    det: fo.Detection, record: ImageRecord, image_id: int, category_ids: dict[str, int]
) -> dict[str, Any]:
    rle = _rle(_full_image_mask(det, record))
    return {
        "image_id": image_id,
        "category_id": category_ids[det.label],
        "bbox": _absolute_box(det, record),
        "segmentation": rle,
        "area": _gt_area(det, rle),
        "iscrowd": int(bool(det.get_attribute_value("iscrowd", False))),
    }


def _gt_area(det: fo.Detection, rle: dict) -> float:
    """A ground-truth object's COCO ``area``: the label's ``area`` attribute where it has one
    (``refseg reproduce`` stores each annotation file's own value there, as the research code
    read it from the file), else its mask's pixel area."""
    stored = det.get_attribute_value("area", None)
    if isinstance(stored, (int, float)) and not isinstance(stored, bool) and stored >= 0:
        return float(stored)
    return float(mask_utils.area(rle))


def _result(
    det: fo.Detection,
    record: ImageRecord,
    image_id: int,
    category_ids: dict[str, int],
    legacy_coco_box: bool,
) -> dict[str, Any]:
    if det.confidence is None:
        raise ValueError(
            f"a {det.label!r} prediction in image {record.name!r} has no confidence; "
            "COCO AP ranks predictions by score, so set `confidence` on every prediction"
        )
    mask = _full_image_mask(det, record)
    return {
        "image_id": image_id,
        "category_id": category_ids[det.label],
        "score": float(det.confidence),
        "bbox": _legacy_box(mask) if legacy_coco_box else _absolute_box(det, record),
        "segmentation": _rle(mask),
    }


def _absolute_box(det: fo.Detection, record: ImageRecord) -> list[float]:
    """Relative [x, y, w, h] -> absolute [x, y, w, h] pixels, unrounded but for the snapping
    of float noise to whole pixels (x2 and y2 are snapped, then w and h taken from them)."""
    x, y, w, h = det.bounding_box
    x1, y1 = _snap(x * record.width), _snap(y * record.height)
    x2, y2 = _snap((x + w) * record.width), _snap((y + h) * record.height)
    return [x1, y1, x2 - x1, y2 - y1]


def _snap(value: float) -> float:
    """``value`` pixels, replaced by the nearest integer when within 1e-6 of it."""
    nearest = round(value)
    return float(nearest) if abs(value - nearest) <= PIXEL_SNAP else float(value)


def _legacy_box(mask: np.ndarray) -> list[float]:
    """The research code's COCO box of an (H, W) mask: ``[x1, y1, x2 - x1, y2 - y1]`` with
    inclusive maxima (one pixel short of the tight box); ``[0, 0, 0, 0]`` when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x1, y1, x2, y2 = cols[0], rows[0], cols[-1], rows[-1]
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def full_image_rle(det: fo.Detection, width: int, height: int) -> dict[str, Any]:
    """The detection's mask (its box where it has none) as a full-image COCO RLE, placed as
    :func:`to_coco` places it."""
    return _rle(_full_image_mask(det, ImageRecord(width=width, height=height)))


def _rle(mask: np.ndarray) -> dict[str, Any]:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _full_image_mask(det: fo.Detection, record: ImageRecord) -> np.ndarray:
    """The detection's mask (or its box) pasted into an all-false (H, W) bool image."""
    x, y, w, h = det.bounding_box
    x0, x1 = round(x * record.width), round((x + w) * record.width)
    y0, y1 = round(y * record.height), round((y + h) * record.height)
    shape = (max(y1 - y0, 0), max(x1 - x0, 0))
    mask = det.get_mask()
    crop = np.ones(shape, dtype=bool) if mask is None else _resize_nearest(mask, shape)
    full = np.zeros((record.height, record.width), dtype=bool)
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, record.width), min(y1, record.height)
    if cx1 > cx0 and cy1 > cy0:
        full[cy0:cy1, cx0:cx1] = crop[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return full


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) mask -> ``shape`` bool by nearest neighbour (pixel centres); no-op if equal."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == shape:
        return mask
    if mask.size == 0 or 0 in shape:
        return np.zeros(shape, dtype=bool)
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0], mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1], mask.shape[1] - 1)
    return mask[rows.astype(int)][:, cols.astype(int)]


def _select_categories(
    name_of: dict[int, str],
    annotations: list[dict[str, Any]],
    results: list[dict[str, Any]],
    classes: Sequence[str] | None,
) -> list[int]:
    """Category ids to evaluate, sorted; logs requested names that nothing carries."""
    if classes is None:
        return sorted(name_of)
    id_of = {name: i for i, name in name_of.items()}
    unknown = sorted(set(classes) - set(id_of))
    if unknown:
        raise ValueError(f"classes {unknown} have no category; add them to to_coco(classes=...)")
    used = {a["category_id"] for a in annotations} | {r["category_id"] for r in results}
    absent = sorted(name for name in set(classes) if id_of[name] not in used)
    if absent:
        logger.warning("no ground truth or prediction has the classes %s; their AP is NaN", absent)
    return sorted(id_of[name] for name in set(classes))


def _load_results(ground_truth: COCO, inputs: CocoInputs) -> COCO:
    """The results indexed by ``COCO.loadRes`` as the research code loads them (each result's
    ``area`` becomes its box area); an empty index when there is no result, which
    ``loadRes`` cannot load."""
    if not inputs.results:
        return _coco_index({**inputs.dataset, "annotations": []})
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes writes id, area and iscrowd into the dicts it is given: give it copies
        return ground_truth.loadRes([dict(result) for result in inputs.results])


def _coco_index(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _run_cocoeval(
    ground_truth: COCO, detections: COCO, iou_type: str, cat_ids: list[int], name_of: dict[int, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Returns the 12 named statistics and the per-class AP (detectron2's definition)."""
    coco_eval = COCOeval(ground_truth, detections, iouType=iou_type)
    coco_eval.params.catIds = cat_ids
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    stats = {name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats)}
    # precision: (iou thresholds, recall thresholds, categories, areas, maxDets)
    precision = coco_eval.eval["precision"]
    per_class = {}
    for k, cat_id in enumerate(cat_ids):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[name_of[cat_id]] = float(values.mean()) if values.size else math.nan
    return stats, per_class
