"""refseg: training-free reference-based instance segmentation on FiftyOne datasets.

The method is "No Time To Train!" (arXiv 2507.02798): a few reference instances per class are
encoded with DINOv2 into a memory bank; SAM2 proposes masks on each target image from a grid of
point prompts; each mask is labelled by matching its mean DINOv2 feature against the bank.

Typical use::

    import refseg
    refs = refseg.sample_references(dataset, "ground_truth", shots=5, seed=33)
    bank = refseg.build_memory_bank(refs, "ground_truth", tag="refseg:reference")
    refseg.predict(dataset.exclude(refs.values("id")), bank, "refseg")  # the bank's models

Curating (see README "Curating: negatives, corrections, thresholds, accepting")::

    refseg.mark_false_positives(view, "refseg", "ground_truth")  # tags NEGATIVE_TAG
    bank = refseg.add_references(bank, view, "refseg", tag=refseg.NEGATIVE_TAG, negative=True)
    table = refseg.suggest_thresholds(view, "refseg", "ground_truth")
    refseg.save_bank(dataset, "bank", bank.with_thresholds(table.thresholds), overwrite=True)
    result = refseg.accept(refseg.threshold_view(view, "refseg", table), "refseg", "ground_truth")
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module defining it. Imported on first use (PEP 562), so the engine's
# modules (segmenter, models, matching...) load without FiftyOne where no database exists,
# e.g. on a GPU machine running benchmarks/benchmark_engine.py.
_EXPORTS = {
    "AcceptResult": "refseg.acceptance",
    "ClassThreshold": "refseg.thresholds",
    "DEFAULT": "refseg.presets",
    "DEFAULT_TAG": "refseg.sampling",
    "DatabaseUnavailableError": "refseg.database",
    "EvaluateConfig": "refseg.config",
    "EvaluationReport": "refseg.coco_metrics",
    "FAST_PREDICT": "refseg.config",
    "FillMasksResult": "refseg.fill_masks",
    "FailureReport": "refseg.failures",
    "Matches": "refseg.matches",
    "MemoryBank": "refseg.memory",
    "Models": "refseg.models.selection",
    "NEGATIVE_TAG": "refseg.negatives",
    "PAPER": "refseg.presets",
    "PAPER_EVALUATE": "refseg.config",
    "PAPER_MODELS": "refseg.presets",
    "PAPER_PREDICT": "refseg.config",
    "PAPER_REFERENCE": "refseg.config",
    "PredictConfig": "refseg.config",
    "PredictResult": "refseg.inference",
    "PredictionMatch": "refseg.matches",
    "Predictions": "refseg.predictions",
    "Preset": "refseg.presets",
    "ReferenceConfig": "refseg.config",
    "ReferenceRecord": "refseg.memory",
    "RunLockedError": "refseg.locks",
    "RunStatus": "refseg.run_record",
    "SampleError": "refseg.failures",
    "SampleFailure": "refseg.failures",
    "Segmenter": "refseg.segmenter",
    "SkippedPrediction": "refseg.acceptance",
    "ThresholdTable": "refseg.thresholds",
    "accept": "refseg.acceptance",
    "add_references": "refseg.corrections",
    "as_model": "refseg.fiftyone_model",
    "build_memory_bank": "refseg.bank_builder",
    "cancel_run": "refseg.run_record",
    "evaluate": "refseg.evaluation",
    "fill_box_masks": "refseg.fill_masks",
    "list_accepts": "refseg.acceptance",
    "list_banks": "refseg.fiftyone_io",
    "list_sharded_runs": "refseg.run_record",
    "load_bank": "refseg.fiftyone_io",
    "mark_false_positives": "refseg.negatives",
    "match_predictions": "refseg.matches",
    "predict": "refseg.inference",
    "reference_labels": "refseg.sampling",
    "rerun_shards": "refseg.runs",
    "run_shard": "refseg.runs",
    "run_status": "refseg.run_record",
    "sample_references": "refseg.sampling",
    "save_bank": "refseg.fiftyone_io",
    "segment_stream": "refseg.stream",
    "suggest_thresholds": "refseg.thresholds",
    "threshold_view": "refseg.thresholds",
    "undo_accept": "refseg.acceptance",
}

__all__ = [
    "AcceptResult",
    "ClassThreshold",
    "DEFAULT",
    "DEFAULT_TAG",
    "DatabaseUnavailableError",
    "EvaluateConfig",
    "EvaluationReport",
    "FAST_PREDICT",
    "FillMasksResult",
    "FailureReport",
    "Matches",
    "MemoryBank",
    "Models",
    "NEGATIVE_TAG",
    "PAPER",
    "PAPER_EVALUATE",
    "PAPER_MODELS",
    "PAPER_PREDICT",
    "PAPER_REFERENCE",
    "PredictConfig",
    "PredictResult",
    "PredictionMatch",
    "Predictions",
    "Preset",
    "ReferenceConfig",
    "ReferenceRecord",
    "RunLockedError",
    "RunStatus",
    "SampleError",
    "SampleFailure",
    "Segmenter",
    "SkippedPrediction",
    "ThresholdTable",
    "accept",
    "add_references",
    "as_model",
    "build_memory_bank",
    "cancel_run",
    "evaluate",
    "fill_box_masks",
    "list_accepts",
    "list_banks",
    "list_sharded_runs",
    "load_bank",
    "mark_false_positives",
    "match_predictions",
    "predict",
    "reference_labels",
    "rerun_shards",
    "run_shard",
    "run_status",
    "sample_references",
    "save_bank",
    "segment_stream",
    "suggest_thresholds",
    "threshold_view",
    "undo_accept",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'refseg' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
