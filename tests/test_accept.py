"""Accepting predictions into ground truth: appended with provenance, existing labels untouched
(fingerprinted), duplicates skipped, every selection mode, and an exact undo."""

from __future__ import annotations

import json

import fiftyone as fo
import pytest
from fiftyone import ViewField as F
from pycocotools import mask as mask_utils
from stand_ins import PaletteEncoder, ShapeProposer, predict_with_stand_ins, stand_in_bank

import refseg
from refseg.coco_metrics import full_image_rle
from refseg.config import PredictConfig
from refseg.synthetic import CLASSES, make_shapes_dataset

CONFIG = PredictConfig(points_per_side=12, points_batch_size=50, max_detections=20)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Predictions on images whose ground truth lost every other label ("partial")."""
    name = f"accept-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=8, num_negative=1, seed=6
    )
    refs, bank, targets = stand_in_bank(dataset)
    predict_with_stand_ins(targets, bank, "pred", CONFIG)
    yield dataset, bank, targets
    dataset.delete()


@pytest.fixture
def partial(setup):
    dataset, _, targets = setup
    if dataset.has_field("partial"):
        dataset.delete_sample_field("partial")
    dataset.clone_sample_field("ground_truth", "partial")
    dropped = targets.values("partial.detections.id", unwind=True)[::2]
    dataset.delete_labels(ids=dropped, fields="partial")
    dataset.select_labels(ids=targets.values("partial.detections.id", unwind=True)[:1]).tag_labels(
        "kept"
    )
    return dataset


def fingerprint(dataset, field) -> dict:
    """Every sample's labels of ``field`` as stored, attributes and masks included."""
    ids, values = dataset.values(["id", field], _raw=True)
    return json.loads(json.dumps(dict(zip(map(str, ids), values)), default=str))


def iou(a, b, size) -> float:
    width, height = size
    return float(
        mask_utils.iou([full_image_rle(a, width, height)], [full_image_rle(b, width, height)], [0])[
            0, 0
        ]
    )


def test_accept_appends_with_provenance_and_undo_removes_exactly_that(setup, partial):
    dataset, _, targets = setup
    before = fingerprint(dataset, "partial")
    existing = {i: v for i, v in before.items() if v}
    chosen = refseg.threshold_view(targets, "pred", {c: 0.8 for c in CLASSES})
    result = refseg.accept(chosen, "pred", "partial", bank="bank")
    assert result.added and result.skipped and result.gt_field == "partial"
    after = fingerprint(dataset, "partial")
    for sample_id, stored in existing.items():  # the labels already there, byte for byte
        assert after[sample_id]["detections"][: len(stored["detections"])] == stored["detections"]
    predictions = {d.id: d for dets in targets.values("pred") for d in dets.detections}
    for sample in targets.select_fields("partial"):
        size = (sample.metadata.width, sample.metadata.height)
        labels = sample.partial.detections if sample.partial else []
        new = [d for d in labels if d.id in result.added]
        old = [d for d in labels if d.id not in result.added]
        for d in new:
            source = predictions[d["refseg_source_id"]]
            assert (d.label, d.bounding_box) == (source.label, source.bounding_box)
            assert (d.mask == source.mask).all() and d.confidence is None and not d.tags
            assert d["refseg_accept_id"] == result.accept_id and d["refseg_bank"] == "bank"
            assert d["refseg_source_field"] == "pred" and d["refseg_score"] == source.confidence
            assert source.confidence > 0.8
            assert all(iou(d, o, size) < 0.5 for o in old if o.label == d.label)
            assert all(iou(d, o, size) < 0.5 for o in new if o is not d and o.label == d.label)
    for skip in result.skipped:
        assert "overlaps" in skip.reason and predictions[skip.label_id].confidence > 0.8

    # asked to, it adds the overlapping ones too, but never one already accepted
    again = refseg.accept(chosen, "pred", "partial", skip_overlapping=False)
    assert len(again.added) == len(result.skipped)
    assert len(again.skipped) == len(result.added)
    assert all("already accepted" in s.reason for s in again.skipped)
    assert sorted(refseg.undo_accept(dataset, again.accept_id)["partial"]) == sorted(again.added)
    removed = refseg.undo_accept(dataset, result.accept_id)
    assert sorted(removed["partial"]) == sorted(result.added)
    assert fingerprint(dataset, "partial") == before
    with pytest.raises(ValueError, match="carries accept id .* already undone"):
        refseg.undo_accept(dataset, result.accept_id, "partial")


