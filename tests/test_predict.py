"""predict() on FiftyOne: what it writes, what it refuses, and what each stage contributes."""

from __future__ import annotations

import dataclasses

import fiftyone as fo
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from stand_ins import PaletteEncoder, ShapeProposer, predict_with_stand_ins, stand_in_bank

import refseg
from refseg.coco_metrics import ImageRecord, to_coco
from refseg.config import PAPER_PREDICT, PredictConfig
from refseg.images import load_image
from refseg.synthetic import make_shapes_dataset

CONFIG = PredictConfig(points_per_side=12, points_batch_size=50)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    name = f"predict-tests-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=10, num_negative=2, seed=3
    )
    references, bank, targets = stand_in_bank(dataset)
    yield dataset, bank, targets
    dataset.delete()


def run(targets, bank, field, config=CONFIG, **kwargs):
    return predict_with_stand_ins(targets, bank, field, config, **kwargs)


def test_written_detections_are_consistent(setup):
    _, bank, targets = setup
    calls = []
    run(
        targets,
        bank,
        "pred_consistent",
        batch_size=3,
        write_every=2,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls[-1] == (len(targets), len(targets)) and len(calls) == -(-len(targets) // 3)
    for sample in targets.select_fields("pred_consistent"):
        width, height = sample.metadata.width, sample.metadata.height
        for detection in sample.pred_consistent.detections:
            x, y, w, h = detection.bounding_box
            assert detection.mask.shape == (round(h * height), round(w * width))
            assert detection.mask[0].any() and detection.mask[-1].any()  # tight box
            assert detection.mask[:, 0].any() and detection.mask[:, -1].any()
            assert 0.0 < detection.confidence <= 1.0 and detection.label in bank.class_names
        confidences = [d.confidence for d in sample.pred_consistent.detections]
        assert confidences == sorted(confidences, reverse=True)


def test_refuses_to_overwrite_unless_asked(setup):
    dataset, bank, targets = setup
    with pytest.raises(ValueError, match="'ground_truth' .* holds reference labels"):
        run(targets, bank, "ground_truth")
    dataset.add_sample_field("a_string", fo.StringField)
    with pytest.raises(ValueError, match="not Detections"):
        run(targets, bank, "a_string", overwrite=True)
    first = targets.first()
    run(targets.limit(1), bank, "pred_twice")
    run(targets.limit(1), bank, "pred_twice", overwrite=True)
    assert dataset[first.id].pred_twice is not None


def test_refuses_an_empty_view_and_another_encoder(setup):
    _, bank, targets = setup
    with pytest.raises(ValueError, match="no samples"):
        run(targets.limit(0), bank, "pred_none")
    other = PaletteEncoder(dim=8)
    with pytest.raises(ValueError, match="built with encoder"):
        run(targets, bank, "pred_other", encoder=other)


def test_images_without_candidates_get_empty_detections(setup):
    _, bank, targets = setup
    config = dataclasses.replace(CONFIG, pred_iou_thresh=0.95)  # the stand-in never says > 0.9
    assert run(targets.limit(2), bank, "pred_empty", config=config).num_detections == 0
    assert [len(d.detections) for d in targets.limit(2).values("pred_empty")] == [0, 0]


def test_soft_merge_removes_the_part_masks(setup):
    _, bank, targets = setup
    positives = targets.match_tags("negative", bool=False)
    without_merge = dataclasses.replace(CONFIG, merge_exponent=0.0)
    run(positives, bank, "pred_merge", config=CONFIG)
    run(positives, bank, "pred_nomerge", config=without_merge)
    objects = positives.count("ground_truth.detections")
    merged = positives.filter_labels("pred_merge", fo.ViewField("confidence") > 0.7)
    unmerged = positives.filter_labels("pred_nomerge", fo.ViewField("confidence") > 0.7)
    # without the merge, the halves of the shapes stay as confident extra detections
    assert merged.count("pred_merge.detections") == objects
    assert unmerged.count("pred_nomerge.detections") >= objects + len(positives)
    assert refseg.evaluate(positives, "pred_merge", "ground_truth").segm["AP"] > 0.9


def test_max_detections(setup):
    _, bank, targets = setup
    run(targets, bank, "pred_top1", config=dataclasses.replace(CONFIG, max_detections=1))
    assert max(len(d.detections) for d in targets.values("pred_top1")) == 1


def described(detections: fo.Detections) -> list[tuple]:
    return [(d.label, d.bounding_box, d.confidence) for d in detections.detections]


@pytest.mark.parametrize("resolution", ["full", "low"])
def test_score_threshold_applies_to_final_scores(setup, resolution):
    _, bank, targets = setup
    unfiltered = dataclasses.replace(CONFIG, merge_resolution=resolution, score_threshold=None)
    run(targets, bank, f"pred_all_{resolution}", config=unfiltered)
    run(
        targets,
        bank,
        f"pred_05_{resolution}",
        config=dataclasses.replace(unfiltered, score_threshold=0.5),
    )
    # the paper's filter before the merge (what score_threshold used to be) keeps low finals
    before_merge = dataclasses.replace(unfiltered, candidate_score_threshold=0.5)
    run(targets, bank, f"pred_pre05_{resolution}", config=before_merge)
    confidences = targets.values(f"pred_05_{resolution}.detections.confidence", unwind=True)
    assert len(confidences) > 0 and min(confidences) > 0.5
    low_finals = targets.values(f"pred_pre05_{resolution}.detections.confidence", unwind=True)
    assert min(low_finals) <= 0.5
    # exactly the unfiltered detections whose final score is above 0.5, in the same order
    everything = targets.values(f"pred_all_{resolution}")
    for every, kept in zip(everything, targets.values(f"pred_05_{resolution}")):
        assert described(kept) == [d for d in described(every) if d[2] > 0.5]
    assert sum(len(d.detections) for d in everything) > len(confidences)


def test_paper_mode_labels_have_tight_boxes_and_evaluate_as_predicted(setup):
    """Paper mode and the default settings write the same masks with the same tight boxes
    (the research code's one-pixel-short box is an evaluation setting), and the evaluation
    reads back exactly the predicted masks: no mask is squeezed into a shorter box."""
    _, bank, targets = setup
    same = dict(points_per_side=12, points_batch_size=48)  # 144 prompts: no batch to drop
    default = dataclasses.replace(
        PredictConfig(), merge_resolution="full", precision="fp32", **same
    )
    run(targets, bank, "pred_paper", config=dataclasses.replace(PAPER_PREDICT, **same))
    run(targets, bank, "pred_default", config=default)
    checked = 0
    columns = targets.values(["metadata.width", "metadata.height", "pred_paper", "pred_default"])
    for width, height, paper, other in zip(*columns):
        assert described(paper) == described(other)
        for a, b in zip(paper.detections, other.detections):
            np.testing.assert_array_equal(a.mask, b.mask)
            x, y, w, h = a.bounding_box
            assert a.mask.shape == (round(h * height), round(w * width))
        results = to_coco([ImageRecord(width, height, predictions=paper.detections)]).results
        for detection, result in zip(paper.detections, results):
            assert mask_utils.area(result["segmentation"]) == detection.mask.sum()
            checked += 1
    assert checked > 0
    # the segmenter's own boxes are the masks' tight boxes in paper mode
    config = dataclasses.replace(PAPER_PREDICT, **same)
    segmenter = refseg.Segmenter(ShapeProposer(), PaletteEncoder(), bank, config)
    image, size = load_image(targets.match_tags("negative", bool=False).first().filepath, 128)
    predictions = segmenter.segment_batch(image[None], [size])[0]
    assert len(predictions) > 0
    sizes = np.array([mask.shape[::-1] for mask in predictions.masks])
    np.testing.assert_array_equal(predictions.boxes[:, 2:] - predictions.boxes[:, :2], sizes)


def test_batching_does_not_change_results(setup):
    _, bank, targets = setup
    run(targets, bank, "pred_b1", batch_size=1)
    run(targets, bank, "pred_b4", batch_size=4)
    for a, b in zip(targets.values("pred_b1"), targets.values("pred_b4")):
        assert [(d.label, d.bounding_box, d.confidence) for d in a.detections] == [
            (d.label, d.bounding_box, d.confidence) for d in b.detections
        ]


def test_segmenter_checks_its_inputs(setup):
    _, bank, _ = setup
    segmenter = refseg.Segmenter(ShapeProposer(), PaletteEncoder(), bank, CONFIG)
    with pytest.raises(ValueError, match="2 images but 1 image sizes"):
        segmenter.segment_batch(torch.zeros(2, 3, 128, 128), [(10, 10)])
    background_only = segmenter.segment_batch(torch.full((1, 3, 128, 128), 0.5), [(50, 60)])[0]
    assert len(background_only) == CONFIG.max_detections  # no threshold in paper mode ...
    assert background_only.scores.max() < 0.1  # ... but background matches no class


def test_an_interrupted_run_resumes_with_the_same_labels(setup):
    _, bank, targets = setup
    run(targets, bank, "pred_full")

    class Interrupt(Exception):
        pass

    def stop_after_four(done, total):
        if done >= 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(targets, bank, "pred_resumed", write_every=2, progress=stop_after_four)
    assert 0 < targets.exists("pred_resumed").count() < len(targets)
    with pytest.raises(ValueError, match="already exists"):
        run(targets, bank, "pred_resumed")
    run(targets, bank, "pred_resumed", resume=True)
    for full, resumed in zip(targets.values("pred_full"), targets.values("pred_resumed")):
        assert [(d.label, d.bounding_box, d.confidence) for d in full.detections] == [
            (d.label, d.bounding_box, d.confidence) for d in resumed.detections
        ]
