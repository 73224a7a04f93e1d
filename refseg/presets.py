"""Presets: the models and every setting of a mode, as one value.

``PAPER`` is the published pipeline exactly (SAM 2.0 Hiera-L + DINOv2 ViT-L/14, the paper's
reference and prediction settings, the research code's COCO boxes in evaluation); every entry
point that offers paper mode (``--paper``, ``refseg reproduce``, the ``PAPER_*`` names) reads it
from here, so they cannot disagree. ``DEFAULT`` is the product: the fixes and the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refseg.config import (
    PAPER_EVALUATE,
    PAPER_PREDICT,
    PAPER_REFERENCE,
    EvaluateConfig,
    PredictConfig,
    ReferenceConfig,
)
from refseg.models.selection import Models


@dataclass(frozen=True)
class Preset:
    """Everything that decides results, besides the data.

    Attributes:
        models: the proposer and the encoder with their weights.
        reference: stage 1-2 settings (``build_memory_bank``).
        predict: stage 3 settings (``predict``).
        evaluate: evaluation settings (``refseg.evaluate``): the paper's COCO boxes are one
            pixel short; masks are never changed.
    """

    models: Models = field(default_factory=Models)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def with_weights(self, *, pretrained: bool | None = None, **checkpoints) -> "Preset":
        """The same preset with other weights (``Models.of`` keyword shortcuts)."""
        models = Models.of(pretrained=pretrained, base=self.models, **checkpoints)
        return Preset(models, self.reference, self.predict, self.evaluate)


PAPER_MODELS = Models(proposer="sam2_hiera_large", encoder="dinov2_vitl14")
"""The models of the published numbers: SAM 2.0 Hiera-L and DINOv2 ViT-L/14."""

PAPER = Preset(
    models=PAPER_MODELS,
    reference=PAPER_REFERENCE,
    predict=PAPER_PREDICT,
    evaluate=PAPER_EVALUATE,
)
"""The published pipeline exactly."""

DEFAULT = Preset()
"""The product defaults."""
