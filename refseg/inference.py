"""``predict``: a memory bank applied to a FiftyOne view, written as a Detections field.

``predict`` = the engine stream (``refseg.stream``: decode, segment, one result per image) +
the FiftyOne writer (``refseg.writer``: labels, batched writes). A sample whose image cannot be
read or segmented is skipped and reported, never written, so ``resume=True`` retries it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import fiftyone as fo
import torch
from tqdm.auto import tqdm

from refseg import arguments
from refseg.components import FeatureEncoder, MaskProposer
from refseg.config import PredictConfig
from refseg.database import database_errors
from refseg.failures import FailureReport, SampleError, SampleFailure
from refseg.field_safety import check_output_field
from refseg.fiftyone_io import ensure_detections_field, samples_of
from refseg.locks import RunLock
from refseg.memory import MemoryBank
from refseg.models import ModelCache, Models
from refseg.parallel import Devices, predict_on_devices, resolve_devices
from refseg.run_record import check_field_free
from refseg.segmenter import Segmenter
from refseg.sharding import check_delegation
from refseg.stream import segment_stream
from refseg.timing import NoTimer, StageTimer
from refseg.writer import LabelWriter

if TYPE_CHECKING:
    from refseg.run_record import RunStatus

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each batch of images."""


@dataclass(frozen=True)
class PredictResult:
    """What a ``predict`` run did.

    Attributes:
        label_field: the field written.
        num_samples: samples this run processed (written or skipped).
        num_detections: detections written.
        failures: the samples skipped, with their file and reason.
    """

    label_field: str
    num_samples: int
    num_detections: int
    failures: FailureReport

    @property
    def num_written(self) -> int:
        """Samples that received a value."""
        return self.num_samples - len(self.failures)


