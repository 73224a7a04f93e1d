"""COCO evaluation: refseg against pycocotools run independently, and against FiftyOne's mAP.

Each scene is a list of images; each object is a full-image boolean mask with a label (and a
score for predictions). The reference numbers come from pycocotools fed with COCO dicts built
here straight from those full masks, the way the research code feeds it: one list of results
carrying both ``bbox`` and ``segmentation``, loaded once with ``COCO.loadRes`` (which gives every
result its box area, for the segm evaluation too) and evaluated for bbox then segm. So refseg's
converter (box-cropped ``fo.Detection`` masks pasted back into the image) is checked as well as
the evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from refseg.coco_metrics import STAT_NAMES, ImageRecord, evaluate_records, to_coco
from refseg.evaluation import evaluate

W, H = 128, 96


@dataclass(frozen=True)
class Obj:
    label: str
    mask: np.ndarray  # (H, W) bool, full image
    score: float | None = None
    iscrowd: bool = False

    def detection(self) -> fo.Detection:
        extra = {"iscrowd": True} if self.iscrowd else {}
        det = fo.Detection.from_mask(self.mask, label=self.label, **extra)
        det.confidence = self.score
        return det


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def ell(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """An L shape: the rectangle without a top-right corner (so segm differs from bbox)."""
    mask = rect(x0, y0, x1, y1)
    mask[y0 : y0 + (y1 - y0) // 3, x1 - (x1 - x0) // 3 : x1] = False
    return mask


# ground truth: a large L, a medium box, a small box
BIG, MID, SMALL = ell(4, 2, 124, 94), rect(60, 30, 100, 70), rect(5, 70, 25, 90)
GT = [[Obj("cat", BIG), Obj("dog", MID)], [Obj("cat", SMALL), Obj("dog", rect(70, 10, 110, 50))]]


def ring(x0: int, y0: int, x1: int, y1: int, thickness: int) -> np.ndarray:
    """A hollow rectangle: its mask area is far below its box area."""
    mask = rect(x0, y0, x1, y1)
    mask[y0 + thickness : y1 - thickness, x0 + thickness : x1 - thickness] = False
    return mask


# Objects on both sides of COCO's area limits 32^2 and 96^2 (small <= 1024 <= medium <= 9216),
# by mask area, by tight box area and by the research code's one-pixel-short box area:
#   ring(10, 10, 46, 46, 3): mask 396, box 36^2 = 1296
#   rect(60, 10, 92, 42): 32 x 32 = 1024 exactly, in both ranges (short box 31^2 = 961)
#   ring(2, 1, 102, 95, 10): mask 3480, box 100 x 94 = 9400 (short box 99 x 93 = 9207)
#   ring(60, 50, 94, 84, 2): mask 256, box 34^2 = 1156 (short box 33^2 = 1089)
#   rect(95, 50, 128, 83): 33 x 33 = 1089 (short box 32^2 = 1024)
#   ring(0, 0, 97, 96, 5): mask 1830, box 97 x 96 = 9312 (short box 96 x 95 = 9120)
LIMITS_GT = [
    [Obj("cat", ring(10, 10, 46, 46, 3)), Obj("dog", rect(60, 10, 92, 42))],
    [Obj("cat", ring(2, 1, 102, 95, 10)), Obj("dog", rect(105, 10, 125, 40))],
]
LIMITS_PRED = [
    [
        Obj("cat", ring(11, 10, 47, 46, 3), 0.9),
        Obj("cat", ring(60, 50, 94, 84, 2), 0.95),  # a false positive, small by mask only
        Obj("dog", rect(60, 10, 92, 42), 0.8),
        Obj("dog", rect(95, 50, 128, 83), 0.85),  # a false positive, 32^2 by the short box
    ],
    [
        Obj("cat", ring(3, 2, 102, 95, 10), 0.85),
        Obj("cat", ring(0, 0, 97, 96, 5), 0.7),  # a duplicate, large by its tight box only
        Obj("dog", rect(106, 11, 126, 40), 0.6),
        Obj("dog", rect(10, 20, 40, 60), 0.65),  # a false positive, medium by every measure
    ],
]


def perfect() -> list[list[Obj]]:
    return [[Obj(o.label, o.mask, 0.9 - 0.1 * i) for i, o in enumerate(img)] for img in GT]


SCENES = {
    "perfect": (GT, perfect()),
    "shifted": (
        GT,
        [
            [Obj("cat", ell(8, 2, 124, 90), 0.9), Obj("dog", rect(64, 33, 100, 70), 0.8)],
            [Obj("cat", rect(7, 72, 25, 90), 0.7), Obj("dog", rect(78, 10, 118, 50), 0.6)],
        ],
    ),
    "missing": (GT, [perfect()[0], perfect()[1][:1]]),
    "extra": (GT, [perfect()[0] + [Obj("dog", rect(0, 0, 30, 30), 0.95)], perfect()[1]]),
    "wrong_class": (GT, [perfect()[0], [Obj("dog", SMALL, 0.8), perfect()[1][1]]]),
    "crowd": (
        [GT[0], [Obj("cat", SMALL), Obj("dog", rect(40, 0, 128, 60), iscrowd=True)]],
        [perfect()[0], [Obj("cat", SMALL, 0.9), Obj("dog", rect(50, 5, 80, 25), 0.95)]],
    ),
    "empty": (GT, [[], []]),
    "absent_class": (GT, [perfect()[0] + [Obj("bird", rect(0, 0, 30, 30), 0.99)], perfect()[1]]),
    "area_limits": (LIMITS_GT, LIMITS_PRED),
}


def reference_stats(
    gt: list[list[Obj]],
    preds: list[list[Obj]],
    *,
    legacy_box: bool = False,
    segm_results_without_box: bool = False,
    size: tuple[int, int] = (W, H),
    gt_areas: list[list[float]] | None = None,
) -> dict[str, np.ndarray]:
    """pycocotools on COCO dicts built directly from the full masks, fed the research code's
    way: results with box and mask, one ``loadRes``, bbox then segm. ``legacy_box`` gives the
    results the research code's one-pixel-short box; ``segm_results_without_box`` feeds the
    segm evaluation mask-only results instead (detectron2's way: mask areas), for contrast.
    ``gt_areas`` are the ground truth's areas as an annotation file stores them (default: the
    mask areas)."""
    names = sorted({o.label for img in (*gt, *preds) for o in img})
    cat = {name: i for i, name in enumerate(names, start=1)}
    images = [{"id": i, "width": size[0], "height": size[1]} for i in range(1, len(gt) + 1)]
    annotations = []
    for image_id, objs in enumerate(gt, start=1):
        for k, o in enumerate(objs):
            area = float(o.mask.sum()) if gt_areas is None else gt_areas[image_id - 1][k]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat[o.label],
                "bbox": tight_box(o.mask), "segmentation": rle(o.mask),
                "area": area, "iscrowd": int(o.iscrowd),
            })  # fmt: skip
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": annotations,
                       "categories": [{"id": i, "name": n} for n, i in cat.items()]}  # fmt: skip
    coco_gt.createIndex()
    box = short_box if legacy_box else tight_box
    results = [
        {"image_id": i, "category_id": cat[o.label], "score": o.score,
         "bbox": box(o.mask), "segmentation": rle(o.mask)}
        for i, objs in enumerate(preds, start=1) for o in objs
    ]  # fmt: skip
    coco_dt = coco_gt.loadRes(results) if results else empty_results(coco_gt)
    stats = {}
    for iou_type in ("bbox", "segm"):
        if iou_type == "segm" and segm_results_without_box and results:
            masks_only = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
            coco_dt = coco_gt.loadRes(masks_only)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        stats[iou_type] = coco_eval.stats
    return stats


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0 = float(xs.min()), float(ys.min())
    return [x0, y0, xs.max() + 1 - x0, ys.max() + 1 - y0]


def short_box(mask: np.ndarray) -> list[float]:
    """The research code's box: inclusive maxima, so width and height one pixel short."""
    ys, xs = np.nonzero(mask)
    x0, y0 = float(xs.min()), float(ys.min())
    return [x0, y0, xs.max() - x0, ys.max() - y0]


def rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def empty_results(coco_gt: COCO) -> COCO:
    coco_dt = COCO()
    coco_dt.dataset = {**coco_gt.dataset, "annotations": []}
    coco_dt.createIndex()
    return coco_dt


def records(
    gt: list[list[Obj]], preds: list[list[Obj]], size: tuple[int, int] = (W, H)
) -> list[ImageRecord]:
    return [
        ImageRecord(*size, [o.detection() for o in g], [o.detection() for o in p], name=f"img{i}")
        for i, (g, p) in enumerate(zip(gt, preds))
    ]


@pytest.mark.parametrize("legacy_box", [False, True], ids=["tight_box", "legacy_box"])
@pytest.mark.parametrize("scene", sorted(SCENES))
def test_every_statistic_equals_pycocotools(scene: str, legacy_box: bool) -> None:
    gt, preds = SCENES[scene]
    report = evaluate_records(records(gt, preds), legacy_coco_box=legacy_box)
    expected = reference_stats(gt, preds, legacy_box=legacy_box)
    for iou_type in ("bbox", "segm"):
        got = getattr(report, iou_type)
        assert list(got) == list(STAT_NAMES)
        for name, value in zip(STAT_NAMES, expected[iou_type]):
            assert got[name] == pytest.approx(value, abs=1e-12), (iou_type, name)
        # the mean over classes with ground truth is pycocotools' AP
        per_class = [v for v in report.per_class_ap[iou_type].values() if not math.isnan(v)]
        assert got["AP"] == pytest.approx(np.mean(per_class), abs=1e-12)


