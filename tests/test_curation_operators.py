"""The curation operators through FiftyOne's operator execution path, immediate and delegated:
add selected labels to a bank, suggest / store / apply thresholds, accept and undo.

The bank's models are the stand-ins of ``stand_ins.py``, registered as models ("test_shapes",
"test_palette") so the operators build them as they build SAM2 and DINOv2: these tests run in
seconds and can count what is encoded.
"""

from __future__ import annotations

import pytest
from fiftyone import ViewField as F
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError
from operator_calls import PLUGIN, op, shown, triggered
from stand_ins import PaletteEncoder, ShapeProposer

import refseg
from refseg.config import PredictConfig
from refseg.models import RANDOM, RANDOM_WEIGHTS, ModelEntry, Models, register_model
from refseg.synthetic import CLASSES, make_shapes_dataset

CONFIG = PredictConfig(points_per_side=12, points_batch_size=50, max_detections=20)
ENCODER = PaletteEncoder()
ENCODER.identity = {"name": "test_palette", "weights": RANDOM_WEIGHTS}

pytestmark = pytest.mark.filterwarnings("ignore:.*random weights")


def _proposer(*args):
    proposer = ShapeProposer()
    proposer.identity = {"name": "test_shapes", "weights": RANDOM_WEIGHTS}
    return proposer


@pytest.fixture(scope="module", autouse=True)
def plugin_dir(installed_plugin):
    """The plugin installed as a symlink, and the stand-ins registered as models."""
    register_model(ModelEntry("proposer", "test_shapes", build=_proposer), overwrite=True)
    register_model(ModelEntry("encoder", "test_palette", build=lambda *a: ENCODER), overwrite=True)
    return installed_plugin


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    name = f"curation-operators-{tmp_path_factory.getbasetemp().name}"
    ds = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=6, num_negative=1, seed=5
    )
    refs = refseg.sample_references(ds, "ground_truth", shots=1, seed=0, classes=CLASSES)
    models = Models("test_shapes", "test_palette", RANDOM, RANDOM)
    refseg.build_memory_bank(
        refs, "ground_truth", tag=refseg.DEFAULT_TAG, models=models, name="bank", progress=False
    )
    targets = ds.exclude(refs.values("id"))
    refseg.predict(targets, refseg.load_bank(ds, "bank"), "pred", config=CONFIG, num_workers=0)
    yield ds
    ds.delete()


def run_queued(result, name: str):
    assert result.delegated, "the operation was not queued"
    service = DelegatedOperationService()
    outcomes = service.execute_queued_operations(operator=f"{PLUGIN}/{name}")
    assert all(o is None or o.error is None for o in outcomes), [o.error for o in outcomes if o]
    doc = service.get(result.result["id"])
    assert doc.run_state == "completed", doc.result
    return doc


def reject(call, *parts: str) -> None:
    with pytest.raises(ExecutionError) as info:
        call()
    assert "Validation error" in str(info.value)
    for part in parts:
        assert part in str(info.value), str(info.value)


def selection(dataset, field: str, ids: list[str]) -> list[dict]:
    """``ctx.selected_labels`` as the App sends it."""
    samples = dict(zip(*dataset.values([f"{field}.detections.id", "id"], unwind=True)))
    return [{"label_id": i, "sample_id": samples[i], "field": field} for i in ids]


# -- add selected labels --------------------------------------------------------------------


def test_add_selected_predictions_as_negatives_then_a_label_as_a_positive(dataset):
    add = op("add_references")
    predictions = dataset.values("pred.detections.id", unwind=True)[:2]
    before = ENCODER.encoded_images
    result = add(
        dataset, "bank", negative=True, selected_labels=selection(dataset, "pred", predictions)
    )
    assert shown(result)["num_added"] == 2 and "| negatives |" in shown(result)["summary"]
    assert ENCODER.encoded_images - before == 2  # only the added labels are encoded
    bank = refseg.load_bank(dataset, "bank")
    assert {r.label_id for r in bank.references if r.negative} == set(predictions)
    assert all(r.field == "pred" and r.score is not None for r in bank.references if r.negative)

    unused = dataset.match_labels(tags=refseg.DEFAULT_TAG, bool=False).match_tags(
        "negative", bool=False
    )
    label = unused.first().ground_truth.detections[0]
    doc = run_queued(
        add(dataset, "bank", label_ids=[label.id], field="ground_truth", delegate=True),
        "add_references",
    )
    assert doc.result.result["num_added"] == 1 and doc.status.progress == 1.0
    grown = refseg.load_bank(dataset, "bank")
    assert grown.shots()[label.label] == bank.shots()[label.label] + 1
    inspected = shown(op("manage_banks")(dataset, "bank"))
    assert "| negative |" in inspected["summary"] and "2 negative" in inspected["message"]
    refseg.save_bank(
        dataset, "bank", grown.without_references([label.id, *predictions]), overwrite=True
    )


def test_add_references_refuses_what_it_cannot_add(dataset):
    add = op("add_references")
    reject(lambda: add(dataset, "bank"), "No labels selected")
    ref = refseg.load_bank(dataset, "bank").references[0]
    reject(
        lambda: add(
            dataset, "bank", selected_labels=selection(dataset, "ground_truth", [ref.label_id])
        ),
        "Already references of 'bank'",
    )
    reject(lambda: add(dataset, "bank", label_ids=[ref.label_id], field="nope"), "nope")


