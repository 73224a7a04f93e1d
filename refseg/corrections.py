"""Corrections in one step: add labels to a bank as positive or negative references.

Each call encodes only the labels it adds, with the bank's own encoder and settings, and
returns a new bank (the old one is unchanged); remove references with
``bank.without_references(label_ids)``; store with ``refseg.save_bank(dataset, name, bank,
overwrite=True)``. What a curator does from the App:

- "find more like this": a prediction added as a positive of its class;
- "not this": a prediction (a false positive) or any label added as a negative of its class;
- a ground-truth or hand-drawn label added as a positive.

References taken from predictions (labels with a confidence) keep their provenance (field,
sample, label id, box, score) in the bank's records, and do not protect their field: predicting
into it again replaces those labels but not the bank's prototypes (``refseg.field_safety``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Callable

import torch
from bson import ObjectId
from fiftyone import ViewField as F
from fiftyone.core.collections import SampleCollection

from refseg.bank_builder import build_memory_bank
from refseg.components import FeatureEncoder, MaskProposer
from refseg.evaluation import check_detections_field
from refseg.failures import FailureReport
from refseg.memory import MemoryBank
from refseg.models import ModelCache, Models


def add_references(
    bank: MemoryBank,
    samples: SampleCollection,
    field: str,
    label_ids: Iterable[str] | None = None,
    *,
    negative: bool = False,
    tag: str | None = None,
    models: Models | None = None,
    device: str | torch.device | None = None,
    cache: ModelCache | None = None,
    skip_failures: bool = False,
    failures: FailureReport | None = None,
    progress: bool | Callable[[int, int], None] = False,
    encoder: FeatureEncoder | None = None,
    proposer: MaskProposer | None = None,
) -> MemoryBank:
    """The bank with labels of ``field`` added as references, encoding only those labels.

    Args:
        bank: the bank to add to.
        samples: a dataset or view holding the labels.
        field: their ``fo.Detections`` field (ground truth, hand-drawn, or predictions).
        label_ids: only these labels (e.g. the App's selected labels); None takes every label
            of ``field`` in ``samples`` (or those tagged ``tag``).
        negative: add them as negative references ("not <their class>"): each label's class
            must have positive references in the bank. False adds positives ("find more like
            this"); a new class may come in this way.
        tag: only labels carrying this label tag.
        models: the models to encode with; default the bank's (``Models.from_bank``): the
            encoder must be the bank's, the proposer makes the masks of box-only labels.
        device, cache, skip_failures, failures, progress: as in ``refseg.build_memory_bank``.
        encoder, proposer: ready components instead of building them (tests, custom models).

    Returns:
        A new bank; its thresholds are kept.

    Raises:
        ValueError: no such labels, label ids not in ``field`` of ``samples``, labels already
            references of the bank (remove them first with ``bank.without_references``), a
            negative of a class the bank has no positive of, or another encoder.
        InvalidReferenceError, SampleError: as ``refseg.build_memory_bank``.
    """
    check_detections_field(samples, field)
    view = samples
    if label_ids is not None:
        view = _only_labels(samples, field, list(label_ids))
    if tag is not None:
        view = view.filter_labels(field, F("tags").contains(tag))
    present = _labels_in_bank(bank, view, field)
    if present:
        raise ValueError(
            f"Labels already references of this bank: {present}; remove them first with "
            "bank.without_references([...]) (e.g. to change a reference's polarity)"
        )
    if models is None and (encoder is None or proposer is None):
        models = Models.from_bank(bank)
    added = build_memory_bank(
        view,
        field,
        models=models,
        config=bank.settings,
        tag=tag,
        negative=negative,
        device=device,
        cache=cache,
        progress=progress,
        skip_failures=skip_failures,
        failures=failures,
        encoder=encoder,
        proposer=proposer,
    )
    return bank.with_references(added)


def _only_labels(samples: SampleCollection, field: str, label_ids: list[str]):
    """The samples holding ``label_ids`` with only those labels in ``field``; refuses ids
    that are not labels of ``field`` there."""
    if not label_ids:
        raise ValueError("label_ids is empty: pass the ids of the labels to add, or None for all")
    invalid = [i for i in label_ids if not (isinstance(i, str) and ObjectId.is_valid(i))]
    if invalid:
        raise ValueError(f"Not label ids: {invalid}")
    view = samples.filter_labels(field, F("_id").is_in([ObjectId(i) for i in label_ids]))
    found = set(view.values(f"{field}.detections.id", unwind=True))
    missing = sorted(set(label_ids) - found)
    if missing:
        raise ValueError(
            f"Labels {missing} are not labels of field {field!r} in the samples given; pass "
            "the field that holds them (the App's selected labels name it)"
        )
    return view


def _labels_in_bank(bank: MemoryBank, view, field: str) -> list[str]:
    """ "<label id> (positive|negative)" for the view's labels of ``field`` already in the bank."""
    in_bank = {r.label_id: r.negative for r in bank.references}
    ids = view.values(f"{field}.detections.id", unwind=True)
    return [f"{i} ({'negative' if in_bank[i] else 'positive'})" for i in ids if i in in_bank]
