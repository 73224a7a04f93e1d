"""The record of a sharded run: what ties its delegated shard operations together.

A sharded run is N delegated operations of FiftyOne, one per shard, executed by any number of
``fiftyone delegated launch`` workers. Three tasks are sharded (the run's ``task``):
``predict`` (``refseg.predict(..., shards=N, delegate=True)``), ``boxes_to_masks``
(``refseg.fill_box_masks(..., shards=N, delegate=True)``) and ``memory_bank``
(``refseg.build_memory_bank(..., shards=N, delegate=True)``), and the operators of each with
``shards`` > 1. What binds a run's operations is a record in the ``refseg_runs`` collection of
FiftyOne's database (beside ``refseg_locks``):

- one run document, ``_id`` = the run id: the task, the dataset, what it writes (``target``:
  ``field:<name>`` or ``bank:<name>``), the ``refseg.Models`` value, the task's settings, the
  number of shards and ``state`` (``active`` until the run is done, or ``cancelled``);
- one document per shard, ``_id`` = ``"<run id>:<index>"``: the shard's sample ids (and, for
  boxes to masks and banks, its label ids), fixed when the run is queued (samples added to or
  removed from the dataset later change no shard), the FiftyOne operation that runs it, and
  while it runs, the host, process and a heartbeat of the process running it; when it ends,
  its result (counts, failures) or its error;
- for a bank, the encoded references of each completed shard (``part`` documents, each under
  MongoDB's 16 MB limit), which the last shard to complete assembles into the bank
  (``refseg.sharded_bank``).

Why a collection of our own rather than a FiftyOne custom run on the dataset: N workers on N
machines update their shard's state at once, and MongoDB updates one document atomically, while
a custom run's results are one file rewritten whole (last writer wins); and shard documents
keep each shard's ids under MongoDB's 16 MB document limit for any dataset size.

The state of a shard combines the record with FiftyOne's operation: queued, running,
completed, failed, ``lost`` (the operation says running but the process running it is gone:
its heartbeat is older than ``refseg.locks.LOCK_TIMEOUT_S``, or it ran on this machine and its
process no longer exists; FiftyOne 1.22 leaves a killed worker's operation RUNNING forever), or
``missing`` (its operation was deleted). ``refseg.runs.rerun_shards`` re-queues the failed, lost
and missing ones. Progress counts the samples of each shard that are done: with a value in the
field (predict), without a box-only label left (boxes to masks), in a completed shard (bank).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pymongo.errors

from refseg.failures import FailureReport, SampleFailure
from refseg.locks import HEARTBEAT_S, LOCK_TIMEOUT_S, Holder, RunLockedError
from refseg.memory import MemoryBank

RUNS_COLLECTION = "refseg_runs"
logger = logging.getLogger(__name__)

SHARD_OPERATOR = "@refseg/refseg/run_shard"
"""The plugin operator that executes one shard of any task (``operators/run_shard.py``)."""

PREDICT, BOXES_TO_MASKS, MEMORY_BANK = "predict", "boxes_to_masks", "memory_bank"
"""The tasks a sharded run can have."""

ACTIVE, COMPLETED, CANCELLED = "active", "completed", "cancelled"
"""Stored states of a run."""

NEEDS_RERUN = ("failed", "lost", "missing")
"""Shard states that ``refseg.runs.rerun_shards`` re-queues."""


@dataclass(frozen=True)
class ShardStatus:
    """One shard of a sharded run, as it stands now.

    Attributes:
        index: the shard's position, 0-based.
        state: ``queued``, ``running``, ``completed``, ``failed``, ``lost`` (its worker is
            gone while FiftyOne still says running) or ``missing`` (its operation was deleted).
        num_samples: samples in the shard.
        done: samples of the shard that are done (see the module docstring).
        operation_id: the latest FiftyOne delegated operation of the shard.
        operation_state: that operation's ``run_state`` (None when missing).
        worker: ``host:pid`` of the process running it (or that ran it last), "" if none.
        heartbeat: that process's last heartbeat, UTC (None if none).
        error: why its last execution failed ("" if it did not).
        failures: samples its last completed execution skipped.
        history: one dict per finished execution: operation_id, worker, started, finished,
            state, num_samples (samples that execution predicted), error.
    """

    index: int
    state: str
    num_samples: int
    done: int
    operation_id: str | None
    operation_state: str | None
    worker: str = ""
    heartbeat: datetime | None = None
    error: str = ""
    failures: tuple[SampleFailure, ...] = ()
    history: tuple[dict, ...] = ()


@dataclass(frozen=True)
class RunStatus:
    """A sharded run: its settings and the state of every shard.

    Attributes:
        run_id: the run.
        dataset: the dataset's name.
        label_field: the field written ("" for a bank).
        bank: the name of the stored memory bank applied, or built.
        state: ``completed`` (every shard, and for a bank its assembly), ``running`` (a shard
            queued or running, or the bank being assembled), ``failed`` (nothing in flight and
            a shard failed, lost or missing, or the bank's assembly failed: see
            ``refseg.runs.rerun_shards``) or ``cancelled``.
        shards: one :class:`ShardStatus` per shard.
        created: when the run was queued, UTC.
        settings: what the run was queued with: ``models`` (a ``refseg.Models`` as a dict),
            ``config`` (the task's config as a dict) and ``settings`` (device, batch size,
            skip_failures and the like).
        task: ``predict``, ``boxes_to_masks`` or ``memory_bank``.
        finish_error: for a bank, why assembling it from the shards' parts failed ("" if not).
    """

    run_id: str
    dataset: str
    label_field: str
    bank: str
    state: str
    shards: tuple[ShardStatus, ...]
    created: datetime | None = None
    settings: dict = field(default_factory=dict)
    task: str = PREDICT
    finish_error: str = ""

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def done(self) -> int:
        """Samples of the run that are done, summed over shards."""
        return sum(s.done for s in self.shards)

    @property
    def progress(self) -> float:
        """``done / num_samples`` in [0, 1] (1 for a run without samples)."""
        return self.done / self.num_samples if self.num_samples else 1.0

    @property
    def failures(self) -> FailureReport:
        """The samples skipped by the shards' last completed executions, merged."""
        return FailureReport(self.task, [f for s in self.shards for f in s.failures])

    @property
    def operation_ids(self) -> list[str | None]:
        return [s.operation_id for s in self.shards]

    def summary(self) -> str:
        """A few lines for logs and the App: the run, then one line per shard."""
        what = (
            f"building bank {self.bank!r}"
            if self.task == MEMORY_BANK
            else f"{self.task.replace('_', ' ')} into {self.label_field!r}"
        )
        head = (
            f"run {self.run_id} ({what}) of {self.dataset!r}: {self.state}, "
            f"{self.done} of {self.num_samples} samples done in {len(self.shards)} shard(s)"
        )
        lines = [head]
        for s in self.shards:
            where = f" on {s.worker}" if s.worker and s.state in ("running", "lost") else ""
            error = (
                f": {s.error.strip().splitlines()[-1]}"
                if s.error and s.state != "completed"
                else ""
            )
            lines.append(
                f"- shard {s.index}: {s.state}{where}, {s.done}/{s.num_samples} "
                f"(operation {s.operation_id}){error}"
            )
        if any(s.state in NEEDS_RERUN for s in self.shards):
            lines.append(
                f"re-queue the failed shards with refseg.rerun_shards(dataset, {self.run_id!r})"
            )
        elif self.finish_error and self.state == "failed":
            lines.append(
                f"assembling the bank failed: {self.finish_error.strip().splitlines()[-1]}; "
                f"retry with refseg.rerun_shards(dataset, {self.run_id!r})"
            )
        return "\n".join(lines)


