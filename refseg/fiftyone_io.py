"""FiftyOne glue: predictions to label fields, memory banks stored as custom runs."""

from __future__ import annotations

import base64
from typing import Any, Iterable

import fiftyone as fo

from refseg.memory import MemoryBank
from refseg.predictions import Predictions

BANK_RUN_METHOD = "refseg.memory_bank"


def to_detections(predictions: Predictions) -> fo.Detections:
    """FiftyOne detections with instance masks cropped to their boxes and confidences."""
    height, width = predictions.image_size
    detections = []
    for box, mask, score, label in zip(
        predictions.boxes, predictions.masks, predictions.scores, predictions.labels
    ):
        x1, y1, x2, y2 = (float(v) for v in box)
        detections.append(
            fo.Detection(
                label=predictions.class_names[label],
                bounding_box=[x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height],
                mask=mask,
                confidence=float(score),
            )
        )
    return fo.Detections(detections=detections)


def check_label_field(
    view: fo.core.collections.SampleCollection, field: str, overwrite: bool
) -> None:
    """Refuses to write into an existing field unless ``overwrite``; refuses a non-Detections one."""
    schema = view._dataset.get_field_schema()
    if field not in schema:
        return
    if not overwrite:
        raise ValueError(
            f"Field {field!r} already exists on dataset {view._dataset.name!r}; choose another "
            "label_field, or pass overwrite=True to replace its values on the samples being predicted"
        )
    document_type = getattr(schema[field], "document_type", None)
    if document_type is not fo.Detections:
        raise ValueError(
            f"Field {field!r} holds {document_type or type(schema[field]).__name__}, not "
            "Detections; refseg will not overwrite it. Choose another label_field."
        )


def write_detections(
    view: fo.core.collections.SampleCollection, field: str, values: dict[str, fo.Detections]
) -> None:
    """One batched write of ``{sample id: Detections}`` into ``field``."""
    if values:
        view._dataset.set_values(field, values, key_field="id")


def save_bank(dataset: fo.Dataset, key: str, bank: MemoryBank, *, overwrite: bool = False) -> None:
    """Stores a memory bank with the dataset as a custom run named ``key``.

    The run's config summarises the bank (classes, shots, models, settings) so the App and
    ``dataset.list_runs()`` show it; its results hold the bank file itself.
    """
    check_bank_name(dataset, key, overwrite=overwrite)
    config = dataset.init_run(
        method=BANK_RUN_METHOD,
        classes=list(bank.class_names),
        shots=bank.shots(),
        encoder=bank.encoder,
        proposer=bank.proposer,
        settings=bank.settings.to_dict(),
    )
    dataset.register_run(key, config, overwrite=overwrite)
    payload = base64.b64encode(bank.to_bytes()).decode("ascii")
    results = dataset.init_run_results(key, bank=payload)
    dataset.save_run_results(key, results, overwrite=True)


def check_bank_name(dataset: fo.Dataset, key: str, *, overwrite: bool = False) -> None:
    """Raises a ValueError unless a bank can be stored as ``key`` (checked before any work)."""
    if not key.isidentifier():
        raise ValueError(
            f"Bank name {key!r} must be a valid Python identifier (letters, digits, _)"
        )
    if dataset.has_run(key) and not overwrite:
        raise ValueError(
            f"Dataset {dataset.name!r} already has a run named {key!r}; choose another name or "
            "pass overwrite=True"
        )


def load_bank(dataset: fo.Dataset, key: str) -> MemoryBank:
    """The memory bank stored under ``key`` by :func:`save_bank`."""
    if not (dataset.has_run(key) and _run_method(dataset, key) == BANK_RUN_METHOD):
        raise ValueError(
            f"Dataset {dataset.name!r} has no refseg memory bank named {key!r}; "
            f"available: {list_banks(dataset)}"
        )
    results = dataset.load_run_results(key, cache=False)
    return MemoryBank.from_bytes(
        base64.b64decode(results.bank), source=f"run {key!r} of dataset {dataset.name!r}"
    )


def list_banks(dataset: fo.Dataset) -> list[str]:
    """Names of the memory banks stored with the dataset."""
    return [key for key in dataset.list_runs() if _run_method(dataset, key) == BANK_RUN_METHOD]


def _run_method(dataset: fo.Dataset, key: str) -> Any:
    return getattr(dataset.get_run_info(key).config, "method", None)


def samples_of(view: fo.core.collections.SampleCollection) -> tuple[list[str], list[str]]:
    """(sample ids, filepaths) of a view, in its order, in one database pass."""
    ids, paths = view.values(["id", "filepath"])
    return list(ids), list(paths)


def chunked(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive lists of at most ``size`` items, the last one shorter."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ensure_detections_field(dataset: fo.Dataset, field: str) -> None:
    """Declares ``field`` as a Detections field unless it exists, so that the processes of a
    sharded run write into it without racing to create it."""
    if field not in dataset.get_field_schema():
        dataset.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
