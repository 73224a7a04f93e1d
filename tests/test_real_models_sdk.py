"""The whole SDK with the real architectures (SAM2.1 Hiera-T, DINOv2 ViT-S/14), random weights.

Random weights make the detections meaningless, so these tests check what must hold for any
weights: shapes and types, masks consistent with their boxes, determinism, and a bank that
survives saving and loading.
"""

from __future__ import annotations

import numpy as np
import pytest

import refseg
from refseg.config import PredictConfig
from refseg.memory import MemoryBank
from refseg.models import ModelCache
from refseg.synthetic import CLASSES, make_shapes_dataset

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*random weights")]

MODELS = dict(sam2="sam2.1_hiera_tiny", pretrained=False, device="cpu")
CONFIG = PredictConfig(points_per_side=4, points_batch_size=16, max_detections=20)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    name = f"real-models-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=5, num_negative=1, seed=5
    )
    cache = ModelCache()
    references = refseg.sample_references(dataset, "ground_truth", shots=1, seed=0, classes=CLASSES)
    bank = refseg.build_memory_bank(
        references,
        "ground_truth",
        tag=refseg.DEFAULT_TAG,
        dinov2="dinov2_vits14",
        cache=cache,
        name="tiny_bank",
        progress=False,
        **MODELS,
    )
    targets = dataset.exclude(references.values("id")).limit(2)
    options = dict(config=CONFIG, cache=cache, num_workers=1, progress=False, **MODELS)
    refseg.predict(targets, bank, "pred_a", batch_size=2, **options)
    refseg.predict(targets, bank, "pred_b", batch_size=1, **options)
    yield dataset, bank, targets
    dataset.delete()


def test_bank_shapes_and_round_trip(run, tmp_path):
    dataset, bank, _ = run
    assert bank.prototypes.shape == (3, 384) and bank.prototypes.dtype == np.float32
    assert bank.class_names == tuple(sorted(CLASSES))
    assert bank.encoder == {"name": "dinov2_vits14", "weights": "random(seed=0)"}
    bank.save(tmp_path / "bank.npz")
    np.testing.assert_array_equal(
        MemoryBank.load(tmp_path / "bank.npz").prototypes, bank.prototypes
    )
    np.testing.assert_array_equal(
        refseg.load_bank(dataset, "tiny_bank").prototypes, bank.prototypes
    )


def test_detections_are_well_formed(run):
    _, bank, targets = run
    total = 0
    for sample in targets:
        width, height = sample.metadata.width, sample.metadata.height
        detections = sample.pred_a.detections
        assert len(detections) <= CONFIG.max_detections
        total += len(detections)
        for detection in detections:
            x, y, w, h = detection.bounding_box
            assert 0 <= x and 0 <= y and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9
            assert detection.mask.dtype == bool
            assert detection.mask.shape == (round(h * height), round(w * width))
            assert (
                detection.mask.any(axis=1)[[0, -1]].all()
                and detection.mask.any(axis=0)[[0, -1]].all()
            )
            assert 0.0 < detection.confidence <= 1.0 and detection.label in bank.class_names
    assert total > 0  # random SAM2 weights still pass the 0.4 predicted-IoU filter


def test_same_inputs_same_outputs_whatever_the_batching(run):
    _, _, targets = run
    for a, b in zip(targets.values("pred_a"), targets.values("pred_b")):
        assert [d.label for d in a.detections] == [d.label for d in b.detections]
        np.testing.assert_allclose(
            [d.confidence for d in a.detections], [d.confidence for d in b.detections], atol=1e-5
        )
        for da, db in zip(a.detections, b.detections):
            assert np.mean(da.mask != db.mask) < 0.01 if da.mask.shape == db.mask.shape else False
