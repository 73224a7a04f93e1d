"""Every device of one machine: one worker process per device, each over its shard of the view.

``refseg.predict(view, bank, field, devices=["cuda:0", "cuda:1"])`` (or ``devices="all"``) runs
here, inside the field's lock that ``predict`` holds for the run. The samples to predict are
split into disjoint shards balanced by count (``refseg.sharding.split_even``); one worker
process per device, started with the ``spawn`` method, builds its own models from the picklable
:class:`refseg.Models` value (no model crosses a process boundary) and runs ``refseg.predict`` on
its shard: the same engine stream and label writer as a single-process run, under the same
``run_id``, so every worker joins the run's lock. Workers send their counts to the parent
through a queue: one progress bar (or callback) for the whole run. The first worker that fails
stops the run with its error (the others are terminated); what was written stays, and
``resume=True`` continues.

Scripts that call this must guard their entry point with ``if __name__ == "__main__":``, as
every ``spawn`` program must: each worker imports the main module again.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from refseg.config import PredictConfig
from refseg.failures import FailureReport, SampleFailure
from refseg.memory import MemoryBank
from refseg.models import Models
from refseg.sharding import split_even

logger = logging.getLogger(__name__)

Devices = str | Sequence[str]
"""``"all"`` (every CUDA device) or a list of torch devices, one worker each."""

STOP_TIMEOUT_S = 10.0
"""How long a terminated worker gets to exit before it is killed (seconds)."""


class WorkerError(RuntimeError):
    """A worker process failed; the message names it and carries its traceback."""


@dataclass(frozen=True)
class WorkerOutcome:
    """What one worker reports when its shard is done.

    Attributes:
        num_samples: samples it processed (written or skipped).
        num_detections: detections it wrote.
        failures: the samples it skipped.
    """

    num_samples: int
    num_detections: int
    failures: tuple[SampleFailure, ...]


@dataclass(frozen=True)
class _Job:
    """Everything one worker needs, picklable: names and values, no model, no connection."""

    index: int
    device: str
    sample_ids: tuple[str, ...]
    dataset_name: str
    database_uri: str | None
    database_name: str
    bank: MemoryBank
    label_field: str
    models: Models
    config: PredictConfig
    run_id: str
    batch_size: int
    num_workers: int
    write_every: int
    skip_failures: bool
    threads: int


def resolve_devices(devices: Devices) -> list[str]:
    """The devices of a multi-process run, checked.

    Args:
        devices: ``"all"`` (every CUDA device of this machine) or a non-empty list such as
            ``["cuda:0", "cuda:1"]`` or ``["cpu", "cpu"]`` (a device may repeat: two workers
            then share it).

    Raises:
        ValueError: no CUDA device for ``"all"``, a string other than ``"all"``, an empty list,
            something that is not a torch device, or a CUDA index this machine lacks.
    """
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(
                f"devices must be 'all' or a list such as ['cuda:0', 'cuda:1'], got {devices!r}; "
                "to run on one device pass device=... instead"
            )
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(
                "devices='all' found no CUDA device on this machine; pass devices=['cpu', 'cpu'] "
                "to run worker processes on the CPU, or leave devices unset"
            )
        return [f"cuda:{index}" for index in range(count)]
    devices = list(devices)
    if not devices:
        raise ValueError("devices is empty; give at least one device, e.g. ['cuda:0']")
    return [_checked_device(position, device) for position, device in enumerate(devices)]


def _checked_device(position: int, device: Any) -> str:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"devices[{position}] = {device!r} is not a torch device: {error}"
        ) from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"devices[{position}] = {device!r}: only 'cpu' and 'cuda:N' are supported")
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        index = 0 if parsed.index is None else parsed.index
        if index >= count:
            raise ValueError(
                f"devices[{position}] = {device!r}, but this machine has {count} CUDA device(s)"
                + (f": cuda:0 to cuda:{count - 1}" if count else "")
            )
        return f"cuda:{index}"
    return "cpu"


def predict_on_devices(
    view: Any,
    bank: MemoryBank,
    label_field: str,
    *,
    devices: list[str],
    models: Models,
    config: PredictConfig,
    run_id: str,
    batch_size: int,
    num_workers: int | None,
    write_every: int,
    skip_failures: bool,
    progress: bool | Callable[[int, int], None],
) -> tuple[int, int, FailureReport]:
    """Predicts ``view`` with one worker process per device (see the module docstring).

    The caller holds the field's lock under ``run_id`` and has chosen the samples (resume and
    overwrite are applied); the field must exist, so that workers never race to create it.

    Args:
        view: the samples to predict, all of them.
        devices: from :func:`resolve_devices`; fewer workers start when there are fewer samples.
        num_workers: image-decoding processes per worker; None: what this machine's cores
            allow once shared between the workers.
        progress: True shows one bar for the run; a callable receives ``(done, total)``.
        Other arguments: as ``refseg.predict``.

    Returns:
        (samples processed, detections written, the failures of all workers merged).

    Raises:
        The first worker's error (its traceback in the cause), or :class:`WorkerError` when a
        worker died without reporting (killed, out of memory).
    """
    import fiftyone as fo

    ids = list(view.values("id"))
    shards = split_even(ids, len(devices))
    cores = os.cpu_count() or 1
    share = max(1, cores // len(shards))
    jobs = [
        _Job(
            index=index,
            device=device,
            sample_ids=tuple(shard),
            dataset_name=view._dataset.name,
            database_uri=fo.config.database_uri,
            database_name=fo.config.database_name,
            bank=bank,
            label_field=label_field,
            models=models,
            config=config,
            run_id=run_id,
            batch_size=batch_size,
            num_workers=max(0, min(4, share - 1)) if num_workers is None else num_workers,
            write_every=write_every,
            skip_failures=skip_failures,
            threads=share,
        )
        for index, (device, shard) in enumerate(zip(devices, shards))
    ]
    outcomes = _run_workers(jobs, len(ids), progress)
    report = FailureReport("predict")
    for outcome in outcomes:
        report.failures.extend(outcome.failures)  # each worker logged its own already
    return (
        sum(o.num_samples for o in outcomes),
        sum(o.num_detections for o in outcomes),
        report,
    )


def _run_workers(
    jobs: list[_Job], total: int, progress: bool | Callable[[int, int], None]
) -> list[WorkerOutcome]:
    """Starts one process per job, relays progress, stops everything on the first failure."""
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    processes = [
        context.Process(target=_work, args=(job, events), name=f"refseg-{job.device}-{job.index}")
        for job in jobs
    ]
    devices = sorted({job.device for job in jobs})
    bar = tqdm(
        total=total,
        desc=f"Predicting ({len(jobs)} workers: {', '.join(devices)})",
        disable=progress is not True,
    )
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        bar.update(count)
        if callable(progress):
            progress(done, total)

    try:
        for process in processes:
            process.start()
        return _collect(jobs, processes, events, advance)
    finally:
        _stop(processes)
        events.close()
        events.join_thread()
        bar.close()


def _collect(jobs, processes, events, advance: Callable[[int], None]) -> list[WorkerOutcome]:
    outcomes: dict[int, WorkerOutcome] = {}
    while len(outcomes) < len(jobs):
        try:
            kind, index, payload = events.get(timeout=1.0)
        except queue.Empty:
            _check_alive(jobs, processes, outcomes)
            continue
        if kind == "progress":
            advance(payload)
        elif kind == "done":
            outcomes[index] = payload
        else:
            error, trace = payload
            job = jobs[index]
            raise error from WorkerError(
                f"worker {index} on {job.device} ({len(job.sample_ids)} samples) failed; "
                f"what it wrote is kept, run again with resume=True to continue. Its traceback:\n"
                f"{trace}"
            )
    return [outcomes[index] for index in range(len(jobs))]


def _check_alive(jobs, processes, outcomes) -> None:
    """Raises when a worker ended without reporting (a worker that reported exits with 0)."""
    for job, process in zip(jobs, processes):
        if job.index not in outcomes and process.exitcode not in (None, 0):
            raise WorkerError(
                f"worker {job.index} on {job.device} ended with exit code {process.exitcode} "
                "without reporting (killed, or out of memory?); the other workers were stopped. "
                "What was written is kept: run again with resume=True to continue."
            )


def _stop(processes) -> None:
    """Terminates the workers still running and reaps every worker."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        if process.pid is None:
            continue  # never started
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


