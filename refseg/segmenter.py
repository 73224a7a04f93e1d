"""The target-image pipeline of method.md stage 3, batched over images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from refseg.components import FeatureEncoder, MaskProposer
from refseg.config import PredictConfig
from refseg.matching import class_scores, features_on_mask_grid, mask_features
from refseg.memory import MemoryBank
from refseg.postprocess import (
    apply_decay,
    full_resolution_masks,
    semantic_decay,
    suppress,
    top_k,
)
from refseg.predictions import Predictions
from refseg.proposals import Proposals, propose


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

    Raises:
        ValueError: if the bank was built with another encoder, or its dimension differs.
    """

    def __init__(
        self,
        proposer: MaskProposer,
        encoder: FeatureEncoder,
        bank: MemoryBank,
        config: PredictConfig = PredictConfig(),
    ) -> None:
        bank.check_encoder(encoder.identity, encoder.dim)
        self.proposer = proposer
        self.encoder = encoder
        self.config = config
        self.class_names = bank.class_names
        self.class_prototypes = torch.from_numpy(bank.class_prototypes()).to(encoder.device)

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
            raise ValueError(
                f"Got {images.shape[0]} images but {len(image_sizes)} image sizes"
            )
        embeddings = self.proposer.encode_images(images.to(self.proposer.device))
        grids = self.encoder.encode(self._encoder_input(images))
        return [
            self._segment_image(self.proposer.select_image(embeddings, b), grids[b], size)
            for b, size in enumerate(image_sizes)
        ]

    def _encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, I, I): the S x S images bicubic-resized to the encoder's input (no antialias)."""
        size = self.encoder.input_size
        images = images.to(self.encoder.device)
        return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)

    def _segment_image(
        self, embedding, grid: torch.Tensor, image_size: tuple[int, int]
    ) -> Predictions:
        proposals = propose(self.proposer, embedding, self.config)
        proposals = proposals.select(proposals.logits.flatten(1).gt(0).any(dim=1))
        if len(proposals) == 0:
            return Predictions.empty(self.class_names, image_size)
        candidates = self._suppress(self._match(proposals, grid))
        if len(candidates.scores) == 0:
            return Predictions.empty(self.class_names, image_size)
        return self._merge(candidates, image_size)

    def _match(self, proposals: Proposals, grid: torch.Tensor) -> Candidates:
        """Features, class and score of every proposal (all non-empty)."""
        features = features_on_mask_grid(grid, self.proposer.mask_size)
        binary = (proposals.logits > 0).to(features.device)
        object_features = mask_features(binary, features)
        scores, labels = class_scores(object_features, self.class_prototypes)
        return Candidates(
            proposals.logits.to(features.device), proposals.iou.to(features.device),
            object_features, scores, labels,
        )

    def _suppress(self, candidates: Candidates) -> Candidates:
        """Class-aware NMS ranked by predicted IoU, the cap, then the score threshold."""
        keep = suppress(
            candidates.logits > 0,
            candidates.iou,
            candidates.labels,
            iou_threshold=self.config.nms_iou_thresh,
            max_kept=self.config.nms_keep_factor * self.config.max_detections,
        )
        candidates = candidates.select(keep)
        return candidates.select(candidates.scores > self.config.score_threshold)

    def _merge(self, candidates: Candidates, image_size: tuple[int, int]) -> Predictions:
        """Full-resolution masks, the semantic soft merge, then the top detections."""
        crops, boxes = full_resolution_masks(candidates.logits, image_size)
        non_empty = np.array([crop.size > 0 and crop.any() for crop in crops], dtype=bool)
        crops = [crop for crop, keep in zip(crops, non_empty) if keep]
        boxes = boxes[non_empty]
        labels = candidates.labels.cpu().numpy()[non_empty]
        features = candidates.features.float().cpu().numpy()[non_empty]
        scores = candidates.scores.float().cpu().numpy()[non_empty]
        decay = semantic_decay(crops, boxes, labels, features)
        scores = apply_decay(scores, decay, self.config.merge_exponent)
        best = top_k(scores, self.config.max_detections)
        out_boxes = boxes[best].astype(np.float32)
        if self.config.legacy_coco_box:
            out_boxes[:, 2:] -= 1
        return Predictions(
            boxes=out_boxes,
            masks=tuple(crops[i] for i in best),
            scores=scores[best],
            labels=labels[best].astype(np.int64),
            class_names=self.class_names,
            image_size=image_size,
        )
