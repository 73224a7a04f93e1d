"""``dataset.apply_model(refseg.as_model(bank), field)`` gives ``refseg.predict``'s labels."""

from __future__ import annotations

import fiftyone.core.models as fomo
import numpy as np
import pytest
from PIL import Image
from stand_ins import PaletteEncoder, ShapeProposer, stand_in_bank

import refseg
from refseg.config import PredictConfig
from refseg.synthetic import make_shapes_dataset

CONFIG = PredictConfig(points_per_side=8, points_batch_size=64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    name = f"apply-model-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(name, str(tmp_path_factory.mktemp("images")), num_positive=7)
    _, bank, targets = stand_in_bank(dataset)
    yield dataset, bank, targets
    dataset.delete()


def labels(detections):
    return [
        (d.label, tuple(d.bounding_box), d.confidence, d.mask.tobytes())
        for d in detections.detections
    ]


def stand_in_model(bank):
    return refseg.as_model(bank, config=CONFIG, proposer=ShapeProposer(), encoder=PaletteEncoder())


@pytest.mark.parametrize("batch_size", [1, 3])
def test_apply_model_equals_predict(setup, batch_size):
    _, bank, targets = setup
    model = stand_in_model(bank)
    assert isinstance(model, fomo.Model)
    field = f"applied_{batch_size}"
    targets.apply_model(model, field, batch_size=batch_size, num_workers=0, progress=False)
    refseg.predict(
        targets, bank, f"predicted_{batch_size}", config=CONFIG, batch_size=batch_size,
        proposer=ShapeProposer(), encoder=PaletteEncoder(), num_workers=0, progress=False,
    )  # fmt: skip
    applied, predicted = targets.values(field), targets.values(f"predicted_{batch_size}")
    assert len(applied) == len(targets) and all(a is not None for a in applied)
    assert [labels(a) for a in applied] == [labels(p) for p in predicted]


def test_direct_calls_take_arrays_and_paths(setup):
    _, bank, targets = setup
    model = stand_in_model(bank)
    path = targets.first().filepath
    from_path = model.predict(path)
    from_array = model.predict(np.asarray(Image.open(path).convert("RGB")))
    assert labels(from_path) == labels(from_array)
    assert len(from_path.detections) > 0


def test_apply_model_skips_a_broken_image_with_fiftyones_skip_failures(setup, tmp_path):
    dataset, bank, targets = setup
    broken = targets.limit(2).clone()
    bad = broken.first()
    bad.filepath = str(tmp_path / "missing.png")
    bad.save()
    try:
        broken.apply_model(stand_in_model(bank), "applied", batch_size=1, progress=False)
        assert broken.select(bad.id).first().applied is None
        assert len(broken.exists("applied")) == 1
        with pytest.raises(Exception, match="does not exist"):
            broken.apply_model(
                stand_in_model(bank), "strict", batch_size=1, skip_failures=False, progress=False
            )
    finally:
        broken.delete()
