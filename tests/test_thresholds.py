"""Per-class thresholds: COCO matching at one IoU, the suggestion rule on known numbers, storing
them with the bank, applying them at predict time and as a view filter."""

from __future__ import annotations

import dataclasses

import fiftyone as fo
import numpy as np
import pytest
from stand_ins import predict_with_stand_ins, stand_in_bank

import refseg
from refseg.config import PredictConfig
from refseg.memory import MemoryBank
from refseg.synthetic import make_shapes_dataset

CONFIG = PredictConfig(points_per_side=12, points_batch_size=50, max_detections=500)


def box(x: float, score: float | None = None, label: str = "cat") -> fo.Detection:
    """A 10 x 10 px box at (x, 0) in a 100 x 100 image."""
    return fo.Detection(label=label, bounding_box=[x / 100, 0.0, 0.1, 0.1], confidence=score)


@pytest.fixture
def known(dataset_name, tmp_path):
    """One image: 3 cats; predicted cats at 0.9 (hit), 0.8 (miss), 0.7 (hit), 0.6 (miss),
    0.5 (hit); a dog predicted where there is no dog; a bird with no prediction."""
    from PIL import Image

    path = str(tmp_path / "image.png")
    Image.new("RGB", (100, 100)).save(path)
    dataset = fo.Dataset(dataset_name)
    sample = fo.Sample(filepath=path)
    sample["gt"] = fo.Detections(detections=[box(0), box(20), box(40), box(80, label="bird")])
    sample["pred"] = fo.Detections(
        detections=[
            box(0, 0.9), box(60, 0.8), box(20.5, 0.7), box(70, 0.6), box(40, 0.5),
            box(90, 0.95, label="dog"),
        ]
    )  # fmt: skip
    dataset.add_sample(sample)
    dataset.compute_metadata()
    return dataset


def test_the_suggestion_rule_on_known_numbers(known):
    table = refseg.suggest_thresholds(known, "pred", "gt", iou_type="bbox")
    cat = table.row("cat")
    # every threshold: 0 keeps 5 (3 hits): P .6 R 1 F1 .75, the best; 0.6 keeps 3: P .667 ...
    assert (cat.threshold, cat.num_kept, cat.num_true_positives) == (0.0, 5, 3)
    assert (cat.precision, cat.recall, cat.f1) == pytest.approx((0.6, 1.0, 0.75))
    assert (cat.num_predictions, cat.num_ground_truth) == (5, 3)
    assert table.row("dog").threshold is None and "no ground truth" in table.row("dog").note
    assert table.row("bird").threshold is None and "no predictions" in table.row("bird").note
    assert table.thresholds == {"cat": 0.0}
    precise = refseg.suggest_thresholds(known, "pred", "gt", iou_type="bbox", target_precision=0.66)
    cat = precise.row("cat")
    assert (cat.threshold, cat.num_kept, cat.num_true_positives) == (0.6, 3, 2)
    assert cat.precision == pytest.approx(2 / 3) and cat.recall == pytest.approx(2 / 3)
    exact = refseg.suggest_thresholds(known, "pred", "gt", iou_type="bbox", target_precision=1.0)
    assert exact.row("cat").threshold == 0.8 and exact.row("cat").num_kept == 1
    markdown = exact.to_markdown()
    assert "| cat | 0.8000 | 1.000 | 0.333 |" in markdown and "precision 1" in markdown
    # IoU 0.9: the box shifted by half a pixel (IoU 0.905) still matches, at 0.95 it does not
    strict = refseg.suggest_thresholds(known, "pred", "gt", iou=0.95, iou_type="bbox")
    assert strict.row("cat").num_true_positives == 2
    with pytest.raises(ValueError, match="target_precision"):
        refseg.suggest_thresholds(known, "pred", "gt", target_precision=1.5)
    with pytest.raises(ValueError, match="iou must be in"):
        refseg.suggest_thresholds(known, "pred", "gt", iou=1.0)


def test_unreachable_precision_gives_no_threshold_with_a_note(known):
    sample = known.first()  # the best hit now ranks last
    sample["pred"].detections[0].confidence = 0.1
    sample.save()
    table = refseg.suggest_thresholds(known, "pred", "gt", iou_type="bbox", target_precision=0.99)
    assert table.row("cat").threshold is None
    assert "no threshold reaches precision 0.99" in table.row("cat").note


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    name = f"thresholds-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=8, num_negative=1, seed=4
    )
    refs, bank, targets = stand_in_bank(dataset)
    run(targets, bank, "pred")
    yield dataset, bank, targets
    dataset.delete()


