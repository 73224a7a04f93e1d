"""The real components: SAM2 as the mask proposer, DINOv2 as the feature encoder.

Example::

    from refseg.models import ModelCache, build_encoder, build_proposer

    cache = ModelCache()  # one per process that serves many requests
    proposer = build_proposer("sam2_hiera_large", cache=cache)
    encoder = build_encoder("dinov2_vitl14", checkpoint="/models/dinov2_vitl14_pretrain.pth")

Weights come from ``checkpoint=`` when given, else from FiftyOne's model zoo directory, else
from a download into it; ``pretrained=False`` builds the same architecture with seeded random
weights, for tests only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from refseg.models.cache import ModelCache, ModelKey
from refseg.models.dinov2_encoder import Dinov2Encoder, build_dinov2_model
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
    build_sam2_model,
    load_sam2_checkpoint,
    sam2_checkpoint_adapter,
)
from refseg.models.weights import (
    RANDOM_WEIGHTS,
    CheckpointMismatchError,
    MissingWeights,
    RandomWeightsWarning,
    WeightsNotFoundError,
    file_digest,
    resolve_checkpoint,
    seeded_init,
    warn_random_weights,
    weights_label,
)

__all__ = [
    "DECODER_KINDS",
    "DINOV2_MODELS",
    "SAM2_MODELS",
    "CheckpointMismatchError",
    "DecoderKind",
    "Dinov2Encoder",
    "Dinov2Spec",
    "MissingWeights",
    "ModelCache",
    "ModelKey",
    "RANDOM_WEIGHTS",
    "RandomWeightsWarning",
    "Sam2Embedding",
    "Sam2Proposer",
    "Sam2Spec",
    "WeightsNotFoundError",
    "build_encoder",
    "build_proposer",
    "default_device",
    "dinov2_spec",
    "file_digest",
    "require_weights",
    "resolve_checkpoint",
    "sam2_checkpoint_adapter",
    "sam2_spec",
]


def require_weights(
    sam2: str,
    dinov2: str,
    *,
    sam2_checkpoint: str | Path | None = None,
    dinov2_checkpoint: str | Path | None = None,
    hint: str = "",
) -> None:
    """Resolves both models' weight files up front (downloading where possible).

    Raises:
        WeightsNotFoundError: one message listing every missing file and where to put it,
            followed by ``hint``; its ``missing`` names each file with its model and size.
    """
    problems, missing = [], []
    for spec, checkpoint in (
        (sam2_spec(sam2), sam2_checkpoint),
        (dinov2_spec(dinov2), dinov2_checkpoint),
    ):
        try:
            resolve_checkpoint(spec.filename, spec.url, checkpoint)
        except WeightsNotFoundError as error:
            problems.append(str(error))
            missing += [
                dataclasses.replace(item, model=spec.name, size_bytes=spec.size_bytes)
                for item in error.missing
            ]
    if problems:
        raise WeightsNotFoundError(
            "model weights are missing:\n- "
            + "\n- ".join(problems)
            + (f"\n{hint}" if hint else ""),
            missing,
        )


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_proposer(
    name: str = "sam2.1_hiera_large",
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    add_no_mem_embed: bool = False,
    decoder: DecoderKind = "shared",
    cache: ModelCache | None = None,
) -> Sam2Proposer:
    """Builds a SAM2 mask proposer (see ``SAM2_MODELS`` for the names).

    Args:
        name: registry name; the paper used ``"sam2_hiera_large"`` (SAM 2.0).
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
    spec = sam2_spec(name)
    if decoder not in DECODER_KINDS:
        raise ValueError(f"decoder must be one of {DECODER_KINDS}, got {decoder!r}")
    _check_weights_args(name, checkpoint, pretrained)
    target = _device(device)
    key = _key(
        "proposer",
        name,
        checkpoint,
        pretrained,
        target,
        add_no_mem_embed=add_no_mem_embed,
        decoder=decoder,
    )

    def build() -> Sam2Proposer:
        path, weights = _weights(spec, checkpoint, pretrained, cache)
        with seeded_init():
            model = build_sam2_model(spec)
        if path is not None:
            load_sam2_checkpoint(model, path)
        return Sam2Proposer(
            model=model.to(target),
            spec=spec,
            weights=weights,
            add_no_mem_embed=add_no_mem_embed,
            decoder=decoder,
        )

    return cache.get_or_build(key, build) if cache is not None else build()


def build_encoder(
    name: str = "dinov2_vitl14",
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    cache: ModelCache | None = None,
) -> Dinov2Encoder:
    """Builds a DINOv2 feature encoder (see ``DINOV2_MODELS`` for the names).

    Args:
        name: registry name; the paper used ``"dinov2_vitl14"``.
        checkpoint: path of the weights file in Meta's (or timm's) layout; None looks for
            Meta's file in FiftyOne's model zoo directory, downloading it there if possible.
        pretrained: False builds random weights (seeded, so identical on every build) and
            warns; results are then meaningless. Cannot be combined with ``checkpoint``.
        device: where to run; default ``default_device()``.
        cache: returns the cached instance for the same arguments, building it once.

    Raises:
        ValueError: unknown name (the message lists the known ones), or ``checkpoint`` with
            ``pretrained=False``.
        WeightsNotFoundError: no weights file; the message says where to put which file.
        CheckpointMismatchError: the file does not fit the architecture.
    """
    spec = dinov2_spec(name)
    _check_weights_args(name, checkpoint, pretrained)
    target = _device(device)
    key = _key("encoder", name, checkpoint, pretrained, target)

    def build() -> Dinov2Encoder:
        path, weights = _weights(spec, checkpoint, pretrained, cache)
        with seeded_init():
            model = build_dinov2_model(spec, path)
        return Dinov2Encoder(model=model.to(target), spec=spec, weights=weights)

    return cache.get_or_build(key, build) if cache is not None else build()


def _check_weights_args(name: str, checkpoint: str | Path | None, pretrained: bool) -> None:
    """Raises on contradictory arguments; warns when the weights will be random."""
    if checkpoint is not None and not pretrained:
        raise ValueError(
            f"checkpoint={str(checkpoint)!r} and pretrained=False contradict each other: drop "
            f"checkpoint for random weights, or drop pretrained=False to load the file"
        )
    if not pretrained:
        warn_random_weights(name)


def _device(device: str | torch.device | None) -> torch.device:
    """The device to build on, with a CUDA index always set ("cuda" and "cuda:0" are one)."""
    target = default_device() if device is None else torch.device(device)
    if target.type == "cuda" and target.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return target


def _key(
    kind: str,
    name: str,
    checkpoint: str | Path | None,
    pretrained: bool,
    device: torch.device,
    **options: bool | str,
) -> ModelKey:
    path = None if checkpoint is None else str(Path(checkpoint).expanduser().resolve())
    return ModelKey(kind, name, path, pretrained, str(device), tuple(sorted(options.items())))


def _weights(
    spec: Sam2Spec | Dinov2Spec,
    checkpoint: str | Path | None,
    pretrained: bool,
    cache: ModelCache | None,
) -> tuple[Path | None, str]:
    """The weights file to load (None for random weights) and its ``identity`` label."""
    if not pretrained:
        return None, RANDOM_WEIGHTS
    path = resolve_checkpoint(spec.filename, spec.url, checkpoint)
    digest = cache.checkpoint_digest(path) if cache is not None else file_digest(path)
    return path, weights_label(path, digest)
