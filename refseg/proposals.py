"""Stage 3.4: class-agnostic mask proposals from the prompt grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from refseg.components import ConfidentPointDecoder, MaskProposer
from refseg.config import PredictConfig
from refseg.geometry import point_grid


@dataclass(frozen=True)
class Proposals:
    """Masks proposed for one image, in prompt order.

    Attributes:
        logits: (N, m, m) float32 mask logits on the proposer's low-resolution grid.
        iou: (N,) float32 predicted IoU in [0, 1].
    """

    logits: torch.Tensor
    iou: torch.Tensor

    def __len__(self) -> int:
        return self.iou.shape[0]

    def select(self, index: torch.Tensor) -> "Proposals":
        """The proposals at ``index`` ((K,) int64 or (N,) bool), in that order."""
        return Proposals(self.logits[index], self.iou[index])


CPU_POINTS_BATCH = 64
"""Prompts a decoder batch on a CPU when ``points_batch_size`` is None."""
GPU_POINTS_BATCH = 1024
"""Prompts a decoder batch on a CUDA device with at least ``LARGE_GPU_BYTES`` of memory."""
SMALL_GPU_POINTS_BATCH = 256
"""Prompts a decoder batch on a smaller CUDA device."""
LARGE_GPU_BYTES = 32 * 2**30
"""Bytes of device memory from which a GPU takes ``GPU_POINTS_BATCH`` prompts a batch."""


def points_batch_size_for(config: PredictConfig, device: torch.device | str) -> int:
    """``config.points_batch_size``, or where it is None the batch for ``device``: 64 prompts on
    a CPU, 1024 on a CUDA device with at least 32 GiB, 256 on smaller ones."""
    if config.points_batch_size is not None:
        return config.points_batch_size
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_POINTS_BATCH
    memory = torch.cuda.get_device_properties(device).total_memory
    return GPU_POINTS_BATCH if memory >= LARGE_GPU_BYTES else SMALL_GPU_POINTS_BATCH


def prompt_batches(
    config: PredictConfig, image_size: int, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """The prompt grid cut into decoder batches of ``points_batch_size_for(config, device)``.

    Returns:
        A list of (b, 2) float32 XY point tensors in the S x S frame. The last batch is shorter
        when the grid is not a multiple of ``points_batch_size``; it is dropped only when
        ``drop_incomplete_point_batch`` asks for the research code's behaviour.
    """
    size = points_batch_size_for(config, device)
    points = point_grid(config.points_per_side, image_size)
    batches = list(torch.split(points, size))
    if config.drop_incomplete_point_batch and batches[-1].shape[0] < size:
        batches = batches[:-1]
    if not batches:
        raise ValueError(
            f"drop_incomplete_point_batch leaves no prompts: {points.shape[0]} points per image "
            f"is fewer than points_batch_size={size}"
        )
    return batches


def propose(proposer: MaskProposer, embedding: Any, config: PredictConfig) -> Proposals:
    """Decodes the prompt grid on one image and keeps the confident masks.

    For each prompt the decoder gives M candidate masks; the one with the highest predicted IoU
    is kept, with that IoU as its score. Masks with predicted IoU <= ``pred_iou_thresh`` are
    dropped. No stability filter, hole filling, crops or area filter (paper mode).

    A proposer that offers ``decode_confident_points`` (:class:`ConfidentPointDecoder`, e.g.
    SAM2 with its shared decoder) makes only the kept masks; any other is asked for every
    candidate with ``decode_points`` and filtered here. Both give the same proposals.

    Args:
        proposer: the mask proposer.
        embedding: one image's embedding from ``proposer.select_image``.
        config: prediction settings (grid, batch size, IoU threshold).

    Returns:
        The surviving proposals, in prompt order.
    """
    logits, ious = [], []
    for points in prompt_batches(config, proposer.image_size, proposer.device):
        points = points.to(proposer.device)
        if isinstance(proposer, ConfidentPointDecoder):
            kept_logits, kept_iou, _ = proposer.decode_confident_points(
                embedding, points, config.pred_iou_thresh
            )
        else:
            batch_logits, batch_iou = proposer.decode_points(embedding, points)
            prompts, outputs = confident_best(batch_iou, config.pred_iou_thresh)
            kept_logits, kept_iou = batch_logits[prompts, outputs], batch_iou[prompts, outputs]
        logits.append(kept_logits.float())
        ious.append(kept_iou.float())
    return Proposals(torch.cat(logits), torch.cat(ious))


def confident_best(iou: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts whose best candidate is confident, and that candidate.

    Args:
        iou: (N, M) predicted IoU of each prompt's M candidates.
        threshold: a prompt is kept when its highest predicted IoU is > this.

    Returns:
        prompts: (K,) int64 kept prompt indices, ascending; outputs: (K,) int64 the candidate
        with the highest predicted IoU of each (first index on ties).
    """
    best = iou.argmax(dim=1)
    prompts = torch.nonzero(iou.gather(1, best[:, None])[:, 0] > threshold)[:, 0]
    return prompts, best[prompts]
