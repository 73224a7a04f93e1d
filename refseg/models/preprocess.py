"""The input step both models share: check the frame, move to the device, normalise."""

from __future__ import annotations

import torch


def prepare_images(
    images: torch.Tensor,
    *,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
) -> torch.Tensor:
    """Normalises a batch of square RGB images for a model.

    Args:
        images: (B, 3, size, size) float RGB in [0, 1], any device.
        size: the model's square input side, pixels.
        mean, std: per-channel normalisation of the [0, 1] values.
        device: where the model runs.

    Returns:
        (B, 3, size, size) float32 ``(images - mean) / std`` on ``device``; ``images`` is not
        modified.

    Raises:
        ValueError: ``images`` is not a (B, 3, size, size) batch.
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
        raise ValueError(
            f"images must be (B, 3, {size}, {size}) RGB in [0, 1], got {tuple(images.shape)}; "
            f"resize them to {size} x {size} first"
        )
    pixels = images.to(device, torch.float32)
    mean_ = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_ = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (pixels - mean_) / std_
