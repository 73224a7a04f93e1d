"""``build_memory_bank``: reference labels of a FiftyOne view to a MemoryBank (stages 1-2)."""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import fiftyone as fo
import numpy as np
import torch
from tqdm.auto import tqdm

from refseg import arguments
from refseg.components import FeatureEncoder, MaskProposer
from refseg.config import ReferenceConfig
from refseg.encoding import ReferenceCrop, crop_reference, encode_crops
from refseg.failures import FailureReport, ImageReadError, SampleError, SampleFailure
from refseg.field_safety import check_bank_name
from refseg.fiftyone_io import chunked, save_bank
from refseg.images import load_image
from refseg.locks import RunLock
from refseg.memory import MemoryBank, ReferenceRecord
from refseg.models import RANDOM, RANDOM_WEIGHTS, ModelCache, Models
from refseg.references import (
    InvalidReferenceError,
    absolute_box,
    check_references,
    detection_mask,
    label_mask,
    masks_from_boxes,
)
from refseg.run_record import RunStatus, check_target_free
from refseg.sampling import ReferenceLabel, reference_labels
from refseg.sharding import check_delegation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Prepared:
    record: ReferenceRecord
    crop: ReferenceCrop


@dataclass(frozen=True)
class ReferenceSource:
    """Where references come from, and what to do when an image cannot be read.

    Attributes:
        dataset: the dataset's name, recorded with each reference.
        field: the label field the references come from.
        skip_failures: True reports unreadable images into ``report``; False raises.
        report: receives the samples skipped.
        negative: whether the references are negative ones.
    """

    dataset: str
    field: str
    skip_failures: bool
    report: FailureReport
    negative: bool = False


@dataclass(frozen=True)
class EncodedReferences:
    """Stages 1-2 done for some reference labels: what a bank is assembled from.

    Attributes:
        records: one record per reference encoded (R of them), in label order.
        prototypes: (R, D) float32 instance prototypes, D the encoder's feature dimension.
        encoder: the encoder's identity (name, weights).
        proposer: the proposer's identity when one was built (box-only labels), else None.
    """

    records: list[ReferenceRecord]
    prototypes: np.ndarray
    encoder: dict
    proposer: dict | None


