"""Registers the built-in models: every SAM2 proposer and every DINOv2 encoder of the specs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from refseg.models.dinov2_encoder import Dinov2Encoder, build_dinov2_model
from refseg.models.factory import ModelEntry, register_model
from refseg.models.registry import DINOV2_MODELS, SAM2_MODELS, Dinov2Spec, Sam2Spec
from refseg.models.sam2_proposer import (
    DECODER_KINDS,
    DecoderKind,
    Sam2Proposer,
    build_sam2_model,
    load_sam2_checkpoint,
)
from refseg.models.weights import seeded_init


def build_sam2_proposer(
    spec: Sam2Spec,
    checkpoint: Path | None,
    weights_label: str,
    device: torch.device,
    *,
    add_no_mem_embed: bool = False,
    decoder: DecoderKind = "shared",
) -> Sam2Proposer:
    """The builder of every SAM2 name (see ``refseg.models.factory.Builder``).

    Options:
        add_no_mem_embed: add SAM2's ``no_mem_embed`` to image embeddings as SAM2's image
            predictor does; False is the paper's behaviour.
        decoder: ``"shared"`` (the decoder's prompt-independent work once per image) or
            ``"library"`` (the ``sam2`` package's decoder unchanged); same outputs.
    """
    if decoder not in DECODER_KINDS:
        raise ValueError(f"decoder must be one of {DECODER_KINDS}, got {decoder!r}")
    with seeded_init():
        model = build_sam2_model(spec)
    if checkpoint is not None:
        load_sam2_checkpoint(model, checkpoint)
    return Sam2Proposer(
        model=model.to(device),
        spec=spec,
        weights=weights_label,
        add_no_mem_embed=add_no_mem_embed,
        decoder=decoder,
    )


def build_dinov2_encoder(
    spec: Dinov2Spec, checkpoint: Path | None, weights_label: str, device: torch.device
) -> Dinov2Encoder:
    """The builder of every DINOv2 name (see ``refseg.models.factory.Builder``)."""
    with seeded_init():
        model = build_dinov2_model(spec, checkpoint)
    return Dinov2Encoder(model=model.to(device), spec=spec, weights=weights_label)


def _entry(kind, spec, builder) -> ModelEntry:
    return ModelEntry(
        kind=kind,
        name=spec.name,
        build=partial(builder, spec),
        filename=spec.filename,
        url=spec.url,
        size_bytes=getattr(spec, "size_bytes", None),
        license=spec.license,
    )


def register_builtin_models() -> None:
    """Registers SAM 2.0 / 2.1 (four sizes) and DINOv2 S/B/L/G under their spec names."""
    for spec in SAM2_MODELS.values():
        register_model(_entry("proposer", spec, build_sam2_proposer))
    for spec in DINOV2_MODELS.values():
        register_model(_entry("encoder", spec, build_dinov2_encoder))
