"""Stage 0 of the method: choose K reference instances per class, seeded and reproducible.

The rule (``shared/design/method.md``, stage 0): a *candidate* is a non-crowd instance whose box
is at least 32 x 32 px and lies at least 10 px inside every image border. Per class, the
instances are shuffled with the seed and walked in that order; an instance is accepted if it is a
candidate and its image has not yet given an instance of that class; the walk stops at K. Fewer
than K accepted is an error.

Parity with the research code (``no_time_to_train/dataset/few_shot_sampling.py``). It seeds
Python's ``random`` once, then for each class, in the order in which classes first appear in the
COCO json's ``annotations`` list, shuffles *all* of that class's annotations (candidates or not,
in json order) with one ``random.shuffle`` call, and walks the shuffled list, skipping
non-candidates. ``sample_references`` does the same with ``random.Random(seed)``, so it chooses the
same instances for the same seed if, and only if, all of the following hold:

- the labels are visited in the json's annotation order. By default labels are visited in the
  order of the collection (samples, then each sample's detections). ``fo.Dataset.from_dir`` with
  ``COCODetectionDataset`` sorts samples by image id and keeps each image's annotations in json
  order, so the default matches only a json whose annotations are grouped by image in ascending
  image id. COCO 2017's are not (``instances_train2017.json`` starts with annotation ids 156 and
  509, both "hot dog", on images 558840 and 200365). Import with ``include_annotation_id=True``
  and pass ``order_by="coco_id"``: that visits labels in ascending annotation id, which is the
  json order of any file whose annotations are sorted by id (believed true of the COCO 2017 files,
  whose first annotations have ascending ids; not checked here against the full files);
- the classes are the research run's class split (``classes=`` the 20 COCO-FSOD novel classes
  for ``--dataset few_shot_classes``; ``None`` for ``coco``, all 80): every class sampled
  consumes random numbers, so adding or removing a class changes the choice for later classes;
- every annotation became one label (FiftyOne's importer drops annotations without a bbox; COCO
  has none) and the research run removed none (it drops ``isimpossible == 1`` annotations before
  shuffling; COCO has no such field);
- ``iscrowd`` is 0 or 1 (the research code tests ``== 1``, refseg tests truthiness).

Boxes are compared in pixels recovered as ``round(relative * size, 6)``, which undoes the
relative-coordinate round trip for boxes given to at most 6 decimals (COCO gives 2), so boundary
cases such as a box exactly 32 px wide are decided as the research code decides them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import fiftyone as fo
from fiftyone import ViewField as F

from refseg import arguments

DEFAULT_TAG = "refseg:reference"
"""The label tag that marks the chosen references."""

MIN_BOX_SIDE = 32.0
"""A candidate's box is at least this wide and this high, in pixels."""

MIN_BORDER_GAP = 10.0
"""A candidate's box lies at least this far inside every image border, in pixels."""

_PIXEL_DECIMALS = 6

RULE = (
    f"a candidate is a non-crowd box at least {MIN_BOX_SIDE:g}x{MIN_BOX_SIDE:g} px lying at "
    f"least {MIN_BORDER_GAP:g} px inside every image border, at most one per image and class"
)


class ReferenceLabel(NamedTuple):
    """One label to encode as a reference.

    Attributes:
        sample_id: the FiftyOne id of the sample holding the label.
        filepath: the sample's image file.
        image_size: (width, height) of the image in pixels, from the sample's metadata; None
            when the metadata is missing and the image cannot be read to compute it (reading
            the image then raises ``refseg.failures.ImageReadError`` with the reason).
        detection: the label; ``bounding_box`` is [x, y, w, h] relative to the image, in [0, 1].
    """

    sample_id: str
    filepath: str
    image_size: tuple[int, int] | None
    detection: fo.Detection


@dataclass(frozen=True)
class _Instance:
    """One label as the sampler sees it; ``image`` is the sample id."""

    image: str
    label_id: str
    label: str
    is_candidate: bool