def test_area_limit_fixture_separates_box_areas_from_mask_areas() -> None:
    """The fixture is not vacuous: the statistics by area range depend on which area each
    result gets, so the test above pins the research code's choice (box areas, for segm too)."""
    gt, preds = SCENES["area_limits"]
    research = reference_stats(gt, preds)
    mask_areas = reference_stats(gt, preds, segm_results_without_box=True)
    legacy = reference_stats(gt, preds, legacy_box=True)
    by_area = [STAT_NAMES.index(n) for n in ("AP_small", "AP_medium", "AP_large")]
    for stats in (mask_areas, legacy):
        assert np.abs(stats["segm"][by_area] - research["segm"][by_area]).max() > 0.01
    assert np.abs(legacy["bbox"][by_area] - research["bbox"][by_area]).max() > 0.01
    # the boxes do not change what a mask matches: area "all" is the same in all three
    assert mask_areas["segm"][0] == legacy["segm"][0] == research["segm"][0]


def test_areas_stored_on_ground_truth_labels_are_the_ones_evaluated() -> None:
    """An annotation file's ``area`` (a polygon's, not the pixel count) decides the ground
    truth's area range, as in pycocotools fed that file; ``refseg reproduce`` stores it on
    the labels as the attribute ``area``."""
    gt, preds = SCENES["area_limits"]
    file_areas = [[1100.0, 900.0], [9000.0, 700.0]]  # each across a limit from its mask area
    recs = records(gt, preds)
    for record, areas in zip(recs, file_areas):
        for detection, area in zip(record.ground_truth, areas):
            detection["area"] = area
    report = evaluate_records(recs)
    expected = reference_stats(gt, preds, gt_areas=file_areas)
    for iou_type in ("bbox", "segm"):
        for name, value in zip(STAT_NAMES, expected[iou_type]):
            assert getattr(report, iou_type)[name] == pytest.approx(value, abs=1e-12)
    by_mask = reference_stats(gt, preds)
    assert not np.allclose(by_mask["segm"], expected["segm"])  # the stored areas mattered


def test_legacy_box_is_one_pixel_short_and_keeps_the_mask() -> None:
    mask = np.zeros((300, 400), dtype=bool)
    mask[5:145, 7:244] = True  # 140 x 237
    record = ImageRecord(400, 300, predictions=[Obj("cat", mask, 0.9).detection()])
    tight, legacy = (to_coco([record], legacy_coco_box=flag).results[0] for flag in (False, True))
    assert tight["bbox"] == [7.0, 5.0, 237.0, 140.0]
    assert legacy["bbox"] == [7.0, 5.0, 236.0, 139.0]
    for result in (tight, legacy):
        assert mask_utils.area(result["segmentation"]) == 140 * 237
        np.testing.assert_array_equal(mask_utils.decode(result["segmentation"]), mask)


def test_pixel_aligned_boxes_on_an_area_limit_count_in_both_ranges() -> None:
    """FiftyOne stores relative boxes: on a 237 x 140 image these two 32 x 32 boxes read back
    as 1023.9999999999995 and 1024.000000000001 square pixels. refseg snaps them to 32^2 =
    1024, so both false positives count in "small" and in "medium", as integer boxes do."""
    width, height = 237, 140

    def box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = True
        return mask

    small, medium = box(10, 10, 30, 30), box(100, 10, 140, 50)
    gt = [[Obj("cat", small), Obj("cat", medium)]]
    preds = [
        [
            Obj("cat", small, 0.8),
            Obj("cat", medium, 0.8),
            Obj("cat", box(150, 80, 182, 112), 0.9),
            Obj("cat", box(180, 60, 212, 92), 0.9),
        ]
    ]
    report = evaluate_records(records(gt, preds, (width, height)))
    expected = reference_stats(gt, preds, size=(width, height))
    for iou_type in ("bbox", "segm"):
        got = list(getattr(report, iou_type).values())
        np.testing.assert_allclose(got, expected[iou_type], rtol=0, atol=1e-12)
        by_area = [got[STAT_NAMES.index(n)] for n in ("AP_small", "AP_medium")]
        assert by_area == [pytest.approx(1 / 3)] * 2  # both false positives rank first in both


