"""The wrong kind of argument to a public entry point gets a ValueError that says what to pass,
before anything is written; a bank's stored name and a dict of settings are taken."""

from __future__ import annotations

import pytest
from stand_ins import PaletteEncoder, ShapeProposer, stand_in_bank

import refseg
from refseg.config import PredictConfig
from refseg.synthetic import make_shapes_dataset

CONFIG = {"points_per_side": 8, "points_batch_size": 64}
COMPONENTS = dict(proposer=ShapeProposer(), encoder=PaletteEncoder())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    name = f"arguments-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=4, num_negative=0, seed=3
    )
    _, bank, targets = stand_in_bank(dataset, name="stored")
    yield dataset, bank, targets
    dataset.delete()


def predict(view, bank, field, **kwargs):
    options = dict(config=CONFIG, num_workers=0, progress=False, **COMPONENTS)
    return refseg.predict(view, bank, field, **{**options, **kwargs})


def test_a_stored_bank_name_and_a_dict_of_settings_predict_as_the_values_do(setup):
    dataset, bank, targets = setup
    predict(targets, "stored", "by_name")
    predict(targets, bank, "by_value", config=PredictConfig(**CONFIG))
    assert sum(len(labels) for labels in targets.values("by_name.detections.label")) > 0
    assert targets.values("by_name.detections.label") == targets.values("by_value.detections.label")
    assert targets.values("by_name.detections.confidence") == targets.values(
        "by_value.detections.confidence"
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda d, b, t: predict(d.name, b, "p"), r"target_view must be .* fo.load_dataset\("),
        (lambda d, b, t: predict(t, None, "p"), r"bank must be a refseg.MemoryBank .* got None"),
        (lambda d, b, t: predict(t, "nope", "p"), r"no refseg memory bank named 'nope'"),
        (lambda d, b, t: predict(t, b, "p", config=[1]), r"config must be a refseg.PredictConfig"),
        (lambda d, b, t: predict(t, b, "p", config={"grid": 3}), r"Unknown PredictConfig .*grid"),
        (
            lambda d, b, t: refseg.build_memory_bank(d.name, "ground_truth", **COMPONENTS),
            r"reference_view must be a FiftyOne dataset or view",
        ),
        (
            lambda d, b, t: refseg.build_memory_bank(d, "ground_truth", config=3, **COMPONENTS),
            r"config must be a refseg.ReferenceConfig",
        ),
        (
            lambda d, b, t: refseg.evaluate(None, "p", "ground_truth"),
            r"view must be a FiftyOne dataset or view, got None",
        ),
        (
            lambda d, b, t: refseg.sample_references(d.name, "ground_truth", shots=1, seed=0),
            r"sample_collection must be a FiftyOne dataset or view",
        ),
    ],
)
def test_the_wrong_kind_of_argument_is_named_and_nothing_is_written(setup, call, message):
    dataset, bank, targets = setup
    before = (dataset.get_field_schema().keys(), dataset.count_label_tags())
    with pytest.raises(ValueError, match=message):
        call(dataset, bank, targets)
    assert (dataset.get_field_schema().keys(), dataset.count_label_tags()) == before
