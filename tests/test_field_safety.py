"""Fields are safe: every refused write leaves every sample exactly as it was.

Each refusal is checked against a fingerprint of every sample (all fields, label ids and masks
included), the dataset's schema and its runs, taken before and after the refused call.
"""

from __future__ import annotations

import dataclasses
import json

import fiftyone as fo
import pytest
from stand_ins import PaletteEncoder, ShapeProposer, predict_with_stand_ins, stand_in_bank

import refseg
from refseg.config import PredictConfig
from refseg.field_safety import (
    bank_name_problem,
    check_eval_key,
    check_output_field,
    eval_key_problem,
    output_field_problem,
)
from refseg.synthetic import make_shapes_dataset


def fingerprint(dataset: fo.Dataset) -> str:
    """Every sample's every field (label ids, masks, timestamps), the schema and the runs."""
    dataset.reload()
    samples = [s.to_dict(include_private=True) for s in dataset.iter_samples()]
    state = {
        "samples": samples,
        "schema": {k: str(v) for k, v in dataset.get_field_schema(include_private=True).items()},
        "runs": dataset.list_runs(),
        "evaluations": dataset.list_evaluations(),
    }
    return json.dumps(state, sort_keys=True, default=str)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    name = f"field-safety-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=6, num_negative=1, seed=4
    )
    dataset.add_sample_field(
        "weather", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification
    )
    dataset.add_sample_field("note", fo.StringField)
    dataset.set_values("note", ["keep me"] * len(dataset))
    dataset.clone_sample_field("ground_truth", "annotations")
    references, bank, targets = stand_in_bank(dataset)
    yield dataset, bank, targets
    dataset.delete()


def predict(targets, bank, field, config=PredictConfig(points_per_side=6), **kwargs):
    return predict_with_stand_ins(targets, bank, field, config, **kwargs)


def refused(dataset, call, *message_parts: str) -> str:
    """The call raises a ValueError naming ``message_parts`` and the dataset is unchanged."""
    before = fingerprint(dataset)
    with pytest.raises(ValueError) as info:
        call()
    after = fingerprint(dataset)
    assert after == before, "a refused call changed the dataset"
    for part in message_parts:
        assert part in str(info.value), str(info.value)
    return str(info.value)


def test_the_bank_records_its_reference_field(setup):
    dataset, bank, _ = setup
    assert {(r.dataset, r.field) for r in bank.references} == {(dataset.name, "ground_truth")}


def test_predict_never_writes_into_the_references_field(setup):
    dataset, bank, targets = setup
    for options in (dict(overwrite=True), dict(resume=True), dict()):
        message = refused(
            dataset,
            lambda: predict(targets, bank, "ground_truth", **options),
            "'ground_truth'",
            "holds reference labels",
            "not even with overwrite=True",
            "Choose another label_field",
        )
    assert "built from it" in message


