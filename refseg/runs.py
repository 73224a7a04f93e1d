"""Many machines: one run queued as N shard operations of FiftyOne's delegated engine.

``refseg.predict(view, bank, field, shards=N, delegate=True)`` (or the predict operator with
``shards`` > 1) splits the samples to predict into N disjoint shards, writes the run's record
(``refseg.run_record``) and queues one delegated operation per shard, of the plugin operator
``run_shard``. Any number of ``fiftyone delegated launch`` workers sharing the database
execute them: a worker claims a queued operation atomically (FiftyOne 1.22's
``set_running(required_state=QUEUED)``, a single ``find_one_and_update``), so each shard runs
once. A shard is ``refseg.predict`` on its samples with ``resume=True`` under the run's id: it
skips the samples already written and joins the field's lock with its sibling shards, so
running it again (after a failure, or twice) never duplicates nor changes another shard's labels.
Boxes to masks (``refseg.sharded_fill``) and building a bank (``refseg.sharded_bank``) are
sharded the same way, with the same record, operator, re-queueing and cancelling.

There is no scheduler here: FiftyOne queues, claims and runs the operations. A worker killed
mid-shard leaves its operation RUNNING in FiftyOne 1.22 (nothing there notices a dead worker);
:func:`refseg.run_record.run_status` sees the shard's heartbeat stop and reports it ``lost``,
and :func:`rerun_shards` marks that operation failed (``set_failed(required_state=RUNNING)``)
and queues the shard again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bson import ObjectId

from refseg.config import PredictConfig
from refseg.database import database_errors
from refseg.field_safety import check_output_field
from refseg.fiftyone_io import (
    ensure_detections_field,
    list_banks,
    load_bank,
    save_bank,
)
from refseg.inference import PredictResult, _samples_to_predict, predict
from refseg.locks import RunLock
from refseg.memory import MemoryBank
from refseg.models import ModelCache, Models
from refseg.run_record import (
    ACTIVE,
    BOXES_TO_MASKS,
    CANCELLED,
    COMPLETED,
    MEMORY_BANK,
    NEEDS_RERUN,
    PREDICT,
    SHARD_OPERATOR,
    RunStatus,
    ShardExecution,
    all_shards_completed,
    bank_digest,
    check_target_free,
    collection,
    load_run,
    mark_completed,
    run_status,
    shard_key,
)
from refseg.sharding import split_even

logger = logging.getLogger(__name__)


def queue_predict(
    view: Any,
    bank: MemoryBank | str,
    label_field: str,
    *,
    shards: int,
    models: Models | None = None,
    config: PredictConfig = PredictConfig(),  # noqa: B008 - frozen, as in refseg.predict
    batch_size: int = 1,
    device: str | None = None,
    num_workers: int | None = None,
    write_every: int = 64,
    overwrite: bool = False,
    resume: bool = False,
    skip_failures: bool = True,
    run_id: str | None = None,
    force: bool = False,
    delegation_target: str | None = None,
) -> RunStatus:
    """Queues a sharded predict run; returns its status (every shard queued).

    Args:
        view: the samples to predict.
        bank: the name of a memory bank stored with the view's dataset, or a bank (found among
            the dataset's banks by content; one stored nowhere is stored now, as
            ``refseg_bank_<run id>``): every worker loads it from the database.
        shards: the number of shard operations (fewer when the view has fewer samples).
        models: None: the bank's models. Checked against the bank now; every worker builds them.
        device: each worker's torch device; None: CUDA when the worker has one, else CPU (give
            each worker its GPU with ``CUDA_VISIBLE_DEVICES``).
        delegation_target: FiftyOne's delegation target of the operations.
        Other arguments: as ``refseg.predict``; ``overwrite`` clears the view's values now,
            once, and ``resume`` leaves out the samples that already have one.

    Raises:
        ValueError: no stored bank of that name, models that do not fit the bank, or a field
            that cannot be written (as ``refseg.predict``).
        RunLockedError: another run is writing the field, or holds it unfinished.
    """
    dataset = view._dataset
    run_id = run_id or uuid.uuid4().hex
    bank_name = stored_bank_name(dataset, bank, run_id)
    stored = load_bank(dataset, bank_name)
    models = models or Models.from_bank(stored)
    models.check_bank(stored)
    what = f"refseg.predict into field {label_field!r} ({shards} shards)"
    with reserving(dataset, f"field:{label_field}", run_id, what, force=force):
        check_output_field(view, label_field, overwrite=overwrite or resume, bank=stored)
        todo = _samples_to_predict(view, label_field, overwrite=overwrite, resume=resume)
        ids = list(todo.values("id"))
        ensure_detections_field(dataset, label_field)
        status = queue_run(
            dataset, run_id, PREDICT, f"field:{label_field}", split_even(ids, shards),
            label_field=label_field, bank=bank_name, bank_digest=bank_digest(stored),
            models=models.to_dict(), config=config.to_dict(),
            settings={
                "batch_size": batch_size, "device": device, "num_workers": num_workers,
                "write_every": write_every, "skip_failures": skip_failures,
            },
            delegation_target=delegation_target,
        )  # fmt: skip
    logger.info("%s", status.summary())
    return status


def run_shard(
    dataset: Any,
    run_id: str,
    index: int,
    *,
    operation_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache: ModelCache | None = None,
) -> Any:
    """Runs one shard of a queued run, of any task (what the ``run_shard`` operation does).

    Resumes: the shard's samples already done are skipped (a bank shard encodes its
    references again). The shard's state, heartbeat and result are kept in the run's record.
    The last shard of a run to complete marks it completed; for a bank, it first assembles
    the bank from the shards' parts and stores it (``refseg.sharded_bank.finish_bank_run``).

    Args:
        dataset: the run's dataset.
        run_id, index: the run and the shard (0-based).
        operation_id: the delegated operation executing it, for the record.
        progress: receives ``(samples of the shard done, samples in the shard)``.
        cache: a ModelCache, so a worker loads its models once for all the shards it runs.

    Returns:
        The task's result for the shard: a ``PredictResult``, a ``FillMasksResult`` or a
        ``refseg.sharded_bank.BankShardResult``.

    Raises:
        ValueError: no such run or shard, or the run's bank was changed since it was queued.
        RuntimeError: the run was cancelled.
        Any error of the task; the shard is then recorded as failed.
    """
    from refseg.sharded_bank import encode_shard, finish_bank_run
    from refseg.sharded_fill import fill_shard

    run = load_run(dataset, run_id)
    if run["state"] == CANCELLED:
        raise RuntimeError(f"refseg run {run_id} was cancelled; its shard {index} is not run")
    shard = collection().find_one({"_id": shard_key(run_id, index)})
    if shard is None:
        raise ValueError(f"refseg run {run_id} has no shard {index} (it has {run['num_shards']})")
    task = run.get("task", PREDICT)
    execute = {PREDICT: _predict_shard, BOXES_TO_MASKS: fill_shard, MEMORY_BANK: encode_shard}
    with ShardExecution(run_id, index, operation_id) as execution:
        result = execute[task](dataset, run, shard, execution, cache, progress)
    if all_shards_completed(run_id):
        if task == MEMORY_BANK:
            finish_bank_run(dataset, run_id)
        else:
            mark_completed(run_id)
    return result


def _predict_shard(dataset, run, shard, execution, cache, progress) -> PredictResult:
    """``refseg.predict`` on the shard's samples without a value, under the run's id."""
    run_id = run["_id"]
    bank = load_bank(dataset, run["bank"])
    if bank_digest(bank) != run["bank_digest"]:
        raise ValueError(
            f"The memory bank {run['bank']!r} of dataset {dataset.name!r} changed after run "
            f"{run_id} was queued; its shards would not agree. Cancel the run "
            f"(refseg.cancel_run(dataset, {run_id!r})) and queue a new one."
        )
    field, settings = run["label_field"], run["settings"]
    view = dataset.select(shard["sample_ids"])
    before = len(view.exists(field))

    def on_progress(done: int, total: int) -> None:
        execution.processed(done)
        if progress is not None:
            progress(before + done, len(shard["sample_ids"]))

    result = predict(
        view,
        bank,
        field,
        models=Models.from_dict(run["models"]),
        config=PredictConfig.from_dict(run["config"]),
        batch_size=settings["batch_size"],
        device=settings["device"],
        num_workers=settings["num_workers"],
        write_every=settings["write_every"],
        resume=True,
        skip_failures=settings["skip_failures"],
        run_id=run_id,
        cache=cache,
        progress=on_progress,
    )
    execution.completed(result.num_samples, result.failures, num_detections=result.num_detections)
    return result


def rerun_shards(dataset: Any, run_id: str, shards: list[int] | None = None) -> RunStatus:
    """Queues again the shards of a run that need it: failed, lost (their worker is gone while
    FiftyOne says running; that operation is marked failed first) or missing.

    Each re-queued shard resumes: only its samples not done are done. A bank run whose
    shards all completed but whose bank was not assembled (the assembly failed, or its
    process died) is assembled here, in this process.

    Args:
        shards: the shard indices to re-queue; None: every shard that needs it. A shard that
            is queued, running or completed is refused (re-queue it only once it is not).

    Returns:
        The run's status after queueing.

    Raises:
        ValueError: the run is cancelled, or a given shard does not need a re-run.
    """
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult, ExecutionRunState

    run = load_run(dataset, run_id)
    if run["state"] == CANCELLED:
        raise ValueError(f"refseg run {run_id} was cancelled; queue a new run instead")
    status = run_status(dataset, run_id)
    if status.task == MEMORY_BANK and status.state == "failed" and shards is None:
        if all(s.state == "completed" for s in status.shards):
            from refseg.sharded_bank import finish_bank_run

            finish_bank_run(dataset, run_id)
            return run_status(dataset, run_id)
    wanted = [s for s in status.shards if shards is None or s.index in shards]
    refused = [s for s in wanted if s.state not in NEEDS_RERUN]
    if shards is not None and refused:
        raise ValueError(
            "Only failed, lost or missing shards are re-queued; "
            + ", ".join(f"shard {s.index} is {s.state}" for s in refused)
        )
    service = DelegatedOperationService()
    for shard in (s for s in wanted if s.state in NEEDS_RERUN):
        if shard.state == "lost":
            service.set_failed(
                ObjectId(shard.operation_id),
                result=ExecutionResult(
                    error=f"refseg: the worker running shard {shard.index} ({shard.worker}) "
                    "is gone (no heartbeat); the shard was queued again"
                ),
                required_state=ExecutionRunState.RUNNING,
            )
        collection().update_one(
            {"_id": shard_key(run_id, shard.index)}, {"$set": {"state": "queued"}}
        )
        collection().update_one({"_id": run_id}, {"$set": {"state": ACTIVE}})
        queue_shard(dataset, run, shard.index)
    return run_status(dataset, run_id)


def queue_shard(dataset: Any, run: dict, index: int) -> str:
    """Queues one delegated ``run_shard`` operation for shard ``index`` of ``run`` (its
    document); returns the operation's id."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    run_id, delegation_target = run["_id"], run.get("delegation_target")
    context = ExecutionContext(
        request_params={
            "dataset_name": dataset.name,
            "dataset_id": str(dataset._doc.id),
            "params": {"run_id": run_id, "shard": index},
            "delegated": True,
            "delegation_target": delegation_target,
        }
    )
    task = run.get("task", PREDICT).replace("_", " ")
    target = run["target"].split(":", 1)[1]
    operation = DelegatedOperationService().queue_operation(
        operator=SHARD_OPERATOR,
        label=f"refseg: {task} {target} shard {index + 1}/{run['num_shards']} (run {run_id[:8]})",
        delegation_target=delegation_target,
        context=context,
        metadata={"inputs_schema": None, "outputs_schema": None},
        rerunnable=True,
    )
    collection().update_one(
        {"_id": shard_key(run_id, index)}, {"$set": {"operation_id": str(operation.id)}}
    )
    return str(operation.id)