def sample_references(
    sample_collection: fo.core.collections.SampleCollection,
    gt_field: str,
    *,
    shots: int,
    seed: int,
    classes: Sequence[str] | None = None,
    tag: str = DEFAULT_TAG,
    replace: bool = False,
    order_by: str | None = None,
) -> fo.DatasetView:
    """Chooses ``shots`` reference instances per class and tags them in the dataset.

    Args:
        sample_collection: the dataset or view to choose from.
        gt_field: a ``fo.Detections`` field of it holding the annotated instances.
        shots: K, the number of references per class (>= 1).
        seed: the seed of the shuffle; the paper's COCO runs used 33.
        classes: the classes to sample, each needing K references; None = every class present
            in ``gt_field``. The set matters, not its order (see the module docstring).
        tag: the label tag written on the chosen labels (``fo.Detection.tags``), so they can be
            seen and edited in the App.
        replace: if ``tag`` already marks labels of ``gt_field`` anywhere in the dataset, True
            removes it from them first; False refuses.
        order_by: a numeric attribute of the labels giving their order in the source annotation
            file (``"coco_id"`` for COCO imported with ``include_annotation_id=True``); None visits
            them in collection order. Only parity with the research code depends on it.

    Returns:
        The samples of ``sample_collection`` that hold a tagged label of ``gt_field``.

    Raises:
        ValueError: on bad arguments, on a tag already in use without ``replace``, or when a
            class has fewer than ``shots`` acceptable instances (all such classes are named,
            with the counts found, and nothing is written).
    """
    _check_sampling_args(shots, seed, classes)
    sample_collection = arguments.sample_collection(sample_collection, "sample_collection")
    _check_detections_field(sample_collection, gt_field)
    dataset = _root_dataset(sample_collection)
    in_use = dataset.count_label_tags(label_fields=gt_field).get(tag, 0)
    if in_use and not replace:
        raise ValueError(
            f"{in_use} label(s) of field '{gt_field}' in dataset '{dataset.name}' already carry "
            f"the tag '{tag}'. Pass replace=True to move the tag to the new choice, or pass "
            f"another tag=..."
        )
    _ensure_metadata(sample_collection)
    instances = _read_instances(sample_collection, gt_field, order_by)
    by_class = _group_by_class(instances, classes)
    chosen = _choose(by_class, shots, seed)
    if in_use:
        dataset.untag_labels(tag, label_fields=gt_field)
    label_ids = [inst.label_id for insts in chosen.values() for inst in insts]
    dataset.select_labels(ids=label_ids, fields=gt_field).tag_labels(tag, label_fields=gt_field)
    return sample_collection.match_labels(tags=tag, fields=gt_field)


def reference_labels(
    sample_collection: fo.core.collections.SampleCollection,
    gt_field: str,
    tag: str | None = None,
) -> Iterator[ReferenceLabel]:
    """Yields the labels of ``gt_field`` to encode as references, in collection order.

    Args:
        sample_collection: the dataset or view holding the references.
        gt_field: a ``fo.Detections`` field.
        tag: only labels carrying this label tag (e.g. ``DEFAULT_TAG`` after
            ``sample_references``); None yields every label of the field.

    Yields:
        One ``ReferenceLabel`` per label. Image sizes come from ``metadata``, computed first for
        samples that lack it; an image that cannot be read gets no size (None), so the caller
        that reads it reports or raises the failure.
    """
    _check_detections_field(sample_collection, gt_field)
    view = sample_collection
    if tag is not None:
        view = view.filter_labels(gt_field, F("tags").contains(tag))
    missing = view.exists("metadata.width", False)
    if len(missing):
        missing.compute_metadata(skip_failures=True, warn_failures=False, progress=False)
    paths = ["id", "filepath", "metadata.width", "metadata.height", f"{gt_field}.detections"]
    for sample_id, filepath, width, height, detections in zip(*view.values(paths)):
        size = None if width is None or height is None else (width, height)
        for detection in detections or []:
            yield ReferenceLabel(sample_id, filepath, size, detection)