def bank_digest(bank: MemoryBank) -> str:
    """A SHA-256 of a bank's content (classes, prototypes, labels, models, settings), so a shard
    refuses a bank that was rebuilt under the same name after its run was queued."""
    digest = hashlib.sha256()
    header = {
        "class_names": list(bank.class_names),
        "encoder": bank.encoder,
        "proposer": bank.proposer,
        "settings": bank.settings.to_dict(),
        "references": [r.label_id for r in bank.references],
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode("utf-8"))
    digest.update(bank.prototypes.astype("float32").tobytes())
    digest.update(bank.labels.astype("int64").tobytes())
    return digest.hexdigest()


def collection():
    """The ``refseg_runs`` collection of FiftyOne's database."""
    import fiftyone.core.odm as foo

    return foo.get_db_conn()[RUNS_COLLECTION]


def shard_key(run_id: str, index: int) -> str:
    return f"{run_id}:{index}"


def load_run(dataset: Any, run_id: str) -> dict:
    """The run document; raises ValueError naming the dataset's runs when there is none."""
    document = collection().find_one({"_id": run_id, "kind": "run"})
    if document is None or document["dataset_id"] != str(dataset._doc.id):
        raise ValueError(
            f"Dataset {dataset.name!r} has no sharded refseg run {run_id!r}; its runs: "
            f"{list_sharded_runs(dataset)}"
        )
    return document