def test_selected_tagged_and_new_field(setup, partial):
    dataset, _, targets = setup
    sample = targets.first()
    selected = [d.id for d in sample.pred.detections[:3]]
    result = refseg.accept(targets, "pred", "fresh", label_ids=selected, skip_overlapping=False)
    assert dataset.get_field("fresh") is not None and len(result.added) == 3
    assert [d["refseg_source_id"] for d in dataset[sample.id].fresh.detections] == selected
    assert "refseg_bank" not in dataset[sample.id].fresh.detections[0]
    dataset.select_labels(ids=selected[:2], fields="pred").tag_labels(
        "approve", label_fields="pred"
    )
    tagged = refseg.accept(targets, "pred", "fresh2", tag="approve", skip_overlapping=False)
    assert sorted(
        dataset.select(sample.id).values("fresh2.detections.refseg_source_id", unwind=True)
    ) == sorted(selected[:2])
    assert len(tagged.added) == 2
    with pytest.raises(ValueError, match="are not predictions of 'pred' in the view"):
        refseg.accept(
            targets, "pred", "fresh", label_ids=[dataset[sample.id].ground_truth.detections[0].id]
        )


def test_a_view_that_hides_ground_truth_labels_does_not_lose_them(setup, partial):
    dataset, _, targets = setup
    before = fingerprint(dataset, "partial")
    only_red = targets.filter_labels("partial", F("label") == "red_square", only_matches=False)
    result = refseg.accept(
        only_red, "pred", "partial", skip_overlapping=False, thresholds={c: 0.9 for c in CLASSES}
    )
    assert result.added
    after = fingerprint(dataset, "partial")
    for sample_id, stored in before.items():
        if stored:
            assert (
                after[sample_id]["detections"][: len(stored["detections"])] == stored["detections"]
            )
    refseg.undo_accept(dataset, result.accept_id, "partial")
    assert fingerprint(dataset, "partial") == before


def test_fields_are_checked_before_anything_is_written(setup, partial):
    dataset, _, targets = setup
    before = {f: fingerprint(dataset, f) for f in ("partial", "pred", "ground_truth")}
    with pytest.raises(ValueError, match="both 'pred'"):
        refseg.accept(targets, "pred", "pred")
    with pytest.raises(ValueError, match="'filepath' is a name FiftyOne reserves"):
        refseg.accept(targets, "pred", "filepath")
    dataset.add_sample_field(
        "weather", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification
    )
    with pytest.raises(ValueError, match="'weather' holds Classification"):
        refseg.accept(targets, "pred", "weather")
    with pytest.raises(ValueError, match="'nope' does not exist"):
        refseg.accept(targets, "nope", "partial")
    with pytest.raises(ValueError, match="iou must be in"):
        refseg.accept(targets, "pred", "partial", iou=0)
    assert {f: fingerprint(dataset, f) for f in before} == before


def test_accepted_labels_are_annotations_and_protect_their_field(setup, partial):
    dataset, bank, targets = setup
    result = refseg.accept(
        targets.limit(2), "pred", "partial", thresholds={c: 0.9 for c in CLASSES}
    )
    grown = refseg.add_references(
        bank,
        dataset,
        "partial",
        result.added[:1],
        encoder=PaletteEncoder(),
        proposer=ShapeProposer(),
    )
    assert grown.references[-1].score is None  # an annotation now
    with pytest.raises(ValueError, match="'partial' .* holds reference labels"):
        refseg.predict(
            targets,
            grown,
            "partial",
            overwrite=True,
            encoder=PaletteEncoder(),
            proposer=ShapeProposer(),
        )
    refseg.undo_accept(dataset, result.accept_id)
