"""The method's settings as frozen dataclasses, with the ``paper`` presets.

Every number of ``../shared/design/method.md`` is a field here. ``PAPER_REFERENCE`` and
``PAPER_PREDICT`` reproduce the published pipeline exactly, and ``PAPER_EVALUATE`` measures it
as the research code did; the product defaults differ from them only by fixes that cannot change
results on ordinary inputs (see each field).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

MaskDownsample = Literal["area", "nearest"]
MergeResolution = Literal["full", "low"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class ReferenceConfig:
    """How reference instances become prototypes (method.md stages 1 and 2).

    Attributes:
        context_ratio: the square crop's side is ``(1 + context_ratio) * max(box w, box h)``.
        mask_downsample: how the soft 518 x 518 crop mask becomes the encoder's G x G patch
            weights. ``"area"`` averages each patch (the fix: thin objects keep a weight);
            ``"nearest"`` samples one pixel per patch as the paper did, and can leave a reference
            with no weight at all (then ``build_memory_bank`` raises, naming the label).
    """

    context_ratio: float = 0.2
    mask_downsample: MaskDownsample = "area"

    def __post_init__(self) -> None:
        if self.context_ratio < 0:
            raise ValueError(f"context_ratio must be >= 0, got {self.context_ratio}")
        if self.mask_downsample not in ("area", "nearest"):
            raise ValueError(
                f"mask_downsample must be 'area' or 'nearest', got {self.mask_downsample!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ReferenceConfig":
        return _from_dict(cls, values)


@dataclass(frozen=True)
class PredictConfig:
    """How a target image is segmented (method.md stage 3).

    Attributes:
        points_per_side: the prompt grid is ``points_per_side ** 2`` single positive points.
        points_batch_size: prompts decoded together against one image embedding; None (the
            default) chooses by device (``refseg.proposals.points_batch_size_for``): 64 on a
            CPU (larger batches only add memory traffic and peak memory there), 1024 on a GPU
            with at least 32 GiB, 256 on smaller GPUs.
        drop_incomplete_point_batch: the paper silently skipped the last prompts when the grid
            size was not a multiple of ``points_batch_size``. False (the fix) keeps them; with
            the paper's 32 x 32 grid and batches of 256 both give the same prompts.
        pred_iou_thresh: proposals with predicted IoU <= this are dropped.
        nms_iou_thresh: IoU threshold of the class-aware box NMS on low-resolution boxes.
        nms_keep_factor: at most ``nms_keep_factor * max_detections`` candidates survive NMS.
        merge_exponent: soft merge decay, ``score *= (1 - d) ** merge_exponent``.
        max_detections: the most detections returned per image.
        candidate_score_threshold: candidates whose semantic score (before the soft merge) is
            <= this are dropped right after NMS. This is the paper's own filter: its 0.0 drops
            only candidates with no positive similarity to any class.
        score_threshold: detections whose final score (after the soft merge, for either
            ``merge_resolution``) is <= this are dropped before the top ``max_detections`` are
            taken; None keeps every final score. ``PAPER_PREDICT`` has None because the paper
            filtered only before the merge and kept the detections the merge decays to 0 (they
            are ranked last but still count for COCO recall); the product's 0.0 drops those.
        merge_resolution: "full" (the paper) measures the soft merge's overlaps on the
            full-resolution masks of every candidate; "low" (the default) measures them on the
            proposer's low-resolution grid and upsamples only the final detections (much faster
            and lighter on large images; results within the tolerance stated in the README).
        precision: autocast of the two image encoders and the prompt decoder. "fp32" (the
            paper): none. "bf16": bf16 on CUDA and on CPUs. "fp16": fp16 on CUDA (float32
            elsewhere). "auto" (the default): bf16 where the device runs it natively (CUDA compute
            capability >= 8; CPUs with AVX512-BF16 or AMX), float32 elsewhere
            (``refseg.precision``).
        use_negatives: score with the bank's negative references, when it has some
            (``refseg.matching.class_scores_with_negatives``: the research code's rule). A bank
            without negatives predicts the same either way, bit for bit. ``PAPER_PREDICT`` has
            False: the published numbers used no negatives.
        negative_sigma: sigma of that rule, ``score = s_pos * exp(-max(s_neg - s_pos, 0) /
            sigma)``; 0.8 as in the research code's live path. Larger is milder.
        use_bank_thresholds: also drop final detections whose score is at or below the bank's
            threshold for their class (``MemoryBank.thresholds``, from
            ``refseg.suggest_thresholds``), before the top ``max_detections`` are taken;
            classes without a stored threshold keep only ``score_threshold``.
    """

    points_per_side: int = 32
    points_batch_size: int | None = None
    drop_incomplete_point_batch: bool = False
    pred_iou_thresh: float = 0.4
    nms_iou_thresh: float = 0.5
    nms_keep_factor: int = 8
    merge_exponent: float = 0.5
    max_detections: int = 100
    candidate_score_threshold: float = 0.0
    score_threshold: float | None = 0.0
    merge_resolution: MergeResolution = "low"
    precision: Precision = "auto"
    use_negatives: bool = True
    negative_sigma: float = 0.8
    use_bank_thresholds: bool = False

    def __post_init__(self) -> None:
        _require(self.points_per_side >= 1, "points_per_side must be >= 1", self.points_per_side)
        _require(
            self.points_batch_size is None or self.points_batch_size >= 1,
            "points_batch_size must be None (by device) or >= 1",
            self.points_batch_size,
        )
        _require(
            0.0 <= self.pred_iou_thresh < 1.0,
            "pred_iou_thresh must be in [0, 1)",
            self.pred_iou_thresh,
        )
        _require(
            0.0 < self.nms_iou_thresh <= 1.0,
            "nms_iou_thresh must be in (0, 1]",
            self.nms_iou_thresh,
        )
        _require(self.nms_keep_factor >= 1, "nms_keep_factor must be >= 1", self.nms_keep_factor)
        _require(self.merge_exponent >= 0, "merge_exponent must be >= 0", self.merge_exponent)
        _require(self.max_detections >= 1, "max_detections must be >= 1", self.max_detections)
        _require(
            _is_number(self.candidate_score_threshold),
            "candidate_score_threshold must be a number",
            self.candidate_score_threshold,
        )
        _require(
            self.score_threshold is None or _is_number(self.score_threshold),
            "score_threshold must be a number or None (no final filter)",
            self.score_threshold,
        )
        _require(
            self.merge_resolution in ("full", "low"),
            "merge_resolution must be 'full' or 'low'",
            self.merge_resolution,
        )
        _require(
            self.precision in ("auto", "fp32", "bf16", "fp16"),
            "precision must be 'auto', 'fp32', 'bf16' or 'fp16'",
            self.precision,
        )
        for name in ("use_negatives", "use_bank_thresholds"):
            _require(
                isinstance(getattr(self, name), bool), f"{name} must be a bool", getattr(self, name)
            )
        _require(
            _is_number(self.negative_sigma) and self.negative_sigma > 0,
            "negative_sigma must be a number > 0",
            self.negative_sigma,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PredictConfig":
        """Builds the settings from :meth:`to_dict`'s output, also from an older one.

        Dicts stored before ``legacy_coco_box`` moved to evaluation (bank runs, reproduction
        summaries) hold that key and no ``candidate_score_threshold``; their
        ``score_threshold`` was the filter before the merge. They load as what they ran:
        ``candidate_score_threshold`` = their ``score_threshold``, no final filter, and the
        box option dropped with a logged note (predictions always carry tight boxes now; the
        one-pixel-short COCO box is ``refseg.evaluate(..., legacy_coco_box=True)``).
        """
        values = dict(values)
        if "legacy_coco_box" in values and "candidate_score_threshold" not in values:
            values["candidate_score_threshold"] = values.pop("score_threshold", 0.0)
            values["score_threshold"] = None
            logger.info(
                "PredictConfig: stored settings of an older refseg: score_threshold=%r filtered "
                "before the merge, now candidate_score_threshold; legacy_coco_box=%r is ignored "
                "(predictions have tight boxes; pass legacy_coco_box to refseg.evaluate instead)",
                values["candidate_score_threshold"],
                values.pop("legacy_coco_box"),
            )
        return _from_dict(cls, values)


@dataclass(frozen=True)
class EvaluateConfig:
    """How predictions are turned into COCO results for evaluation.

    Attributes:
        legacy_coco_box: True gives each COCO bbox result the research code's box, one pixel
            short in width and height (``[x1, y1, x2 - x1, y2 - y1]`` with x2, y2 the last mask
            column and row), so its published bbox numbers are reproduced; the masks and the
            labels in FiftyOne are never changed. False uses the tight box.
    """

    legacy_coco_box: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EvaluateConfig":
        return _from_dict(cls, values)


def _require(condition: bool, message: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"{message}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Builds a settings dataclass, naming any unknown keys instead of ignoring them."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} settings {unknown}; known: {sorted(known)}")
    return cls(**values)


PAPER_REFERENCE = ReferenceConfig(context_ratio=0.2, mask_downsample="nearest")
"""Stage 1-2 settings of the published numbers."""

PAPER_PREDICT = PredictConfig(
    points_per_side=32,
    points_batch_size=256,
    drop_incomplete_point_batch=True,
    pred_iou_thresh=0.4,
    nms_iou_thresh=0.5,
    nms_keep_factor=8,
    merge_exponent=0.5,
    max_detections=100,
    candidate_score_threshold=0.0,
    score_threshold=None,
    merge_resolution="full",
    precision="fp32",
    use_negatives=False,
    use_bank_thresholds=False,
)
"""Stage 3 settings of the published numbers, every field spelled out so that no change of the
product defaults can move paper mode: float32, the soft merge on full-resolution masks, the
research code's dropped last prompt batch, no final score filter, no negative references and no
per-class thresholds, whatever the bank holds."""

PAPER_EVALUATE = EvaluateConfig(legacy_coco_box=True)
"""Evaluation as the research code did it: COCO bbox results one pixel short."""

FAST_PREDICT = PredictConfig()
"""The fast path by name: the product defaults (the soft merge on low-resolution masks, bf16 where
the device runs it natively, prompt batches sized for the device)."""
