"""``predict``: a memory bank applied to a FiftyOne view, written as a Detections field."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import fiftyone as fo
import torch
from tqdm.auto import tqdm

from refseg.components import FeatureEncoder, MaskProposer
from refseg.config import PredictConfig
from refseg.field_safety import check_output_field
from refseg.fiftyone_io import samples_of, to_detections, write_detections
from refseg.images import target_loader
from refseg.memory import MemoryBank
from refseg.models import ModelCache, build_encoder, build_proposer
from refseg.predictions import Predictions
from refseg.segmenter import Segmenter
from refseg.timing import NoTimer, StageTimer

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each batch of images."""


def predict(
    target_view: fo.core.collections.SampleCollection,
    bank: MemoryBank,
    label_field: str,
    *,
    points_per_side: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    config: PredictConfig = PredictConfig(),
    sam2: str | None = None,
    sam2_checkpoint: str | None = None,
    dinov2_checkpoint: str | None = None,
    pretrained: bool = True,
    num_workers: int | None = None,
    write_every: int = 64,
    overwrite: bool = False,
    resume: bool = False,
    proposer: MaskProposer | None = None,
    encoder: FeatureEncoder | None = None,
    cache: ModelCache | None = None,
    progress: bool | ProgressCallback = True,
    timer: StageTimer | NoTimer = NoTimer(),
) -> int:
    """Segments every image of a view with a memory bank and stores the detections.

    Each sample gets a ``fo.Detections`` in ``label_field`` (empty when nothing is found):
    one ``fo.Detection`` per instance with its label, box, mask cropped to the box and
    ``confidence``. Other fields are never touched.

    Args:
        target_view: the images to segment.
        bank: the memory bank (see ``build_memory_bank``).
        label_field: the field to write.
        points_per_side: prompt grid density; overrides ``config.points_per_side``.
        batch_size: images encoded together.
        device: torch device; default CUDA when available.
        config: prediction settings (``refseg.config.PAPER_PREDICT`` for paper mode).
        sam2: the SAM2 model; default the one recorded in the bank.
        sam2_checkpoint, dinov2_checkpoint: explicit weight files.
        pretrained: False builds the models with random weights (tests and smoke runs only).
        num_workers: DataLoader processes decoding images; default min(4, CPUs - 1).
        write_every: samples per batched database write.
        overwrite: allow writing into an existing Detections field (its values on the
            predicted samples are replaced; other samples keep theirs).
        resume: continue an interrupted run: samples of the view that already have a value
            in ``label_field`` are kept and skipped. Results are deterministic, so a resumed
            run gives the labels an uninterrupted one would.
        proposer, encoder: ready components instead of building them. The encoder must be the
            one that built the bank.
        cache: a ModelCache to reuse loaded models.
        progress: True shows a progress bar; a callable receives ``(done, total)``.
        timer: receives per-stage times (benchmarks); default measures nothing.

    Returns:
        The number of detections written.

    Raises:
        ValueError: an empty view, an existing field without ``overwrite``, or a bank built
            with another encoder.
    """
    if len(target_view) == 0:
        raise ValueError("The target view has no samples; nothing to predict")
    check_output_field(target_view, label_field, overwrite=overwrite or resume, bank=bank)
    if resume and label_field in target_view._dataset.get_field_schema():
        target_view = target_view.exists(label_field, False)
        if len(target_view) == 0:
            return 0
    if points_per_side is not None:
        config = dataclasses.replace(config, points_per_side=points_per_side)
    cache = cache or ModelCache()
    encoder = encoder or build_encoder(
        bank.encoder["name"],
        checkpoint=dinov2_checkpoint,
        pretrained=pretrained,
        device=device,
        cache=cache,
    )
    proposer = proposer or build_proposer(
        sam2 or bank.proposer["name"],
        checkpoint=sam2_checkpoint,
        pretrained=pretrained,
        device=device,
        cache=cache,
    )
    segmenter = Segmenter(proposer, encoder, bank, config, timer)
    return _run(segmenter, target_view, label_field, batch_size, num_workers, write_every, progress)


def _run(segmenter, view, label_field, batch_size, num_workers, write_every, progress) -> int:
    """Loads, segments and writes in order.

    Images are decoded in DataLoader workers; labels are built and written (one batched write
    per ``write_every`` samples) in a writer thread, so host work overlaps the next batch's
    device work. At most one write is in flight, and its errors surface here.
    """
    ids, paths = samples_of(view)
    workers = _default_workers() if num_workers is None else num_workers
    loader = target_loader(
        paths, segmenter.proposer.image_size, batch_size=batch_size, num_workers=workers
    )
    timer = segmenter.timer
    bar = tqdm(total=len(ids), desc="Predicting", disable=progress is not True)
    pending: dict[str, Predictions] = {}
    written = done = 0
    in_flight: Future | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="refseg-writer") as writer:
        for indices, images, sizes in _timed(loader, timer, "decode_resize"):
            for index, predictions in zip(indices, segmenter.segment_batch(images, sizes)):
                pending[ids[index]] = predictions
                written += len(predictions)
            done += len(indices)
            bar.update(len(indices))
            if callable(progress):
                progress(done, len(ids))
            if len(pending) >= write_every:
                in_flight = _submit(writer, in_flight, view, label_field, pending, timer)
                pending = {}
        _submit(writer, in_flight, view, label_field, pending, timer).result()
    bar.close()
    return written


def _submit(writer, in_flight, view, label_field, pending, timer) -> Future:
    """Waits for the previous write, then starts writing ``pending`` in the writer thread."""
    if in_flight is not None:
        in_flight.result()
    return writer.submit(_write, view, label_field, pending, timer)


def _write(view, label_field, pending: dict[str, Predictions], timer) -> None:
    with timer("label_building"):
        values = {sample_id: to_detections(p) for sample_id, p in pending.items()}
    with timer("db_writes"):
        write_detections(view, label_field, values)


def _timed(items: Iterable, timer, stage: str) -> Iterator:
    """Yields from ``items``, charging the wait for each item to ``stage``."""
    iterator = iter(items)
    while True:
        with timer(stage):
            item = next(iterator, None)
        if item is None:
            return
        yield item


def _default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))
