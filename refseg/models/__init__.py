"""The real components and how they are chosen: SAM2 proposers and DINOv2 encoders.

Example::

    from refseg.models import ModelCache, Models

    cache = ModelCache()  # one per process that serves many requests
    models = Models(proposer="sam2_hiera_large", encoder="dinov2_vitl14")
    proposer, encoder = models.build(cache=cache)

Weights come from an explicit file when one is named, else from FiftyOne's model zoo directory,
else from a download into it; ``"random"`` weights build the same architecture with seeded random
weights, for tests only. Other proposal sources and encoders register a builder
(``register_model``) and are then chosen by name like the built-in ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refseg.models.builtin import register_builtin_models
from refseg.models.cache import ModelCache, ModelKey
from refseg.models.dinov2_encoder import Dinov2Encoder
from refseg.models.factory import (
    ModelEntry,
    ModelRegistry,
    model_entry,
    model_names,
    register_model,
)
from refseg.models.registry import (
    DINOV2_MODELS,
    SAM2_MODELS,
    Dinov2Spec,
    Sam2Spec,
    dinov2_spec,
    sam2_spec,
)
from refseg.models.sam2_proposer import (
    DECODER_KINDS,
    DecoderKind,
    Sam2Embedding,
    Sam2Proposer,
    sam2_checkpoint_adapter,
)
from refseg.models.selection import (
    OFFICIAL,
    RANDOM,
    BankModelsMismatchError,
    Components,
    Models,
)
from refseg.models.weights import (
    RANDOM_WEIGHTS,
    CheckpointError,
    CheckpointMismatchError,
    MissingWeights,
    RandomWeightsWarning,
    WeightsCorruptError,
    WeightsNotFoundError,
    file_digest,
    resolve_checkpoint,
)

register_builtin_models()

__all__ = [
    "DECODER_KINDS",
    "DINOV2_MODELS",
    "OFFICIAL",
    "RANDOM",
    "RANDOM_WEIGHTS",
    "SAM2_MODELS",
    "BankModelsMismatchError",
    "CheckpointError",
    "CheckpointMismatchError",
    "Components",
    "DecoderKind",
    "Dinov2Encoder",
    "Dinov2Spec",
    "MissingWeights",
    "ModelCache",
    "ModelEntry",
    "ModelKey",
    "ModelRegistry",
    "Models",
    "MissingWeights",
    "RandomWeightsWarning",
    "Sam2Embedding",
    "Sam2Proposer",
    "Sam2Spec",
    "WeightsCorruptError",
    "WeightsNotFoundError",
    "build_encoder",
    "build_proposer",
    "default_device",
    "dinov2_spec",
    "file_digest",
    "model_entry",
    "model_names",
    "register_model",
    "require_weights",
    "resolve_checkpoint",
    "sam2_checkpoint_adapter",
    "sam2_spec",
]


def require_weights(models: Models, *, hint: str = "") -> None:
    """Resolves every weights file of ``models`` up front (downloading where possible).

    Raises:
        WeightsNotFoundError: one message listing every missing file and where to put it,
            followed by ``hint``; its ``missing`` names each file with its model and size.
    """
    try:
        models.weight_files()
    except WeightsNotFoundError as error:
        message = f"{error}\n{hint}" if hint else str(error)
        raise WeightsNotFoundError(message, error.missing) from None


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_proposer(
    name: str = Models.proposer,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    add_no_mem_embed: bool = False,
    decoder: DecoderKind = "shared",
    cache: ModelCache | None = None,
):
    """Builds one registered proposer (a shortcut for ``Models(...).build_component``).

    Args:
        name: registry name (``model_names("proposer")``); the paper used
            ``"sam2_hiera_large"`` (SAM 2.0).
        checkpoint: path of the weights file; None looks for the official file in FiftyOne's
            model zoo directory, downloading it there if a network exists.
        pretrained: False builds random weights (seeded, so identical on every build) and
            warns; results are then meaningless. Cannot be combined with ``checkpoint``.
        device: where to run; default ``default_device()``.
        add_no_mem_embed: add SAM2's ``no_mem_embed`` to image embeddings as SAM2's image
            predictor does; False is the paper's behaviour.
        decoder: ``"shared"`` computes the mask decoder's prompt-independent work once per
            image (same outputs as the library's decoder, less work); ``"library"`` runs the
            ``sam2`` package's decoder on a copy of the image per prompt, as the research code.
        cache: returns the cached instance for the same arguments, building it once.

    Raises:
        ValueError: unknown name (the message lists the known ones), ``checkpoint`` with
            ``pretrained=False``, or an unknown ``decoder``.
        WeightsNotFoundError: no weights file; the message says where to put which file.
        CheckpointMismatchError: the file does not fit the architecture.
    """
    models = Models.of(sam2=name, pretrained=pretrained, sam2_checkpoint=checkpoint)
    options = {"decoder": decoder}
    if add_no_mem_embed:
        options["add_no_mem_embed"] = True
    return models.build_component("proposer", device=device, cache=cache, **options)


def build_encoder(
    name: str = Models.encoder,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    cache: ModelCache | None = None,
):
    """Builds one registered encoder (a shortcut for ``Models(...).build_component``).

    Args:
        name: registry name (``model_names("encoder")``); the paper used ``"dinov2_vitl14"``.
        checkpoint: path of the weights file in Meta's (or timm's) layout; None looks for
            Meta's file in FiftyOne's model zoo directory, downloading it there if possible.
        pretrained: False builds random weights (seeded) and warns; results are meaningless.
        device: where to run; default ``default_device()``.
        cache: returns the cached instance for the same arguments, building it once.

    Raises:
        ValueError: unknown name, or ``checkpoint`` with ``pretrained=False``.
        WeightsNotFoundError: no weights file; the message says where to put which file.
        CheckpointMismatchError: the file does not fit the architecture.
    """
    models = Models.of(dinov2=name, pretrained=pretrained, dinov2_checkpoint=checkpoint)
    return models.build_component("encoder", device=device, cache=cache)
