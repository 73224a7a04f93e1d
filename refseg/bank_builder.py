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

from refseg.components import FeatureEncoder, MaskProposer
from refseg.config import ReferenceConfig
from refseg.encoding import ReferenceCrop, crop_reference, encode_crops
from refseg.fiftyone_io import check_bank_name, chunked, save_bank
from refseg.images import load_image
from refseg.locks import RunLock
from refseg.memory import MemoryBank, ReferenceRecord
from refseg.models import RANDOM, RANDOM_WEIGHTS, ModelCache, Models
from refseg.references import absolute_box, label_mask, masks_from_boxes
from refseg.sampling import ReferenceLabel, reference_labels

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Prepared:
    record: ReferenceRecord
    crop: ReferenceCrop


def build_memory_bank(
    reference_view: fo.core.collections.SampleCollection,
    gt_field: str,
    *,
    models: Models | None = None,
    config: ReferenceConfig = ReferenceConfig(),
    tag: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    name: str | None = None,
    overwrite: bool = False,
    cache: ModelCache | None = None,
    progress: bool | Callable[[int, int], None] = True,
    sam2: str | None = None,
    dinov2: str | None = None,
    pretrained: bool | None = None,
    sam2_checkpoint: str | None = None,
    dinov2_checkpoint: str | None = None,
    encoder: FeatureEncoder | None = None,
    proposer: MaskProposer | None = None,
) -> MemoryBank:
    """Encodes the reference labels of a view into a memory bank.

    Args:
        reference_view: samples holding the reference labels.
        gt_field: their ``fo.Detections`` field. Labels with a mask are used as they are;
            box-only labels get a mask from the proposer prompted with the box.
        models: the proposer (recorded with the bank, and used for box-only labels) and the
            encoder, with their weights; default ``Models()`` (SAM 2.1 Hiera-L, DINOv2
            ViT-L/14, official weights). ``refseg.PAPER.models`` for paper mode.
        config: reference settings (``refseg.PAPER.reference`` for paper mode).
        tag: only labels carrying this label tag (e.g. the tag of ``sample_references``);
            None uses every label of ``gt_field`` in the view.
        device: torch device; default CUDA when available.
        batch_size: reference crops encoded together.
        name: also store the bank with the dataset as a run of this name.
        overwrite: allow replacing a stored bank of the same name.
        cache: a ModelCache to reuse loaded models.
        progress: True shows a progress bar; a callable receives ``(done, total)`` references
            after each batch.
        sam2, dinov2, pretrained, sam2_checkpoint, dinov2_checkpoint: keyword shortcuts over
            ``models`` (see ``Models.of``); ``pretrained=False`` means random weights (tests
            and smoke runs only; warns).
        encoder, proposer: ready components instead of building them from ``models``.

    Returns:
        The MemoryBank (class names sorted).

    Raises:
        ValueError: no reference labels, a label without a usable mask, or a stored bank of
            the same name without ``overwrite``.
    """
    labels = list(reference_labels(reference_view, gt_field, tag=tag))
    if not labels:
        where = f"with tag {tag!r} " if tag else ""
        raise ValueError(
            f"No labels {where}in field {gt_field!r} of the {len(reference_view)} samples given; "
            "tag references first (refseg.sample_references) or pass another view/field"
        )
    dataset = reference_view._dataset
    if name is not None:
        check_bank_name(dataset, name, overwrite=overwrite)
    models = Models.of(
        sam2=sam2,
        dinov2=dinov2,
        pretrained=pretrained,
        sam2_checkpoint=sam2_checkpoint,
        dinov2_checkpoint=dinov2_checkpoint,
        base=models,
    )
    lock = RunLock(dataset, f"bank:{name}", description=f"refseg.build_memory_bank {name!r}")
    with lock if name is not None else nullcontext():
        cache = cache or ModelCache()
        encoder = encoder or models.build_component("encoder", device=device, cache=cache)
        needs_proposer = any(label.detection.mask is None for label in labels)
        if needs_proposer and proposer is None:
            proposer = models.build_component("proposer", device=device, cache=cache)
        records, prototypes = _encode(
            labels, encoder, proposer, config, dataset.name, batch_size, progress
        )
        bank = _assemble(records, prototypes, encoder, proposer, models, config)
        if name is not None:
            save_bank(dataset, name, bank, overwrite=overwrite)
    return bank