def test_perfect_predictions_give_one_and_empty_give_zero() -> None:
    perfect_report = evaluate_records(records(*SCENES["perfect"]))
    empty_report = evaluate_records(records(*SCENES["empty"]))
    for iou_type in ("bbox", "segm"):
        # every area range has ground truth here, so no statistic is undefined (-1)
        assert list(getattr(perfect_report, iou_type).values()) == [pytest.approx(1.0)] * 12
        assert set(getattr(empty_report, iou_type).values()) == {0.0}
    assert perfect_report.num_images == 2 and perfect_report.classes == ("cat", "dog")


def test_class_without_ground_truth_is_left_out_of_the_mean() -> None:
    with_bird = evaluate_records(records(*SCENES["absent_class"]))
    assert with_bird.classes == ("bird", "cat", "dog")
    assert math.isnan(with_bird.per_class_ap["segm"]["bird"])
    assert with_bird.segm["AP"] == pytest.approx(1.0)
    assert with_bird.bbox["AP"] == pytest.approx(1.0)


def test_segm_matches_masks_and_bbox_matches_boxes() -> None:
    # a full rectangle over the L: box IoU 1, mask IoU 9840 / 11040 = 0.89 (< 0.9)
    box_over_big = Obj("cat", rect(4, 2, 124, 94), 0.9)
    report = evaluate_records(records([[Obj("cat", BIG)]], [[box_over_big]]))
    assert report.bbox["AP"] == pytest.approx(1.0)
    assert report.segm["AP"] == pytest.approx(0.8)  # matched at IoU .50 to .85, not .90 to .95


def test_classes_restricts_the_evaluation() -> None:
    gt, preds = SCENES["wrong_class"]
    full = evaluate_records(records(gt, preds))
    cat_only = evaluate_records(records(gt, preds), classes=["cat"])
    assert cat_only.classes == ("cat",)
    assert cat_only.segm["AP"] == pytest.approx(full.per_class_ap["segm"]["cat"], abs=1e-12)
    assert cat_only.segm["AP"] != full.segm["AP"]
    with pytest.raises(ValueError, match="classes is empty"):
        evaluate_records(records(gt, preds), classes=[])


def test_ground_truth_without_mask_falls_back_to_its_box() -> None:
    box_gt = Obj("cat", rect(10, 10, 50, 40))
    det = box_gt.detection()
    det.mask = None
    pred = Obj("cat", box_gt.mask, 0.9).detection()
    report = evaluate_records([ImageRecord(W, H, [det], [pred])])
    assert report.segm["AP"] == pytest.approx(1.0)


def test_mask_of_another_resolution_is_stretched_to_its_box() -> None:
    det = Obj("cat", MID).detection()  # 40 x 40 box
    det.mask = det.mask[::2, ::2]  # 20 x 20 mask
    shifted = rect(62, 30, 102, 70)  # IoU 38 / 42 = 0.905: matched at every threshold but .95
    report = evaluate_records([ImageRecord(W, H, [det], [Obj("cat", shifted, 0.9).detection()])])
    assert report.bbox["AP"] == pytest.approx(0.9)
    assert report.segm["AP"] == pytest.approx(0.9)


def test_prediction_without_confidence_is_refused() -> None:
    with pytest.raises(ValueError, match="no confidence"):
        evaluate_records(records([[Obj("cat", SMALL)]], [[Obj("cat", SMALL)]]))


def test_table_shows_the_coco_lines_and_classes() -> None:
    text = evaluate_records(records(*SCENES["shifted"])).table()
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in text
    assert "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]" in text
    assert text.count("\ncat ") == 1 and text.count("\ndog ") == 1


# --- the FiftyOne layer -------------------------------------------------------------------


def make_dataset(
    name: str, tmp_path, gt: list[list[Obj] | None], preds: list[list[Obj] | None]
) -> fo.Dataset:
    path = tmp_path / "image.png"
    Image.new("RGB", (W, H)).save(path)
    dataset = fo.Dataset(name)
    for field in ("gt", "pred"):
        dataset.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    samples = []
    for g, p in zip(gt, preds):
        sample = fo.Sample(filepath=str(path))
        sample["gt"] = None if g is None else fo.Detections(detections=[o.detection() for o in g])
        sample["pred"] = None if p is None else fo.Detections(detections=[o.detection() for o in p])
        samples.append(sample)
    dataset.add_samples(samples, progress=False)
    return dataset


