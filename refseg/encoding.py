"""Stages 1 and 2 for one reference: context crop, patch weights, instance prototype."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refseg.components import FeatureEncoder
from refseg.config import ReferenceConfig
from refseg.geometry import context_crop


@dataclass(frozen=True)
class ReferenceCrop:
    """A reference instance ready for the encoder.

    Attributes:
        image: (3, I, I) float32 RGB in [0, 1], the context crop stretched to the encoder input.
        mask: (I, I) float32 soft mask in [0, 1] on the same crop.
    """

    image: torch.Tensor
    mask: torch.Tensor


def crop_reference(
    image: torch.Tensor,
    mask: torch.Tensor,
    box: tuple[float, float, float, float],
    input_size: int,
    config: ReferenceConfig,
) -> ReferenceCrop:
    """Cuts the square context crop around a reference and resizes it (method.md stage 1.1-2).

    Args:
        image: (3, H, W) float32 RGB in [0, 1], original size.
        mask: (H, W) bool or float instance mask, original size.
        box: (x, y, w, h) reference box in original-image pixels.
        input_size: I, the encoder's input side (518 for DINOv2).
        config: reference settings (context ratio).

    Returns:
        The crop, image resized bicubic and mask bilinear (no antialias), both I x I.
    """
    height, width = image.shape[-2:]
    x1, y1, x2, y2 = context_crop(box, width, height, config.context_ratio)
    size = (input_size, input_size)
    image_crop = F.interpolate(image[None, :, y1:y2, x1:x2], size=size, mode="bicubic")
    mask_crop = F.interpolate(mask[None, None, y1:y2, x1:x2].float(), size=size, mode="bilinear")
    return ReferenceCrop(image_crop[0], mask_crop[0, 0])


def patch_weights(mask: torch.Tensor, grid_size: int, mode: str) -> torch.Tensor:
    """The soft crop mask reduced to one weight per encoder patch (method.md stage 1.4).

    Args:
        mask: (B, I, I) float soft masks in [0, 1].
        grid_size: G, the encoder's patch grid side.
        mode: "area" averages the pixels of each patch (the fix); "nearest" samples one pixel
            per patch with torch's nearest rule, as the paper did.

    Returns:
        (B, G * G) float32 weights in [0, 1], row-major.
    """
    size = (grid_size, grid_size)
    if mode == "area":
        reduced = F.adaptive_avg_pool2d(mask[:, None].float(), size)
    elif mode == "nearest":
        reduced = F.interpolate(mask[:, None].float(), size=size, mode="nearest")
    else:
        raise ValueError(f"Unknown mask downsampling {mode!r}; use 'area' or 'nearest'")
    return reduced.flatten(1)


def instance_prototypes(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean patch feature of each reference (method.md stage 2), not normalised.

    Args:
        features: (B, G, G, D) float patch features.
        weights: (B, G * G) float patch weights; every row must have a positive sum.

    Returns:
        (B, D) float32.
    """
    flat = features.float().flatten(1, 2)
    weights = weights.float().to(flat.device)
    return (weights.unsqueeze(-1) * flat).sum(dim=1) / weights.sum(dim=1, keepdim=True)


@torch.inference_mode()
def encode_crops(
    encoder: FeatureEncoder, crops: list[ReferenceCrop], config: ReferenceConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encodes a batch of reference crops into instance prototypes.

    Returns:
        prototypes: (B, D) float32 on the CPU; weight_sums: (B,) float32, the total patch
        weight of each reference (0 means its mask vanished at the patch grid).
    """
    images = torch.stack([c.image for c in crops]).to(encoder.device)
    masks = torch.stack([c.mask for c in crops])
    weights = patch_weights(masks, encoder.grid_size, config.mask_downsample)
    sums = weights.sum(dim=1)
    safe = torch.where(sums[:, None] > 0, weights, torch.ones_like(weights))
    prototypes = instance_prototypes(encoder.encode(images), safe)
    return prototypes.cpu(), sums.cpu()
