"""Reference labels as pixels: COCO masks imported by FiftyOne come back exactly as pycocotools
rasterises them, which reference prototypes (and parity with the research code) depend on."""

from __future__ import annotations

import json

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from stand_ins import PaletteEncoder, ShapeProposer

import refseg
from refseg.config import PredictConfig, ReferenceConfig
from refseg.references import InvalidReferenceError, absolute_box, crop_to_box, label_mask
from refseg.synthetic import make_shapes_dataset

POLYGONS = [  # fractional vertices; the second has a box corner at y = 57.5 (round half to even)
    [60.1, 71.4, 136.7, 80.0, 120.3, 148.0, 70.2, 130.6],
    [183.9, 57.5, 239.99, 90.0, 200.4, 118.9],
    [3.5, 6.0, 71.5, 6.0, 71.5, 58.75, 3.5, 58.75],
]


@pytest.fixture
def coco_files(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (240, 180), (90, 90, 90)).save(tmp_path / "images" / "a.png")
    annotations = []
    for i, poly in enumerate(POLYGONS, start=1):
        xs, ys = poly[0::2], poly[1::2]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        annotations.append(
            dict(
                id=i,
                image_id=1,
                category_id=1,
                segmentation=[poly],
                bbox=bbox,
                area=bbox[2] * bbox[3],
                iscrowd=0,
            )
        )
    data = dict(
        images=[dict(id=1, file_name="a.png", width=240, height=180)],
        annotations=annotations,
        categories=[dict(id=1, name="thing")],
    )
    (tmp_path / "labels.json").write_text(json.dumps(data))
    return tmp_path


def test_imported_coco_masks_equal_pycocotools_masks(coco_files, dataset_name):
    dataset = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=str(coco_files / "images"),
        labels_path=str(coco_files / "labels.json"),
        label_types="segmentations",
        label_field="gt",
        include_annotation_id=True,
        name=dataset_name,
    )
    coco = COCO(str(coco_files / "labels.json"))
    detections = dataset.first().gt.detections
    assert len(detections) == len(POLYGONS)
    for detection in detections:
        annotation = coco.loadAnns([detection.coco_id])[0]
        expected = coco.annToMask(annotation).astype(bool)
        np.testing.assert_array_equal(label_mask(detection, 240, 180), expected)
        assert absolute_box(detection, 240, 180) == pytest.approx(
            tuple(annotation["bbox"]), abs=1e-9
        )


def test_masks_of_another_size_are_resized_into_their_box():
    detection = fo.Detection(
        label="x", bounding_box=[0.1, 0.2, 0.5, 0.5], mask=np.ones((2, 2), bool)
    )
    mask = label_mask(detection, 20, 10)
    assert mask.sum() == 10 * 5 and mask[2:7, 2:12].all()


# -- every reference problem: a clear error, or it works with finite scores ------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    name = f"reference-problems-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=4, num_negative=0, seed=7
    )
    yield dataset
    dataset.delete()


def _with_label(dataset, tag: str, **fields) -> tuple[fo.DatasetView, str, str]:
    """A copy of the first sample whose only label is ``fo.Detection(**fields)``, as a view
    (the sample id and label id returned too)."""
    first = dataset.first()
    detection = fo.Detection(**{"label": "red_square", **fields})
    sample = fo.Sample(
        filepath=first.filepath, tags=[tag], ground_truth=fo.Detections(detections=[detection])
    )
    dataset.add_sample(sample)
    return dataset.match_tags(tag), sample.id, detection.id


def _build(view, **kwargs):
    options = dict(encoder=PaletteEncoder(), proposer=ShapeProposer(), progress=False)
    return refseg.build_memory_bank(view, "ground_truth", **{**options, **kwargs})


