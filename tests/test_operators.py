"""The plugin's operators, run through FiftyOne's operator execution path.

Every operator is called as a Python user calls it, ``foo.get_operator(uri)(view, ...)``, which
goes through ``foo.execute_operator``: form resolution and validation, then immediate execution,
or queueing a delegated operation that ``DelegatedOperationService`` then runs (as
``fiftyone delegated launch`` does). The database is this test run's own (``conftest.py``).

Form validation and light operators run without models. Tests marked ``slow`` use the real
architectures with random weights (SAM2.1 Hiera-T, DINOv2 ViT-S/14) on the CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone import ViewField as F
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError
from operator_calls import PLUGIN, op, shown, triggered

import refseg
from refseg.memory import MemoryBank, ReferenceRecord
from refseg.models import RANDOM_WEIGHTS
from refseg.synthetic import make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
MODELS = dict(sam2="sam2.1_hiera_tiny", random_weights=True, device="cpu")
SETTINGS = dict(points_per_side=4, max_detections=10)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*random weights"),
    pytest.mark.usefixtures("installed_plugin"),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    name = f"operators-{tmp_path_factory.getbasetemp().name}"
    ds = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=5, num_negative=1, seed=5
    )
    ds.add_sample_field("weather", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    yield ds
    ds.delete()


def run_queued(result, name: str):
    """Runs the queued operation of ``result`` as a delegated service does; returns its doc."""
    assert result.delegated, "the operation was not queued"
    service = DelegatedOperationService()
    doc_id = result.result["id"]
    assert service.get(doc_id).run_state == "queued"
    outcomes = service.execute_queued_operations(operator=f"{PLUGIN}/{name}")
    assert all(o is None or o.error is None for o in outcomes), [o.error for o in outcomes if o]
    doc = service.get(doc_id)
    assert doc.run_state == "completed", doc.result
    return doc


def reject(call, *message_parts: str) -> None:
    """The call is refused by form validation with a message naming the problem."""
    with pytest.raises(ExecutionError) as info:
        call()
    assert "Validation error" in str(info.value)
    for part in message_parts:
        assert part in str(info.value), str(info.value)


def fake_bank(dataset, key: str, encoder: dict) -> None:
    """A stored bank without encoding anything (for validation tests)."""
    sample = dataset.first()
    det = sample.ground_truth.detections[0]
    record = ReferenceRecord(
        dataset.name, sample.id, det.id, det.label, sample.filepath, (0, 0, 1, 1)
    )
    bank = MemoryBank(
        class_names=(det.label,),
        prototypes=np.ones((1, 384), np.float32),
        labels=np.zeros(1, np.int64),
        references=(record,),
        encoder=encoder,
        proposer={"name": "sam2.1_hiera_tiny"},
    )
    refseg.save_bank(dataset, key, bank, overwrite=True)


# -- registration ---------------------------------------------------------------------------


def test_every_listed_operator_is_registered():
    import yaml

    manifest = yaml.safe_load((REPO / "fiftyone.yml").read_text())
    for kind in ("operator", "panel"):
        listed = manifest[f"{kind}s"]
        registered = {o.uri for o in foo.list_operators(type=kind) if o.uri.startswith(PLUGIN)}
        assert registered == {f"{PLUGIN}/{name}" for name in listed}
    assert len(manifest["operators"]) == 14 and manifest["panels"] == ["refseg_panel"]


def test_register_imports_neither_torch_nor_the_engine():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('plugin', {str(REPO / '__init__.py')!r})\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['plugin'] = module\n"
        "spec.loader.exec_module(module)\n"
        "print('torch' in sys.modules, 'refseg' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- sample references (no models) ----------------------------------------------------------


def test_sample_references_immediate_matches_the_sdk(dataset):
    result = op("sample_references")(dataset, "ground_truth", shots=1, seed=0, tag="imm")
    assert result.result["num_references"] == 4  # a light operator returns its results
    assert {"reload_dataset", "set_view"} <= set(triggered(result))
    refseg.sample_references(dataset, "ground_truth", shots=1, seed=0, tag="sdk")
    assert _tagged(dataset, "imm") == _tagged(dataset, "sdk")


def test_sample_references_delegated(dataset):
    result = op("sample_references")(
        dataset, "ground_truth", shots=1, seed=0, tag="del", delegate=True
    )
    assert not _tagged(dataset, "del")  # queued, not run
    doc = run_queued(result, "sample_references")
    assert doc.result.result["num_references"] == 4
    assert _tagged(dataset, "del") == _tagged(dataset, "imm")


def _tagged(dataset, tag: str) -> set[str]:
    ids = dataset.filter_labels("ground_truth", F("tags").contains(tag)).values(
        "ground_truth.detections.id"
    )
    return {i for per_sample in ids for i in per_sample or []}


# -- form validation (no models) ------------------------------------------------------------


def test_forms_refuse_bad_input_with_clear_messages(dataset):
    sample_references = op("sample_references")
    sample_references(dataset, "ground_truth", shots=1, seed=1, tag="taken")
    reject(
        lambda: sample_references(dataset, "ground_truth", shots=1, seed=1, tag="taken"),
        "already carry the tag 'taken'",
    )
    reject(
        lambda: sample_references(dataset, "weather", shots=1, seed=1),
        "holds Classification, not Detections",
    )
    reject(lambda: sample_references(dataset, "missing", shots=1, seed=1), "no field 'missing'")
    reject(
        lambda: sample_references(dataset.match_tags("nothing"), "ground_truth", shots=1, seed=1),
        "view is empty",
    )
    reject(
        lambda: op("build_memory_bank")(dataset, "ground_truth", "bank", tag="untagged"),
        "No labels tagged 'untagged'",
    )
    reject(
        lambda: op("build_memory_bank")(dataset, "ground_truth", "not a name", tag="taken"),
        "not a valid bank name",
    )


def test_bank_forms_refuse_banks_this_plugin_cannot_apply(dataset):
    predict = op("predict")
    reject(lambda: predict(dataset, "no_such_bank", "x"), "no memory bank")
    fake_bank(dataset, "stand_in_bank", {"name": "palette-encoder", "weights": "dim=16"})
    reject(lambda: predict(dataset, "stand_in_bank", "x"), "cannot load")
    fake_bank(dataset, "random_bank", {"name": "dinov2_vits14", "weights": RANDOM_WEIGHTS})
    reject(
        lambda: predict(dataset, "random_bank", "x", random_weights=False),
        "built with random weights",
    )
    reject(lambda: predict(dataset, "random_bank", "weather"), "holds Classification")
    reject(lambda: op("preview")(dataset, "random_bank", []), "Open a sample")
    reject(lambda: op("preview")(dataset, "random_bank", dataset.values("id")), "at most 4")
    reject(
        lambda: op("manage_banks")(
            dataset, "random_bank", "remove", label_ids=["000000000000000000000000"]
        ),
        "Not references",
    )


def test_manage_banks_inspect_remove_delete_without_models(dataset):
    manage = op("manage_banks")
    fake_bank(dataset, "managed", {"name": "dinov2_vits14", "weights": RANDOM_WEIGHTS})
    inspected = shown(manage(dataset, "managed"))
    assert "sample" in inspected["summary"] and f"?id={dataset.first().id}" in inspected["summary"]
    doc = run_queued(manage(dataset, "managed", "delete", delegate=True), "manage_banks")
    assert doc.result.result["message"].startswith("Deleted")
    assert "managed" not in refseg.list_banks(dataset)


# -- the heavy operators with real architectures (random weights) ---------------------------


@pytest.fixture(scope="module")
def bank(dataset):
    """A bank built immediately through the operator from 1 reference per class."""
    op("sample_references")(dataset, "ground_truth", shots=1, seed=0, replace=True)
    result = op("build_memory_bank")(
        dataset, "ground_truth", "bank", dinov2="dinov2_vits14", **MODELS
    )
    assert shown(result)["num_references"] == 4
    return refseg.load_bank(dataset, "bank")


@pytest.fixture(scope="module")
def targets(dataset):
    """Two samples without references, for predictions."""
    return dataset.match_labels(tags=refseg.DEFAULT_TAG, bool=False).limit(2)


@pytest.mark.slow
def test_build_memory_bank_delegated_equals_immediate(dataset, bank):
    result = op("build_memory_bank")(
        dataset, "ground_truth", "bank_delegated", dinov2="dinov2_vits14", delegate=True, **MODELS
    )
    doc = run_queued(result, "build_memory_bank")
    assert doc.status.progress == 1.0
    delegated = refseg.load_bank(dataset, "bank_delegated")
    np.testing.assert_array_equal(delegated.prototypes, bank.prototypes)
    assert delegated.references == bank.references


@pytest.mark.slow
def test_predict_immediate_then_interrupted_run_resumed_delegated(
    dataset, bank, targets, monkeypatch
):
    result = op("predict")(targets, "bank", "pred", **SETTINGS)
    assert shown(result)["num_samples"] == 2
    assert {"reload_dataset", "set_view"} <= set(triggered(result))
    reject(lambda: op("predict")(targets, "bank", "pred"), "already exists")

    # interrupt a second run after its first sample was written: its second write fails
    import refseg.writer

    _plugin_module("predict").WRITE_EVERY = 1
    original = refseg.writer.write_detections
    calls = []

    def crash_on_second_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated interruption")
        return original(*args, **kwargs)

    monkeypatch.setattr(refseg.writer, "write_detections", crash_on_second_write)
    with pytest.raises(ExecutionError, match="simulated interruption"):
        op("predict")(targets, "bank", "pred_resumed", **SETTINGS)
    assert len(targets.exists("pred_resumed")) == 1
    monkeypatch.setattr(refseg.writer, "write_detections", original)

    resumed = op("predict")(targets, "bank", "pred_resumed", resume=True, delegate=True, **SETTINGS)
    doc = run_queued(resumed, "predict")
    assert doc.result.result["num_samples"] == 1 and doc.status.progress == 1.0
    for sample in targets:
        assert _signature(sample.pred_resumed) == _signature(sample.pred)


@pytest.mark.slow
def test_evaluate_immediate_and_delegated_store_fiftyone_evaluations(dataset, targets):
    if "pred" not in dataset.get_field_schema():
        pytest.skip("needs the predictions of the predict test")
    result = op("evaluate")(targets, "pred", "ground_truth", "pred_eval")
    table = shown(result)["coco"]
    assert "| AP |" in table and "segm" in table
    doc = run_queued(
        op("evaluate")(targets, "pred", "ground_truth", "pred_eval_delegated", delegate=True),
        "evaluate",
    )
    assert {"pred_eval", "pred_eval_delegated"} <= set(dataset.list_evaluations())
    assert doc.result.result["segm_AP"] == shown(result)["segm_AP"]
    assert dataset.get_evaluation_info("pred_eval").config.method == "coco"
    reject(lambda: op("evaluate")(targets, "pred", "ground_truth", "pred_eval"), "exists")


@pytest.mark.slow
def test_preview_writes_the_same_labels_as_predict(dataset, targets):
    if "pred" not in dataset.get_field_schema():
        pytest.skip("needs the predictions of the predict test")
    sample_id = targets.values("id")[0]
    result = op("preview")(dataset, "bank", [sample_id], **SETTINGS)
    assert "detections" in shown(result)["summary"]
    # read fields with values(): the operators extended the schema through their own handle
    preview, pred = dataset.select(sample_id).values(["refseg_preview", "pred"])
    assert _signature(preview[0]) == _signature(pred[0])


@pytest.mark.slow
def test_manage_banks_add_and_remove_references(dataset, bank):
    manage = op("manage_banks")
    refseg.save_bank(dataset, "growing", bank, overwrite=True)
    extra = (
        dataset.match_labels(tags=refseg.DEFAULT_TAG, bool=False)
        .match(_has_class("red_square"))
        .limit(1)
    )
    doc = run_queued(
        manage(extra, "growing", "add", gt_field="ground_truth", all_labels=True, delegate=True),
        "manage_banks",
    )
    grown = refseg.load_bank(dataset, "growing")
    added = len(grown.references) - len(bank.references)
    assert added >= 1 and doc.status.progress == 1.0
    new_ids = [r.label_id for r in grown.references[len(bank.references) :]]
    shown(manage(dataset, "growing", "remove", label_ids=new_ids))
    back = refseg.load_bank(dataset, "growing")
    np.testing.assert_array_equal(back.prototypes, bank.prototypes)


@pytest.mark.slow
def test_boxes_to_masks_in_place_and_into_a_new_field(dataset):
    sample = dataset.match_labels(tags=refseg.DEFAULT_TAG, bool=False).last()
    boxes = dataset.select(sample.id)
    boxes.clone_sample_field("ground_truth", "boxes")
    boxes.set_field("boxes.detections.mask", None).save()
    count = len(sample.ground_truth.detections)
    result = op("boxes_to_masks")(
        boxes,
        "boxes",
        all_labels=True,
        output_field="boxes_masks",
        sam2="sam2.1_hiera_tiny",
        random_weights=True,
        device="cpu",
    )
    assert shown(result) == {
        "num_masks": count,
        "field": "boxes_masks",
        "num_failures": 0,
        "failures": "boxes_to_masks: no sample failed",
    }
    doc = run_queued(
        op("boxes_to_masks")(
            boxes,
            "boxes",
            all_labels=True,
            delegate=True,
            sam2="sam2.1_hiera_tiny",
            random_weights=True,
            device="cpu",
        ),
        "boxes_to_masks",
    )
    assert doc.result.result["num_masks"] == count
    filled = dataset[sample.id]
    for made, copied in zip(filled.boxes.detections, filled.boxes_masks.detections):
        assert made.mask is not None and made.mask.dtype == bool
        np.testing.assert_array_equal(made.mask, copied.mask)


def _has_class(label):
    return F("ground_truth.detections.label").contains(label)


def _signature(detections):
    dets = detections.detections if detections is not None else []
    return [
        (
            d.label,
            round(d.confidence, 5),
            tuple(np.round(d.bounding_box, 5)),
            None if d.mask is None else d.mask.tobytes(),
        )
        for d in dets
    ]


def _plugin_module(name: str):
    """The plugin's own module ``operators.<name>``, as FiftyOne imported it."""
    module = sys.modules.get(f"fiftyone.plugins.orgs.refseg.refseg.operators.{name}")
    assert module is not None, "the plugin was not loaded"
    return module
