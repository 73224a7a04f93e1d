"""refseg: training-free reference-based instance segmentation on FiftyOne datasets.

The method is "No Time To Train!" (arXiv 2507.02798): a few reference instances per class are
encoded with DINOv2 into a memory bank; SAM2 proposes masks on each target image from a grid of
point prompts; each mask is labelled by matching its mean DINOv2 feature against the bank.

Typical use::

    import refseg
    refs = refseg.sample_references(dataset, "ground_truth", shots=5, seed=33)
    bank = refseg.build_memory_bank(refs, "ground_truth", tag="refseg:reference")
    refseg.predict(dataset.exclude(refs.values("id")), bank, "refseg")
"""

from refseg.bank_builder import build_memory_bank
from refseg.coco_metrics import EvaluationReport
from refseg.config import (
    FAST_PREDICT,
    PAPER_MODELS,
    PAPER_PREDICT,
    PAPER_REFERENCE,
    PredictConfig,
    ReferenceConfig,
)
from refseg.evaluate import evaluate
from refseg.fiftyone_io import list_banks, load_bank, save_bank
from refseg.memory import MemoryBank, ReferenceRecord
from refseg.predict import predict
from refseg.predictions import Predictions
from refseg.sampling import DEFAULT_TAG, reference_labels, sample_references
from refseg.segmenter import Segmenter

__all__ = [
    "DEFAULT_TAG",
    "EvaluationReport",
    "FAST_PREDICT",
    "MemoryBank",
    "PAPER_MODELS",
    "PAPER_PREDICT",
    "PAPER_REFERENCE",
    "PredictConfig",
    "Predictions",
    "ReferenceConfig",
    "ReferenceRecord",
    "Segmenter",
    "build_memory_bank",
    "evaluate",
    "list_banks",
    "load_bank",
    "predict",
    "reference_labels",
    "sample_references",
    "save_bank",
]
