"""Boxes to masks on a FiftyOne view: SAM2 fills in the masks of box-only labels, written back
in place or into a copy of the field (what the boxes-to-masks operator runs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from fiftyone import ViewField as F

from refseg import arguments
from refseg.box_masks import iter_box_masks
from refseg.components import MaskProposer
from refseg.database import database_errors
from refseg.evaluation import check_detections_field
from refseg.failures import FailureReport
from refseg.field_safety import check_new_field
from refseg.locks import RunLock
from refseg.models import ModelCache, Models
from refseg.references import check_references
from refseg.run_record import RunStatus, check_target_free
from refseg.sampling import reference_labels
from refseg.sharding import check_delegation


@dataclass(frozen=True)
class FillMasksResult:
    """What :func:`fill_box_masks` did.

    Attributes:
        field: the field written (the label field, or the new copy).
        num_masks: masks written.
        num_labels: box-only labels found.
        failures: samples skipped because their image could not be read.
    """

    field: str
    num_masks: int
    num_labels: int
    failures: FailureReport


def box_only(tag: str | None = None) -> Any:
    """FiftyOne label filter: detections with neither ``mask`` nor ``mask_path``, carrying
    ``tag`` when one is given."""
    boxes = (F("mask") == None) & (F("mask_path") == None)  # noqa: E711 (a query, not a test)
    return boxes if tag is None else boxes & F("tags").contains(tag)


def fill_box_masks(
    view: Any,
    gt_field: str,
    *,
    output_field: str | None = None,
    tag: str | None = None,
    models: Models | None = None,
    device: str | torch.device | None = None,
    cache: ModelCache | None = None,
    proposer: MaskProposer | None = None,
    skip_failures: bool = True,
    write_every: int = 16,
    run_id: str | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    shards: int = 1,
    delegate: bool = False,
    delegation_target: str | None = None,
) -> FillMasksResult | RunStatus:
    """Makes a mask for every box-only label of ``gt_field`` in ``view`` with SAM2 box prompts.

    Labels that already have a mask are left as they are. Each mask is SAM2's single-mask
    output for the label's box, cropped to the box as FiftyOne stores a detection's mask.
    Masks are written every ``write_every`` images, so an interrupted run keeps what it made
    and running it again fills only the labels still without a mask.

    Args:
        view: the samples whose labels to fill.
        gt_field: a ``fo.Detections`` field.
        output_field: None writes the masks into ``gt_field``; a new field name first copies
            ``gt_field`` there (label ids kept) and fills the copy, leaving ``gt_field`` as it is.
        tag: only labels carrying this label tag (e.g. ``refseg.DEFAULT_TAG``); None: all.
        models: the proposer to build (its encoder is not used); default ``refseg.Models()``.
        device, cache: where to build it, and a ModelCache to reuse it.
        proposer: a ready proposer instead of building one.
        skip_failures: True skips samples whose image cannot be read (reported in
            ``result.failures``); False raises ``SampleError`` at the first, after the masks
            already made are written.
        write_every: images whose masks are written together.
        run_id, force: the field's lock (``refseg.locks``), as ``refseg.predict``: processes
            with the same run id (shards of one run) share it; any other run is refused.
        progress: receives ``(masks made, box-only labels)``.
        shards, delegate, delegation_target: ``delegate=True`` queues the work as ``shards``
            delegated operations for ``fiftyone delegated launch`` workers on any number of
            machines (``output_field`` is created now, each shard fills the masks of its
            samples) and returns the run's :class:`refseg.run_record.RunStatus` at once.

    Raises:
        ValueError: ``gt_field`` is not a Detections field, or ``output_field`` exists or is
            reserved (checked before anything is written).
        InvalidReferenceError: a label's box is unusable; nothing is written.
        SampleError: with ``skip_failures=False``, an image cannot be read.
        RunLockedError: another run is writing the field.
    """
    view = arguments.sample_collection(view, "view")
    dataset = view._dataset
    check_detections_field(view, gt_field)
    if output_field is not None:
        check_new_field(dataset, output_field, what="output_field")
    check_delegation(shards, delegate, [proposer])
    labels = list(reference_labels(view.filter_labels(gt_field, box_only(tag)), gt_field))
    check_references(labels, need_class=False)  # before anything is written
    report = FailureReport("boxes_to_masks")
    field = output_field or gt_field
    if delegate:
        from refseg.sharded_fill import queue_fill_box_masks

        return queue_fill_box_masks(
            view, gt_field, labels, output_field=output_field, shards=shards,
            models=models or Models(), device=None if device is None else str(device),
            skip_failures=skip_failures, write_every=write_every, run_id=run_id, force=force,
            delegation_target=delegation_target,
        )  # fmt: skip
    if not labels:
        return FillMasksResult(field, 0, 0, report)
    lock = RunLock(
        dataset,
        f"field:{field}",
        run_id=run_id,
        description=f"refseg.fill_box_masks into field {field!r}",
        force=force,
    )
    with database_errors(f"filling the masks of field {field!r}"), lock:
        check_target_free(dataset, f"field:{field}", lock.run_id)
        if proposer is None:
            proposer = (models or Models()).build_component("proposer", device=device, cache=cache)
        if output_field is not None:
            dataset.clone_sample_field(gt_field, output_field)  # label ids are kept
        made = _fill(dataset, field, labels, proposer, skip_failures, report, write_every, progress)
    return FillMasksResult(field, made, len(labels), report)


def _fill(dataset, field, labels, proposer, skip_failures, report, write_every, progress) -> int:
    """Makes and writes the masks, ``write_every`` images at a time; returns how many."""
    pending: dict = {}
    made = images = 0
    try:
        for image_masks in iter_box_masks(
            labels, proposer, skip_failures=skip_failures, failures=report
        ):
            pending.update(image_masks)
            made += len(image_masks)
            images += 1
            if images % max(1, write_every) == 0:
                dataset.set_label_values(f"{field}.detections.mask", pending)
                pending = {}
            if progress is not None:
                progress(made, len(labels))
    finally:  # masks made before a failure are written before it propagates
        if pending:
            dataset.set_label_values(f"{field}.detections.mask", pending)
    return made