def stored_bank_name(dataset: Any, bank: MemoryBank | str, run_id: str) -> str:
    """The name under which ``bank`` is stored with ``dataset`` (workers load it from there).

    A bank given by value is looked up among the dataset's banks by content; when it is stored
    under no name, it is stored now as ``refseg_bank_<first 8 characters of the run id>``.

    Raises:
        ValueError: a name that is not a bank of the dataset.
    """
    names = list_banks(dataset)
    if isinstance(bank, str):
        if bank not in names:
            raise ValueError(
                f"Dataset {dataset.name!r} has no refseg memory bank named {bank!r}; "
                f"available: {names}"
            )
        return bank
    digest = bank_digest(bank)
    for name in names:
        if bank_digest(load_bank(dataset, name)) == digest:
            return name
    name = f"refseg_bank_{run_id[:8]}"
    save_bank(dataset, name, bank)
    logger.warning(
        "The memory bank was not stored with dataset %r; stored it as %r so that the "
        "delegated workers can load it",
        dataset.name,
        name,
    )
    return name


@contextmanager
def reserving(
    dataset: Any, target: str, run_id: str, what: str, *, force: bool = False
) -> Iterator[None]:
    """The context in which a sharded run is queued: ``target``'s lock under the run's id
    (``refseg.locks``), the dataset reloaded, another unfinished sharded run of ``target``
    refused, and a lost database said clearly.

    Args:
        target: ``field:<name>`` or ``bank:<name>``.
        what: the run, for the lock's description and messages.
        force: take the lock even though another run holds it.

    Raises:
        RunLockedError: another run holds ``target``.
        DatabaseUnavailableError: the database became unreachable.
    """
    lock = RunLock(dataset, target, run_id=run_id, description=f"{what}, queueing", force=force)
    with database_errors(f"queueing {what}"), lock:
        dataset.reload()  # another process may have written meanwhile
        check_target_free(dataset, target, run_id)
        yield