def build_memory_bank(
    reference_view: fo.core.collections.SampleCollection,
    gt_field: str,
    *,
    models: Models | None = None,
    config: ReferenceConfig = ReferenceConfig(),
    tag: str | None = None,
    negative: bool = False,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    name: str | None = None,
    overwrite: bool = False,
    cache: ModelCache | None = None,
    progress: bool | Callable[[int, int], None] = True,
    skip_failures: bool = False,
    failures: FailureReport | None = None,
    sam2: str | None = None,
    dinov2: str | None = None,
    pretrained: bool | None = None,
    sam2_checkpoint: str | None = None,
    dinov2_checkpoint: str | None = None,
    encoder: FeatureEncoder | None = None,
    proposer: MaskProposer | None = None,
    shards: int = 1,
    delegate: bool = False,
    delegation_target: str | None = None,
) -> MemoryBank | RunStatus:
    """Encodes the reference labels of a view into a memory bank.

    Every label is checked before any model or image is loaded (``refseg.references``): a
    label without a class, without a box, with a zero-area box, a box wholly outside the image,
    or an empty, unreadable or non-2-D mask raises an ``InvalidReferenceError`` listing the
    labels with their sample, label id and the fix. These work: a box partly outside the image
    (clipped), a mask whose shape does not fit its box (resized into it), a one-pixel mask or
    a box of a few pixels (with the default ``mask_downsample="area"``), and images of any
    mode PIL reads (grayscale, RGBA, palette, CMYK, 16-bit) and size.

    Args:
        reference_view: samples holding the reference labels.
        gt_field: their ``fo.Detections`` field. Labels with a mask (``mask`` or
            ``mask_path``) are used as they are; box-only labels get a mask from the proposer
            prompted with the box. The bank records it, and predictions are never written
            into it.
        models: the proposer (recorded with the bank, and used for box-only labels) and the
            encoder, with their weights; default ``Models()`` (SAM 2.1 Hiera-L, DINOv2
            ViT-L/14, official weights). ``refseg.PAPER.models`` for paper mode.
        config: reference settings (``refseg.PAPER.reference`` for paper mode).
        tag: only labels carrying this label tag (e.g. the tag of ``sample_references``, or
            ``refseg.NEGATIVE_TAG`` for negatives); None uses every label of ``gt_field`` in
            the view.
        negative: False (default): the labels are examples of their class. True: they are
            negative references, "not <their label>" (typically false positives of that
            class, tagged ``refseg.NEGATIVE_TAG``): encoded exactly as positives, into a bank
            of negatives only, which cannot predict by itself; merge it into a bank of
            positives with ``bank.with_references(negatives)``. A label with a
            ``confidence`` (a prediction) is recorded with it as ``ReferenceRecord.score``,
            so its field stays writable by ``predict`` (``refseg.field_safety``).
        device: torch device; default CUDA when available.
        batch_size: reference crops encoded together.
        name: also store the bank with the dataset as a run of this name.
        overwrite: allow replacing a stored bank of the same name.
        cache: a ModelCache to reuse loaded models.
        progress: True shows a progress bar; a callable receives ``(done, total)`` references
            after each batch.
        skip_failures: False (default) raises at the first reference whose image cannot be
            read, since a bank silently missing a reference is wrong; True leaves such
            references out, logs them, and records them in ``failures``.
        failures: a report that receives every sample skipped (sample id, image path, reason);
            pass ``FailureReport("build_memory_bank")`` and read it afterwards.
        sam2, dinov2, pretrained, sam2_checkpoint, dinov2_checkpoint: keyword shortcuts over
            ``models`` (see ``Models.of``); ``pretrained=False`` means random weights (tests
            and smoke runs only; warns).
        encoder, proposer: ready components instead of building them from ``models``.
        shards, delegate, delegation_target: ``delegate=True`` queues the build as ``shards``
            delegated operations for ``fiftyone delegated launch`` workers (many references:
            each shard encodes the references of its samples; the last shard to complete
            assembles the bank and stores it as ``name``, which is then required) and returns
            at once (see ``refseg.runs``).

    Returns:
        The MemoryBank (class names sorted); all its references are negative with
        ``negative=True``. With ``delegate=True``, the queued run's
        :class:`refseg.run_record.RunStatus` (see ``refseg.run_status``).

    Raises:
        InvalidReferenceError: unusable reference labels (see above); nothing is encoded.
        SampleError: with ``skip_failures=False``, a reference image cannot be read; the
            message names the sample, the file and why.
        ValueError: no reference labels (or none readable), or an invalid or taken bank
            ``name`` (checked before encoding).
    """
    reference_view = arguments.sample_collection(reference_view, "reference_view")
    config = arguments.settings(config, ReferenceConfig)
    dataset = reference_view._dataset
    if name is not None:
        check_bank_name(dataset, name, overwrite=overwrite)
    labels = list(reference_labels(reference_view, gt_field, tag=tag))
    if not labels:
        where = f"with tag {tag!r} " if tag else ""
        raise ValueError(
            f"No labels {where}in field {gt_field!r} of the {len(reference_view)} samples given; "
            "tag references first (refseg.sample_references) or pass another view/field"
        )
    check_references(labels)
    check_delegation(shards, delegate, [encoder, proposer], what="build")
    if delegate and name is None:
        raise ValueError("A delegated build stores the bank with the dataset: pass name=")
    report = failures if failures is not None else FailureReport("build_memory_bank")
    models = Models.of(
        sam2=sam2,
        dinov2=dinov2,
        pretrained=pretrained,
        sam2_checkpoint=sam2_checkpoint,
        dinov2_checkpoint=dinov2_checkpoint,
        base=models,
    )
    if delegate:
        from refseg.sharded_bank import queue_memory_bank

        return queue_memory_bank(
            reference_view, gt_field, labels, name, shards=shards, models=models, config=config,
            negative=negative, device=None if device is None else str(device),
            batch_size=batch_size, overwrite=overwrite, skip_failures=skip_failures,
            delegation_target=delegation_target,
        )  # fmt: skip
    lock = RunLock(dataset, f"bank:{name}", description=f"refseg.build_memory_bank {name!r}")
    with lock if name is not None else nullcontext():
        if name is not None:
            check_target_free(dataset, f"bank:{name}", lock.run_id)
        source = ReferenceSource(dataset.name, gt_field, skip_failures, report, negative)
        encoded = encode_references(
            labels, models, config, source=source, device=device, cache=cache,
            batch_size=batch_size, progress=progress, encoder=encoder, proposer=proposer,
        )  # fmt: skip
        check_kept({label.detection.label for label in labels}, len(labels), encoded, report)
        bank = assemble_bank(encoded, models, config)
        if name is not None:
            save_bank(dataset, name, bank, overwrite=overwrite, run_id=lock.run_id)
    return bank


