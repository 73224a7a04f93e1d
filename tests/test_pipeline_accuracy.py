"""The whole SDK on synthetic shapes with deterministic stand-in components.

This scores the method's logic (matching, NMS, soft merge, top-k, writing) end to end: the
stand-ins propose true shapes plus halves and distractors, so a high AP needs every stage to
do its job (halves must be merged away, distractors must score near 0).
"""

from __future__ import annotations

import numpy as np
import pytest
from stand_ins import PaletteEncoder, ShapeProposer, stand_in_bank

import refseg
from refseg.config import PredictConfig
from refseg.synthetic import CLASSES, make_shapes_dataset

CONFIG = PredictConfig(points_per_side=16, points_batch_size=100)


@pytest.fixture
def shapes(tmp_path, dataset_name):
    return make_shapes_dataset(
        dataset_name, str(tmp_path / "images"), num_positive=14, num_negative=4
    )


@pytest.fixture
def bank_and_targets(shapes):
    _, bank, targets = stand_in_bank(shapes, shots=2, seed=1)
    return bank, targets


def ground_truth_fingerprint(dataset) -> list[tuple]:
    """Every ground-truth label of every sample: id, label, box, mask bytes, tags, attributes."""
    fingerprint = []
    for sample_id, labels in zip(*dataset.values(["id", "ground_truth"])):
        for d in labels.detections if labels is not None else ():
            mask = None if d.mask is None else (d.mask.shape, d.mask.tobytes())
            attributes = sorted((k, repr(v)) for k, v in d.iter_attributes())
            fingerprint.append(
                (sample_id, d.id, d.label, tuple(d.bounding_box), mask, sorted(d.tags), attributes)
            )
    return fingerprint


def test_pipeline_scores_high_ap_and_ignores_negatives(shapes, bank_and_targets):
    bank, targets = bank_and_targets
    assert bank.shots() == {name: 2 for name in sorted(CLASSES)}
    ground_truth = ground_truth_fingerprint(shapes)
    assert len(ground_truth) == shapes.count("ground_truth.detections") > 0
    written = refseg.predict(
        targets,
        bank,
        "predictions",
        config=CONFIG,
        proposer=ShapeProposer(),
        encoder=PaletteEncoder(),
        num_workers=0,
        progress=False,
    )
    assert written.num_detections > 0
    report = refseg.evaluate(
        targets.match_tags("negative", bool=False), "predictions", "ground_truth"
    )
    print(report.table())
    assert report.segm["AP"] > 0.9
    assert report.bbox["AP"] > 0.9
    negative_scores = targets.match_tags("negative").values(
        "predictions.detections.confidence", unwind=True
    )
    assert max(negative_scores, default=0.0) < 0.1
    # every target sample got a Detections, empty or not, and the ground truth is untouched
    assert targets.count("predictions") == len(targets)
    shapes.reload()
    assert ground_truth_fingerprint(shapes) == ground_truth


def test_build_reports_progress_per_batch(shapes):
    calls = []
    refseg.build_memory_bank(
        shapes.match_tags("negative", bool=False),
        "ground_truth",
        encoder=PaletteEncoder(),
        proposer=ShapeProposer(),
        batch_size=4,
        progress=lambda done, total: calls.append((done, total)),
    )
    total = shapes.match_tags("negative", bool=False).count("ground_truth.detections")
    assert calls[-1] == (total, total) and len(calls) == -(-total // 4)


def test_box_only_references_give_the_same_prototypes(shapes, bank_and_targets):
    bank, _ = bank_and_targets
    references = shapes.match_labels(tags=refseg.DEFAULT_TAG, fields="ground_truth").clone()
    for sample in references:
        for detection in sample.ground_truth.detections:
            detection.mask = None
        sample.save()
    box_bank = refseg.build_memory_bank(
        references,
        "ground_truth",
        tag=refseg.DEFAULT_TAG,
        encoder=PaletteEncoder(),
        proposer=ShapeProposer(),
        progress=False,
    )
    assert {r.mask_source for r in box_bank.references} == {"box"}
    cosine = np.sum(box_bank.class_prototypes() * bank.class_prototypes(), axis=1)
    np.testing.assert_array_less(0.99, cosine)
    references.delete()
