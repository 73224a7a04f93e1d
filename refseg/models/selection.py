"""``Models``: one immutable value naming the proposer and the encoder with their weights.

Every entry point takes it (``build_memory_bank``, ``predict``, the CLI, the forms, the
reproduction runner), a memory bank records it, and ``predict`` compares the two before any
weights are loaded, so a bank and the models applied to it cannot silently disagree::

    models = refseg.Models(proposer="sam2_hiera_large", encoder="dinov2_vitl14")
    bank = refseg.build_memory_bank(refs, "ground_truth", models=models)
    refseg.predict(targets, bank, "refseg")          # models=None: the bank's own models

Weights are named, not loaded: ``"official"`` is Meta's published file (looked up in FiftyOne's
model zoo directory, downloaded where a network exists), ``"random"`` builds seeded random
weights (tests and smoke runs only: results are meaningless), and anything else is the path of a
weights file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from refseg.models.cache import ModelCache, ModelKey
from refseg.models.factory import ComponentKind, ModelEntry, build_component, model_entry
from refseg.models.weights import (
    RANDOM_WEIGHTS,
    WeightsNotFoundError,
    file_digest,
    resolve_checkpoint,
    same_weights,
    warn_random_weights,
    weights_label,
)

OFFICIAL = "official"
"""Weights choice: the model's published file (zoo directory, then download)."""

RANDOM = "random"
"""Weights choice: seeded random weights (tests only; results are meaningless)."""

DEFAULT_PROPOSER = "sam2.1_hiera_large"
DEFAULT_ENCODER = "dinov2_vitl14"


class BankModelsMismatchError(ValueError):
    """The models asked for are not the ones a memory bank was built with."""


class Components(NamedTuple):
    """Built models: the mask proposer and the feature encoder."""

    proposer: Any
    encoder: Any


