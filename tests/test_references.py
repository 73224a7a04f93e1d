"""Reference labels as pixels: COCO masks imported by FiftyOne come back exactly as pycocotools
rasterises them, which reference prototypes (and parity with the research code) depend on."""

from __future__ import annotations

import json

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from refseg.references import absolute_box, label_mask

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