ORDINARY_GT = [*GT, [Obj("cat", rect(30, 20, 60, 60))], None]
ORDINARY_PRED = [
    SCENES["shifted"][1][0] + [Obj("dog", rect(0, 0, 30, 30), 0.85), Obj("bird", SMALL, 0.5)],
    [Obj("dog", SMALL, 0.75), Obj("dog", rect(72, 12, 110, 50), 0.65)],
    None,
    [Obj("cat", rect(0, 0, 20, 20), 0.55)],
]


def test_fiftyone_run_agrees_with_pycocotools_on_ordinary_data(dataset_name, tmp_path) -> None:
    dataset = make_dataset(dataset_name, tmp_path, ORDINARY_GT, ORDINARY_PRED)
    report = evaluate(dataset, "pred", "gt", eval_key="ev")
    expected = reference_stats([g or [] for g in ORDINARY_GT], [p or [] for p in ORDINARY_PRED])
    assert report.segm["AP"] == pytest.approx(expected["segm"][0], abs=1e-12)
    assert 0 < report.segm["AP"] < 1
    assert report.fiftyone_iou_type == "segm"
    assert report.fiftyone_map == pytest.approx(report.segm["AP"], abs=1e-6)
    assert "ev" in dataset.list_evaluations()
    assert dataset.first().metadata.width == W  # computed on the way
    boxes = evaluate(dataset, "pred", "gt", eval_key="ev_box", use_masks=False)
    assert boxes.fiftyone_map == pytest.approx(boxes.bbox["AP"], abs=1e-6)
    cats = evaluate(dataset, "pred", "gt", eval_key="ev", classes=["cat"], overwrite=True)
    assert cats.fiftyone_map == pytest.approx(cats.segm["AP"], abs=1e-6)
    assert cats.segm["AP"] != report.segm["AP"]


def test_fiftyone_and_pycocotools_differ_on_crowd_masks(dataset_name, tmp_path) -> None:
    crowd = rect(40, 0, 128, 60)
    gt = [[Obj("cat", SMALL), Obj("cat", crowd, iscrowd=True)]]
    preds = [[Obj("cat", SMALL, 0.9), Obj("cat", rect(50, 5, 80, 25), 0.95)]]
    dataset = make_dataset(dataset_name, tmp_path, gt, preds)
    masks = evaluate(dataset, "pred", "gt", eval_key="masks")
    boxes = evaluate(dataset, "pred", "gt", eval_key="boxes", use_masks=False)
    # pycocotools ignores the prediction inside the crowd region; FiftyOne's mask IoU does not
    assert masks.segm["AP"] == pytest.approx(1.0)
    assert masks.fiftyone_map == pytest.approx(0.5)
    assert boxes.bbox["AP"] == pytest.approx(1.0)
    assert boxes.fiftyone_map == pytest.approx(1.0)


def test_fiftyone_ranks_tied_true_positives_first(dataset_name, tmp_path) -> None:
    gt = [[Obj("cat", SMALL)], [Obj("cat", MID)]]
    preds = [[Obj("cat", MID, 0.5)], [Obj("cat", MID, 0.5)]]  # the false positive's image first
    report = evaluate(make_dataset(dataset_name, tmp_path, gt, preds), "pred", "gt", eval_key="ev")
    assert report.segm["AP"] == pytest.approx(reference_stats(gt, preds)["segm"][0], abs=1e-12)
    assert report.segm["AP"] == pytest.approx(25.5 / 101)
    assert report.fiftyone_map == pytest.approx(51 / 101)


def test_errors_name_the_problem(dataset_name, tmp_path) -> None:
    dataset = make_dataset(dataset_name, tmp_path, GT, perfect())
    sample = dataset.first()
    sample["label"] = fo.Classification(label="cat")
    sample.save()
    with pytest.raises(ValueError, match="'missing' does not exist.*'gt', 'pred'"):
        evaluate(dataset, "missing", "gt")
    with pytest.raises(ValueError, match="'label' holds Classification, not fo.Detections"):
        evaluate(dataset, "pred", "label")
    evaluate(dataset, "pred", "gt", eval_key="ev")
    with pytest.raises(ValueError, match="'ev' already exists.*overwrite=True"):
        evaluate(dataset, "pred", "gt", eval_key="ev")
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(dataset.limit(0), "pred", "gt")
    sample = dataset.first()
    sample["gt"].detections[0].mask = None
    sample.save()
    with pytest.raises(ValueError, match="has no mask.*use_masks=False"):
        evaluate(dataset, "pred", "gt", eval_key="ev2")
    assert dataset.list_evaluations() == ["ev"]
