"""The registry of model builders: a name -> one builder function, pretrained files as data.

Two kinds of component are registered: ``"proposer"`` (class-agnostic masks, SAM2's role) and
``"encoder"`` (dense features, DINOv2's role). Each :class:`ModelEntry` says how to build one
name from a weights file (or with random weights) and which official file holds its weights, so
``refseg.Models`` can resolve, check and build any registered name the same way. SAM2 and
DINOv2 register their names when ``refseg.models`` is imported; another proposal source (another
segmenter, a detector's boxes) registers one entry with :func:`register_model` and is then usable
everywhere a name is taken, without touching the pipeline::

    from refseg.models import ModelEntry, register_model

    register_model(ModelEntry(kind="proposer", name="my_boxes", build=build_my_boxes))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

ComponentKind = Literal["proposer", "encoder"]
COMPONENT_KINDS: tuple[ComponentKind, ...] = ("proposer", "encoder")

Builder = Callable[..., Any]
"""``build(checkpoint, weights_label, device, **options) -> component``.

``checkpoint`` is the resolved weights file (a ``Path``) or None for seeded random weights;
``weights_label`` is what ``component.identity["weights"]`` must say; ``device`` a
``torch.device``. Options are builder-specific (e.g. SAM2's ``decoder``)."""


@dataclass(frozen=True)
class ModelEntry:
    """One buildable name.

    Attributes:
        kind: ``"proposer"`` or ``"encoder"``.
        name: the registry name, e.g. ``"sam2.1_hiera_large"``.
        build: the builder (see :data:`Builder`).
        filename: the official weights file name, or None when the model needs no file.
        url: where the official file is published (None: no download).
        size_bytes: the official file's size in bytes, when known (for messages).
        license: the license of the published weights.
    """

    kind: ComponentKind
    name: str
    build: Builder
    filename: str | None = None
    url: str | None = None
    size_bytes: int | None = None
    license: str = ""

    def __post_init__(self) -> None:
        if self.kind not in COMPONENT_KINDS:
            raise ValueError(f"kind must be one of {COMPONENT_KINDS}, got {self.kind!r}")
        if not self.name:
            raise ValueError("a model entry needs a name")


class ModelRegistry:
    """Model entries by kind and name. Register at import; lookups name the known entries."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], ModelEntry] = {}

    def register(self, entry: ModelEntry, *, overwrite: bool = False) -> ModelEntry:
        """Adds ``entry``; an existing name of the same kind is kept (with a warning) unless
        ``overwrite``."""
        key = (entry.kind, entry.name)
        if key in self._entries and not overwrite:
            warnings.warn(
                f"{entry.kind} {entry.name!r} is already registered; keeping the first entry "
                "(pass overwrite=True to replace it)",
                stacklevel=3,
            )
            return self._entries[key]
        self._entries[key] = entry
        return entry

    def get(self, kind: ComponentKind, name: str) -> ModelEntry:
        """The entry of ``name``; raises ValueError listing the known names of that kind."""
        entry = self._entries.get((kind, name))
        if entry is None:
            known = ", ".join(self.names(kind)) or "none"
            raise ValueError(f"Unknown {kind} {name!r}. Choose one of: {known}.")
        return entry

    def names(self, kind: ComponentKind) -> list[str]:
        """Registered names of one kind, in registration order."""
        return [name for (k, name) in self._entries if k == kind]


REGISTRY = ModelRegistry()
"""The process's registry; filled when ``refseg.models`` is imported."""


def register_model(entry: ModelEntry, *, overwrite: bool = False) -> ModelEntry:
    """Registers a buildable name in :data:`REGISTRY` (see the module docstring)."""
    return REGISTRY.register(entry, overwrite=overwrite)


def model_entry(kind: ComponentKind, name: str) -> ModelEntry:
    """The registered entry of ``name``; raises ValueError listing the known names."""
    return REGISTRY.get(kind, name)


def model_names(kind: ComponentKind) -> list[str]:
    """Every registered name of one kind."""
    return REGISTRY.names(kind)


def build_component(
    entry: ModelEntry,
    checkpoint: Path | None,
    weights_label: str,
    device: torch.device,
    **options: Any,
) -> Any:
    """Calls the entry's builder and checks the result names itself as the registry does."""
    component = entry.build(checkpoint, weights_label, device, **options)
    identity = getattr(component, "identity", None)
    if not isinstance(identity, dict) or identity.get("name") != entry.name:
        raise ValueError(
            f"the builder of {entry.kind} {entry.name!r} returned a component whose identity "
            f"is {identity!r}; it must be a dict with name={entry.name!r}"
        )
    return component
