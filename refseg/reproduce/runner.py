"""One reproduction job per (protocol, shots, seed), end to end and resumable.

A job runs four steps on a dataset made by :func:`refseg.reproduce.data.load_coco_dataset`:

1. ``references``: tag the job's reference labels (the paper's sampling rule with
   ``order_by="coco_id"``, or every non-crowd reference of a custom file);
2. ``bank``: build the memory bank and store it with the dataset as a run;
3. ``predict``: segment the targets into a prediction field (``resume=True``);
4. ``evaluate``: COCO AP restricted to the protocol's classes, stored as a FiftyOne evaluation.

Every step leaves a trace in the dataset (a label tag, a bank run, a complete prediction field,
an evaluation run plus the job's entry in the summary JSON), and a re-run skips the steps whose
trace is complete, so an interrupted job resumes where it stopped. Names are deterministic:
``<what>_<protocol>_<K>shot_seed<S>_<signature>``, the signature hashing models and settings, so
runs with other models or settings get their own bank, field and evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from refseg.bank_builder import build_memory_bank
from refseg.evaluation import evaluate
from refseg.fiftyone_io import list_banks, load_bank
from refseg.inference import predict
from refseg.memory import MemoryBank
from refseg.models import Components, ModelCache
from refseg.presets import PAPER, Preset
from refseg.reproduce.data import GT_FIELD, REFERENCES, TARGETS
from refseg.reproduce.protocols import Protocol
from refseg.sampling import sample_references

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    """What a reproduction computes (a preset: models and settings) and how it runs.

    Attributes:
        preset: models, reference, prediction and evaluation settings; ``refseg.PAPER`` (the
            default) reproduces the published pipeline.
        device: torch device; None = CUDA when available.
        batch_size: target images encoded together.
        num_workers: image-decoding processes; None = the engine's default.
    """

    preset: Preset = PAPER
    device: str | None = None
    batch_size: int = 1
    num_workers: int | None = None

    def signature(self, components: Components | None = None) -> str:
        """8 hex digits naming what decides the results: models, weights and settings."""
        preset = self.preset
        identity: dict[str, Any] = {
            "reference": preset.reference.to_dict(),
            "predict": preset.predict.to_dict(),
            "evaluate": preset.evaluate.to_dict(),
        }
        if components is None:
            models = preset.models.to_dict()
            for key in ("proposer_weights", "encoder_weights"):
                models[key] = os.path.basename(models[key])
            identity["models"] = models
        else:
            identity["models"] = [components.proposer.identity, components.encoder.identity]
        text = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Job:
    """One (protocol, shots, seed); ``shots=None`` uses every reference of the file as is."""

    protocol: Protocol
    shots: int | None = None
    seed: int | None = None

    @property
    def key(self) -> str:
        return "all_refs" if self.shots is None else f"{self.shots}shot_seed{self.seed}"

    @property
    def reference_tag(self) -> str:
        return f"refseg:{self.protocol.name}:{self.key}"


@dataclass(frozen=True)
class JobResult:
    """What a job produced; one entry of the summary JSON.

    Attributes:
        protocol, shots, seed: the job (shots None = all references of the file).
        signature: :meth:`RunSettings.signature` of the run.
        bank_name, pred_field, eval_key: where the bank, predictions and evaluation are stored.
        reference_counts: class -> number of references in the bank.
        num_targets: evaluated images.
        limit: the ``limit`` the job ran with (None = all targets).
        classes: the evaluated classes.
        metrics: ``{"bbox": {...}, "segm": {...}}``, the 12 COCOeval statistics in [0, 1].
        per_class_ap: ``{"bbox"|"segm": {class: AP in [0, 1] or NaN}}``.
        steps: step -> what this run did: "done" or "skipped (...)".
        seconds: wall time of this run of the job.
        random_weights: whether the models had random weights.
    """

    protocol: str
    shots: int | None
    seed: int | None
    signature: str
    bank_name: str
    pred_field: str
    eval_key: str
    reference_counts: dict[str, int]
    num_targets: int
    limit: int | None
    classes: list[str]
    metrics: dict[str, dict[str, float]]
    per_class_ap: dict[str, dict[str, float]]
    steps: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    random_weights: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_job(
    dataset: fo.Dataset,
    job: Job,
    settings: RunSettings,
    *,
    summary_path: str,
    limit: int | None = None,
    components: Components | None = None,
    cache: ModelCache | None = None,
    progress: bool = True,
) -> JobResult:
    """Runs (or resumes) one job and records it in the summary JSON.

    Args:
        dataset: a dataset with "references" and "targets" samples and ``ground_truth``.
        job: what to run.
        settings: the preset and how to run it.
        summary_path: the JSON file that collects the jobs' results (updated, not replaced).
        limit: predict and evaluate only the first ``limit`` targets (quick checks).
        components: ready models instead of building them (tests inject the deterministic
            stand-ins of ``tests/stand_ins.py`` here).
        cache: shares loaded models between jobs.
        progress: show progress bars.

    Raises:
        ValueError: from the steps (too few references, missing fields, ...), with the cause.
    """
    start = time.monotonic()
    signature = settings.signature(components)
    base = f"{job.protocol.name}_{job.key}_{signature}"
    names = {"bank": f"bank_{base}", "field": f"pred_{base}", "eval": f"eval_{base}"}
    references, targets = _split(dataset, limit)
    run = _Step(settings, components, cache or ModelCache(), progress)
    steps = {"references": _tag_references(references, job)}
    bank, steps["bank"] = _ensure_bank(references, job, names["bank"], run)
    steps["predict"] = _ensure_predictions(targets, bank, names["field"], run)
    classes = list(job.protocol.classes or bank.class_names)
    previous = read_summary(summary_path)["jobs"].get(base)
    if _reusable_evaluation(previous, targets, limit, names["eval"], steps["predict"]):
        steps["evaluate"] = "skipped (stored)"
        metrics, per_class = previous["metrics"], previous["per_class_ap"]
    else:
        report = evaluate(
            targets,
            names["field"],
            GT_FIELD,
            eval_key=names["eval"],
            classes=classes,
            use_masks=all_have_masks(targets),
            overwrite=True,
            legacy_coco_box=settings.preset.evaluate.legacy_coco_box,
        )
        steps["evaluate"] = "done"
        metrics, per_class = {"bbox": report.bbox, "segm": report.segm}, report.per_class_ap
    result = JobResult(
        protocol=job.protocol.name, shots=job.shots, seed=job.seed, signature=signature,
        bank_name=names["bank"], pred_field=names["field"], eval_key=names["eval"],
        reference_counts=bank.shots(), num_targets=len(targets), limit=limit, classes=classes,
        metrics=metrics, per_class_ap=per_class, steps=steps,
        seconds=round(time.monotonic() - start, 3),
        random_weights=settings.preset.models.random and components is None,
    )  # fmt: skip
    logger.info("%s: %s", base, steps)
    write_summary(summary_path, dataset.name, base, result)
    return result


@dataclass(frozen=True)
class _Step:
    """What the model-running steps share."""

    settings: RunSettings
    components: Components | None
    cache: ModelCache
    progress: bool

    def component(self, kind: str) -> Any:
        return None if self.components is None else getattr(self.components, kind)


def _split(dataset: fo.Dataset, limit: int | None) -> tuple[fo.DatasetView, fo.DatasetView]:
    """(references, targets) views; targets cut to the first ``limit``."""
    targets = dataset.match_tags(TARGETS)
    if limit is not None:
        targets = targets.limit(limit)
    if len(targets) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no samples tagged {TARGETS!r}")
    return dataset.match_tags(REFERENCES), targets


def _tag_references(references: fo.DatasetView, job: Job) -> str:
    """Step 1: tags the job's references, unless the tag is already there."""
    dataset = references._dataset
    tagged = dataset.count_label_tags(label_fields=GT_FIELD).get(job.reference_tag, 0)
    if tagged:
        return f"skipped ({tagged} references already tagged {job.reference_tag!r})"
    classes = job.protocol.classes
    if job.shots is None:
        view = references.filter_labels(GT_FIELD, F("iscrowd") != 1)
        if classes is not None:
            view = view.filter_labels(GT_FIELD, F("label").is_in(list(classes)))
        if not view.count(f"{GT_FIELD}.detections"):
            raise ValueError(f"the references of dataset {dataset.name!r} hold no non-crowd label")
        view.tag_labels(job.reference_tag, label_fields=GT_FIELD)
    else:
        sample_references(
            references,
            GT_FIELD,
            shots=job.shots,
            seed=job.seed,
            classes=classes,
            tag=job.reference_tag,
            order_by="coco_id",
        )
    return "done"


