"""Corrections in one step: labels added to a bank as positives or negatives, encoding only what
is added; references taken from predictions keep their provenance and leave their field
writable; annotations stay protected."""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest
from stand_ins import PaletteEncoder, ShapeProposer, predict_with_stand_ins, stand_in_bank

import refseg
from refseg.config import PredictConfig
from refseg.synthetic import Shape, make_shapes_dataset, shape_mask, to_detection

CONFIG = PredictConfig(points_per_side=12, points_batch_size=50, max_detections=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    name = f"corrections-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=8, num_negative=1, seed=3
    )
    encoder = PaletteEncoder()
    refs, bank, targets = stand_in_bank(dataset, encoder=encoder)
    predict_with_stand_ins(targets, bank, "refseg", CONFIG, encoder=encoder)
    yield dataset, bank, targets, encoder
    dataset.delete()


def test_adding_encodes_only_the_added_labels(setup):
    dataset, bank, targets, encoder = setup
    sample = targets.first()
    ids = [d.id for d in sample.ground_truth.detections]
    before = encoder.encoded_images
    grown = refseg.add_references(
        bank, targets, "ground_truth", ids, encoder=encoder, proposer=ShapeProposer()
    )
    assert encoder.encoded_images - before == len(ids)  # one crop per added label, no more
    np.testing.assert_array_equal(grown.prototypes[: len(bank.references)], bank.prototypes)
    assert grown.references[: len(bank.references)] == bank.references
    alone = refseg.build_memory_bank(
        dataset.select(sample.id),
        "ground_truth",
        encoder=encoder,
        proposer=ShapeProposer(),
        progress=False,
    )
    by_id = dict(zip((r.label_id for r in alone.references), alone.prototypes))
    for record, prototype in zip(
        grown.references[len(bank.references) :], grown.prototypes[len(bank.references) :]
    ):
        np.testing.assert_array_equal(prototype, by_id[record.label_id])
        assert record.score is None and not record.negative and record.field == "ground_truth"
    assert grown.shots() == {
        c: bank.shots()[c] + [d.label for d in sample.ground_truth.detections].count(c)
        for c in bank.class_names
    }
    # removing them is the bank without them again (no encoding)
    before = encoder.encoded_images
    back = grown.without_references(ids)
    assert encoder.encoded_images == before
    np.testing.assert_array_equal(back.prototypes, bank.prototypes)


def test_a_prediction_added_as_a_reference_keeps_provenance_and_its_field_writable(setup):
    dataset, bank, targets, encoder = setup
    prediction = targets.first().refseg.detections[0]
    grown = refseg.add_references(
        bank, targets, "refseg", [prediction.id], encoder=encoder, proposer=ShapeProposer()
    )
    record = grown.references[-1]
    assert (record.label_id, record.label, record.field) == (
        prediction.id,
        prediction.label,
        "refseg",
    )
    assert record.score == pytest.approx(prediction.confidence) and record.from_prediction
    refseg.save_bank(dataset, "more_like_this", grown, overwrite=True)
    assert dataset.get_run_info("more_like_this").config.reference_fields == ["ground_truth"]
    # predicting into the prediction field again is allowed: the label goes, the bank keeps it
    result = refseg.predict(
        targets,
        grown,
        "refseg",
        config=CONFIG,
        overwrite=True,
        encoder=encoder,
        proposer=ShapeProposer(),
        num_workers=0,
        progress=False,
    )
    assert result.num_written == len(targets)
    assert prediction.id not in targets.values("refseg.detections.id", unwind=True)
    reloaded = refseg.load_bank(dataset, "more_like_this")
    np.testing.assert_array_equal(reloaded.prototypes, grown.prototypes)
    assert reloaded.references[-1] == record
    # annotations stay protected, by the bank in use and by the stored bank
    with pytest.raises(ValueError, match="'ground_truth' .* holds reference labels"):
        refseg.predict(
            targets,
            grown,
            "ground_truth",
            overwrite=True,
            encoder=encoder,
            proposer=ShapeProposer(),
        )
    with pytest.raises(ValueError, match="'ground_truth' .* holds reference labels"):
        refseg.predict(
            targets, bank, "ground_truth", overwrite=True, encoder=encoder, proposer=ShapeProposer()
        )
    dataset.delete_run("more_like_this")


def test_a_prediction_added_as_a_negative(setup):
    dataset, bank, targets, encoder = setup
    predictions = targets.first().refseg.detections[:2]
    grown = refseg.add_references(
        bank,
        targets,
        "refseg",
        [p.id for p in predictions],
        negative=True,
        encoder=encoder,
        proposer=ShapeProposer(),
    )
    assert grown.shots() == bank.shots()
    negatives = grown.shots(negative=True)
    for label in {p.label for p in predictions}:
        assert negatives[label] == [p.label for p in predictions].count(label)
    assert all(r.negative and r.from_prediction for r in grown.references[-2:])
    with pytest.raises(
        ValueError, match="already references of this bank.*negative.*without_references"
    ):
        refseg.add_references(grown, targets, "refseg", [predictions[0].id], encoder=encoder)


def test_a_hand_drawn_label_added_as_a_positive(setup):
    dataset, bank, targets, encoder = setup
    sample = targets.last()
    height, width = sample.metadata.height, sample.metadata.width
    drawn = to_detection(
        Shape("green_disc", shape_mask("green_disc", height, width, 5, 5, 30)), height, width
    )
    sample["hand"] = fo.Detections(detections=[drawn])
    sample.save()
    before = encoder.encoded_images
    grown = refseg.add_references(bank, targets, "hand", encoder=encoder, proposer=ShapeProposer())
    assert encoder.encoded_images - before == 1
    assert grown.references[-1].field == "hand" and grown.references[-1].score is None
    assert drawn.id == grown.references[-1].label_id


def test_bad_corrections_are_refused_with_clear_messages(setup):
    dataset, bank, targets, encoder = setup
    options = dict(encoder=encoder, proposer=ShapeProposer())
    gt_id = targets.first().ground_truth.detections[0].id
    with pytest.raises(ValueError, match="not labels of field 'refseg'"):
        refseg.add_references(bank, targets, "refseg", [gt_id], **options)
    with pytest.raises(ValueError, match="Not label ids"):
        refseg.add_references(bank, targets, "refseg", ["nope"], **options)
    with pytest.raises(ValueError, match="label_ids is empty"):
        refseg.add_references(bank, targets, "refseg", [], **options)
    with pytest.raises(ValueError, match="'missing' does not exist"):
        refseg.add_references(bank, targets, "missing", **options)
    ref_id = bank.references[0].label_id
    with pytest.raises(
        ValueError, match=f"already references of this bank: \\['{ref_id} \\(positive\\)"
    ):
        refseg.add_references(bank, dataset, "ground_truth", [ref_id], **options)
    yellow = dataset.match_tags("negative").first().ground_truth.detections[0]
    with pytest.raises(ValueError, match=r"\['yellow_square'\] have only negative references"):
        refseg.add_references(bank, dataset, "ground_truth", [yellow.id], negative=True, **options)