def predict(
    target_view: fo.core.collections.SampleCollection,
    bank: MemoryBank,
    label_field: str,
    *,
    models: Models | None = None,
    config: PredictConfig = PredictConfig(),
    batch_size: int = 1,
    device: str | torch.device | None = None,
    num_workers: int | None = None,
    write_every: int = 64,
    overwrite: bool = False,
    resume: bool = False,
    skip_failures: bool = True,
    run_id: str | None = None,
    force: bool = False,
    cache: ModelCache | None = None,
    progress: bool | ProgressCallback = True,
    timer: StageTimer | NoTimer = NoTimer(),
    points_per_side: int | None = None,
    sam2: str | None = None,
    sam2_checkpoint: str | Path | None = None,
    dinov2_checkpoint: str | Path | None = None,
    pretrained: bool | None = None,
    proposer: MaskProposer | None = None,
    encoder: FeatureEncoder | None = None,
    devices: Devices | None = None,
    shards: int = 1,
    delegate: bool = False,
    delegation_target: str | None = None,
) -> PredictResult | RunStatus:
    """Segments every image of a view with a memory bank and stores the detections.

    Each sample gets a ``fo.Detections`` in ``label_field`` (empty when nothing is found):
    one ``fo.Detection`` per instance with its label, box, mask cropped to the box and
    ``confidence``. Other fields are never touched.

    Args:
        target_view: the images to segment.
        bank: the memory bank (see ``build_memory_bank``), or the name of one stored with the
            dataset.
        label_field: the field to write.
        models: the proposer and encoder with their weights; None uses the models recorded in
            the bank. They are checked against the bank before any weights are loaded.
        config: prediction settings, or a dict of them (``refseg.PAPER.predict`` for paper
            mode). A bank's
            negative references lower the scores of what looks like them
            (``config.use_negatives``); its per-class thresholds apply with
            ``config.use_bank_thresholds``.
        batch_size: images encoded together.
        device: torch device; default CUDA when available.
        num_workers: DataLoader processes decoding images; default min(4, CPUs - 1).
        write_every: samples per batched database write.
        overwrite: allow writing into an existing Detections field: its values on the target
            samples are cleared first, then written (other samples keep theirs).
        resume: continue an interrupted run: samples of the view that already have a value
            in ``label_field`` are kept and skipped. Results are deterministic, so a resumed
            run gives the labels an uninterrupted one would.
        skip_failures: True (default) skips a sample whose image cannot be read or segmented
            and reports it in ``result.failures``; False raises :class:`SampleError` at the
            first such sample, after the samples already done are written.
        run_id: names this run in the field's lock (``refseg.locks``); processes given the same
            id (the shards of one run) share the lock, any other run into the field is refused.
        force: take the field's lock even though another run holds it (only when that run is
            known to be dead; a dead run's lock is also recovered by itself, see ``refseg.locks``).
        cache: a ModelCache to reuse loaded models.
        progress: True shows a progress bar; a callable receives ``(done, total)``.
        timer: receives per-stage times (benchmarks); default measures nothing.
        points_per_side: prompt grid density; overrides ``config.points_per_side``.
        sam2, sam2_checkpoint, dinov2_checkpoint, pretrained: keyword shortcuts over
            ``models`` (see ``Models.of``); ``pretrained=None`` keeps the bank's weights.
        proposer, encoder: ready components instead of building them (tests, custom models).
            The encoder must be the one that built the bank. Not with ``devices`` or
            ``delegate``: objects of this process cannot cross to other processes.
        devices: every device of this machine: ``"all"`` (every CUDA device) or a list such
            as ``["cuda:0", "cuda:1"]`` (``["cpu", "cpu"]`` works too): one worker process per
            device over its shard of the samples, one progress bar, failures merged
            (``refseg.parallel``); ``num_workers`` is then per worker, ``device`` unset.
        shards, delegate: ``delegate=True`` queues the run as ``shards`` delegated operations
            for ``fiftyone delegated launch`` workers on any number of machines and returns at
            once (``refseg.runs``); ``bank`` must be stored with the dataset.
        delegation_target: FiftyOne's delegation target of those operations.

    Returns:
        A :class:`PredictResult` (fields written, detections, the failure report); with
        ``delegate=True`` the queued run's :class:`refseg.run_record.RunStatus` (see
        ``refseg.run_status``, ``refseg.rerun_shards``).

    Raises:
        ValueError: an empty view, an existing field without ``overwrite``, a bank of negative
            references only, or models that do not fit the bank
            (``refseg.models.BankModelsMismatchError``).
        SampleError: a sample failed and ``skip_failures`` is False.
        RunLockedError: another run is writing ``label_field``.
        DatabaseUnavailableError: the database became unreachable; what was written before
            stays, and ``resume=True`` continues once it is back.
    """
    target_view = arguments.sample_collection(target_view, "target_view")
    bank = arguments.memory_bank(bank, target_view._dataset)
    config = arguments.settings(config, PredictConfig)
    if len(target_view) == 0:
        raise ValueError("The target view has no samples; nothing to predict")
    _check_scaling(devices, device, shards, delegate, proposer, encoder)
    bank.check_predictable()
    if points_per_side is not None:
        config = dataclasses.replace(config, points_per_side=points_per_side)
    if proposer is None or encoder is None:
        models = Models.of(
            sam2=sam2,
            pretrained=pretrained,
            sam2_checkpoint=sam2_checkpoint,
            dinov2_checkpoint=dinov2_checkpoint,
            base=models or Models.from_bank(bank),
        )
        if encoder is None:
            models.check_bank(bank)
    if delegate:
        from refseg.runs import queue_predict

        return queue_predict(
            target_view, bank, label_field, shards=shards, models=models, config=config,
            batch_size=batch_size, device=None if device is None else str(device),
            num_workers=num_workers, write_every=write_every, overwrite=overwrite,
            resume=resume, skip_failures=skip_failures, run_id=run_id, force=force,
            delegation_target=delegation_target,
        )  # fmt: skip
    worker_devices = None if devices is None else resolve_devices(devices)
    lock = RunLock(
        target_view._dataset,
        f"field:{label_field}",
        run_id=run_id,
        description=f"refseg.predict into field {label_field!r}",
        force=force,
    )
    with database_errors(f"predicting into field {label_field!r}"), lock:
        target_view._dataset.reload()  # another process may have written the field meanwhile
        check_field_free(target_view._dataset, label_field, lock.run_id)
        check_output_field(target_view, label_field, overwrite=overwrite or resume, bank=bank)
        target_view = _samples_to_predict(
            target_view, label_field, overwrite=overwrite, resume=resume
        )
        if len(target_view) == 0:
            return PredictResult(label_field, 0, 0, FailureReport("predict"))
        if worker_devices is not None:
            ensure_detections_field(target_view._dataset, label_field)
            num_samples, num_detections, report = predict_on_devices(
                target_view, bank, label_field, devices=worker_devices, models=models,
                config=config, run_id=lock.run_id, batch_size=batch_size,
                num_workers=num_workers, write_every=write_every, skip_failures=skip_failures,
                progress=progress,
            )  # fmt: skip
            if report:
                logger.warning("%s", report.summary())
            return PredictResult(label_field, num_samples, num_detections, report)
        cache = cache or ModelCache()
        if encoder is None:
            encoder = models.build_component(
                "encoder", device=device, cache=cache, expect=bank.encoder
            )
        if proposer is None:
            proposer = models.build_component("proposer", device=device, cache=cache)
        segmenter = Segmenter(proposer, encoder, bank, config, timer)
        return _run(
            segmenter,
            target_view,
            label_field,
            batch_size=batch_size,
            num_workers=_default_workers() if num_workers is None else num_workers,
            write_every=write_every,
            skip_failures=skip_failures,
            progress=progress,
        )