BAD_REFERENCES = {
    "no geometry": (dict(), "neither a box nor a mask"),
    "bounding_box None": (dict(bounding_box=None), "neither a box nor a mask"),
    "mask without box": (dict(mask=np.ones((3, 3), bool)), "a mask but no box"),
    "zero-area box": (dict(bounding_box=[0.2, 0.2, 0.0, 0.3]), "zero area"),
    "negative size": (dict(bounding_box=[0.2, 0.2, 0.3, -0.1]), "zero area"),
    "box outside the image": (dict(bounding_box=[1.2, 0.1, 0.2, 0.2]), "outside the image"),
    "box left of the image": (dict(bounding_box=[-0.5, 0.1, 0.4, 0.2]), "outside the image"),
    "NaN box": (dict(bounding_box=[float("nan"), 0.1, 0.2, 0.2]), "not four finite numbers"),
    "empty mask": (dict(bounding_box=[0.1, 0.1, 0.3, 0.3], mask=np.zeros((9, 9), bool)), "empty"),
    "zero-size mask": (
        dict(bounding_box=[0.1, 0.1, 0.3, 0.3], mask=np.zeros((0, 4), bool)),
        "empty",
    ),
    "3-D mask": (
        dict(bounding_box=[0.1, 0.1, 0.3, 0.3], mask=np.ones((4, 4, 3), bool)),
        "a mask is 2-D",
    ),
    "no class": (dict(label=None, bounding_box=[0.1, 0.1, 0.3, 0.3]), "no class label"),
    "unreadable mask file": (
        dict(bounding_box=[0.1, 0.1, 0.3, 0.3], mask_path="/nonexistent/mask.png"),
        "mask file '/nonexistent/mask.png' cannot be read",
    ),
}


@pytest.mark.parametrize("case", BAD_REFERENCES)
def test_unusable_references_raise_naming_sample_label_and_fix(shapes, case):
    fields, problem = BAD_REFERENCES[case]
    view, sample_id, label_id = _with_label(shapes, f"bad-{case}", **fields)
    with pytest.raises(InvalidReferenceError) as info:
        _build(view)
    message = str(info.value)
    for part in (problem, sample_id, label_id, "Fix the label in the App", "untag it"):
        assert part in message, message
    assert info.value.problems[0][:2] == (sample_id, label_id)


def test_every_unusable_reference_is_listed_before_anything_is_encoded(shapes):
    tag = "several-bad"
    for fields in (dict(), dict(bounding_box=[0.2, 0.2, 0.0, 0.3])):
        _with_label(shapes, tag, **fields)
    with pytest.raises(InvalidReferenceError, match="2 reference labels cannot be used"):
        _build(shapes.match_tags(tag), encoder=_NeverEncode())


class _NeverEncode(PaletteEncoder):
    def encode(self, images):
        raise AssertionError("nothing may be encoded when a reference is unusable")