def test_a_bank_that_records_no_field_is_protected_by_its_label_ids(setup):
    dataset, bank, targets = setup
    unrecorded = dataclasses.replace(
        bank, references=tuple(dataclasses.replace(r, field="") for r in bank.references)
    )
    for field in ("ground_truth", "annotations"):  # a clone keeps the label ids
        refused(
            dataset,
            lambda: predict(targets, unrecorded, field, overwrite=True),
            f"'{field}'",
            "some of its labels are references of the memory bank in use",
        )
    dataset.add_sample_field("scratch", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    assert output_field_problem(dataset, "scratch", overwrite=True, bank=unrecorded) is None


def _fresh_copy(detections):
    """The same labels with new label ids, tags kept."""
    return fo.Detections(
        detections=[
            fo.Detection(label=d.label, bounding_box=d.bounding_box, mask=d.mask, tags=d.tags)
            for d in detections.detections
        ]
    )


def test_fields_of_banks_stored_with_the_dataset_are_protected(setup):
    dataset, bank, targets = setup
    dataset.set_values("other_gt", [_fresh_copy(d) for d in dataset.values("ground_truth")])
    stored = refseg.build_memory_bank(
        dataset,
        "other_gt",
        tag=refseg.DEFAULT_TAG,
        encoder=PaletteEncoder(),
        proposer=ShapeProposer(),
        name="from_other_gt",
        progress=False,
    )
    assert {r.field for r in stored.references} == {"other_gt"}
    refused(
        dataset,
        lambda: predict(targets, bank, "other_gt", overwrite=True),
        "'other_gt'",
        "memory bank 'from_other_gt' stored with the dataset was built from it",
    )
    dataset.delete_run("from_other_gt")
    assert output_field_problem(dataset, "other_gt", overwrite=True, bank=bank) is None


@pytest.mark.parametrize(
    "field",
    [
        "id",
        "filepath",
        "tags",
        "metadata",
        "created_at",
        "last_modified_at",
        "media_type",
        "dataset",
        "frames",
        "groups",
        "pk",
        "_private",
        "ground_truth.detections",
        "a$b",
        "",
    ],
)
def test_reserved_and_invalid_names_are_refused(setup, field):
    dataset, bank, targets = setup
    message = refused(dataset, lambda: predict(targets, bank, field, overwrite=True), "label_field")
    assert repr(field) in message or field == ""


@pytest.mark.parametrize(
    ("field", "held"), [("weather", "Classification"), ("note", "StringField")]
)
def test_fields_of_another_type_are_refused(setup, field, held):
    dataset, bank, targets = setup
    refused(
        dataset,
        lambda: predict(targets, bank, field, overwrite=True),
        f"'{field}'",
        f"holds {held}, not Detections",
    )


def test_an_existing_detections_field_needs_overwrite(setup):
    dataset, bank, targets = setup
    predict(targets.limit(1), bank, "earlier")
    refused(dataset, lambda: predict(targets, bank, "earlier"), "'earlier' already exists")
    check_output_field(targets, "earlier", overwrite=True, bank=bank)  # allowed


def test_eval_keys_that_would_overwrite_data_are_refused(setup):
    dataset, bank, targets = setup
    predict(targets, bank, "eval_predictions")
    for key, part in (
        ("label", "built-in attribute 'label'"),
        ("confidence", "built-in attribute 'confidence'"),
        ("note", None),
        ("not a key", "valid Python identifier"),
    ):
        if key == "note":
            dataset.add_sample_field("note_tp", fo.IntField)
            part = "would write the fields ['note_tp']"
        refused(
            dataset,
            lambda: refseg.evaluate(targets, "eval_predictions", "ground_truth", eval_key=key),
            part,
        )
    dataset.set_values(
        "ground_truth.detections.iscrowd",
        [[0] * len(d.detections) for d in dataset.values("ground_truth")],
    )
    refused(
        dataset,
        lambda: check_eval_key(
            dataset,
            "iscrowd",
            pred_field="eval_predictions",
            gt_field="ground_truth",
            overwrite=False,
        ),
        "label attribute 'ground_truth.detections.iscrowd'",
    )
    assert (
        eval_key_problem(
            dataset,
            "fresh_key",
            pred_field="eval_predictions",
            gt_field="ground_truth",
            overwrite=False,
        )
        is None
    )


def test_bank_names_never_replace_other_runs(setup):
    dataset, bank, _ = setup
    dataset.register_run("someone_else", dataset.init_run(method="another.plugin"))
    for overwrite in (False, True):
        refused(
            dataset,
            lambda: refseg.save_bank(dataset, "someone_else", bank, overwrite=overwrite),
            "another run named 'someone_else'",
        )
    assert "valid Python identifier" in bank_name_problem(dataset, "not a key", overwrite=False)


class _NeverEncode(PaletteEncoder):
    def encode(self, images):
        raise AssertionError("nothing may be encoded before the bank name is checked")


@pytest.mark.parametrize("name", ["bad name", "taken_by_a_plugin"])
def test_build_checks_the_bank_name_before_encoding(setup, name):
    dataset, _, _ = setup
    if not dataset.has_run("taken_by_a_plugin"):
        dataset.register_run("taken_by_a_plugin", dataset.init_run(method="another.plugin"))
    refused(
        dataset,
        lambda: refseg.build_memory_bank(
            dataset,
            "ground_truth",
            tag=refseg.DEFAULT_TAG,
            encoder=_NeverEncode(),
            proposer=ShapeProposer(),
            name=name,
            overwrite=True,
            progress=False,
        ),
        repr(name),
    )
