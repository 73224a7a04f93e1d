"""Which fields refseg may write: checked before anything is written, so nothing is lost.

Every writer asks here first: ``predict`` and the predict / preview operators (their label
field), boxes to masks into a new field, ``evaluate`` (the fields and label attributes its
``eval_key`` creates) and ``build_memory_bank`` / ``save_bank`` (the bank's run name). Each
refuses with a ``ValueError`` that names the field and says what to do:

- a name FiftyOne reserves or rejects: its default sample fields (``id``, ``filepath``,
  ``tags``, ``metadata``, ``created_at``, ``last_modified_at``, ``media_type``, ...), any other
  attribute of ``fo.Sample`` (a field named ``dataset`` or ``copy`` would hide behind it),
  ``frames`` and ``groups``, ``pk``, names that are empty, start with ``_`` or hold ``.``, ``$``
  or a null character (nested paths are not label fields);
- the label field a memory bank's references come from, even with ``overwrite=True``: for the
  bank in use (the field its references record, or any field holding one of its reference
  labels, which also protects banks of format version 1 that record no field) and for every
  bank stored with the dataset (the ``reference_fields`` of its run). References taken from
  predictions (labels with a confidence, ``ReferenceRecord.score``: "find more like this", or
  false positives marked as negatives) do not protect their field: the bank holds their
  prototype and a copy of their provenance, so predicting into that field again (which
  replaces those labels) loses nothing, and a prediction field marked up during curation
  stays a prediction field. Annotations always protect theirs;
- an existing field of another type than the one written (e.g. a string or Classification
  field where Detections are written);
- an existing field without ``overwrite``;
- a collection that is not of images (video, grouped): refseg writes image labels only.

The ``*_problem`` functions return the message (or None) for the operators' forms, which show
it and block the run; the ``check_*`` functions raise it.
"""

from __future__ import annotations

import fiftyone as fo
from bson import ObjectId
from fiftyone import ViewField as F

from refseg.fiftyone_io import BANK_RUN_METHOD, list_banks, run_method
from refseg.memory import MemoryBank

SampleCollection = fo.core.collections.SampleCollection

ALWAYS_RESERVED = frozenset({"frames", "groups", "pk"})
"""Names FiftyOne reserves on some datasets (video frames, groups) or in MongoEngine (``pk``);
refused everywhere, so a field name works the same on every dataset."""

EVAL_SAMPLE_SUFFIXES = ("_tp", "_fp", "_fn")
"""Sample fields a COCO detection evaluation writes: ``<eval_key>_tp`` and so on."""

EVAL_LABEL_SUFFIXES = ("", "_id", "_iou")
"""Label attributes it writes on both fields' detections: ``<eval_key>``, ``<eval_key>_id``..."""


def field_name_problem(collection: SampleCollection, field: object, *, what: str) -> str | None:
    """Why ``field`` cannot be the name of a field refseg creates, or None.

    Args:
        collection: the dataset or view to write.
        field: the proposed name.
        what: the argument it was given as, for the message (e.g. ``"label_field"``).
    """
    if not isinstance(field, str) or not field:
        return f"{what} must be a non-empty field name, got {field!r}"
    if field.startswith("_") or any(c in field for c in ".$\0"):
        return (
            f"{what} {field!r} is not a valid field name for refseg: names may not start with "
            "'_' or contain '.', '$' or a null character (nested paths are not label fields). "
            "Use letters, digits and '_', e.g. 'predictions'"
        )
    if field in _reserved_names(collection):
        return (
            f"{what} {field!r} is a name FiftyOne reserves for its own use (default sample "
            f"fields, Sample attributes, {', '.join(sorted(ALWAYS_RESERVED))}). Choose another "
            "name, e.g. 'predictions'"
        )
    return None


