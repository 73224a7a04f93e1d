"""DINOv2 (timm's ViTs) as refseg's :class:`~refseg.components.FeatureEncoder`.

timm builds the architecture; refseg reads Meta's official checkpoint files itself
(``torch.load(weights_only=True)``, zip CRCs checked) and converts them with timm's public ViT
checkpoint filter, which drops ``mask_token`` and renames the giant model's SwiGLU ``w12`` /
``w3`` to ``fc1`` / ``fc2`` (every other key of Meta's layout already matches timm's modules),
then loads them strictly: a missing, unexpected or misshapen key is an error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from refseg.models.preprocess import prepare_images
from refseg.models.registry import Dinov2Spec
from refseg.models.weights import (
    CheckpointMismatchError,
    load_checkpoint_file,
    load_state_dict_strictly,
)


def build_dinov2_model(spec: Dinov2Spec, checkpoint: Path | None) -> nn.Module:
    """timm's DINOv2 ViT for ``spec`` on the CPU in eval mode, at ``spec.input_size`` input.

    Args:
        spec: the registry record.
        checkpoint: a weights file in Meta's layout (or timm's); None keeps timm's random init.

    Raises:
        WeightsCorruptError: the file is truncated, damaged or not a weights file; the message
            names it and where to download it again.
        CheckpointMismatchError: the file's tensors do not fit the architecture; the message
            names the file and every missing, unexpected or misshapen key.
    """
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = timm.create_model(spec.timm_name, pretrained=False, img_size=spec.input_size)
    if checkpoint is not None:
        loaded = dict(load_checkpoint_file(checkpoint, spec.url))
        try:
            state_dict = checkpoint_filter_fn(loaded, model)
        except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as error:
            raise CheckpointMismatchError(
                f"{checkpoint} cannot be converted to {spec.name}'s layout "
                f"({type(error).__name__}: {error}); pass Meta's {spec.filename}"
            ) from error
        load_state_dict_strictly(
            model,
            state_dict,
            checkpoint,
            f"Pass the checkpoint file made for {spec.name} ({spec.timm_name}): Meta's "
            f"{spec.filename}.",
        )
    return model.eval()


class Dinov2Encoder:
    """Dense patch features with DINOv2 (a ``FeatureEncoder``).

    Attributes:
        identity: ``{"name": <registry name>, "weights": <file name and hash, or random>}``.
        input_size: 518, the square input side in pixels.
        grid_size: 37, the side of the patch grid (518 / 14).
        dim: feature dimension D (384 / 768 / 1024 / 1536 for S / B / L / G).
    """

    def __init__(self, *, model: nn.Module, spec: Dinov2Spec, weights: str) -> None:
        """Wraps a built timm DINOv2 model.

        Args:
            model: the timm ViT in eval mode, on the device it should run on, built for
                ``spec.input_size`` inputs.
            spec: the model's registry record (name, sizes, normalisation).
            weights: what its weights are, for ``identity`` (see ``weights.weights_label``).
        """
        self._model = model
        self._spec = spec
        self.identity: dict[str, Any] = {"name": spec.name, "weights": weights}
        self.input_size = spec.input_size
        self.grid_size = spec.grid_size
        self.dim = spec.dim

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on; inputs are moved there."""
        return next(self._model.parameters()).device

    @property
    def model(self) -> nn.Module:
        """The wrapped timm model (read it, do not modify it)."""
        return self._model

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Final-LayerNorm patch tokens of a batch, class token dropped.

        Args:
            images: (B, 3, 518, 518) float RGB in [0, 1], not normalised.

        Returns:
            (B, 37, 37, D) float32 patch features, row-major (y, x), on ``self.device``.
        """
        spec = self._spec
        pixels = prepare_images(
            images, size=spec.input_size, mean=spec.mean, std=spec.std, device=self.device
        )
        tokens = self._model.forward_features(pixels)
        patches = tokens[:, self._model.num_prefix_tokens :]
        return patches.reshape(len(images), self.grid_size, self.grid_size, self.dim).float()