def _one_pixel_mask(shapes):
    """A label around a red square whose mask keeps one pixel of it."""
    detection = next(
        d for s in shapes for d in s.ground_truth.detections if d.label == "red_square"
    )
    mask = np.zeros_like(detection.mask, dtype=bool)
    rows, cols = np.nonzero(detection.mask)
    mask[rows[len(rows) // 2], cols[len(cols) // 2]] = True
    return dict(bounding_box=detection.bounding_box, mask=mask)


WORKING_REFERENCES = {
    "box partly outside the image": lambda shapes: dict(
        bounding_box=[-0.05, -0.05, 0.4, 0.4], mask=np.ones((40, 40), bool)
    ),
    "mask shape does not fit its box": lambda shapes: dict(
        bounding_box=[0.1, 0.1, 0.3, 0.3], mask=np.ones((5, 7), bool)
    ),
    "one-pixel mask": _one_pixel_mask,
    "two-pixel box": lambda shapes: _pixel_box(shapes, (100, 80, 2, 2)),
}


def _pixel_box(shapes, box):
    """A label with the box ``box`` (x, y, w, h in pixels of the first image), mask full."""
    width, height = shapes.first().metadata.width, shapes.first().metadata.height
    x, y, w, h = box
    return dict(
        bounding_box=[x / width, y / height, w / width, h / height], mask=np.ones((h, w), bool)
    )


def test_a_box_under_one_pixel_is_named(shapes):
    fields = dict(bounding_box=[0.5, 0.5, 0.001, 0.001], mask=np.ones((1, 1), bool))
    view, sample_id, label_id = _with_label(shapes, "sub-pixel", **fields)
    with pytest.raises(InvalidReferenceError, match="under one pixel") as info:
        _build(view)
    assert sample_id in str(info.value) and label_id in str(info.value)


@pytest.mark.parametrize("case", WORKING_REFERENCES)
def test_odd_but_usable_references_give_finite_scores(shapes, case):
    view, _, label_id = _with_label(shapes, f"ok-{case}", **WORKING_REFERENCES[case](shapes))
    bank = _build(view)
    assert [r.label_id for r in bank.references] == [label_id]
    assert np.isfinite(bank.prototypes).all() and np.isfinite(bank.class_prototypes()).all()
    targets = shapes.match_tags(["bad-no geometry", "several-bad"], bool=False).limit(2)
    field = f"pred_{abs(hash(case))}"
    refseg.predict(
        targets,
        bank,
        field,
        config=PredictConfig(points_per_side=6),
        proposer=ShapeProposer(),
        encoder=PaletteEncoder(),
        num_workers=0,
        progress=False,
    )
    scores = [c for c in targets.values(f"{field}.detections.confidence") for c in c]
    assert all(np.isfinite(scores))


@pytest.mark.parametrize("shift", range(4))
def test_a_one_pixel_mask_with_nearest_downsampling_works_or_says_to_use_area(shapes, shift):
    """With "nearest", whether a one-pixel mask is sampled depends on where it falls on the
    patch grid: either the bank is finite, or the error names the label and 'area'."""
    fields = _one_pixel_mask(shapes)
    fields["mask"] = np.roll(fields["mask"], shift, axis=1)
    view, sample_id, label_id = _with_label(shapes, f"one-pixel-nearest-{shift}", **fields)
    try:
        bank = _build(view, config=ReferenceConfig(mask_downsample="nearest"))
    except InvalidReferenceError as error:
        assert sample_id in str(error) and label_id in str(error)
        assert "build with mask_downsample='area'" in str(error)
    else:
        assert np.isfinite(bank.prototypes).all()


def test_an_empty_sam2_mask_is_named(shapes):
    # a box-only label on the grey background: the stand-in SAM2 finds nothing there
    view, sample_id, label_id = _with_label(shapes, "empty-box", bounding_box=[0, 0, 0.04, 0.04])
    with pytest.raises(InvalidReferenceError, match="SAM2 found nothing in its box") as info:
        _build(view)
    assert sample_id in str(info.value) and label_id in str(info.value)


def test_masks_stored_in_files_are_used(shapes, tmp_path):
    detection = next(d for s in shapes for d in s.ground_truth.detections if d.mask is not None)
    path = tmp_path / "mask.png"
    Image.fromarray(detection.mask.astype(np.uint8) * 255).save(path)
    inline = _build(shapes.select_labels(ids=[detection.id]))
    view, _, _ = _with_label(
        shapes, "mask-file", bounding_box=detection.bounding_box, mask_path=str(path)
    )
    view.set_values("ground_truth.detections.label", [[detection.label]])
    from_file = _build(view)
    assert from_file.references[0].mask_source == "label"
    np.testing.assert_allclose(from_file.prototypes, inline.prototypes, rtol=1e-6)


def test_crop_to_box_is_the_inverse_of_the_paste():
    full = np.zeros((10, 20), bool)
    full[2:6, 3:9] = True
    np.testing.assert_array_equal(crop_to_box(full, (3.0, 2.0, 6.0, 4.0)), np.ones((4, 6), bool))
    crop = crop_to_box(full, (-2.0, 1.0, 6.0, 2.0))  # starts left of the image
    assert crop.shape == (2, 6) and not crop[:, :2].any() and crop[1:, 5].all()