def encode_references(
    labels: list[ReferenceLabel],
    models: Models,
    config: ReferenceConfig,
    *,
    source: ReferenceSource,
    device: str | torch.device | None = None,
    cache: ModelCache | None = None,
    batch_size: int = 16,
    progress: bool | Callable[[int, int], None] = False,
    encoder: FeatureEncoder | None = None,
    proposer: MaskProposer | None = None,
) -> EncodedReferences:
    """Stages 1-2 for checked reference labels (``refseg.references.check_references``): the
    encoder is built, and the proposer when a label has no mask; each image is read once.

    Args:
        labels: the labels, in the order their references get in the bank.
        models, config: the models to build and the reference settings.
        source: the references' dataset and field, and what to do with unreadable images.
        device, cache, batch_size, progress, encoder, proposer: as ``build_memory_bank``.

    Raises:
        SampleError: ``source.skip_failures`` is False and an image cannot be read.
        InvalidReferenceError: a mask turns out empty, or has no weight on the encoder's grid.
    """
    cache = cache or ModelCache()
    encoder = encoder or models.build_component("encoder", device=device, cache=cache)
    needs_proposer = any(not label.detection.has_mask for label in labels)
    if needs_proposer and proposer is None:
        proposer = models.build_component("proposer", device=device, cache=cache)
    records, prototypes = _encode(labels, encoder, proposer, config, source, batch_size, progress)
    return EncodedReferences(
        records=records,
        prototypes=prototypes,
        encoder=dict(encoder.identity),
        proposer=dict(proposer.identity) if proposer is not None else None,
    )


def _encode(labels, encoder, proposer, config, source, batch_size, progress):
    """Stages 1-2 for every readable label, in batches: (records, (R, D) float32 prototypes)."""
    records, prototypes = [], []
    bar = tqdm(total=len(labels), desc="Encoding references", disable=progress is not True)
    for batch in chunked(_prepare(labels, encoder, proposer, config, source), batch_size):
        batch_prototypes, weight_sums = encode_crops(encoder, [p.crop for p in batch], config)
        _check_weights(batch, weight_sums, config)
        records.extend(p.record for p in batch)
        prototypes.append(batch_prototypes.numpy())
        bar.update(len(batch))
        if callable(progress):
            progress(len(records), len(labels))
    bar.close()
    return records, np.concatenate(prototypes) if prototypes else np.zeros(
        (0, encoder.dim), np.float32
    )


def _prepare(labels, encoder, proposer, config, source: ReferenceSource):
    """Yields each label's crop, decoding each image once; unreadable images are reported
    (``skip_failures``) or raised."""
    by_image: dict[str, list[ReferenceLabel]] = defaultdict(list)
    for label in labels:
        by_image[label.filepath].append(label)
    for filepath, image_labels in by_image.items():
        try:
            image, (height, width) = load_image(filepath)
        except ImageReadError as error:
            _image_failed(image_labels, error, source)
            continue
        boxes = [absolute_box(label.detection, width, height) for label in image_labels]
        _check_sizes(image_labels, boxes)
        masks = _masks(image_labels, boxes, width, height, proposer, filepath)
        for label, box, (mask, mask_source) in zip(image_labels, boxes, masks):
            record = ReferenceRecord(
                dataset=source.dataset,
                sample_id=label.sample_id,
                label_id=label.detection.id,
                label=label.detection.label,
                filepath=filepath,
                box=box,
                mask_source=mask_source,
                field=source.field,
                negative=source.negative,
                score=_confidence(label),
            )
            crop = crop_reference(image, torch.from_numpy(mask), box, encoder.input_size, config)
            yield _Prepared(record, crop)


def _confidence(label: ReferenceLabel) -> float | None:
    """The label's confidence when it is a prediction, else None."""
    confidence = label.detection.confidence
    return None if confidence is None else float(confidence)


def _check_sizes(labels: list[ReferenceLabel], boxes: list[tuple[float, ...]]) -> None:
    """Refuses boxes under one pixel, which have no pixel to encode."""
    for label, (_, _, w, h) in zip(labels, boxes):
        if w < 1 or h < 1:
            raise InvalidReferenceError.of(
                label, f"its box is {w:g}x{h:g} px, under one pixel; draw a box around the object"
            )


