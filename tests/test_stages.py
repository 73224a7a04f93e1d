"""Formula-level checks of each stage on small hand-made tensors with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refseg.config import (
    PAPER_EVALUATE,
    PAPER_PREDICT,
    EvaluateConfig,
    PredictConfig,
    ReferenceConfig,
)
from refseg.encoding import crop_reference, instance_prototypes, patch_weights
from refseg.geometry import context_crop, masks_to_boxes, point_grid
from refseg.matching import class_scores, features_on_mask_grid, mask_features
from refseg.memory import MemoryBank, ReferenceRecord
from refseg.postprocess import (
    apply_decay,
    full_resolution_masks,
    semantic_decay,
    suppress,
    top_k,
)
from refseg.proposals import confident_best, points_batch_size_for, prompt_batches

# --- prompt grid -------------------------------------------------------------------------


def test_point_grid_matches_the_paper_order_and_offsets():
    grid = point_grid(3, 5)  # linspace(0, 4, 3) = 0, 2, 4; plus 0.5
    expected = [
        [0.5, 0.5],
        [0.5, 2.5],
        [0.5, 4.5],
        [2.5, 0.5],
        [2.5, 2.5],
        [2.5, 4.5],
        [4.5, 0.5],
        [4.5, 2.5],
        [4.5, 4.5],
    ]
    assert grid.tolist() == expected  # x outer, y fastest: meshgrid "ij" then (x, y)


def test_point_grid_of_the_paper_has_edges_included():
    grid = point_grid(32, 1024)
    assert grid.shape == (1024, 2)
    assert grid.min().item() == 0.5 and grid.max().item() == 1023.5


@pytest.mark.parametrize(("drop", "sizes"), [(False, [4, 4, 1]), (True, [4, 4])])
def test_prompt_batches_keep_the_tail_unless_asked(drop, sizes):
    config = PredictConfig(points_per_side=3, points_batch_size=4, drop_incomplete_point_batch=drop)
    assert [b.shape[0] for b in prompt_batches(config, 16)] == sizes


def test_prompt_batch_size_follows_the_device_unless_given():
    assert points_batch_size_for(PredictConfig(), "cpu") == 64
    assert points_batch_size_for(PredictConfig(points_batch_size=100), "cpu") == 100
    assert [b.shape[0] for b in prompt_batches(PredictConfig(points_per_side=9), 16)] == [64, 17]
    with pytest.raises(ValueError, match="points_batch_size must be None"):
        PredictConfig(points_batch_size=0)


def test_prompt_batches_refuse_to_drop_everything():
    config = PredictConfig(points_per_side=2, points_batch_size=8, drop_incomplete_point_batch=True)
    with pytest.raises(ValueError, match="no prompts"):
        prompt_batches(config, 16)


# --- boxes and crops ---------------------------------------------------------------------


def test_masks_to_boxes_inclusive_and_exclusive():
    masks = torch.zeros((2, 6, 8), dtype=torch.bool)
    masks[0, 1:4, 2:7] = True  # rows 1..3, cols 2..6
    inclusive = masks_to_boxes(masks, exclusive_max=False)
    exclusive = masks_to_boxes(masks, exclusive_max=True)
    assert inclusive.tolist() == [[2, 1, 6, 3], [0, 0, 0, 0]]
    assert exclusive.tolist() == [[2, 1, 7, 4], [0, 0, 0, 0]]
    assert masks_to_boxes(torch.zeros((0, 4, 4), dtype=torch.bool), exclusive_max=True).shape == (
        0,
        4,
    )


def test_context_crop_is_square_inside_the_image():
    # box x 40..60, y 50..70 (20 x 20): side 24, centre (50, 60)
    assert context_crop((40.0, 50.0, 20.0, 20.0), 200, 200, 0.2) == (38, 48, 62, 72)


def test_context_crop_truncates_the_box_like_the_research_code():
    # int(10.7) = 10, int(10.7 + 20.6) = 31 -> w = 21, h = int(5.2 + 9.9) - 5 = 10; side 25.2
    # centre (20.5, 10.0): x 20.5 -+ 12.6 -> 7, 33; y 10 -+ 12.6 -> max(0, -2) = 0, 22
    assert context_crop((10.7, 5.2, 20.6, 9.9), 100, 100, 0.2) == (7, 0, 33, 22)


def test_context_crop_is_clipped_at_the_border():
    x1, y1, x2, y2 = context_crop((0.0, 0.0, 30.0, 10.0), 32, 100, 0.2)
    assert (x1, y1, x2, y2) == (0, 0, 32, 23)  # side 36, centre (15, 5)


def test_crop_reference_sizes_and_soft_mask():
    image = torch.rand(3, 40, 60)
    mask = torch.zeros(40, 60, dtype=torch.bool)
    mask[10:30, 20:40] = True
    crop = crop_reference(image, mask, (20.0, 10.0, 20.0, 20.0), 14, ReferenceConfig())
    assert crop.image.shape == (3, 14, 14) and crop.mask.shape == (14, 14)
    assert 0.0 <= crop.mask.min() and crop.mask.max() <= 1.0
    assert crop.mask[7, 7] == 1.0 and crop.mask[0, 0] == 0.0


# --- reference weights and prototypes ----------------------------------------------------


def test_patch_weights_area_average_and_paper_nearest():
    mask = torch.zeros(1, 4, 4)
    mask[0, 1, 1] = 1.0  # one pixel in the top-left 2x2 patch, not its top-left pixel
    mask[0, 2:, 2:] = 0.5
    area = patch_weights(mask, 2, "area")
    nearest = patch_weights(mask, 2, "nearest")
    assert area.tolist() == [[0.25, 0.0, 0.0, 0.5]]
    assert nearest.tolist() == [[0.0, 0.0, 0.0, 0.5]]  # samples pixels (0,0),(0,2),(2,0),(2,2)


def test_instance_prototype_is_the_weighted_mean():
    features = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [4.0, 0.0]]]])  # (1,2,2,2)
    weights = torch.tensor([[1.0, 0.0, 0.5, 0.5]])
    # (1*[1,0] + 0.5*[2,2] + 0.5*[4,0]) / 2 = [4, 1] / 2
    assert instance_prototypes(features, weights).tolist() == [[2.0, 0.5]]


def test_class_prototype_is_the_normalised_mean_of_instances():
    bank = _bank(np.array([[3.0, 0.0], [1.0, 2.0], [0.0, 5.0]]), [0, 0, 1])
    np.testing.assert_allclose(
        bank.class_prototypes(), [[2 / 5**0.5, 1 / 5**0.5], [0.0, 1.0]], rtol=1e-6
    )


# --- proposals ---------------------------------------------------------------------------


def test_confident_best_picks_the_highest_predicted_iou_above_the_threshold():
    iou = torch.tensor([[0.2, 0.9, 0.5], [0.7, 0.7, 0.1], [0.4, 0.3, 0.1], [0.1, 0.2, 0.45]])
    prompts, outputs = confident_best(iou, 0.4)
    # second prompt: tie -> first candidate; third: 0.4 is not > 0.4
    assert prompts.tolist() == [0, 1, 3] and outputs.tolist() == [1, 0, 2]
    assert prompts.dtype == outputs.dtype == torch.int64
    none, _ = confident_best(iou, 0.95)
    assert none.shape == (0,)


# --- matching ----------------------------------------------------------------------------


def test_mask_features_average_inside_the_mask_then_normalise():
    features = torch.tensor([[3.0, 0.0], [0.0, 4.0], [100.0, 100.0], [1.0, 0.0]])  # 2x2 grid
    masks = torch.tensor([[[True, True], [False, False]], [[False, False], [False, True]]])
    out = mask_features(masks, features)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [1.0, 0.0]]))


def test_class_scores_cosine_clamp_argmax():
    objects = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8]])
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scores, labels = class_scores(objects, prototypes)
    assert labels.tolist() == [0, 0, 1]
    assert scores.tolist() == pytest.approx([1.0, 0.0, 0.8])


def test_features_on_mask_grid_keeps_constant_fields_and_layout():
    grid = torch.zeros(2, 2, 3)
    grid[..., 0] = 1.0
    grid[0, :, 1] = 2.0  # top row
    out = features_on_mask_grid(grid, 8)
    assert out.shape == (64, 3)
    torch.testing.assert_close(out[:, 0], torch.ones(64))
    assert out[0, 1] == 2.0 and out[63, 1] == 0.0  # row-major: first = top-left


# --- suppression, merge, top-k -----------------------------------------------------------


def test_nms_is_class_aware_and_ranked_by_predicted_iou():
    masks = torch.zeros((4, 10, 10), dtype=torch.bool)
    masks[0, 0:5, 0:5] = True
    masks[1, 0:5, 0:4] = True  # IoU with 0 = 0.8, same class, higher predicted IoU
    masks[2, 0:5, 0:5] = True  # same box as 0, other class
    masks[3, 6:9, 6:9] = True
    iou = torch.tensor([0.5, 0.9, 0.6, 0.7])
    labels = torch.tensor([0, 0, 1, 0])
    keep = suppress(masks, iou, labels, iou_threshold=0.5, max_kept=10)
    assert keep.tolist() == [1, 3, 2]
    assert suppress(masks, iou, labels, iou_threshold=0.5, max_kept=2).tolist() == [1, 3]


def test_full_resolution_masks_crop_to_tight_boxes():
    logits = torch.full((2, 4, 4), -5.0)
    logits[0, 1:3, 1:3] = 5.0
    crops, boxes = full_resolution_masks(logits, (8, 8))
    assert boxes[1].tolist() == [0, 0, 0, 0] and crops[1].size == 0
    x1, y1, x2, y2 = boxes[0].tolist()
    assert crops[0].shape == (y2 - y1, x2 - x1) and crops[0].all(axis=1).any()
    assert 1 <= x1 <= 3 and 5 <= x2 <= 7


def test_full_resolution_masks_chunking_changes_nothing(monkeypatch):
    logits = torch.randn(5, 16, 16)
    crops, boxes = full_resolution_masks(logits, (37, 23))
    monkeypatch.setattr("refseg.postprocess.FULL_RES_CHUNK_PIXELS", 37 * 23 * 2)
    crops_chunked, boxes_chunked = full_resolution_masks(logits, (37, 23))
    np.testing.assert_array_equal(boxes, boxes_chunked)
    for a, b in zip(crops, crops_chunked):
        np.testing.assert_array_equal(a, b)


def test_semantic_decay_uses_earlier_masks_of_the_same_class_only():
    full = np.zeros((4, 10, 10), bool)
    full[0, 0:4, 0:4] = True  # 16 px
    full[1, 0:4, 0:2] = True  # 8 px, inside mask 0 -> IoS 1.0
    full[2, 0:4, 2:6] = True  # 16 px, overlaps 0 on 8 px -> IoS 0.5 (other class)
    full[3, 0:4, 0:4] = True  # same pixels as 0, opposite feature
    labels = np.array([0, 0, 1, 0])
    features = np.array([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0], [-1.0, 0.0]], np.float32)
    crops, boxes = _crops(full)
    decay = semantic_decay(crops, boxes, labels, features)
    # 0: first -> 0; 1: IoS 1 x <f1,f0> 0.6; 2: alone in class 1 -> 0;
    # 3: IoS with 0 is 1 but similarity -1 -> clamp 0; with 1: IoS 0.5 x <f3,f1> = -0.6 -> 0
    np.testing.assert_allclose(decay, [0.0, 0.6, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        apply_decay(np.array([0.9, 0.9, 0.5, 0.4]), decay, 0.5),
        [0.9, 0.9 * 0.4**0.5, 0.5, 0.4],
        rtol=1e-6,
    )


def test_semantic_decay_ios_is_over_the_later_mask():
    full = np.zeros((2, 10, 10), bool)
    full[0, 0:2, 0:2] = True  # 4 px, earlier
    full[1, 0:4, 0:4] = True  # 16 px, later: IoS = 4 / 16
    crops, boxes = _crops(full)
    decay = semantic_decay(crops, boxes, np.array([0, 0]), np.array([[1.0], [1.0]], np.float32))
    np.testing.assert_allclose(decay, [0.0, 0.25])


def test_semantic_decay_of_nothing_is_empty():
    assert semantic_decay(
        [], np.zeros((0, 4), np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
    ).shape == (0,)


def test_top_k_is_descending_and_stable():
    assert top_k(np.array([0.2, 0.9, 0.2, 0.5], np.float32), 3).tolist() == [1, 3, 0]


def test_top_k_drops_final_scores_at_or_below_the_threshold_first():
    scores = np.array([0.2, 0.9, 0.5, 0.7, 0.0], np.float32)
    assert top_k(scores, 3, threshold=0.5).tolist() == [1, 3]
    assert top_k(scores, 1, threshold=0.5).tolist() == [1]
    assert top_k(scores, 9, threshold=None).tolist() == [1, 3, 2, 0, 4]  # the paper keeps 0.0


# --- settings ----------------------------------------------------------------------------


def test_paper_mode_filters_only_before_the_merge():
    assert PAPER_PREDICT.candidate_score_threshold == 0.0
    assert PAPER_PREDICT.score_threshold is None
    assert PAPER_EVALUATE.legacy_coco_box and not EvaluateConfig().legacy_coco_box
    for bad in (float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="score_threshold must be a number"):
            PredictConfig(score_threshold=bad)
    with pytest.raises(ValueError, match="candidate_score_threshold must be a number"):
        PredictConfig(candidate_score_threshold=None)


def test_settings_stored_by_an_older_refseg_load_as_what_they_ran(caplog):
    old_paper = {**PAPER_PREDICT.to_dict(), "score_threshold": 0.0, "legacy_coco_box": True}
    del old_paper["candidate_score_threshold"]
    old_product = {**old_paper, "score_threshold": 0.5, "legacy_coco_box": False}
    with caplog.at_level("INFO", logger="refseg.config"):
        assert PredictConfig.from_dict(old_paper) == PAPER_PREDICT
        product = PredictConfig.from_dict(old_product)
    assert (product.candidate_score_threshold, product.score_threshold) == (0.5, None)
    assert "legacy_coco_box" in caplog.text
    assert PredictConfig.from_dict(PredictConfig().to_dict()) == PredictConfig()
    with pytest.raises(ValueError, match="Unknown PredictConfig settings \\['typo'\\]"):
        PredictConfig.from_dict({"typo": 1})


# --- helpers -----------------------------------------------------------------------------


def _crops(full: np.ndarray):
    boxes = masks_to_boxes(torch.from_numpy(full), exclusive_max=True).long().numpy()
    return [m[y1:y2, x1:x2] for m, (x1, y1, x2, y2) in zip(full, boxes)], boxes


def _bank(prototypes: np.ndarray, labels: list[int]) -> MemoryBank:
    names = ("a", "b")
    references = tuple(
        ReferenceRecord("d", f"s{i}", f"l{i}", names[c], "x.png", (0.0, 0.0, 1.0, 1.0))
        for i, c in enumerate(labels)
    )
    return MemoryBank(
        class_names=names,
        prototypes=prototypes.astype(np.float32),
        labels=np.array(labels),
        references=references,
        encoder={"name": "enc"},
        proposer={"name": "prop"},
    )


def test_semantic_decay_equals_the_dense_full_resolution_formula():
    """The crop-based computation gives the paper's dense (N x HW) @ (HW x N) result exactly."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 16, 16, generator=generator) + torch.linspace(-2, 2, 16)
    crops, boxes = full_resolution_masks(logits, (53, 71))
    keep = [i for i, c in enumerate(crops) if c.any()]
    crops, boxes = [crops[i] for i in keep], boxes[keep]
    full = np.zeros((len(crops), 53, 71), bool)
    for k, (crop, (x1, y1, x2, y2)) in enumerate(zip(crops, boxes)):
        full[k, y1:y2, x1:x2] = crop
    labels = torch.randint(0, 3, (len(crops),), generator=generator).numpy()
    features = torch.nn.functional.normalize(
        torch.randn(len(crops), 8, generator=generator), dim=1
    ).numpy()

    flat = full.reshape(len(crops), -1).astype(np.float64)
    inter = flat @ flat.T
    np.fill_diagonal(inter, 0.0)
    ios = np.tril(inter) / flat.sum(axis=1, keepdims=True)  # rows: later mask i, cols: earlier j
    weighted = ios * np.clip(features @ features.T, 0, None) * (labels[:, None] == labels[None])
    np.testing.assert_allclose(
        semantic_decay(crops, boxes, labels, features), weighted.max(axis=1), rtol=1e-5, atol=1e-7
    )