def queue_run(
    dataset: Any, run_id: str, task: str, target: str, parts: list[list[str]], **values: Any
) -> RunStatus:
    """Writes a sharded run's record (:func:`insert_run`, same arguments) and queues one
    ``run_shard`` operation per shard; returns the run's status."""
    run = insert_run(dataset, run_id, task, target, parts, **values)
    for index in range(len(parts)):
        queue_shard(dataset, run, index)
    return run_status(dataset, run_id)


def insert_run(
    dataset: Any,
    run_id: str,
    task: str,
    target: str,
    parts: list[list[str]],
    *,
    label_ids: list[list[str]] | None = None,
    **values: Any,
) -> dict:
    """Writes the record of a sharded run (``refseg.run_record``); returns the run document.

    Args:
        run_id: the run's id, unique.
        task: ``predict``, ``boxes_to_masks`` or ``memory_bank``.
        target: what the run writes, ``field:<name>`` or ``bank:<name>``.
        parts: the sample ids of each shard.
        label_ids: the label ids of each shard, for tasks that work on chosen labels.
        values: the task's own values (field, bank, models, config, settings...).

    Raises:
        ValueError: a run with this id exists already.
    """
    from datetime import datetime, timezone

    import pymongo.errors

    run = {
        "_id": run_id,
        "kind": "run",
        "task": task,
        "target": target,
        "dataset": dataset.name,
        "dataset_id": str(dataset._doc.id),
        "num_shards": len(parts),
        "num_samples": sum(len(p) for p in parts),
        "created": datetime.now(timezone.utc),
        "state": ACTIVE if parts else COMPLETED,
        **values,
    }
    try:
        collection().insert_one(run)
    except pymongo.errors.DuplicateKeyError:
        raise ValueError(f"a refseg run with id {run_id!r} exists already; pick another run_id")
    shards = [
        {
            "_id": shard_key(run_id, index),
            "kind": "shard",
            "run_id": run_id,
            "index": index,
            "sample_ids": part,
            "state": "queued",
            "history": [],
            **({} if label_ids is None else {"label_ids": label_ids[index]}),
        }
        for index, part in enumerate(parts)
    ]
    if shards:
        collection().insert_many(shards)
    return run