@dataclass(frozen=True)
class Models:
    """The proposer and the encoder, by registry name, with their weights.

    Attributes:
        proposer: a registered proposer name (``refseg.models.model_names("proposer")``), e.g.
            ``"sam2.1_hiera_large"``; the paper used ``"sam2_hiera_large"`` (SAM 2.0).
        encoder: a registered encoder name, e.g. ``"dinov2_vitl14"`` (the paper's).
        proposer_weights, encoder_weights: ``"official"``, ``"random"`` or a file path.
    """

    proposer: str = DEFAULT_PROPOSER
    encoder: str = DEFAULT_ENCODER
    proposer_weights: str = OFFICIAL
    encoder_weights: str = OFFICIAL

    def __post_init__(self) -> None:
        model_entry("proposer", self.proposer)
        model_entry("encoder", self.encoder)
        for name in ("proposer_weights", "encoder_weights"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"{name} must be 'official', 'random' or a file path, got {value!r}"
                )

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def of(
        cls,
        *,
        sam2: str | None = None,
        dinov2: str | None = None,
        pretrained: bool | None = None,
        sam2_checkpoint: str | Path | None = None,
        dinov2_checkpoint: str | Path | None = None,
        base: "Models | None" = None,
    ) -> "Models":
        """The keyword shortcuts of the entry points, applied over ``base`` (default ``Models()``).

        ``pretrained=False`` makes both weights random, True makes them official unless a
        checkpoint is given, None keeps ``base``'s. A checkpoint with ``pretrained=False``
        contradicts itself and raises.
        """
        base = base or cls()
        for label, checkpoint in (("sam2", sam2_checkpoint), ("dinov2", dinov2_checkpoint)):
            if checkpoint is not None and pretrained is False:
                raise ValueError(
                    f"{label}_checkpoint={str(checkpoint)!r} and pretrained=False contradict each "
                    "other: drop the checkpoint for random weights, or drop pretrained=False"
                )
        return cls(
            proposer=sam2 or base.proposer,
            encoder=dinov2 or base.encoder,
            proposer_weights=_weights_choice(sam2_checkpoint, pretrained, base.proposer_weights),
            encoder_weights=_weights_choice(dinov2_checkpoint, pretrained, base.encoder_weights),
        )

    @classmethod
    def from_bank(cls, bank: Any) -> "Models":
        """The models a memory bank records: its proposer and encoder, random where its
        weights were random, else the official files (whose content ``check_bank`` verifies)."""
        return cls(
            proposer=bank.proposer["name"],
            encoder=bank.encoder["name"],
            proposer_weights=_choice_of_label(bank.proposer.get("weights")),
            encoder_weights=_choice_of_label(bank.encoder.get("weights")),
        )

    def replace(self, **changes: str) -> "Models":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Models":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown Models fields {unknown}; known: {sorted(known)}")
        return cls(**values)

    @property
    def random(self) -> bool:
        """Whether any of the two has random weights."""
        return RANDOM in (self.proposer_weights, self.encoder_weights)

    # -- checks -----------------------------------------------------------------------------

    def check_bank(self, bank: Any) -> None:
        """Raises :class:`BankModelsMismatchError` unless these models can predict with ``bank``.

        The encoder must be the bank's: the same name and the same kind of weights (random or a
        file). Nothing is loaded or hashed here; :meth:`build` then compares the weights file's
        content with the bank's before loading it. The proposer may differ from the bank's.
        """
        recorded = bank.encoder
        if self.encoder != recorded["name"]:
            raise BankModelsMismatchError(
                f"This memory bank was built with encoder {recorded['name']!r} but encoder "
                f"{self.encoder!r} was asked for. Predict with the bank's encoder (leave the "
                "models unset to use the bank's), or rebuild the bank with this encoder."
            )
        bank_random = recorded.get("weights") == RANDOM_WEIGHTS
        if bank_random != (self.encoder_weights == RANDOM):
            built = "random weights" if bank_random else f"weights {recorded.get('weights')}"
            asked = "random weights" if self.encoder_weights == RANDOM else "a weights file"
            raise BankModelsMismatchError(
                f"This memory bank was built with {self.encoder} {built}, but {asked} were "
                "asked for. Leave the weights unset to use the bank's, or rebuild the bank."
            )

    def weight_files(self) -> dict[str, Path]:
        """Resolves every file these models need, downloading where possible.

        Returns:
            ``{"proposer" | "encoder": path}`` for the file-backed ones.

        Raises:
            WeightsNotFoundError: one message listing every missing file and where to put it.
        """
        found, problems, missing = {}, [], []
        for kind in ("proposer", "encoder"):
            entry = model_entry(kind, self._name(kind))
            try:
                path = self._checkpoint(kind)
            except WeightsNotFoundError as error:
                problems.append(str(error))
                missing += [
                    dataclasses.replace(item, model=entry.name, size_bytes=entry.size_bytes)
                    for item in error.missing
                ]
                continue
            if path is not None:
                found[kind] = path
        if problems:
            raise WeightsNotFoundError(
                "model weights are missing:\n- " + "\n- ".join(problems), missing
            )
        return found

    # -- building ---------------------------------------------------------------------------

    def build(
        self,
        *,
        device: str | torch.device | None = None,
        cache: ModelCache | None = None,
        bank: Any = None,
        **proposer_options: Any,
    ) -> Components:
        """Builds both models (each once per ``cache``).

        Args:
            device: where to run; default CUDA when available.
            cache: returns the cached instances for the same models, building them once.
            bank: when given, the models are checked against it first (:meth:`check_bank`),
                and the encoder's weights file is compared with the bank's by content before
                it is loaded.
            proposer_options: builder options of the proposer (SAM2: ``decoder``,
                ``add_no_mem_embed``).
        """
        if bank is not None:
            self.check_bank(bank)
        encoder = self.build_component(
            "encoder", device=device, cache=cache, expect=bank.encoder if bank else None
        )
        proposer = self.build_component("proposer", device=device, cache=cache, **proposer_options)
        return Components(proposer=proposer, encoder=encoder)

    def build_component(
        self,
        kind: ComponentKind,
        *,
        device: str | torch.device | None = None,
        cache: ModelCache | None = None,
        expect: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Builds the proposer or the encoder.

        Args:
            kind: ``"proposer"`` or ``"encoder"``.
            device, cache: as in :meth:`build`.
            expect: an identity recorded in a bank; its weights must be these (compared by
                content hash before the file is loaded).
            options: builder options.
        """
        entry = model_entry(kind, self._name(kind))
        target = _device(device)
        checkpoint = self._checkpoint(kind)
        label = self._label(checkpoint, cache)
        if expect is not None:
            _check_label(entry, label, expect.get("weights"))
        if checkpoint is None:
            warn_random_weights(entry.name)
        key = ModelKey(
            kind,
            entry.name,
            None if checkpoint is None else str(checkpoint.resolve()),
            checkpoint is not None,
            str(target),
            tuple(sorted(options.items())),
        )

        def build() -> Any:
            return build_component(entry, checkpoint, label, target, **options)

        return cache.get_or_build(key, build) if cache is not None else build()

    def _name(self, kind: ComponentKind) -> str:
        return self.proposer if kind == "proposer" else self.encoder

    def _choice(self, kind: ComponentKind) -> str:
        return self.proposer_weights if kind == "proposer" else self.encoder_weights

    def _checkpoint(self, kind: ComponentKind) -> Path | None:
        """The weights file of ``kind`` (None: random, or a model without a file)."""
        entry = model_entry(kind, self._name(kind))
        choice = self._choice(kind)
        if choice == RANDOM:
            return None
        if choice == OFFICIAL:
            if entry.filename is None:
                return None
            return resolve_checkpoint(entry.filename, entry.url or "", None)
        return resolve_checkpoint(entry.filename or Path(choice).name, entry.url or "", choice)

    @staticmethod
    def _label(checkpoint: Path | None, cache: ModelCache | None) -> str:
        if checkpoint is None:
            return RANDOM_WEIGHTS
        digest = cache.checkpoint_digest(checkpoint) if cache else file_digest(checkpoint)
        return weights_label(checkpoint, digest)


def _weights_choice(checkpoint: str | Path | None, pretrained: bool | None, base: str) -> str:
    if checkpoint is not None:
        return str(checkpoint)
    if pretrained is None:
        return base
    if not pretrained:
        return RANDOM
    return OFFICIAL if base == RANDOM else base


def _choice_of_label(label: str | None) -> str:
    return RANDOM if label == RANDOM_WEIGHTS else OFFICIAL


def _check_label(entry: ModelEntry, label: str, expected: str | None) -> None:
    """Raises unless the weights about to be loaded are the ones a bank recorded."""
    if expected is None or same_weights(label, expected):
        return
    raise BankModelsMismatchError(
        f"This memory bank was built with {entry.name} weights {expected}, but the weights "
        f"found are {label}. Pass the file the bank was built with (its content hash must "
        "match), or rebuild the bank with these weights."
    )


def _device(device: str | torch.device | None) -> torch.device:
    """The device to build on, with a CUDA index always set ("cuda" and "cuda:0" are one)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return target
