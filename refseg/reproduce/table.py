"""The paper's numbers next to the obtained ones, as a printable text table."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from refseg.reproduce.protocols import Protocol, Published
from refseg.reproduce.runner import JobResult


def format_table(
    protocol: Protocol, results: Sequence[JobResult], *, dataset_name: str = ""
) -> str:
    """One row per job, then a mean row per shot count run with several seeds.

    Values are percent (the protocol's metric: AP or AP50); "paper" is the published number for
    that shot count (the seed's own when published, else the multi-seed mean, as noted) and
    "diff" is obtained minus paper. Random-weight runs are flagged: their numbers mean nothing.
    """
    kinds = protocol.iou_types
    header = ["shots", "seed", "images"]
    for kind in kinds:
        header += [f"{kind} {protocol.metric}", "paper", "diff"]
    header.append("paper setting")
    rows = [
        _row(
            protocol,
            r.shots,
            str(r.seed if r.seed is not None else "-"),
            r.num_targets,
            {k: _value(r, protocol.metric, k) for k in kinds},
            kinds,
        )
        for r in results
    ]
    rows += _mean_rows(protocol, results, kinds)
    lines = [protocol.title + (f" - dataset {dataset_name!r}" if dataset_name else "")]
    lines += _align([header, *rows])
    lines += _footnotes(protocol, results)
    return "\n".join(lines)


def _value(result: JobResult, metric: str, kind: str) -> float | None:
    """The obtained statistic in percent; None when COCOeval had nothing to average."""
    value = result.metrics.get(kind, {}).get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0:
        return None
    return 100.0 * value


def _row(protocol, shots, seed, images, values, kinds) -> list[str]:
    published = protocol.published_for(shots, None if seed in ("-", "mean") else int(seed))
    cells = ["all" if shots is None else str(shots), seed, str(images)]
    for kind in kinds:
        paper = _paper(published, kind)
        diff = None if values[kind] is None or paper is None else values[kind] - paper
        cells += [_fmt(values[kind]), _fmt(paper), _fmt(diff, signed=True)]
    cells.append(published.note if published else "-")
    return cells


def _mean_rows(protocol: Protocol, results: Sequence[JobResult], kinds) -> list[list[str]]:
    """A mean over seeds for each shot count run with more than one seed."""
    by_shots: dict[int | None, list[JobResult]] = defaultdict(list)
    for result in results:
        by_shots[result.shots].append(result)
    rows = []
    for shots, group in by_shots.items():
        if len(group) < 2:
            continue
        means = {}
        for kind in kinds:
            values = [_value(r, protocol.metric, kind) for r in group]
            means[kind] = None if None in values else sum(values) / len(values)
        images = group[0].num_targets
        rows.append(_row(protocol, shots, "mean", images, means, kinds))
        rows[-1][1] = f"mean of {len(group)}"
    return rows


def _paper(published: Published | None, kind: str) -> float | None:
    return None if published is None else getattr(published, kind)


def _fmt(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) for cell, width in zip(row[:-1], widths)]
        lines.append("  ".join([*cells, row[-1]]))
    return lines


def _footnotes(protocol: Protocol, results: Sequence[JobResult]) -> list[str]:
    notes = []
    if protocol.headline:
        notes.append(protocol.headline)
    if any(r.limit is not None for r in results):
        notes.append(
            "LIMITED: only the first --limit targets were evaluated; not comparable with the paper"
        )
    if any(r.random_weights for r in results):
        notes.append("RANDOM WEIGHTS: these numbers check the installation, not the method")
    return notes