def load_shards(run_id: str) -> list[dict]:
    return list(collection().find({"kind": "shard", "run_id": run_id}).sort("index", 1))


def list_sharded_runs(dataset: Any) -> list[str]:
    """Ids of the sharded runs queued on ``dataset``, oldest first."""
    documents = (
        collection()
        .find({"kind": "run", "dataset_id": str(dataset._doc.id)}, {"_id": 1})
        .sort("created", 1)
    )
    return [d["_id"] for d in documents]


def run_status(dataset: Any, run_id: str) -> RunStatus:
    """The state of a sharded run and of each of its shards (see the module docstring).

    A predict or boxes-to-masks run whose shards all completed is marked completed in the
    record here too, so that a crash between a last shard's end and its update of the run
    leaves no run active forever (a bank run is completed by its assembly).
    """
    run = load_run(dataset, run_id)
    shards = load_shards(run_id)
    operations = shard_operations(run_id)
    done = done_sample_ids(dataset, run, shards)
    now = _now()
    statuses = tuple(_shard_status(s, operations.get(s["index"]), done, now) for s in shards)
    state = _run_state(run, statuses, now)
    task = run.get("task", PREDICT)
    if state == COMPLETED and run["state"] == ACTIVE and task != MEMORY_BANK:
        collection().update_one({"_id": run_id, "state": ACTIVE}, {"$set": {"state": COMPLETED}})
    finish = run.get("finish") or {}
    return RunStatus(
        run_id=run_id,
        dataset=run["dataset"],
        label_field=run.get("label_field", ""),
        bank=run["bank"],
        state=state,
        shards=statuses,
        created=_aware(run.get("created")),
        settings={k: run[k] for k in ("models", "config", "settings") if k in run},
        task=task,
        finish_error=finish.get("error", "") if finish.get("state") == "failed" else "",
    )


def done_sample_ids(dataset: Any, run: dict, shards: list[dict]) -> set[str]:
    """The sample ids of a run's shards that are done: with a value in the field (predict),
    with no box-only label of the run left (boxes to masks), in a completed shard (bank)."""
    task = run.get("task", PREDICT)
    if task == MEMORY_BANK:
        return {i for s in shards if s.get("state") == "completed" for i in s["sample_ids"]}
    all_ids = [i for s in shards for i in s["sample_ids"]]
    if not all_ids:
        return set()
    view = dataset.select(all_ids)
    if task == PREDICT:
        return set(view.exists(run["label_field"]).values("id"))
    from refseg.fill_masks import box_only

    field = run["label_field"]
    label_ids = [i for s in shards for i in s["label_ids"]]
    chosen = view.select_labels(ids=label_ids, fields=field)
    left = set(chosen.filter_labels(field, box_only()).values("id"))
    return set(all_ids) - left


def shard_operations(run_id: str) -> dict[int, Any]:
    """The latest FiftyOne delegated operation of each shard of a run, by shard index.

    Found by the run id in the operations' parameters, so operations re-queued with
    ``fiftyone delegated rerun`` count as well as those refseg queued.
    """
    from fiftyone.factory import DelegatedOperationPagingParams
    from fiftyone.operators.delegated import DelegatedOperationService

    operations = DelegatedOperationService().list_operations(
        operator=SHARD_OPERATOR,
        paging=DelegatedOperationPagingParams(limit=0),
        **{"context.request_params.params.run_id": run_id},
    )
    latest: dict[int, Any] = {}
    for operation in sorted(operations, key=lambda o: o.queued_at or datetime.min):
        latest[int(operation.context.request_params["params"]["shard"])] = operation
    return latest


def check_field_free(dataset: Any, label_field: str, run_id: str) -> None:
    """Refuses to write ``label_field`` while another sharded run into it is unfinished
    (:func:`check_target_free` of ``field:<label_field>``)."""
    check_target_free(dataset, f"field:{label_field}", run_id)


