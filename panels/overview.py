"""What the refseg panel shows of one memory bank: per class, its reference counts, thumbnails,
threshold and last-evaluation AP. Computed when the panel loads or is refreshed, not on every
render."""

from __future__ import annotations

from dataclasses import dataclass

import fiftyone as fo

from .last_evaluation import LastEvaluation, last_evaluation
from .thumbnails import reference_strip


@dataclass(frozen=True)
class ClassRow:
    """One class of the bank.

    Attributes:
        name: the class.
        positive: its positive references.
        negative: its negative references.
        threshold: its score threshold stored with the bank, None when it has none.
        ap: its COCO AP in [0, 1] in the last evaluation, None when there is none.
        thumbnails: a PNG ``data:`` URI of its references' crops, None without references.
    """

    name: str
    positive: int
    negative: int
    threshold: float | None
    ap: float | None
    thumbnails: str | None


@dataclass(frozen=True)
class BankOverview:
    """A bank's classes, and the evaluation their AP comes from (None: never evaluated)."""

    key: str
    rows: tuple[ClassRow, ...]
    evaluation: LastEvaluation | None


def bank_overview(
    dataset: fo.Dataset, key: str, pred_field: str | None, gt_field: str | None
) -> BankOverview:
    """Loads the bank ``key`` and gathers what the panel shows of it; AP from the last
    evaluation of ``pred_field`` against ``gt_field`` (when both are given).

    Raises:
        ValueError: no bank ``key``; BankFileError: the bank is damaged.
    """
    import refseg

    bank = refseg.load_bank(dataset, key)
    evaluation = last_evaluation(dataset, pred_field, gt_field) if pred_field and gt_field else None
    ap = evaluation.ap if evaluation else {}
    rows = tuple(
        ClassRow(
            name=name,
            positive=counts["positive"],
            negative=counts["negative"],
            threshold=bank.thresholds.get(name),
            ap=ap.get(name),
            thumbnails=reference_strip([r for r in bank.references if r.label == name]),
        )
        for name, counts in bank.counts().items()
    )
    return BankOverview(key=key, rows=rows, evaluation=evaluation)
