"""FiftyOne glue: predictions to label fields, memory banks stored as custom runs."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Iterable

import fiftyone as fo

from refseg.memory import BankFileError, MemoryBank
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


def write_detections(
    view: fo.core.collections.SampleCollection, field: str, values: dict[str, fo.Detections]
) -> None:
    """One batched write of ``{sample id: Detections}`` into ``field``."""
    if values:
        view._dataset.set_values(field, values, key_field="id")


def save_bank(
    dataset: fo.Dataset,
    key: str,
    bank: MemoryBank,
    *,
    overwrite: bool = False,
    run_id: str | None = None,
) -> None:
    """Stores a memory bank with the dataset as a custom run named ``key``.

    The run's config summarises the bank (classes, positive ``shots`` and ``negatives`` per
    class, per-class ``thresholds``, models, settings, and the label fields its annotation
    references come from, which predictions then never overwrite) so the App and
    ``dataset.list_runs()`` show it; its results hold the bank file itself (base64, with the
    thresholds), whose checksum :func:`load_bank` verifies.

    Storing takes the bank name's lock (``refseg.locks``), so two saves (or a save and a build)
    of one name at once cannot interleave and lose the bank: the second is refused. ``run_id``
    joins a lock this run already holds (``build_memory_bank`` passes its own).

    Raises:
        ValueError: ``key`` is not a valid name, or names another run of the dataset (a bank
            without ``overwrite``; any other kind of run always).
        RunLockedError: another run is writing this bank name, or a sharded build of it is
            unfinished.
    """
    from refseg.field_safety import check_bank_name  # field_safety imports this module
    from refseg.locks import RunLock
    from refseg.run_record import check_target_free

    check_bank_name(dataset, key, overwrite=overwrite)
    lock = RunLock(dataset, f"bank:{key}", run_id=run_id, description=f"refseg.save_bank {key!r}")
    with lock:
        check_target_free(dataset, f"bank:{key}", lock.run_id)  # a sharded build of this name
        _store_bank(dataset, key, bank, overwrite=overwrite)


def _store_bank(dataset: fo.Dataset, key: str, bank: MemoryBank, *, overwrite: bool) -> None:
    """Registers the bank's run and writes its results (under the bank name's lock)."""
    dataset.reload()  # a bank stored by another process meanwhile is seen
    config = dataset.init_run(
        method=BANK_RUN_METHOD,
        classes=list(bank.class_names),
        shots=bank.shots(),
        negatives=bank.shots(negative=True),
        thresholds=dict(bank.thresholds),
        encoder=bank.encoder,
        proposer=bank.proposer,
        settings=bank.settings.to_dict(),
        reference_fields=reference_fields(bank, dataset.name),
    )
    dataset.register_run(key, config, overwrite=overwrite)
    payload = base64.b64encode(bank.to_bytes()).decode("ascii")
    results = dataset.init_run_results(key, bank=payload)
    dataset.save_run_results(key, results, overwrite=True)


def reference_fields(bank: MemoryBank, dataset_name: str) -> list[str]:
    """The label fields of ``dataset_name`` that hold the bank's annotation references, sorted
    (references taken from predictions leave their field writable: ``refseg.field_safety``)."""
    return sorted(
        {
            r.field
            for r in bank.references
            if r.field and r.dataset == dataset_name and not r.from_prediction
        }
    )


def load_bank(dataset: fo.Dataset, key: str) -> MemoryBank:
    """The memory bank stored under ``key`` by :func:`save_bank`, verified.

    Raises:
        ValueError: the dataset has no bank named ``key``.
        BankFileError: the stored bank is damaged (its run results cannot be read, its payload
            is not base64, or the bank fails its checksum), or of an unknown format version;
            the message names the run and says how to rebuild it.
    """
    if not (dataset.has_run(key) and run_method(dataset, key) == BANK_RUN_METHOD):
        raise ValueError(
            f"Dataset {dataset.name!r} has no refseg memory bank named {key!r}; "
            f"available: {list_banks(dataset)}"
        )
    source = f"memory bank {key!r} stored with dataset {dataset.name!r}"
    remedy = (
        f"Rebuild it: refseg.build_memory_bank(view, field, name={key!r}, overwrite=True), or "
        f"the 'refseg: build memory bank' operator with bank name '{key}' and 'Replace' ticked."
    )
    payload = _stored_payload(dataset, key, source, remedy)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BankFileError(
            f"{source} is damaged: its payload is not base64 ({error}). {remedy}"
        ) from error
    return MemoryBank.from_bytes(data, source=source, remedy=remedy)


def _stored_payload(dataset: fo.Dataset, key: str, source: str, remedy: str) -> str:
    """The base64 text a bank run's results hold."""
    try:
        results = dataset.load_run_results(key, cache=False)
    except Exception as error:  # FiftyOne raises many kinds on damaged run results
        raise BankFileError(
            f"{source} cannot be read: FiftyOne failed to load its run results "
            f"({type(error).__name__}: {error}). {remedy}"
        ) from error
    payload = getattr(results, "bank", None) if results is not None else None
    if not isinstance(payload, str):
        raise BankFileError(f"{source} is damaged: its run results hold no bank. {remedy}")
    return payload


def list_banks(dataset: fo.Dataset) -> list[str]:
    """Names of the memory banks stored with the dataset."""
    return [key for key in dataset.list_runs() if run_method(dataset, key) == BANK_RUN_METHOD]


def run_method(dataset: fo.Dataset, key: str) -> Any:
    """The ``method`` of the custom run ``key`` (``BANK_RUN_METHOD`` for a memory bank)."""
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
