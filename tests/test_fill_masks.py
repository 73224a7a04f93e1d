"""refseg.fill_box_masks: SAM2 (a stand-in here) fills the masks of box-only labels, in place or
into a copy; labels with masks, other fields and unusable requests are left alone."""

from __future__ import annotations

import os

import numpy as np
import pytest
from stand_ins import ShapeProposer

import refseg
from refseg.failures import SampleError
from refseg.synthetic import make_shapes_dataset


@pytest.fixture
def boxes(tmp_path, dataset_name):
    """A dataset whose field "boxes" is "ground_truth" without masks on its first 3 samples."""
    dataset = make_shapes_dataset(
        dataset_name, str(tmp_path), num_positive=4, num_negative=0, seed=2
    )
    dataset.clone_sample_field("ground_truth", "boxes")
    dataset.limit(3).set_field("boxes.detections.mask", None).save()
    return dataset


def masks(dataset, field):
    return [d.mask for dets in dataset.values(field) for d in dets.detections]


def test_fills_a_copy_and_keeps_the_boxes_field(boxes):
    before = masks(boxes, "boxes")
    box_only = sum(mask is None for mask in before)
    done = []
    result = refseg.fill_box_masks(
        boxes,
        "boxes",
        output_field="filled",
        proposer=ShapeProposer(),
        progress=lambda made, total: done.append((made, total)),
    )
    assert (result.field, result.num_masks, result.num_labels) == ("filled", box_only, box_only)
    assert done[-1] == (box_only, box_only) and not result.failures
    assert [m is None for m in masks(boxes, "boxes")] == [m is None for m in before]
    filled = masks(boxes, "filled")
    assert all(m is not None and m.dtype == bool and m.any() for m in filled)
    kept = [(a, b) for a, b in zip(before, filled) if a is not None]
    assert kept and all(np.array_equal(a, b) for a, b in kept)  # existing masks untouched
    again = refseg.fill_box_masks(boxes, "filled", proposer=ShapeProposer())
    assert (again.num_masks, again.num_labels) == (0, 0)


def test_in_place_skips_an_unreadable_image_and_reports_it(boxes):
    broken = boxes.first()
    os.remove(broken.filepath)
    result = refseg.fill_box_masks(boxes, "boxes", proposer=ShapeProposer())
    assert [f.sample_id for f in result.failures.failures] == [broken.id]
    assert all(d.mask is None for d in boxes[broken.id].boxes.detections)
    others = boxes.limit(3).skip(1)
    assert all(d.mask is not None for dets in others.values("boxes") for d in dets.detections)
    with pytest.raises(SampleError, match=os.path.basename(broken.filepath)):
        refseg.fill_box_masks(boxes, "boxes", proposer=ShapeProposer(), skip_failures=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_field": "ground_truth"}, "ground_truth"),
        ({"output_field": "filepath"}, "reserves"),
        ({"gt_field": "nothing"}, "field 'nothing' does not exist"),
    ],
)
def test_refusals_write_nothing(boxes, kwargs, message):
    schema = dict(boxes.get_field_schema())
    gt_field = kwargs.pop("gt_field", "boxes")
    before = masks(boxes, "boxes")
    with pytest.raises(ValueError, match=message):
        refseg.fill_box_masks(boxes, gt_field, proposer=ShapeProposer(), **kwargs)
    assert dict(boxes.get_field_schema()).keys() == schema.keys()
    assert [m is None for m in masks(boxes, "boxes")] == [m is None for m in before]
