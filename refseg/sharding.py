"""Splitting a run's samples into shards: disjoint, balanced by count, deterministic.

Both ways of scaling out use it: worker processes on the devices of one machine
(``refseg.parallel``) and delegated operations on many machines (``refseg.runs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def split_even(ids: Sequence[str], shards: int) -> list[list[str]]:
    """Splits sample ids into consecutive, disjoint parts whose sizes differ by at most one.

    The parts keep the order of ``ids`` (neighbouring samples stay together, which keeps each
    shard's database reads local) and are never empty: with fewer ids than ``shards`` there
    are ``len(ids)`` parts of one id.

    Args:
        ids: the samples of the run, each once.
        shards: how many parts are wanted (>= 1).

    Returns:
        ``min(shards, len(ids))`` lists of ids; their concatenation is ``list(ids)``.

    Raises:
        ValueError: ``shards`` < 1, or an id appears twice.
    """
    if shards < 1:
        raise ValueError(f"the number of shards must be >= 1, got {shards}")
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids must be unique to be split into shards")
    count = min(shards, len(ids))
    if count == 0:
        return []
    base, extra = divmod(len(ids), count)
    parts, start = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        parts.append(list(ids[start : start + size]))
        start += size
    return parts


def split_labels(labels: Iterable[Any], shards: int) -> tuple[list[list[str]], list[list[str]]]:
    """Splits labels into shards by their sample, as :func:`split_even` splits samples.

    Args:
        labels: objects with ``sample_id`` and ``detection.id`` (``refseg.ReferenceLabel``), in
            order; a sample's labels all go to one shard.
        shards: how many parts are wanted (>= 1).

    Returns:
        ``(sample ids of each part, label ids of each part)``, the labels in their given order.
    """
    by_sample: dict[str, list[str]] = {}
    for label in labels:
        by_sample.setdefault(label.sample_id, []).append(label.detection.id)
    parts = split_even(list(by_sample), shards)
    return parts, [[i for sample_id in part for i in by_sample[sample_id]] for part in parts]


def check_delegation(
    shards: Any, delegate: bool, objects: Sequence[Any] = (), what: str = "run"
) -> None:
    """Refuses delegation options that cannot work, before any work.

    Args:
        shards: the number of shard operations asked for.
        delegate: whether the work is queued for delegated workers.
        objects: the ready model objects given (they cannot cross to other processes).
        what: the work, for the messages ("run", "build").

    Raises:
        ValueError: ``shards`` is not an integer >= 1, ``shards`` > 1 without ``delegate``, or
            model objects with ``delegate``.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
    if shards != 1 and not delegate:
        raise ValueError(
            f"shards={shards} splits a delegated {what}: pass delegate=True as well (workers: "
            "`fiftyone delegated launch`)"
        )
    if delegate and any(o is not None for o in objects):
        raise ValueError(
            "Model objects of this process (proposer=, encoder=) cannot be sent to delegated "
            "workers: name the models instead, models=refseg.Models(...) (registered names and "
            "weights), which every worker builds for itself"
        )