def output_field_problem(
    collection: SampleCollection,
    field: object,
    *,
    overwrite: bool,
    bank: MemoryBank | None = None,
    what: str = "label_field",
) -> str | None:
    """Why refseg may not write ``fo.Detections`` into ``field`` of ``collection``, or None.

    Args:
        collection: the dataset or view to write.
        field: the field name.
        overwrite: whether replacing the values of an existing Detections field is allowed.
        bank: the memory bank in use; the fields its references come from are protected.
        what: the argument name, for messages.

    Returns:
        The message, naming the field and what to do; None when the write is allowed.
    """
    problem = _media_problem(collection) or field_name_problem(collection, field, what=what)
    if problem:
        return problem
    dataset = collection._dataset
    schema = dataset.get_field_schema()
    if field not in schema:
        return None
    protected = _protection(dataset, field, bank)
    if protected:
        return (
            f"Field {field!r} of dataset {dataset.name!r} holds reference labels ({protected}); "
            "refseg never writes into it, not even with overwrite=True, because that would "
            f"replace the annotations the references come from. Choose another {what}, e.g. "
            f"'{field}_predictions'"
        )
    document_type = getattr(schema[field], "document_type", None)
    if document_type is not fo.Detections:
        held = getattr(document_type, "__name__", None) or type(schema[field]).__name__
        return (
            f"Field {field!r} of dataset {dataset.name!r} holds {held}, not Detections; refseg "
            f"will not overwrite it. Choose another {what}"
        )
    if not overwrite:
        return (
            f"Field {field!r} already exists on dataset {dataset.name!r}; choose another {what}, "
            "or pass overwrite=True to replace its values on the samples being written"
        )
    return None


def check_output_field(
    collection: SampleCollection,
    field: object,
    *,
    overwrite: bool,
    bank: MemoryBank | None = None,
    what: str = "label_field",
) -> None:
    """Raises a ValueError with :func:`output_field_problem`'s message, if there is one."""
    _raise(output_field_problem(collection, field, overwrite=overwrite, bank=bank, what=what))


def new_field_problem(collection: SampleCollection, field: object, *, what: str) -> str | None:
    """Why ``field`` cannot be created as a new field (invalid, reserved or existing), or None."""
    problem = _media_problem(collection) or field_name_problem(collection, field, what=what)
    if problem:
        return problem
    dataset = collection._dataset
    if field in dataset.get_field_schema():
        return f"Field {field!r} already exists on dataset {dataset.name!r}: choose another {what}"
    return None


def check_new_field(collection: SampleCollection, field: object, *, what: str) -> None:
    """Raises a ValueError with :func:`new_field_problem`'s message, if there is one."""
    _raise(new_field_problem(collection, field, what=what))


def bank_name_problem(dataset: fo.Dataset, name: object, *, overwrite: bool) -> str | None:
    """Why a memory bank may not be stored as the run ``name`` of ``dataset``, or None.

    A bank of that name is replaced only with ``overwrite``; any other custom run of that name
    (another plugin's) is never replaced.
    """
    if not isinstance(name, str) or not name.isidentifier():
        return f"Bank name {name!r} must be a valid Python identifier (letters, digits, _)"
    if not dataset.has_run(name):
        return None
    if run_method(dataset, name) != BANK_RUN_METHOD:
        return (
            f"Dataset {dataset.name!r} has another run named {name!r} that is not a refseg "
            "memory bank; refseg will not replace it. Choose another bank name"
        )
    if not overwrite:
        return (
            f"Dataset {dataset.name!r} already has a memory bank named {name!r}; choose another "
            "name or pass overwrite=True to replace it"
        )
    return None


def check_bank_name(dataset: fo.Dataset, name: object, *, overwrite: bool) -> None:
    """Raises a ValueError with :func:`bank_name_problem`'s message, if there is one."""
    _raise(bank_name_problem(dataset, name, overwrite=overwrite))


def eval_key_problem(
    collection: SampleCollection,
    eval_key: object,
    *,
    pred_field: str,
    gt_field: str,
    overwrite: bool,
) -> str | None:
    """Why a COCO evaluation may not be stored under ``eval_key``, or None.

    The evaluation writes the sample fields ``<eval_key>_tp`` / ``_fp`` / ``_fn`` and, on the
    detections of both fields, the attributes ``<eval_key>`` / ``_id`` / ``_iou``. None of them
    may be reserved, a built-in attribute of a detection (``label``, ``confidence``, ``mask``...)
    or hold data of anything but the evaluation being replaced (with ``overwrite``).
    """
    if not isinstance(eval_key, str) or not eval_key.isidentifier():
        return f"eval_key {eval_key!r} must be a valid Python identifier (letters, digits, _)"
    dataset = collection._dataset
    if dataset.has_evaluation(eval_key):
        if not overwrite:
            return (
                f"Evaluation {eval_key!r} already exists on dataset {dataset.name!r}; pass "
                "overwrite=True to replace it or choose another eval_key"
            )
        return None  # its own fields are replaced with it
    sample_fields = [eval_key + suffix for suffix in EVAL_SAMPLE_SUFFIXES]
    for name in sample_fields:
        problem = field_name_problem(collection, name, what=f"the field of eval_key {eval_key!r}")
        if problem:
            return problem
    schema = dataset.get_field_schema()
    taken = [name for name in sample_fields if name in schema]
    if taken:
        return (
            f"eval_key {eval_key!r} would write the fields {taken}, which already exist on "
            f"dataset {dataset.name!r}; choose another eval_key"
        )
    return _label_attribute_problem(dataset, eval_key, (pred_field, gt_field))