def _check_sampling_args(shots: int, seed: int, classes: Sequence[str] | None) -> None:
    """Raises a ValueError or TypeError naming the first bad argument."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be an integer >= 1, got {shots!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if isinstance(classes, str):
        raise TypeError(f"classes must be a list of class names, got the string {classes!r}")
    if classes is not None and len(classes) == 0:
        raise ValueError("classes is empty; pass None to sample every class of the field")


def _check_detections_field(
    sample_collection: fo.core.collections.SampleCollection, gt_field: str
) -> None:
    """Raises a ValueError unless ``gt_field`` is a ``fo.Detections`` field of the collection."""
    schema = sample_collection.get_field_schema(embedded_doc_type=fo.Detections)
    if gt_field not in schema:
        raise ValueError(
            f"'{gt_field}' is not a Detections field of dataset "
            f"'{_root_dataset(sample_collection).name}'; Detections fields: {sorted(schema)}"
        )


def _root_dataset(sample_collection: fo.core.collections.SampleCollection) -> fo.Dataset:
    """The dataset behind a dataset or view (reference tags are kept dataset-wide)."""
    if isinstance(sample_collection, fo.Dataset):
        return sample_collection
    return fo.load_dataset(sample_collection.dataset_name)


def _ensure_metadata(sample_collection: fo.core.collections.SampleCollection) -> None:
    """Computes image sizes where missing; raises if some images cannot be read."""
    if not len(sample_collection.exists("metadata.width", False)):
        return
    sample_collection.exists("metadata.width", False).compute_metadata()
    missing = sample_collection.exists("metadata.width", False)
    if len(missing):
        raise ValueError(
            f"{len(missing)} sample(s) have no image size and their images could not be read, "
            f"e.g. {missing.first().filepath}; fix their filepath or set "
            f"sample.metadata = fo.ImageMetadata(width=..., height=...)"
        )


def _read_instances(
    sample_collection: fo.core.collections.SampleCollection,
    gt_field: str,
    order_by: str | None,
) -> list[_Instance]:
    """Every labelled detection of the field, in collection order or sorted by ``order_by``."""
    prefix = f"{gt_field}.detections"
    paths = ["id", "metadata.width", "metadata.height", f"{prefix}.id", f"{prefix}.label"]
    paths += [f"{prefix}.bounding_box", f"{prefix}.iscrowd"]
    if order_by is not None:
        paths.append(f"{prefix}.{order_by}")
    instances, keys = [], []
    for sample_id, width, height, label_ids, *columns in zip(*sample_collection.values(paths)):
        count = len(label_ids or [])
        columns = [column if column is not None else [None] * count for column in columns]
        for label_id, label, box, iscrowd, *key in zip(label_ids or [], *columns):
            if label is None:
                continue
            candidate = not iscrowd and _box_is_candidate(box, width, height)
            instances.append(_Instance(sample_id, label_id, label, candidate))
            keys.extend(key)
    if order_by is None:
        return instances
    _check_order_keys(keys, gt_field, order_by)
    return [inst for _, inst in sorted(zip(keys, instances), key=lambda pair: pair[0])]


def _check_order_keys(keys: list[Any], gt_field: str, order_by: str) -> None:
    """Raises unless every label has a numeric, distinct ``order_by`` attribute."""
    bad = sum(1 for key in keys if isinstance(key, bool) or not isinstance(key, (int, float)))
    if bad:
        raise ValueError(
            f"{bad} label(s) of '{gt_field}' have no numeric '{order_by}' attribute; for COCO, "
            f"import with include_annotation_id=True and pass order_by='coco_id', or pass "
            f"order_by=None to use collection order"
        )
    if len(set(keys)) != len(keys):
        raise ValueError(f"'{order_by}' repeats across labels of '{gt_field}'; it must be unique")


def _box_is_candidate(box: Sequence[float], width: int, height: int) -> bool:
    """Whether a relative [x, y, w, h] box passes the size and border rule in pixels."""
    x, w = (round(v * width, _PIXEL_DECIMALS) for v in (box[0], box[2]))
    y, h = (round(v * height, _PIXEL_DECIMALS) for v in (box[1], box[3]))
    if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
        return False
    gaps = (x, y, width - (x + w), height - (y + h))
    return min(gaps) >= MIN_BORDER_GAP


def _group_by_class(
    instances: Iterable[_Instance], classes: Sequence[str] | None
) -> dict[str, list[_Instance]]:
    """Instances per class; classes keyed in order of first appearance, requested ones last."""
    wanted = None if classes is None else set(classes)
    groups: dict[str, list[_Instance]] = {}
    for inst in instances:
        if wanted is None or inst.label in wanted:
            groups.setdefault(inst.label, []).append(inst)
    for name in classes or []:
        groups.setdefault(name, [])
    return groups


def _choose(
    groups: dict[str, list[_Instance]], shots: int, seed: int
) -> dict[str, list[_Instance]]:
    """One seeded stream: shuffle each class's instances in turn and walk them (stage 0)."""
    rng = random.Random(seed)
    chosen, short = {}, []
    for label, instances in groups.items():
        order = list(instances)
        rng.shuffle(order)
        chosen[label] = _walk(order, shots)
        if len(chosen[label]) < shots:
            short.append(f"'{label}': {len(chosen[label])}")
    if short:
        raise ValueError(
            f"Too few references for {shots} shot(s) in {len(short)} class(es) "
            f"({', '.join(short)} found; {RULE}). Lower shots, or leave these classes out "
            f"with classes=[...]"
        )
    return chosen


def _walk(shuffled: Iterable[_Instance], shots: int) -> list[_Instance]:
    """Accepts candidates in order, at most one per image, until ``shots`` are accepted."""
    accepted, images = [], set()
    for inst in shuffled:
        if not inst.is_candidate or inst.image in images:
            continue
        images.add(inst.image)
        accepted.append(inst)
        if len(accepted) == shots:
            break
    return accepted