def _image_failed(
    labels: list[ReferenceLabel], error: ImageReadError, source: ReferenceSource
) -> None:
    """Reports each sample of an unreadable image, or raises for the first one."""
    for sample_id in dict.fromkeys(label.sample_id for label in labels):
        failure = SampleFailure(sample_id, error.filepath, str(error))
        if not source.skip_failures:
            raise SampleError(failure) from error
        source.report.add(failure)


def _masks(labels, boxes, width, height, proposer, filepath) -> list[tuple[np.ndarray, str]]:
    """Full-image (H, W) bool masks of an image's reference labels, each with its source:
    "label" (the label's own mask) or "box" (SAM2 prompted with the box).

    Raises:
        InvalidReferenceError: a mask is empty once placed in the image.
    """
    given = [detection_mask(label.detection) for label in labels]
    masks: list[tuple[np.ndarray, str] | None] = [
        None if mask is None else (label_mask(label.detection, width, height, mask), "label")
        for label, mask in zip(labels, given)
    ]
    missing = [i for i, m in enumerate(masks) if m is None]
    if missing:
        made = masks_from_boxes(proposer, filepath, [boxes[i] for i in missing])
        for i, mask in zip(missing, made):
            masks[i] = (mask, "box")
    for label, box, (mask, mask_source) in zip(labels, boxes, masks):  # type: ignore[misc]
        if not mask.any():
            raise InvalidReferenceError.of(label, _empty_reason(mask_source, box))
    return masks  # type: ignore[return-value]


def _empty_reason(mask_source: str, box: tuple[float, ...]) -> str:
    pixels = "x".join(f"{v:g}" for v in box[2:])
    if mask_source == "box":
        return (
            f"SAM2 found nothing in its box ({pixels} px) and made an empty mask; draw its mask "
            "or a box that frames the object"
        )
    return f"its mask covers no pixel of the image once placed in its box ({pixels} px)"


def _check_weights(batch: list[_Prepared], weight_sums: torch.Tensor, config) -> None:
    for prepared, total in zip(batch, weight_sums.tolist()):
        if total <= 0:
            record = prepared.record
            fix = (
                "its mask lies outside its context crop (a box of a few pixels whose mask "
                "spills out of it); draw a box that frames the mask"
                if config.mask_downsample == "area"
                else "no patch of the encoder's grid samples a mask pixel with "
                "mask_downsample='nearest' (a thin or tiny object); build with "
                "mask_downsample='area', which weighs every mask pixel"
            )
            raise InvalidReferenceError(
                [
                    (
                        record.sample_id,
                        record.label_id,
                        f"{fix} (class {record.label!r}, image {record.filepath})",
                    )
                ]
            )


def check_kept(
    classes: set[str], num_labels: int, encoded: EncodedReferences, report: FailureReport
) -> None:
    """Raises when no reference was kept; warns about classes whose references were all
    skipped.

    Args:
        classes: the classes of the labels given.
        num_labels: how many labels were given.
        encoded: what was encoded of them.
        report: the samples skipped, for the message.
    """
    records = encoded.records
    if not records:
        raise ValueError(
            f"None of the {num_labels} reference labels could be encoded: every image failed "
            f"to be read.\n{report.summary()}"
        )
    lost = sorted(classes - {r.label for r in records})
    if lost:
        logger.warning(
            "build_memory_bank: classes %s have no reference left after skipping unreadable "
            "images; the bank does not know them",
            lost,
        )


def assemble_bank(encoded: EncodedReferences, models: Models, config) -> MemoryBank:
    """The bank of encoded references (class names sorted); the proposer's identity is the
    one built, else the one ``models`` names."""
    records = encoded.records
    class_names = tuple(sorted({r.label for r in records}))
    index = {name: i for i, name in enumerate(class_names)}
    return MemoryBank(
        class_names=class_names,
        prototypes=encoded.prototypes.astype(np.float32),
        labels=np.array([index[r.label] for r in records], dtype=np.int64),
        references=tuple(records),
        encoder=dict(encoded.encoder),
        proposer=dict(encoded.proposer) if encoded.proposer else _unbuilt_identity(models),
        settings=config,
    )


def _unbuilt_identity(models: Models) -> dict[str, str]:
    """The proposer's identity when no reference needed it: its name, and its weights as
    chosen (random weights are recorded, so ``predict`` builds the same kind)."""
    weights = RANDOM_WEIGHTS if models.proposer_weights == RANDOM else models.proposer_weights
    return {"name": models.proposer, "weights": weights}