def check_target_free(dataset: Any, target: str, run_id: str) -> None:
    """Refuses to write ``target`` (``field:<name>`` or ``bank:<name>``) while another sharded
    run writing it is unfinished.

    The target's lock (``refseg.locks``) guards it while a process writes it; between the
    shards of a delegated run no process may be running, so the unfinished run reserves the
    target until it completes or is cancelled.

    Raises:
        RunLockedError: naming the run, its progress and how to finish or cancel it.
    """
    candidates = collection().find(
        {
            "kind": "run",
            "dataset_id": str(dataset._doc.id),
            "target": target,
            "state": ACTIVE,
            "_id": {"$ne": run_id},
        },
        {"_id": 1},
    )
    for candidate in candidates:
        status = run_status(dataset, candidate["_id"])
        if status.state in (COMPLETED, CANCELLED):
            continue
        kind, name = target.split(":", 1)
        what = "Field" if kind == "field" else "Memory bank"
        raise RunLockedError(
            f"{what} {name!r} of dataset {dataset.name!r} belongs to the sharded run "
            f"{status.run_id}, which is {status.state} ({status.done} of {status.num_samples} "
            f"samples done). Let it finish (refseg.rerun_shards(dataset, {status.run_id!r}) "
            "re-queues its failed shards), or cancel it with "
            f"refseg.cancel_run(dataset, {status.run_id!r}); or write another {kind}."
        )


def cancel_run(dataset: Any, run_id: str) -> RunStatus:
    """Cancels a sharded run: its queued shard operations are marked failed (no worker will
    start them), shards that are running finish, and the field (or bank name) is free for
    other runs once they have. The samples written stay; a bank build's encoded parts are
    deleted."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult, ExecutionRunState

    load_run(dataset, run_id)
    collection().update_one({"_id": run_id}, {"$set": {"state": CANCELLED}})
    service = DelegatedOperationService()
    for operation in shard_operations(run_id).values():
        if operation.run_state in (ExecutionRunState.QUEUED, ExecutionRunState.SCHEDULED):
            service.set_failed(
                operation.id,
                result=ExecutionResult(error=f"refseg run {run_id} was cancelled"),
                required_state=operation.run_state,
            )
    collection().delete_many({"kind": "part", "run_id": run_id})
    return run_status(dataset, run_id)


class ShardExecution:
    """Marks a shard running in the record with a heartbeat, and records how it ended.

    Usage::

        with ShardExecution(run_id, index, operation_id) as execution:
            ...  # predict; execution.processed(n) now and then
            execution.completed(result)

    Leaving the block with an error records the shard as failed with that error.
    """

    def __init__(self, run_id: str, index: int, operation_id: str | None) -> None:
        self.key = shard_key(run_id, index)
        self.operation_id = operation_id
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.started = _now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="refseg-shard", daemon=True)
        self._ended = False
        self._processed = 0

    def __enter__(self) -> ShardExecution:  # noqa: PYI034
        execution = {
            "operation_id": self.operation_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "heartbeat": self.started,
            "processed": 0,
        }
        collection().update_one(
            {"_id": self.key}, {"$set": {"state": "running", "execution": execution, "error": ""}}
        )
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if not self._ended:
            error = f"{type(exc).__name__}: {exc}" if exc else "ended without a result"
            self._end("failed", error=error, num_samples=self._processed)

    def processed(self, count: int) -> None:
        """Records how many samples (or labels) this execution has done so far."""
        self._processed = count
        collection().update_one({"_id": self.key}, {"$set": {"execution.processed": count}})

    def completed(self, num_samples: int, failures: FailureReport, **counts: int) -> None:
        """Records the shard completed: samples done, samples skipped, and the task's counts
        (``num_detections``, ``num_masks``, ``num_references``)."""
        result = {"num_samples": num_samples, "failures": [f.to_dict() for f in failures]}
        self._end("completed", result={**result, **counts}, num_samples=num_samples)

    def _end(
        self, state: str, *, num_samples: int, result: dict | None = None, error: str = ""
    ) -> None:
        self._ended = True
        self._stop.set()
        self._thread.join(timeout=5)
        finished = _now()
        entry = {
            "operation_id": self.operation_id,
            "worker": self.worker,
            "started": self.started,
            "finished": finished,
            "state": state,
            "num_samples": num_samples,
            "error": error,
        }
        update: dict[str, Any] = {"state": state, "execution": None, "error": error}
        if result is not None:
            update["result"] = result
        collection().update_one({"_id": self.key}, {"$set": update, "$push": {"history": entry}})

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                collection().update_one(
                    {"_id": self.key}, {"$set": {"execution.heartbeat": _now()}}
                )
            except pymongo.errors.PyMongoError as error:  # the shard's own work reports it
                logger.warning("heartbeat of shard %s failed: %s", self.key, error)


def all_shards_completed(run_id: str) -> bool:
    """Whether every shard's last execution completed."""
    pending = collection().count_documents(
        {"kind": "shard", "run_id": run_id, "state": {"$ne": "completed"}}
    )
    return pending == 0


