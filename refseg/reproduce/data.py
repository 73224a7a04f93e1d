"""COCO-format files into one persistent FiftyOne dataset, through FiftyOne's COCO importer.

A reproduction dataset holds two kinds of samples, told apart by sample tags: ``"references"``
(the images references are taken from) and ``"targets"`` (the evaluated images). Both carry
their annotations in one ``fo.Detections`` field (``ground_truth``): label ``coco_id`` = the
annotation id, ``iscrowd`` as in the file, a mask where the file has a segmentation; the sample's
``coco_id`` is the image id. An image listed in both files becomes two samples.

Masks: FiftyOne's ``"segmentations"`` import drops annotations without a segmentation, and its
``"detections"`` import drops all masks. :func:`load_coco_dataset` therefore reads each file
first (:func:`scan_coco_file`) and imports the segmentations of a fully segmented file, the boxes
of an unsegmented one, and both for a mixed file, merged so that every annotation is kept once.
``masks=False`` imports boxes only (PASCAL VOC's json holds box rectangles as "segmentations").

Loading is resumable: the dataset records its sources in ``dataset.info`` and is marked complete
only after the last file; an incomplete dataset made here is deleted and loaded again.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass

import fiftyone as fo
import fiftyone.core.storage as fos

logger = logging.getLogger(__name__)

GT_FIELD = "ground_truth"
REFERENCES = "references"
TARGETS = "targets"
INFO_KEY = "refseg_reproduce"
_BOXES_FIELD = "refseg_import_boxes"


@dataclass(frozen=True)
class CocoSource:
    """One COCO-format annotation file to import.

    Attributes:
        labels_path: the json file (``images``, ``annotations``, ``categories``).
        images_dir: the directory its ``file_name`` s are relative to.
        tag: the sample tag given to its images: ``"references"`` or ``"targets"``.
        masks: False imports boxes only, ignoring any ``segmentation``.
        classes: import only the images holding one of these classes, and only their labels
            of these classes (keeps COCO train2017 small); None imports everything.
    """

    labels_path: str
    images_dir: str
    tag: str
    masks: bool = True
    classes: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        values = asdict(self)
        values["labels_path"] = os.path.abspath(self.labels_path)
        values["images_dir"] = os.path.abspath(self.images_dir)
        values["classes"] = None if self.classes is None else list(self.classes)
        return values


@dataclass(frozen=True)
class FileSummary:
    """What a COCO json holds.

    Attributes:
        num_images: entries of ``images``.
        num_annotations: entries of ``annotations`` with a ``bbox`` (FiftyOne drops the others).
        num_with_mask: of those, how many have a non-empty ``segmentation``.
        class_counts: class name -> number of annotations, in ``categories`` order.
        file_names: the images' ``file_name`` s.
    """

    num_images: int
    num_annotations: int
    num_with_mask: int
    class_counts: dict[str, int]
    file_names: tuple[str, ...]

    @property
    def mask_kind(self) -> str:
        """ "all", "none" or "some" annotations have a segmentation."""
        if self.num_with_mask == self.num_annotations:
            return "all"
        return "none" if self.num_with_mask == 0 else "some"

    @property
    def labelled_classes(self) -> tuple[str, ...]:
        """Classes with at least one annotation, in ``categories`` order."""
        return tuple(name for name, count in self.class_counts.items() if count)


def scan_coco_file(labels_path: str) -> FileSummary:
    """Reads a COCO json and summarises it (see :class:`FileSummary`).

    Raises:
        ValueError: the file is missing, not COCO-format, or an annotation names an unknown
            category.
    """
    if not os.path.isfile(labels_path):
        raise ValueError(f"COCO annotation file {labels_path!r} does not exist")
    with open(labels_path) as file:
        data = json.load(file)
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise ValueError(f"{labels_path!r} is not a COCO json: it has no {missing}")
    names = {c["id"]: c["name"] for c in data["categories"]}
    counts: Counter[str] = Counter()
    with_box = with_mask = 0
    for ann in data["annotations"]:
        if ann.get("category_id") not in names:
            raise ValueError(
                f"annotation {ann.get('id')} of {labels_path!r} has category_id "
                f"{ann.get('category_id')!r}, which is not in 'categories' ({sorted(names)})"
            )
        if ann.get("bbox") is None:
            continue
        with_box += 1
        with_mask += bool(ann.get("segmentation"))
        counts[names[ann["category_id"]]] += 1
    if with_box < len(data["annotations"]):
        logger.warning(
            "%s: %d annotation(s) without bbox are skipped",
            labels_path,
            len(data["annotations"]) - with_box,
        )
    return FileSummary(
        num_images=len(data["images"]),
        num_annotations=with_box,
        num_with_mask=with_mask,
        class_counts={name: counts[name] for name in names.values()},
        file_names=tuple(image["file_name"] for image in data["images"]),
    )


def load_coco_dataset(name: str, sources: list[CocoSource], *, progress: bool = True) -> fo.Dataset:
    """The persistent dataset ``name`` holding ``sources``, imported now unless already complete.

    Args:
        name: the FiftyOne dataset name.
        sources: the files to import, each tagged with its ``tag``.
        progress: show FiftyOne's import progress bars.

    Raises:
        ValueError: a file or image is missing, or a dataset ``name`` exists that was loaded
            from other files or not by this module (it is never deleted then).
    """
    wanted = [source.to_dict() for source in sources]
    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
        record = dataset.info.get(INFO_KEY)
        if record is None or record.get("sources") != wanted:
            raise ValueError(
                f"FiftyOne dataset {name!r} exists but was not loaded from these files "
                f"(recorded: {None if record is None else record.get('sources')}); pass another "
                f"--dataset-name, or delete it with fiftyone.delete_dataset({name!r})"
            )
        if record.get("complete"):
            logger.info("Reusing the complete dataset %r", name)
            return dataset
        logger.warning("Dataset %r was only partly loaded; loading it again", name)
        dataset.delete()
    summaries = [scan_coco_file(source.labels_path) for source in sources]
    for source, summary in zip(sources, summaries):
        _check_images(source, summary)
    dataset = fo.Dataset(name, persistent=True)
    dataset.info[INFO_KEY] = {"sources": wanted, "complete": False}
    dataset.save()
    for source, summary in zip(sources, summaries):
        _import(dataset, source, summary, progress)
    dataset.info[INFO_KEY] = {"sources": wanted, "complete": True}
    dataset.save()
    return dataset


def _check_images(source: CocoSource, summary: FileSummary) -> None:
    """Raises naming the first missing images of a file, before anything is imported."""
    if not os.path.isdir(source.images_dir):
        raise ValueError(f"image directory {source.images_dir!r} does not exist")
    missing = [f for f in summary.file_names if not os.path.isfile(_image_path(source, f))]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) of {source.labels_path!r} are not in {source.images_dir!r}, "
            f"e.g. {missing[:3]}; 'file_name' is read relative to that directory"
        )


def _image_path(source: CocoSource, file_name: str) -> str:
    return os.path.join(source.images_dir, file_name)


def _import(dataset: fo.Dataset, source: CocoSource, summary: FileSummary, progress: bool) -> None:
    """Imports one file (see the module docstring for how masks are handled)."""
    kind = summary.mask_kind if source.masks else "none"
    label_types, label_field = {
        "all": (["segmentations"], {"segmentations": GT_FIELD}),
        "none": (["detections"], {"detections": GT_FIELD}),
        "some": (["detections", "segmentations"],
                 {"detections": _BOXES_FIELD, "segmentations": GT_FIELD}),
    }[kind]  # fmt: skip
    label_field["coco_id"] = "coco_id"
    data_map = {fos.normpath(f): _image_path(source, f) for f in summary.file_names}
    before = set(dataset.values("id"))
    dataset.add_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=data_map,
        labels_path=os.path.abspath(source.labels_path),
        label_types=label_types,
        label_field=label_field,
        tags=[source.tag],
        include_id=True,
        include_annotation_id=True,
        classes=None if source.classes is None else list(source.classes),
        only_matching=source.classes is not None,
        progress=progress,
    )
    imported = dataset.exclude(list(before))
    if kind == "some":
        _merge_boxes(imported)
    _store_annotation_areas(imported, source.labels_path)


def _store_annotation_areas(view: fo.DatasetView, labels_path: str) -> None:
    """Copies each annotation's ``area`` from the file onto its label (attribute ``area``).

    FiftyOne's importer drops it; COCO evaluation (and the research code) uses the file's value
    to sort ground truth into the small / medium / large ranges, so ``refseg.evaluate`` reads it
    back from the label (``refseg.coco_metrics``).
    """
    with open(labels_path) as file:
        areas = {a["id"]: a["area"] for a in json.load(file).get("annotations", []) if "area" in a}
    label_ids, coco_ids = view.values(
        [f"{GT_FIELD}.detections.id", f"{GT_FIELD}.detections.coco_id"]
    )
    values = {
        label_id: float(areas[coco_id])
        for sample_labels, sample_coco in zip(label_ids, coco_ids)
        for label_id, coco_id in zip(sample_labels or [], sample_coco or [])
        if coco_id in areas
    }
    if values:
        view._dataset.set_label_values(f"{GT_FIELD}.detections.area", values)


def _merge_boxes(view: fo.DatasetView) -> None:
    """Every annotation once in ``GT_FIELD``: its segmented version if any, else its box."""
    ids, boxes, segmented = view.values(["id", _BOXES_FIELD, GT_FIELD])
    merged = {}
    for sample_id, box_labels, seg_labels in zip(ids, boxes, segmented):
        if box_labels is None:
            continue
        by_id = {d.coco_id: d for d in (seg_labels.detections if seg_labels else [])}
        merged[sample_id] = fo.Detections(
            detections=[by_id.get(d.coco_id, d) for d in box_labels.detections]
        )
    view._dataset.set_values(GT_FIELD, merged, key_field="id")
    view._dataset.delete_sample_field(_BOXES_FIELD)
