"""Boxes to masks on many machines: one run queued as N shard operations (``refseg.runs``).

``refseg.fill_box_masks(view, gt_field, shards=N, delegate=True)`` (or the boxes-to-masks
operator with ``shards`` > 1) chooses the box-only labels now, splits their samples into N
disjoint shards (each shard keeps its label ids, so a worker fills exactly the labels chosen,
whatever the view was), creates ``output_field`` when one is asked for, and queues one
``run_shard`` operation per shard. A shard fills the masks of its labels that still have none,
writing every few images under the field's lock shared by the run's shards: running it again
fills only what is left, and never touches another shard's labels.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from refseg.fill_masks import FillMasksResult, box_only, fill_box_masks
from refseg.models import ModelCache, Models
from refseg.run_record import BOXES_TO_MASKS, RunStatus, ShardExecution
from refseg.sampling import ReferenceLabel
from refseg.sharding import split_labels


def queue_fill_box_masks(
    view: Any,
    gt_field: str,
    labels: list[ReferenceLabel],
    *,
    output_field: str | None,
    shards: int,
    models: Models,
    device: str | None = None,
    skip_failures: bool = True,
    write_every: int = 16,
    run_id: str | None = None,
    force: bool = False,
    delegation_target: str | None = None,
) -> RunStatus:
    """Queues boxes to masks as ``shards`` delegated operations; returns the run's status.

    Called by ``refseg.fill_box_masks(..., delegate=True)``, which has checked the field, the
    output field and the labels.

    Args:
        view: the samples whose labels to fill.
        gt_field: their Detections field.
        labels: the box-only labels to fill, checked (``refseg.references.check_references``).
        output_field: None fills ``gt_field``; a new field is created now as a copy of
            ``gt_field`` (label ids kept) and the shards fill it.
        shards: the number of shard operations (fewer when fewer samples have such labels).
        models: the proposer every worker builds (its encoder is not used).
        device: each worker's torch device; None: CUDA when the worker has one.
        skip_failures, write_every: as ``refseg.fill_box_masks``, for each shard.
        run_id, force: the run's id (default: a new one) and the field's lock.
        delegation_target: FiftyOne's delegation target of the operations.

    Raises:
        RunLockedError: another run is writing the field.
    """
    from refseg.runs import queue_run, reserving

    dataset = view._dataset
    run_id = run_id or uuid.uuid4().hex
    field = output_field or gt_field
    parts, label_ids = split_labels(labels, shards)
    what = f"refseg.fill_box_masks into field {field!r} ({shards} shards)"
    with reserving(dataset, f"field:{field}", run_id, what, force=force):
        if output_field is not None:
            dataset.clone_sample_field(gt_field, output_field)  # label ids are kept
        return queue_run(
            dataset, run_id, BOXES_TO_MASKS, f"field:{field}", parts, label_ids=label_ids,
            label_field=field, gt_field=gt_field, bank="", models=models.to_dict(),
            num_labels=len(labels),
            settings={"device": device, "skip_failures": skip_failures,
                      "write_every": write_every},
            delegation_target=delegation_target,
        )  # fmt: skip


def fill_shard(
    dataset: Any,
    run: dict,
    shard: dict,
    execution: ShardExecution,
    cache: ModelCache | None,
    progress: Callable[[int, int], None] | None,
) -> FillMasksResult:
    """Fills the masks of the shard's labels that have none (what ``refseg.runs.run_shard``
    does for a boxes-to-masks run)."""
    field, settings = run["label_field"], run["settings"]
    view = dataset.select(shard["sample_ids"]).select_labels(ids=shard["label_ids"], fields=field)
    total = len(shard["label_ids"])
    todo = set(view.filter_labels(field, box_only()).values("id"))  # samples not done yet

    def on_progress(made: int, left: int) -> None:
        execution.processed(made)
        if progress is not None:
            progress(total - left + made, total)

    result = fill_box_masks(
        view,
        field,
        models=Models.from_dict(run["models"]),
        device=settings["device"],
        cache=cache,
        skip_failures=settings["skip_failures"],
        write_every=settings["write_every"],
        run_id=run["_id"],
        progress=on_progress,
    )
    skipped = {failure.sample_id for failure in result.failures}
    execution.completed(
        len(todo - skipped),
        result.failures,
        num_masks=result.num_masks,
        num_labels=result.num_labels,
    )
    return result