def mark_completed(run_id: str) -> None:
    """Marks an active run completed."""
    collection().update_one({"_id": run_id, "state": ACTIVE}, {"$set": {"state": COMPLETED}})


# -- states ---------------------------------------------------------------------------------


def _shard_status(shard: dict, operation: Any, done: set[str], now: datetime) -> ShardStatus:
    execution = shard.get("execution") or {}
    last = (shard.get("history") or [{}])[-1]
    result = shard.get("result") or {}
    return ShardStatus(
        index=shard["index"],
        state=_shard_state(shard, operation, now),
        num_samples=len(shard["sample_ids"]),
        done=sum(1 for i in shard["sample_ids"] if i in done),
        operation_id=None if operation is None else str(operation.id),
        operation_state=None if operation is None else operation.run_state,
        worker=f"{execution['host']}:{execution['pid']}" if execution else last.get("worker", ""),
        heartbeat=_aware(execution.get("heartbeat")),
        error=shard.get("error") or _operation_error(operation),
        failures=tuple(SampleFailure(**f) for f in result.get("failures", [])),
        history=tuple(shard.get("history") or ()),
    )


def _operation_error(operation: Any) -> str:
    """The error FiftyOne recorded for a failed operation (one that failed before the shard's
    own code ran: a missing plugin, a validation error, a cancel)."""
    if operation is None or operation.run_state != "failed":
        return ""
    result = operation.result
    error = result.get("error") if isinstance(result, dict) else getattr(result, "error", None)
    return error or "failed (no error recorded)"


def _shard_state(shard: dict, operation: Any, now: datetime) -> str:
    if operation is None:
        return "completed" if shard.get("state") == "completed" else "missing"
    state = operation.run_state
    if state in ("queued", "scheduled"):
        return "queued"
    if state in ("completed", "failed"):
        return state
    execution = shard.get("execution") or {}
    if execution.get("operation_id") == str(operation.id):
        holder = Holder("", execution["host"], execution["pid"], _aware(execution["heartbeat"]))
        return "running" if holder.alive(now, LOCK_TIMEOUT_S) else "lost"
    started = _aware(operation.started_at) or now
    starting = (now - started).total_seconds() <= LOCK_TIMEOUT_S
    return "running" if starting else "lost"  # claimed, but never reached the shard's code


def _run_state(run: dict, shards: tuple[ShardStatus, ...], now: datetime) -> str:
    if run["state"] == CANCELLED:
        return CANCELLED
    if run["state"] == COMPLETED and run.get("task") == MEMORY_BANK:
        return COMPLETED  # assembled; its parts are gone
    states = {s.state for s in shards}
    if states <= {"completed"}:
        return _finish_state(run, shards, now) if run.get("task") == MEMORY_BANK else COMPLETED
    if states & {"queued", "running"}:
        return "running"
    return "failed"


def _finish_state(run: dict, shards: tuple[ShardStatus, ...], now: datetime) -> str:
    """A bank run whose shards all completed: ``running`` while the bank is assembled (the
    last shard to complete does it), ``failed`` when the assembly failed, its process died,
    or it never started (``refseg.runs.rerun_shards`` retries it)."""
    finish = run.get("finish") or {}
    if finish.get("state") == "running":
        return "running" if assembly_alive(finish, now) else "failed"
    if finish.get("state") == "failed":
        return "failed"
    ends = [_aware(h["finished"]) for s in shards for h in s.history if h.get("finished")]
    last_end = max(ends, default=now)
    return "running" if (now - last_end).total_seconds() <= LOCK_TIMEOUT_S else "failed"


def assembly_alive(finish: dict, now: datetime) -> bool:
    """Whether the process assembling a bank (``finish`` of its run document: host, pid,
    started) still counts: on this machine, its process exists; and it started less than
    ``refseg.locks.LOCK_TIMEOUT_S`` ago (an assembly takes seconds)."""
    holder = Holder("", finish["host"], finish["pid"], _aware(finish["started"]))
    return holder.alive(now, LOCK_TIMEOUT_S)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime | None) -> datetime | None:
    """MongoDB returns naive UTC datetimes."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
