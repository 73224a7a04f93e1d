"""Checks of what the public entry points are given: the wrong kind of value (a dataset's name
where a dataset is expected, None for a bank, a dict for settings) gets a ``ValueError`` that
names the argument, what was given and what to pass, before any work and before a less telling
error deep inside."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

Settings = TypeVar("Settings")


def sample_collection(value: Any, name: str) -> Any:
    """``value`` when it is a FiftyOne dataset or view.

    Raises:
        ValueError: anything else (a dataset's name is answered with how to load it).
    """
    from fiftyone.core.collections import SampleCollection

    if isinstance(value, SampleCollection):
        return value
    if isinstance(value, str):
        raise ValueError(
            f"{name} must be a FiftyOne dataset or view, got the string {value!r}; pass "
            f"fo.load_dataset({value!r}) or a view of it"
        )
    raise ValueError(
        f"{name} must be a FiftyOne dataset or view, got {_kind(value)}; pass e.g. "
        "fo.load_dataset(name) or a view of it"
    )


def memory_bank(value: Any, dataset: Any) -> Any:
    """The ``MemoryBank`` that ``value`` gives: a bank, or the name of one stored with
    ``dataset`` (``refseg.save_bank`` / ``build_memory_bank(..., name=)``).

    Raises:
        ValueError: no bank of that name, or a value of another kind.
    """
    from refseg.memory import MemoryBank

    if isinstance(value, MemoryBank):
        return value
    if isinstance(value, str):
        from refseg.fiftyone_io import load_bank

        return load_bank(dataset, value)
    raise ValueError(
        f"bank must be a refseg.MemoryBank (from refseg.build_memory_bank, "
        f"refseg.load_bank(dataset, name) or MemoryBank.load(path)) or the name of a bank stored "
        f"with the dataset, got {_kind(value)}"
    )


def settings(value: Any, kind: type[Settings], name: str = "config") -> Settings:
    """``value`` as the settings dataclass ``kind``: an instance as it is, a mapping of its
    fields through ``kind.from_dict`` (unknown keys are named).

    Raises:
        ValueError: unknown keys, invalid values, or a value of another kind.
    """
    if isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        return kind.from_dict(dict(value))
    raise ValueError(
        f"{name} must be a refseg.{kind.__name__} (or a dict of its fields), got {_kind(value)}"
    )


def _kind(value: Any) -> str:
    """``None``, or the value's type name with a short repr."""
    if value is None:
        return "None"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
