"""Building a bank from many references on many machines: map over shards, then assemble.

``refseg.build_memory_bank(view, gt_field, name=..., shards=N, delegate=True)`` (or the
build-memory-bank operator with ``shards`` > 1) checks every reference label now, splits the
samples holding them into N disjoint shards (each keeps its label ids) and queues one
``run_shard`` operation per shard (``refseg.runs``). A shard encodes its references (stages
1-2, exactly as ``build_memory_bank`` does in one process) and stores them in the run's record
as ``part`` documents: the reference records and their (R, D) float32 prototypes, in chunks
under MongoDB's 16 MB document limit. Running a shard again replaces its parts.

The last shard to complete assembles the bank: it claims the assembly atomically (one
``find_one_and_update`` on the run document), concatenates the parts in shard order (the
order a single process gives), stores the bank under ``name`` (the bank's lock, shared with
the run) and marks the run completed. An assembly that fails fails that shard's operation,
with the reason also in ``RunStatus.finish_error``; ``refseg.rerun_shards`` re-queues it, and
assembles in its own process a run whose shards all completed but whose assembler died.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from bson.binary import Binary

from refseg.bank_builder import (
    EncodedReferences,
    ReferenceSource,
    assemble_bank,
    check_kept,
    encode_references,
)
from refseg.config import ReferenceConfig
from refseg.failures import FailureReport, SampleFailure
from refseg.field_safety import check_bank_name
from refseg.fiftyone_io import list_banks, load_bank, save_bank
from refseg.memory import MemoryBank, ReferenceRecord
from refseg.models import ModelCache, Models
from refseg.references import check_references
from refseg.run_record import (
    ACTIVE,
    COMPLETED,
    MEMORY_BANK,
    RunStatus,
    ShardExecution,
    all_shards_completed,
    assembly_alive,
    bank_digest,
    collection,
    load_run,
    load_shards,
)
from refseg.sampling import ReferenceLabel, reference_labels
from refseg.sharding import split_labels

logger = logging.getLogger(__name__)

PART_BYTES = 8 * 1024 * 1024
"""About how many bytes of prototypes one part document holds (MongoDB's limit is 16 MB)."""


@dataclass(frozen=True)
class BankShardResult:
    """What one shard of a sharded bank build did.

    Attributes:
        num_samples: samples of the shard whose references were encoded.
        num_references: references encoded.
        failures: samples skipped because their image could not be read.
    """

    num_samples: int
    num_references: int
    failures: FailureReport


def queue_memory_bank(
    reference_view: Any,
    gt_field: str,
    labels: list[ReferenceLabel],
    name: str,
    *,
    shards: int,
    models: Models,
    config: ReferenceConfig,
    negative: bool = False,
    device: str | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
    skip_failures: bool = False,
    run_id: str | None = None,
    delegation_target: str | None = None,
) -> RunStatus:
    """Queues a bank build as ``shards`` delegated operations; returns the run's status.

    Called by ``refseg.build_memory_bank(..., delegate=True)``, which has checked the labels.

    Args:
        reference_view: the samples holding the references.
        gt_field: their Detections field.
        labels: the reference labels, checked, in the order of the bank.
        name: the bank's name; checked now, and again when the bank is stored.
        shards: the number of shard operations (fewer when fewer samples hold references).
        models, config, negative, batch_size, overwrite, skip_failures: as
            ``refseg.build_memory_bank``, for every shard.
        device: each worker's torch device; None: CUDA when the worker has one.
        run_id: the run's id (default: a new one).
        delegation_target: FiftyOne's delegation target of the operations.

    Raises:
        ValueError: a bank ``name`` that is invalid, or taken without ``overwrite``.
        RunLockedError: another run is building a bank of that name.
    """
    from refseg.runs import queue_run, reserving

    dataset = reference_view._dataset
    run_id = run_id or uuid.uuid4().hex
    check_bank_name(dataset, name, overwrite=overwrite)
    parts, label_ids = split_labels(labels, shards)
    what = f"refseg.build_memory_bank {name!r} ({shards} shards)"
    with reserving(dataset, f"bank:{name}", run_id, what):
        return queue_run(
            dataset, run_id, MEMORY_BANK, f"bank:{name}", parts, label_ids=label_ids,
            label_field="", gt_field=gt_field, bank=name, models=models.to_dict(),
            config=config.to_dict(), negative=negative, overwrite=overwrite,
            classes=sorted({label.detection.label for label in labels}),
            num_labels=len(labels), finish=None,
            settings={"device": device, "batch_size": batch_size,
                      "skip_failures": skip_failures},
            delegation_target=delegation_target,
        )  # fmt: skip


def encode_shard(
    dataset: Any,
    run: dict,
    shard: dict,
    execution: ShardExecution,
    cache: ModelCache | None,
    progress: Callable[[int, int], None] | None,
) -> BankShardResult:
    """Encodes the shard's references and stores them as the shard's parts (what
    ``refseg.runs.run_shard`` does for a bank run)."""
    gt_field, settings = run["gt_field"], run["settings"]
    view = dataset.select(shard["sample_ids"], ordered=True).select_labels(
        ids=shard["label_ids"], fields=gt_field
    )
    labels = list(reference_labels(view, gt_field))
    check_references(labels)
    report = FailureReport("build_memory_bank")
    source = ReferenceSource(
        dataset.name, gt_field, settings["skip_failures"], report, run["negative"]
    )

    def on_progress(done: int, total: int) -> None:
        execution.processed(done)
        if progress is not None:
            progress(done, total)

    encoded = encode_references(
        labels,
        Models.from_dict(run["models"]),
        ReferenceConfig.from_dict(run["config"]),
        source=source,
        device=settings["device"],
        cache=cache,
        batch_size=settings["batch_size"],
        progress=on_progress,
    )
    _store_parts(run["_id"], shard["index"], encoded)
    skipped = {failure.sample_id for failure in report}
    num_samples = len(shard["sample_ids"]) - len(skipped)
    execution.completed(num_samples, report, num_references=len(encoded.records))
    return BankShardResult(num_samples, len(encoded.records), report)


def finish_bank_run(dataset: Any, run_id: str) -> MemoryBank | None:
    """Assembles the bank of a run whose shards all completed, stores it, completes the run.

    Only one process assembles at a time: the one that claims the run (an assembly that
    failed, or whose process died, is claimed again). Others, and a run already completed,
    return None at once. An error is recorded in the run (``RunStatus.finish_error``) and
    raised: the shard operation that assembled fails, and re-running it assembles again.

    Returns:
        The bank stored, or None when another process assembles it or did.

    Raises:
        ValueError: a shard has not completed, no reference could be encoded, or the name was
            taken meanwhile (without ``overwrite``). The run records the error.
    """
    run = load_run(dataset, run_id)
    if run["state"] != ACTIVE:  # assembled or cancelled: parts of a late shard are not needed
        collection().delete_many({"kind": "part", "run_id": run_id})
        return None
    if not all_shards_completed(run_id):
        raise ValueError(f"refseg run {run_id}: not every shard has completed")
    if not _claim(run):
        return None
    try:
        bank = _assemble(dataset, run)
        _store(dataset, run, bank)
    except BaseException as error:
        failed = {**_holder(), "state": "failed", "error": f"{type(error).__name__}: {error}"}
        collection().update_one({"_id": run_id}, {"$set": {"finish": failed}})
        raise
    collection().update_one(
        {"_id": run_id},
        {"$set": {"state": COMPLETED, "finish": {**_holder(), "state": "completed"}}},
    )
    collection().delete_many({"kind": "part", "run_id": run_id})
    logger.info(
        "refseg run %s: stored bank %r of %d references", run_id, run["bank"], len(bank.references)
    )
    return bank


def _claim(run: dict) -> bool:
    """Takes the assembly of ``run`` for this process, atomically; False when it is done or
    a live process has it."""
    finish = run.get("finish")
    if finish is not None:
        if finish.get("state") == "completed":
            return False
        if finish.get("state") == "running" and assembly_alive(finish, _now()):
            return False
    mine = {**_holder(), "state": "running", "error": ""}
    claimed = collection().find_one_and_update(
        {"_id": run["_id"], "state": ACTIVE, "finish": finish}, {"$set": {"finish": mine}}
    )
    return claimed is not None


def _assemble(dataset: Any, run: dict) -> MemoryBank:
    """The bank of the run's parts, in shard order."""
    records: list[ReferenceRecord] = []
    prototypes: list[np.ndarray] = []
    encoders, proposers = [], []
    parts = (
        collection().find({"kind": "part", "run_id": run["_id"]}).sort([("index", 1), ("chunk", 1)])
    )
    for part in parts:
        records.extend(_record(values) for values in part["records"])
        rows = np.frombuffer(part["prototypes"], dtype="<f4").reshape(-1, part["dim"])
        prototypes.append(rows)
        encoders.append(part["encoder"])
        proposers.append(part["proposer"])
    if not encoders:
        raise ValueError(f"refseg run {run['_id']}: its shards stored no encoded references")
    if any(e != encoders[0] for e in encoders):
        raise ValueError(
            f"refseg run {run['_id']}: its shards encoded with different encoders "
            f"({sorted({str(e) for e in encoders})}); cancel it and build again"
        )
    encoded = EncodedReferences(
        records=records,
        prototypes=np.concatenate(prototypes).astype(np.float32),
        encoder=encoders[0],
        proposer=next((p for p in proposers if p), None),
    )
    report = FailureReport("build_memory_bank", _failures(run["_id"]))
    check_kept(set(run["classes"]), run["num_labels"], encoded, report)
    if report:
        logger.warning("%s", report.summary())
    models = Models.from_dict(run["models"])
    return assemble_bank(encoded, models, ReferenceConfig.from_dict(run["config"]))


def _store(dataset: Any, run: dict, bank: MemoryBank) -> None:
    """Stores the bank under the run's name, unless this run stored it already (an assembly
    retried after it stored the bank)."""
    name = run["bank"]
    if name in list_banks(dataset) and bank_digest(load_bank(dataset, name)) == bank_digest(bank):
        return
    check_bank_name(dataset, name, overwrite=run["overwrite"])
    save_bank(dataset, name, bank, overwrite=run["overwrite"], run_id=run["_id"])


def _store_parts(run_id: str, index: int, encoded: EncodedReferences) -> None:
    """Replaces the shard's parts with ``encoded``, in chunks of at most ~PART_BYTES."""
    collection().delete_many({"kind": "part", "run_id": run_id, "index": index})
    dim = int(encoded.prototypes.shape[1])
    rows = max(1, PART_BYTES // (4 * dim))
    starts = range(0, max(1, len(encoded.records)), rows)
    documents = [
        {
            "_id": f"{run_id}:{index}:part:{chunk}",
            "kind": "part",
            "run_id": run_id,
            "index": index,
            "chunk": chunk,
            "dim": dim,
            "records": [_values(r) for r in encoded.records[start : start + rows]],
            "prototypes": Binary(
                np.ascontiguousarray(encoded.prototypes[start : start + rows], "<f4").tobytes()
            ),
            "encoder": encoded.encoder,
            "proposer": encoded.proposer,
        }
        for chunk, start in enumerate(starts)
    ]
    collection().insert_many(documents)


def _failures(run_id: str) -> list[SampleFailure]:
    return [
        SampleFailure(**failure)
        for shard in load_shards(run_id)
        for failure in (shard.get("result") or {}).get("failures", [])
    ]


def _values(record: ReferenceRecord) -> dict:
    values = dataclasses.asdict(record)
    values["box"] = [float(v) for v in record.box]
    return values


def _record(values: dict) -> ReferenceRecord:
    return ReferenceRecord(**{**values, "box": tuple(values["box"])})


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _now()}


def _now() -> datetime:
    return datetime.now(timezone.utc)
