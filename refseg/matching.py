"""Stage 3.5: label each proposal by matching its mean feature against the class prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def features_on_mask_grid(grid_features: torch.Tensor, mask_size: int) -> torch.Tensor:
    """Upsamples the encoder's patch grid to the proposer's low-resolution mask grid.

    Args:
        grid_features: (G, G, D) float patch features of one image.
        mask_size: m, side of the mask grid (256 for SAM2).

    Returns:
        (m * m, D) float32 features, row-major over the m x m grid (bilinear,
        align_corners=False, antialias=True, as the paper).
    """
    grid = grid_features.float().permute(2, 0, 1).unsqueeze(0)
    upsampled = F.interpolate(
        grid, size=(mask_size, mask_size), mode="bilinear", align_corners=False, antialias=True
    )
    return upsampled.reshape(grid.shape[1], mask_size * mask_size).t()


def mask_features(masks: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Unit-length mean feature inside each mask.

    Args:
        masks: (N, m, m) bool, every mask non-empty.
        features: (m * m, D) float32 from :func:`features_on_mask_grid`.

    Returns:
        (N, D) float32, L2-normalised.
    """
    weights = masks.reshape(masks.shape[0], -1).to(features.dtype)
    means = (weights @ features) / weights.sum(dim=1, keepdim=True)
    return F.normalize(means, p=2, dim=-1)


def class_scores(
    object_features: torch.Tensor, class_prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity to each class, clamped at 0; the best class and its score.

    There is no background class and no threshold here.

    Args:
        object_features: (N, D) unit-length mask features.
        class_prototypes: (C, D) unit-length class prototypes.

    Returns:
        scores: (N,) float32 in [0, 1]; labels: (N,) int64 class indices (first on ties).
    """
    similarity = (object_features @ class_prototypes.t()).clamp(min=0.0)
    scores, labels = similarity.max(dim=1)
    return scores, labels


def class_scores_with_negatives(
    object_features: torch.Tensor,
    class_prototypes: torch.Tensor,
    negative_prototypes: torch.Tensor,
    negative_labels: torch.Tensor,
    sigma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores lowered for proposals that look more like a negative reference of the class
    than like the class; the best class and its score.

    The rule of the research code (``_compute_sim_global_avg_with_neg``, sigma 0.8 in its live
    path): for each proposal and class,
    ``score = s_pos * exp(-max(s_neg - s_pos, 0) / sigma)``, with ``s_pos`` the clamped cosine
    to the class prototype and ``s_neg`` the largest clamped cosine to that class's negative
    instance prototypes (each normalised on its own; 0 for a class without negatives, whose
    scores are then unchanged). As there, the label is the argmax over these adjusted scores,
    not over ``s_pos``: a proposal whose best class is decayed may go to another class.

    Args:
        object_features: (N, D) unit-length mask features.
        class_prototypes: (C, D) unit-length class prototypes.
        negative_prototypes: (M, D) unit-length negative instance prototypes.
        negative_labels: (M,) int64 class index each negative is "not".
        sigma: the decay's scale, > 0.

    Returns:
        scores: (N,) float32 in [0, 1]; labels: (N,) int64 class indices (first on ties).
    """
    positive = (object_features @ class_prototypes.t()).clamp(min=0.0)
    similarity = (object_features @ negative_prototypes.t()).clamp(min=0.0)
    index = negative_labels.to(similarity.device).expand(similarity.shape[0], -1)
    negative = torch.zeros_like(positive).scatter_reduce(
        1, index, similarity, reduce="amax", include_self=True
    )
    adjusted = positive * torch.exp(-(negative - positive).clamp(min=0.0) / sigma)
    scores, labels = adjusted.max(dim=1)
    return scores, labels