def _ensure_bank(references, job: Job, name: str, run: _Step) -> tuple[MemoryBank, str]:
    """Step 2: the stored bank ``name``, built and stored first if missing."""
    dataset = references._dataset
    if name in list_banks(dataset):
        return load_bank(dataset, name), "skipped (stored)"
    settings = run.settings
    bank = build_memory_bank(
        references, GT_FIELD, tag=job.reference_tag, name=name, models=settings.preset.models,
        config=settings.preset.reference, device=settings.device,
        encoder=run.component("encoder"), proposer=run.component("proposer"), cache=run.cache,
        progress=run.progress,
    )  # fmt: skip
    return bank, "done"


def _ensure_predictions(targets, bank: MemoryBank, field_name: str, run: _Step) -> str:
    """Step 3: predicts the targets without a value in ``field_name`` (all of them at first)."""
    if field_name in targets._dataset.get_field_schema():
        remaining = len(targets.exists(field_name, False))
    else:
        remaining = len(targets)
    if remaining == 0:
        return "skipped (complete)"
    settings = run.settings
    result = predict(
        targets, bank, field_name, resume=True, models=settings.preset.models,
        config=settings.preset.predict, device=settings.device, batch_size=settings.batch_size,
        num_workers=settings.num_workers, proposer=run.component("proposer"),
        encoder=run.component("encoder"), cache=run.cache, progress=run.progress,
    )  # fmt: skip
    if result.failures:
        return f"done ({remaining} of {len(targets)} images, {len(result.failures)} skipped)"
    return f"done ({remaining} of {len(targets)} images)"