# -- in the worker process ------------------------------------------------------------------


def _work(job: _Job, events) -> None:
    """A worker's whole life: build the models once, predict the shard, report, exit."""
    _exit_with_parent(os.getppid())
    torch.set_num_threads(job.threads)
    try:
        outcome = _predict_shard(job, events)
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises it
        events.put(("error", job.index, (_portable(error), traceback.format_exc())))
        return
    events.put(("done", job.index, outcome))


def _predict_shard(job: _Job, events) -> WorkerOutcome:
    import fiftyone as fo

    # the parent's database, even when it was chosen in code rather than in the environment
    fo.config.database_uri = job.database_uri
    fo.config.database_name = job.database_name
    from refseg.inference import predict

    reported = 0

    def progress(done: int, total: int) -> None:
        nonlocal reported
        events.put(("progress", job.index, done - reported))
        reported = done

    dataset = fo.load_dataset(job.dataset_name)
    result = predict(
        dataset.select(list(job.sample_ids)),
        job.bank,
        job.label_field,
        models=job.models,
        config=job.config,
        batch_size=job.batch_size,
        device=job.device,
        num_workers=job.num_workers,
        write_every=job.write_every,
        resume=True,
        skip_failures=job.skip_failures,
        run_id=job.run_id,
        progress=progress,
    )
    return WorkerOutcome(result.num_samples, result.num_detections, tuple(result.failures))


def _portable(error: BaseException) -> BaseException:
    """The error itself when it survives pickling (so the parent raises the same type), else a
    RuntimeError with its type and message."""
    try:
        copy = pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any pickling problem means "send it as text"
        copy = None
    if type(copy) is type(error) and str(copy) == str(error):
        return error
    return RuntimeError(f"{type(error).__name__}: {error}")


def _exit_with_parent(parent: int) -> None:
    """Ends this worker when the parent process is gone (killed), so no orphan keeps running."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        logger.warning("the parent process %d is gone; this refseg worker exits", parent)
        os._exit(1)

    threading.Thread(target=watch, name="refseg-parent-watch", daemon=True).start()