def run(view, bank, field, config=CONFIG):
    return predict_with_stand_ins(view, bank, field, config)


def test_matching_agrees_with_fiftyones_coco_evaluation(shapes):
    dataset, _, targets = shapes
    matches = refseg.match_predictions(targets, "pred", "ground_truth", iou=0.5)
    targets.evaluate_detections(
        "pred", gt_field="ground_truth", eval_key="m50", method="coco", iou=0.5, use_masks=True
    )
    F = fo.ViewField

    def ids(status):
        view = targets.filter_labels("pred", F("m50") == status)
        return set(view.values("pred.detections.id", unwind=True))

    assert {p.label_id for p in matches.true_positives()} == ids("tp")
    # COCO evaluates the 100 highest-scoring predictions of each image and class (here up to
    # 500 per image); FiftyOne counts every prediction
    evaluated = set()
    for dets in targets.values("pred"):
        for label in {d.label for d in dets.detections}:
            ranked = sorted(
                (d for d in dets.detections if d.label == label), key=lambda d: -d.confidence
            )
            evaluated |= {d.id for d in ranked[:100]}
    assert len(ids("fp") - evaluated) > 0
    assert {p.label_id for p in matches.false_positives()} == ids("fp") & evaluated
    assert sum(matches.num_ground_truth.values()) == targets.count("ground_truth.detections")
    dataset.delete_evaluation("m50")


def test_thresholds_are_stored_with_the_bank_and_applied_at_predict_time(shapes, tmp_path):
    dataset, bank, targets = shapes
    table = refseg.suggest_thresholds(targets, "pred", "ground_truth", target_precision=0.9)
    assert set(table.thresholds) <= set(bank.class_names) and table.thresholds
    stored = bank.with_thresholds(table.thresholds)
    stored.save(tmp_path / "bank.npz")
    assert MemoryBank.load(tmp_path / "bank.npz").thresholds == table.thresholds
    refseg.save_bank(dataset, "calibrated", stored, overwrite=True)
    assert refseg.load_bank(dataset, "calibrated").thresholds == table.thresholds
    assert dataset.get_run_info("calibrated").config.thresholds == table.thresholds

    # the bank's thresholds apply only when asked for
    run(targets, stored, "unfiltered")
    assert _labels(targets, "unfiltered") == _labels(targets, "pred")
    run(targets, stored, "filtered", dataclasses.replace(CONFIG, use_bank_thresholds=True))
    expected = {
        sample: [d for d in dets if d[1] > table.thresholds.get(d[0], -1.0)]
        for sample, dets in _labels(targets, "pred").items()
    }
    assert _labels(targets, "filtered") == expected
    assert sum(map(len, expected.values())) < sum(map(len, _labels(targets, "pred").values()))

    # the same without re-running anything: a view filter over the stored predictions
    view = refseg.threshold_view(targets, "pred", stored)
    assert _labels(view, "pred") == expected and len(view) == len(targets)
    assert _labels(refseg.threshold_view(targets, "pred", table), "pred") == expected
    partial = refseg.threshold_view(targets, "pred", {"red_square": 0.99})
    for sample, dets in _labels(partial, "pred").items():
        full = _labels(targets, "pred")[sample]
        assert dets == [d for d in full if d[0] != "red_square" or d[1] > 0.99]


def test_bad_thresholds_are_refused(shapes):
    _, bank, targets = shapes
    with pytest.raises(ValueError, match="'cat', which is not a class"):
        bank.with_thresholds({"cat": 0.5})
    with pytest.raises(ValueError, match="must be a number in \\[0, 1\\]"):
        bank.with_thresholds({"red_square": 1.5})
    with pytest.raises(ValueError, match="must be a number, got 'high'"):
        refseg.threshold_view(targets, "pred", {"red_square": "high"})
    with pytest.raises(ValueError, match="mapping, a ThresholdTable or a MemoryBank"):
        refseg.threshold_view(targets, "pred", 0.5)
    with pytest.raises(ValueError, match="'nope' does not exist"):
        refseg.threshold_view(targets, "nope", {})


def _labels(view, field) -> dict[str, list[tuple]]:
    """Per sample: (label, confidence, box) of each detection, in stored order."""
    ids, detections = view.values(["id", field])
    return {
        i: [(d.label, d.confidence, tuple(np.round(d.bounding_box, 9))) for d in dets.detections]
        for i, dets in zip(ids, detections)
    }