def _reusable_evaluation(previous, targets, limit, eval_key, predict_step) -> bool:
    """Whether the summary's stored metrics still describe the predictions on these targets."""
    return (
        previous is not None
        and predict_step.startswith("skipped")
        and previous.get("num_targets") == len(targets)
        and previous.get("limit") == limit
        and targets.has_evaluation(eval_key)
    )


def all_have_masks(targets: fo.DatasetView) -> bool:
    """Whether every ground-truth label of the targets has a mask (then match by masks)."""
    without = targets.filter_labels(GT_FIELD, ~F("mask").exists())
    return without.count(f"{GT_FIELD}.detections") == 0


def read_summary(path: str) -> dict[str, Any]:
    """The summary JSON (``{"dataset": ..., "jobs": {...}}``); empty when there is none."""
    if not os.path.isfile(path):
        return {"dataset": None, "jobs": {}}
    with open(path) as file:
        return json.load(file)


def write_summary(path: str, dataset_name: str, key: str, result: JobResult) -> None:
    """Adds or replaces the job's entry, writing the file atomically."""
    summary = read_summary(path)
    summary["dataset"] = dataset_name
    summary["jobs"][key] = result.to_dict()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(_finite(summary), file, indent=2, default=_json_default, allow_nan=False)
    os.replace(temporary, path)


def _finite(value: Any) -> Any:
    """The value with every NaN replaced by None, so the file is strict JSON."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return _finite(value.item())
    raise TypeError(f"cannot write {type(value).__name__} to the summary JSON")