def check_eval_key(
    collection: SampleCollection,
    eval_key: object,
    *,
    pred_field: str,
    gt_field: str,
    overwrite: bool,
) -> None:
    """Raises a ValueError with :func:`eval_key_problem`'s message, if there is one."""
    _raise(
        eval_key_problem(
            collection, eval_key, pred_field=pred_field, gt_field=gt_field, overwrite=overwrite
        )
    )


def _raise(problem: str | None) -> None:
    if problem:
        raise ValueError(problem)


def _media_problem(collection: SampleCollection) -> str | None:
    if collection.media_type not in (fo.core.media.IMAGE, None):  # None: no sample yet
        return (
            f"Dataset {collection._dataset.name!r} holds {collection.media_type} samples; refseg "
            "writes labels of images only. Pass a view of image samples (for grouped datasets, "
            "select_group_slices(media_type='image'))"
        )
    return None


def _reserved_names(collection: SampleCollection) -> set[str]:
    """Default fields (private ones too), ``fo.Sample`` attributes and always-reserved names."""
    dataset = collection._dataset
    names = set(fo.core.sample.get_default_sample_fields(include_private=True))
    names |= {name for name in dir(fo.Sample) if not name.startswith("_")}
    names |= ALWAYS_RESERVED
    if dataset.group_field:
        names.add(dataset.group_field)
    return names


def _protection(dataset: fo.Dataset, field: str, bank: MemoryBank | None) -> str | None:
    """Why ``field`` of ``dataset`` holds memory bank references, or None."""
    if bank is not None:
        annotations = [r for r in bank.references if not r.from_prediction]
        if any(r.field == field and r.dataset == dataset.name for r in annotations):
            return "the memory bank in use was built from it"
        if _holds_labels(dataset, field, [r.label_id for r in annotations]):
            return "some of its labels are references of the memory bank in use"
    for key in list_banks(dataset):
        config = dataset.get_run_info(key).config
        if field in (getattr(config, "reference_fields", None) or []):
            return f"the memory bank {key!r} stored with the dataset was built from it"
    return None


def _holds_labels(dataset: fo.Dataset, field: str, label_ids: list[str]) -> bool:
    """Whether any of ``label_ids`` is a label of the Detections ``field`` (one query)."""
    ids = [ObjectId(i) for i in label_ids if ObjectId.is_valid(i)]
    if not ids or dataset.get_field(f"{field}.detections") is None:
        return False
    matches = dataset.filter_labels(field, F("_id").is_in(ids), only_matches=True)
    return matches.limit(1).count() > 0


def _label_attribute_problem(
    dataset: fo.Dataset, eval_key: str, fields: tuple[str, str]
) -> str | None:
    """Refuses an eval key whose label attributes are built-in or hold data already."""
    names = [eval_key + suffix for suffix in EVAL_LABEL_SUFFIXES]
    builtin = sorted(set(names) & set(fo.Detection._fields))
    if builtin:
        return (
            f"eval_key {eval_key!r} would overwrite the detections' built-in attribute "
            f"{builtin[0]!r}; choose another eval_key, e.g. '{eval_key}_eval'"
        )
    paths = [f"{field}.detections.{name}" for field in fields for name in names]
    counts = dataset.aggregate([fo.Count(path) for path in paths])
    used = [path for path, count in zip(paths, counts) if count]
    if used:
        return (
            f"eval_key {eval_key!r} would overwrite the label attribute {used[0]!r}, which holds "
            f"values on dataset {dataset.name!r}; choose another eval_key"
        )
    return None