def _check_scaling(devices, device, shards, delegate, proposer, encoder) -> None:
    """Refuses combinations of the scale-out options that cannot work, before any work."""
    if (devices is not None or delegate) and (proposer is not None or encoder is not None):
        raise ValueError(
            "proposer= and encoder= are model objects of this process; they cannot be sent to "
            "worker processes (devices=) or delegated operations (delegate=True). Name the "
            "models instead, models=refseg.Models(...) (registered names and weights), which "
            "every worker builds for itself; or run in this process without devices/delegate."
        )
    if devices is not None and device is not None:
        raise ValueError(
            f"device={str(device)!r} and devices={devices!r} both given: devices= names the "
            "device of every worker process; leave device unset"
        )
    if devices is not None and delegate:
        raise ValueError(
            "devices= runs worker processes on this machine, delegate=True queues shards for "
            "`fiftyone delegated launch` workers: choose one (a delegated worker uses device=, "
            "by default its CUDA device; give each worker a GPU with CUDA_VISIBLE_DEVICES)"
        )
    check_delegation(shards, delegate)


def _samples_to_predict(view, label_field: str, *, overwrite: bool, resume: bool):
    """The samples this run predicts. ``resume`` keeps the samples already written; otherwise
    an existing field's values on the view are cleared first, so that an interrupted overwrite
    never leaves old and new labels that a later ``resume`` cannot tell apart."""
    exists = label_field in view._dataset.get_field_schema()
    if resume and exists:
        return view.exists(label_field, False)
    if overwrite and exists:
        view.clear_sample_field(label_field)
    return view


def _run(
    segmenter: Segmenter,
    view,
    label_field: str,
    *,
    batch_size: int,
    num_workers: int,
    write_every: int,
    skip_failures: bool,
    progress: bool | ProgressCallback,
) -> PredictResult:
    """Streams the view's images through the segmenter into the writer, reporting failures."""
    ids, paths = samples_of(view)
    report = FailureReport("predict")
    bar = tqdm(total=len(ids), desc="Predicting", disable=progress is not True)
    stream = segment_stream(
        segmenter,
        ids,
        paths,
        batch_size=batch_size,
        num_workers=num_workers,
        timer=segmenter.timer,
    )
    done = 0
    with LabelWriter(view, label_field, write_every=write_every, timer=segmenter.timer) as writer:
        for result in stream:
            if result.ok:
                writer.put(result.key, result.predictions)
            else:
                failure = SampleFailure(result.key, result.filepath, result.error or "")
                if not skip_failures:
                    raise SampleError(failure)
                report.add(failure)
                bar.set_postfix(skipped=len(report))
            done += 1
            bar.update(1)
            if callable(progress) and (done % batch_size == 0 or done == len(ids)):
                progress(done, len(ids))
    bar.close()
    if report:
        logger.warning("%s", report.summary())
    return PredictResult(label_field, len(ids), writer.num_detections, report)


def _default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))