def test_manage_banks_adds_tagged_negatives(dataset):
    fp = dataset.values("pred.detections.id", unwind=True)[-1]
    dataset.select_labels(ids=[fp], fields="pred").tag_labels(
        refseg.NEGATIVE_TAG, label_fields="pred"
    )
    refseg.save_bank(dataset, "managed", refseg.load_bank(dataset, "bank"), overwrite=True)
    shown(op("manage_banks")(dataset, "managed", "add", gt_field="pred", negative=True))
    bank = refseg.load_bank(dataset, "managed")
    assert [r.label_id for r in bank.references if r.negative] == [fp]
    dataset.untag_labels(refseg.NEGATIVE_TAG, label_fields="pred")
    dataset.delete_run("managed")


# -- thresholds -----------------------------------------------------------------------------


def test_suggest_store_and_apply_thresholds(dataset):
    targets = dataset.match_labels(tags=refseg.DEFAULT_TAG, bool=False)
    expected = refseg.suggest_thresholds(targets, "pred", "ground_truth", target_precision=0.8)
    suggest = op("suggest_thresholds")
    result = suggest(targets, "pred", "ground_truth", target_precision=0.8, bank="bank", apply=True)
    assert shown(result)["thresholds"] == expected.thresholds and expected.thresholds
    assert "| class | threshold |" in shown(result)["table"]
    assert "set_view" in triggered(result)
    assert refseg.load_bank(dataset, "bank").thresholds == expected.thresholds
    doc = run_queued(
        suggest(targets, "pred", "ground_truth", target_precision=0.8, delegate=True),
        "suggest_thresholds",
    )
    assert doc.result.result["thresholds"] == expected.thresholds
    assert doc.result.result["message"] == "Not stored"

    applied = op("apply_thresholds")(targets, "pred", bank="bank")
    kept = refseg.threshold_view(targets, "pred", expected).count("pred.detections")
    assert applied.result["num_kept"] == kept < applied.result["num_predictions"]
    assert "set_view" in triggered(applied)
    override = op("apply_thresholds")(
        targets, "pred", bank="bank", thresholds={c: 1.0 for c in CLASSES}
    )
    assert override.result["num_kept"] == 0
    refseg.save_bank(
        dataset, "plain", refseg.load_bank(dataset, "bank").with_thresholds(None), overwrite=True
    )
    reject(lambda: op("apply_thresholds")(targets, "pred", bank="plain"), "No thresholds")
    dataset.delete_run("plain")


# -- accept and undo ------------------------------------------------------------------------


def test_accept_above_thresholds_selected_delegated_and_undo(dataset):
    targets = dataset.match_labels(tags=refseg.DEFAULT_TAG, bool=False)
    bank = refseg.load_bank(dataset, "bank")
    if not bank.thresholds:
        halves = bank.with_thresholds({c: 0.5 for c in CLASSES})
        refseg.save_bank(dataset, "bank", halves, overwrite=True)
    accept = op("accept_predictions")
    result = accept(targets, "pred", "accepted", which="thresholds", bank="bank")
    out = shown(result)
    thresholds = refseg.load_bank(dataset, "bank").thresholds
    chosen = refseg.threshold_view(targets, "pred", thresholds).count("pred.detections")
    assert out["num_added"] + out["num_skipped"] == chosen and out["num_added"] > 0
    assert set(dataset.distinct("accepted.detections.refseg_bank")) == {"bank"}
    assert refseg.list_accepts(dataset) == {out["accept_id"]: {"accepted": out["num_added"]}}

    picked = dataset.values("pred.detections.id", unwind=True)[:2]
    doc = run_queued(
        accept(
            dataset, "pred", "accepted", which="selected", skip_overlapping=False,
            selected_labels=selection(dataset, "pred", picked), delegate=True,
        ),
        "accept_predictions",
    )  # fmt: skip
    second = doc.result.result
    sources = dataset.values("accepted.detections.refseg_source_id", unwind=True)
    assert second["num_added"] + second["num_skipped"] == 2 and set(picked) <= set(sources)
    reject(lambda: accept(dataset, "pred", "pred"), "the predictions field")
    reject(lambda: accept(dataset, "pred", "accepted", which="selected"), "No labels of 'pred'")

    undo = op("undo_accept")
    undone = undo(dataset, second["accept_id"])
    assert undone.result["num_removed"] == second["num_added"]
    undo(dataset, out["accept_id"])
    assert dataset.count("accepted.detections") == 0
    reject(lambda: undo(dataset, out["accept_id"]), "No accepted labels")


def test_predict_and_preview_apply_the_bank_thresholds_when_asked(dataset):
    bank = refseg.load_bank(dataset, "bank")
    thresholds = {c: 0.9 for c in CLASSES}
    refseg.save_bank(dataset, "strict", bank.with_thresholds(thresholds), overwrite=True)
    targets = dataset.match_labels(tags=refseg.DEFAULT_TAG, bool=False).limit(2)
    settings = dict(points_per_side=12, max_detections=20)
    shown(op("predict")(targets, "strict", "strict_pred", use_bank_thresholds=True, **settings))
    shown(op("predict")(targets, "strict", "loose_pred", **settings))
    strict = targets.values("strict_pred.detections.confidence", unwind=True)
    loose = targets.values("loose_pred.detections.confidence", unwind=True)
    assert strict and min(strict) > 0.9 and min(loose) <= 0.9
    sample_id = targets.match(F("strict_pred.detections").length() > 0).first().id
    shown(op("preview")(dataset, "strict", [sample_id], use_bank_thresholds=True, **settings))
    previewed = dataset.select(sample_id).values(
        "refseg_preview.detections.confidence", unwind=True
    )
    expected = dataset.select(sample_id).values("strict_pred.detections.confidence", unwind=True)
    assert previewed == expected and min(previewed) > 0.9
    dataset.delete_run("strict")
