"""The target-image pipeline of method.md stage 3, batched over images."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from refseg.components import FeatureEncoder, MaskProposer
from refseg.config import PredictConfig
from refseg.matching import (
    class_scores,
    class_scores_with_negatives,
    features_on_mask_grid,
    mask_features,
)
from refseg.memory import MemoryBank
from refseg.postprocess import (
    apply_decay,
    full_resolution_masks,
    semantic_decay,
    semantic_decay_dense,
    suppress,
    top_k,
)
from refseg.precision import autocast_dtype
from refseg.predictions import Predictions
from refseg.proposals import Proposals, propose
from refseg.timing import NoTimer, StageTimer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidates:
    """Labelled proposals of one image, indexed together.

    Attributes:
        logits: (N, m, m) float32 low-resolution mask logits.
        iou: (N,) float32 predicted IoU (the NMS ranking).
        features: (N, D) float32 unit-length mask features.
        scores: (N,) float32 semantic scores in [0, 1].
        labels: (N,) int64 class indices.
    """

    logits: torch.Tensor
    iou: torch.Tensor
    features: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def select(self, index: torch.Tensor) -> "Candidates":
        return Candidates(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


class Segmenter:
    """Segments target images with a memory bank, a mask proposer and a feature encoder.

    Usage::

        segmenter = Segmenter(proposer, encoder, bank, PredictConfig())
        predictions = segmenter.segment_batch(images, sizes)

    Args:
        proposer: the mask proposer (SAM2 or a stand-in).
        encoder: the feature encoder; must be the one that built ``bank``.
        bank: the memory bank of reference prototypes.
        config: prediction settings.
        timer: receives the time of each stage (benchmarks); default measures nothing.

    Raises:
        ValueError: if the bank was built with another encoder, or its dimension differs, or
            it holds negative references only.
    """

    def __init__(
        self,
        proposer: MaskProposer,
        encoder: FeatureEncoder,
        bank: MemoryBank,
        config: PredictConfig = PredictConfig(),
        timer: StageTimer | NoTimer = NoTimer(),
    ) -> None:
        bank.check_encoder(encoder.identity, encoder.dim)
        self.proposer = proposer
        self.encoder = encoder
        self.config = config
        self.timer = timer
        self.class_names = bank.class_names
        self.class_prototypes = torch.from_numpy(bank.class_prototypes()).to(encoder.device)
        self.negatives = None
        if config.use_negatives and bank.has_negatives:
            prototypes, labels = bank.negative_prototypes()
            self.negatives = (
                torch.from_numpy(prototypes).to(encoder.device),
                torch.from_numpy(labels).to(encoder.device),
            )
        self.final_thresholds = _final_thresholds(bank, config)

    @torch.inference_mode()
    def segment_batch(
        self, images: torch.Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[Predictions]:
        """Segments a batch of target images.

        Args:
            images: (B, 3, S, S) float32 RGB in [0, 1], each original image resized
                (anisotropically) to the proposer's S x S frame.
            image_sizes: B original sizes (H, W) in pixels; outputs are in those frames.

        Returns:
            B :class:`Predictions`, empty where no candidate survives.
        """
        if images.shape[0] != len(image_sizes):
            raise ValueError(f"Got {images.shape[0]} images but {len(image_sizes)} image sizes")
        images = images.to(self.proposer.device)  # one host-to-device copy of the batch
        with self.timer("sam2_encoder"), self._autocast(self.proposer.device):
            embeddings = self.proposer.encode_images(images)
        with self.timer("dinov2_encoder"), self._autocast(self.encoder.device):
            grids = self.encoder.encode(self._encoder_input(images)).float()
        return [
            self._segment_image(self.proposer.select_image(embeddings, b), grids[b], size)
            for b, size in enumerate(image_sizes)
        ]

    def _autocast(self, device: torch.device):
        """Autocast for the configured precision on ``device`` (``refseg.precision``);
        nothing in fp32."""
        dtype = autocast_dtype(self.config.precision, device)
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=dtype)

    def _encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, I, I): the S x S images bicubic-resized to the encoder's input (no antialias)."""
        size = self.encoder.input_size
        images = images.to(self.encoder.device)  # a no-op when both models share a device
        return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)

    def _segment_image(
        self, embedding, grid: torch.Tensor, image_size: tuple[int, int]
    ) -> Predictions:
        with self.timer("prompt_decoding"), self._autocast(self.proposer.device):
            proposals = self._propose(embedding)
            proposals = proposals.select(proposals.logits.flatten(1).gt(0).any(dim=1))
        if len(proposals) == 0:
            return Predictions.empty(self.class_names, image_size)
        with self.timer("matching"):
            candidates = self._match(proposals, grid)
        with self.timer("nms"):
            candidates = self._suppress(candidates)
        if len(candidates.scores) == 0:
            return Predictions.empty(self.class_names, image_size)
        if self.config.merge_resolution == "low":
            return self._merge_low_resolution(candidates, image_size)
        return self._merge_full_resolution(candidates, image_size)

    def _propose(self, embedding) -> Proposals:
        """The proposer's own ``propose`` when it has one (an image-level proposal source),
        else the prompt grid decoded with its ``decode_points`` (SAM2's role)."""
        own = getattr(self.proposer, "propose", None)
        if own is not None:
            return own(embedding, self.config)
        return propose(self.proposer, embedding, self.config)

    def _match(self, proposals: Proposals, grid: torch.Tensor) -> Candidates:
        """Features, class and score of every proposal (all non-empty)."""
        features = features_on_mask_grid(grid, self.proposer.mask_size)
        logits = proposals.logits.to(features.device)
        object_features = mask_features(logits > 0, features)
        if self.negatives is None:
            scores, labels = class_scores(object_features, self.class_prototypes)
        else:
            scores, labels = class_scores_with_negatives(
                object_features, self.class_prototypes, *self.negatives, self.config.negative_sigma
            )
        return Candidates(
            logits, proposals.iou.to(features.device), object_features, scores, labels
        )

    def _suppress(self, candidates: Candidates) -> Candidates:
        """Class-aware NMS ranked by predicted IoU, the cap, then the candidate threshold."""
        keep = suppress(
            candidates.logits > 0,
            candidates.iou,
            candidates.labels,
            iou_threshold=self.config.nms_iou_thresh,
            max_kept=self.config.nms_keep_factor * self.config.max_detections,
        )
        candidates = candidates.select(keep)
        return candidates.select(candidates.scores > self.config.candidate_score_threshold)

    def _merge_full_resolution(
        self, candidates: Candidates, image_size: tuple[int, int]
    ) -> Predictions:
        """The paper: every candidate at full resolution, the soft merge there, then the final
        score threshold and top-k."""
        with self.timer("mask_upsampling"):
            crops, boxes = full_resolution_masks(candidates.logits, image_size)
        with self.timer("merge"):
            non_empty = np.array([crop.any() for crop in crops], dtype=bool)
            crops = [crop for crop, keep in zip(crops, non_empty) if keep]
            labels = candidates.labels.cpu().numpy()[non_empty]
            features = candidates.features.float().cpu().numpy()[non_empty]
            decay = semantic_decay(crops, boxes[non_empty], labels, features)
            scores = apply_decay(
                candidates.scores.float().cpu().numpy()[non_empty],
                decay,
                self.config.merge_exponent,
            )
            best = top_k(scores, self.config.max_detections, self._threshold_of(labels))
        return self._predictions(
            [crops[i] for i in best], boxes[non_empty][best], scores[best], labels[best], image_size
        )

    def _merge_low_resolution(
        self, candidates: Candidates, image_size: tuple[int, int]
    ) -> Predictions:
        """The fast path: the soft merge on the low-resolution masks, the final score threshold,
        then only the top-k detections are upsampled (a final mask empty at full resolution is
        dropped)."""
        with self.timer("merge"):
            decay = semantic_decay_dense(
                candidates.logits > 0, candidates.labels, candidates.features
            )
            scores = candidates.scores * (1.0 - decay).pow(self.config.merge_exponent)
            best = torch.argsort(scores, descending=True, stable=True)
            if self.final_thresholds is not None:
                limits = torch.from_numpy(self.final_thresholds).to(scores.device)
                best = best[scores[best] > limits[candidates.labels[best]].to(scores.dtype)]
            elif self.config.score_threshold is not None:
                best = best[scores[best] > self.config.score_threshold]
            best = best[: self.config.max_detections]
        with self.timer("mask_upsampling"):
            crops, boxes = full_resolution_masks(candidates.logits[best], image_size)
        non_empty = np.array([crop.any() for crop in crops], dtype=bool)
        return self._predictions(
            [crop for crop, keep in zip(crops, non_empty) if keep],
            boxes[non_empty],
            scores[best].float().cpu().numpy()[non_empty],
            candidates.labels[best].cpu().numpy()[non_empty],
            image_size,
        )

    def _threshold_of(self, labels: np.ndarray) -> float | np.ndarray | None:
        """The final threshold of each detection: per class when the bank's thresholds are in
        use ((N,) float32), else the one ``score_threshold`` (or None)."""
        if self.final_thresholds is None:
            return self.config.score_threshold
        return self.final_thresholds[labels]

    def _predictions(
        self,
        crops: list[np.ndarray],
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        image_size: tuple[int, int],
    ) -> Predictions:
        """Final detections in output form: each mask with its tight box."""
        return Predictions(
            boxes=boxes.astype(np.float32),
            masks=tuple(crops),
            scores=scores.astype(np.float32),
            labels=labels.astype(np.int64),
            class_names=self.class_names,
            image_size=image_size,
        )


def _final_thresholds(bank: MemoryBank, config: PredictConfig) -> np.ndarray | None:
    """(C,) float32 final score threshold of each class, the larger of ``score_threshold`` and
    the bank's threshold of the class (-inf where neither applies); None unless
    ``use_bank_thresholds`` and the bank has thresholds, so the usual path is unchanged."""
    if not config.use_bank_thresholds:
        return None
    if not bank.thresholds:
        logger.warning(
            "use_bank_thresholds=True but the memory bank has no thresholds: only "
            "score_threshold=%r applies (store some with refseg.suggest_thresholds and "
            "bank.with_thresholds)",
            config.score_threshold,
        )
        return None
    floor = -np.inf if config.score_threshold is None else config.score_threshold
    limits = np.full(len(bank.class_names), floor, dtype=np.float64)
    for i, name in enumerate(bank.class_names):
        if name in bank.thresholds:
            limits[i] = max(floor, bank.thresholds[name])
    return limits.astype(np.float32)
