"""The operators refuse unsafe writes in their forms, show damaged banks and skipped samples.

Run through FiftyOne's operator execution path, as ``tests/test_operators.py`` does; no model
is built. Every refusal leaves the dataset exactly as it was (``fingerprint``).
"""

from __future__ import annotations

import base64

import fiftyone as fo
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionError
from operator_calls import op, shown
from test_field_safety import fingerprint

import refseg
from refseg.memory import MemoryBank, ReferenceRecord
from refseg.models import RANDOM_WEIGHTS
from refseg.synthetic import make_shapes_dataset

pytestmark = pytest.mark.usefixtures("installed_plugin")
ENCODER = {"name": "dinov2_vits14", "weights": RANDOM_WEIGHTS}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    name = f"safety-operators-{tmp_path_factory.getbasetemp().name}"
    ds = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=4, num_negative=0, seed=2
    )
    ds.add_sample_field("weather", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    ds.clone_sample_field("ground_truth", "predictions")
    ds.clone_sample_field("ground_truth", "boxes")
    ds.set_field("boxes.detections.mask", None).save()
    ds.set_values(
        "predictions.detections.confidence",
        [[0.9] * len(d.detections) for d in ds.values("ground_truth")],
    )
    sample = ds.first()
    det = sample.ground_truth.detections[0]
    record = ReferenceRecord(
        ds.name, sample.id, det.id, det.label, sample.filepath, (0, 0, 1, 1), field="ground_truth"
    )
    bank = MemoryBank(
        class_names=(det.label,),
        prototypes=np.ones((1, 384), np.float32),
        labels=np.zeros(1, np.int64),
        references=(record,),
        encoder=ENCODER,
        proposer={"name": "sam2.1_hiera_tiny"},
    )
    refseg.save_bank(ds, "bank", bank)
    yield ds
    ds.delete()


def rejected(dataset, call, *message_parts: str) -> None:
    """Form validation refuses the call with the message, and nothing changed."""
    before = fingerprint(dataset)
    with pytest.raises(ExecutionError) as info:
        call()
    assert fingerprint(dataset) == before
    assert "Validation error" in str(info.value)
    for part in message_parts:
        assert part in str(info.value), str(info.value)


def test_predict_and_preview_forms_refuse_the_references_field(dataset):
    predict, preview = op("predict"), op("preview")
    rejected(
        dataset,
        lambda: predict(dataset, "bank", "ground_truth", overwrite=True),
        "'ground_truth'",
        "holds reference labels",
    )
    rejected(
        dataset,
        lambda: preview(dataset, "bank", [dataset.first().id], label_field="ground_truth"),
        "holds reference labels",
    )
    rejected(dataset, lambda: predict(dataset, "bank", "metadata"), "FiftyOne reserves")
    rejected(
        dataset,
        lambda: preview(dataset, "bank", [dataset.first().id], label_field="tags"),
        "FiftyOne reserves",
    )
    rejected(dataset, lambda: predict(dataset, "bank", "weather"), "holds Classification")


def test_other_writing_forms_refuse_unsafe_names(dataset):
    rejected(
        dataset,
        lambda: op("boxes_to_masks")(dataset, "boxes", all_labels=True, output_field="filepath"),
        "FiftyOne reserves",
    )
    rejected(
        dataset,
        lambda: op("boxes_to_masks")(dataset, "boxes", all_labels=True, output_field="weather"),
        "'weather' already exists",
    )
    rejected(
        dataset,
        lambda: op("evaluate")(dataset, "predictions", "ground_truth", "label"),
        "built-in attribute 'label'",
    )
    dataset.register_run("plugin_run", dataset.init_run(method="another.plugin"))
    rejected(
        dataset,
        lambda: op("build_memory_bank")(dataset, "ground_truth", "plugin_run", all_labels=True),
        "another run named 'plugin_run'",
    )


def test_a_damaged_stored_bank_is_an_error_in_the_form(dataset):
    good = refseg.load_bank(dataset, "bank")
    damaged = bytearray(good.to_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    refseg.save_bank(dataset, "damaged", good)
    results = dataset.init_run_results("damaged", bank=base64.b64encode(bytes(damaged)).decode())
    dataset.save_run_results("damaged", results, overwrite=True)
    rejected(
        dataset,
        lambda: op("predict")(dataset, "damaged", "fresh_field"),
        "memory bank 'damaged' stored with dataset",
        "Rebuild it",
    )


def test_evaluate_operator_skips_and_shows_unreadable_images(dataset, tmp_path):
    broken = dataset.last()
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    broken.filepath = str(empty)
    broken.metadata = None
    broken.save()
    result = shown(op("evaluate")(dataset, "predictions", "ground_truth", "ev"))
    assert result["num_failures"] == 1
    assert broken.id in result["failures"] and "the file is empty" in result["failures"]
    assert result["segm_AP"] == pytest.approx(1.0)  # predictions are the ground truth
    assert len(dataset.exists("ev_tp")) == len(dataset) - 1  # the run left it out
    with pytest.raises(ExecutionError, match="empty.png"):
        op("evaluate")(
            dataset, "predictions", "ground_truth", "ev", overwrite=True, skip_failures=False
        )