def _encode(labels, encoder, proposer, config, dataset_name, batch_size, progress):
    """Stages 1-2 for every label, in batches: (records, (R, D) float32 prototypes)."""
    records, prototypes = [], []
    bar = tqdm(total=len(labels), desc="Encoding references", disable=progress is not True)
    for batch in chunked(_prepare(labels, encoder, proposer, config, dataset_name), batch_size):
        batch_prototypes, weight_sums = encode_crops(encoder, [p.crop for p in batch], config)
        _check_weights(batch, weight_sums, config)
        records.extend(p.record for p in batch)
        prototypes.append(batch_prototypes.numpy())
        bar.update(len(batch))
        if callable(progress):
            progress(len(records), len(labels))
    bar.close()
    return records, np.concatenate(prototypes)


def _prepare(labels, encoder, proposer, config, dataset_name):
    """Yields each label's crop, decoding each image once."""
    by_image: dict[str, list[ReferenceLabel]] = defaultdict(list)
    for label in labels:
        by_image[label.filepath].append(label)
    for filepath, image_labels in by_image.items():
        image, (height, width) = load_image(filepath)
        boxes = [absolute_box(l.detection, width, height) for l in image_labels]
        masks = _masks(image_labels, boxes, width, height, proposer, filepath)
        for label, box, mask in zip(image_labels, boxes, masks):
            if not mask.any():
                raise ValueError(
                    f"Reference label {label.detection.id} ({label.detection.label!r}) of sample "
                    f"{label.sample_id} has an empty mask; fix or untag it"
                )
            record = ReferenceRecord(
                dataset=dataset_name,
                sample_id=label.sample_id,
                label_id=label.detection.id,
                label=label.detection.label,
                filepath=filepath,
                box=box,
                mask_source="label" if label.detection.mask is not None else "box",
            )
            crop = crop_reference(image, torch.from_numpy(mask), box, encoder.input_size, config)
            yield _Prepared(record, crop)


def _masks(labels, boxes, width, height, proposer, filepath) -> list[np.ndarray]:
    """Full-image masks of an image's reference labels (SAM2 for box-only labels)."""
    masks: list[np.ndarray | None] = [
        label_mask(l.detection, width, height) if l.detection.mask is not None else None
        for l in labels
    ]
    missing = [i for i, m in enumerate(masks) if m is None]
    if missing:
        made = masks_from_boxes(proposer, filepath, [boxes[i] for i in missing])
        for i, mask in zip(missing, made):
            masks[i] = mask
    return masks  # type: ignore[return-value]


def _check_weights(batch: list[_Prepared], weight_sums: torch.Tensor, config) -> None:
    for prepared, total in zip(batch, weight_sums.tolist()):
        if total <= 0:
            raise ValueError(
                f"Reference label {prepared.record.label_id} ({prepared.record.label!r}) has no "
                f"mask pixel on the encoder's patch grid with mask_downsample="
                f"{config.mask_downsample!r} (a thin object); use mask_downsample='area' or "
                "untag this label"
            )


def _assemble(records, prototypes, encoder, proposer, models: Models, config) -> MemoryBank:
    class_names = tuple(sorted({r.label for r in records}))
    index = {name: i for i, name in enumerate(class_names)}
    return MemoryBank(
        class_names=class_names,
        prototypes=prototypes.astype(np.float32),
        labels=np.array([index[r.label] for r in records], dtype=np.int64),
        references=tuple(records),
        encoder=dict(encoder.identity),
        proposer=dict(proposer.identity) if proposer is not None else _unbuilt_identity(models),
        settings=config,
    )


def _unbuilt_identity(models: Models) -> dict[str, str]:
    """The proposer's identity when no reference needed it: its name, and its weights as
    chosen (random weights are recorded, so ``predict`` builds the same kind)."""
    weights = RANDOM_WEIGHTS if models.proposer_weights == RANDOM else models.proposer_weights
    return {"name": models.proposer, "weights": weights}
