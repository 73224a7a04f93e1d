"""predict() on real-world data: broken files among good ones, odd images, failing samples.

A run never dies of one sample: unreadable or failing samples are skipped, reported (sample id,
file, reason) and left without a value, so ``resume=True`` retries exactly them.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image
from stand_ins import PaletteEncoder, ShapeProposer, predict_with_stand_ins, stand_in_bank

import refseg
from refseg.config import PredictConfig
from refseg.segmenter import Segmenter
from refseg.stream import segment_stream
from refseg.synthetic import make_shapes_dataset

CONFIG = PredictConfig(points_per_side=8, points_batch_size=64)
BROKEN = ("missing", "empty", "garbage", "truncated_png", "truncated_jpg")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    name = f"failures-{tmp_path_factory.getbasetemp().name}"
    image_dir = str(tmp_path_factory.mktemp("images"))
    dataset = make_shapes_dataset(name, image_dir, num_positive=9, num_negative=0, seed=5)
    references, bank, targets = stand_in_bank(dataset)
    yield dataset, bank, targets, image_dir
    dataset.delete()


def run(targets, bank, field, config=CONFIG, **kwargs):
    return predict_with_stand_ins(targets, bank, field, config, **kwargs)


def break_file(path: str, how: str) -> None:
    """Damages an image file in place in one of the ways of ``BROKEN``."""
    data = open(path, "rb").read() if os.path.exists(path) else b""
    if how == "missing":
        os.remove(path)
    elif how == "empty":
        open(path, "wb").close()
    elif how == "garbage":
        open(path, "wb").write(np.random.default_rng(0).bytes(2000))
    elif how == "truncated_png":
        open(path, "wb").write(data[: len(data) // 2])
    elif how == "truncated_jpg":
        buffer = path + ".jpg"
        Image.open(path).convert("RGB").save(buffer, quality=90)
        jpeg = open(buffer, "rb").read()
        os.remove(buffer)
        open(path, "wb").write(jpeg[: len(jpeg) // 2])


@pytest.fixture
def broken_view(setup, tmp_path, dataset_name):
    """A clone of the targets whose first five images are broken, one way each."""
    dataset, _, targets, _ = setup
    clone = targets.clone(dataset_name)
    for sample, how in zip(clone.limit(len(BROKEN)), BROKEN):
        path = str(tmp_path / os.path.basename(sample.filepath))
        shutil.copy(sample.filepath, path)
        break_file(path, how)
        sample.filepath = path
        sample.save()
    return clone


def test_broken_images_are_skipped_and_reported(setup, broken_view):
    _, bank, _, _ = setup
    result = run(broken_view, bank, "pred", batch_size=2, write_every=2)
    broken_ids = broken_view.limit(len(BROKEN)).values("id")
    assert sorted(result.failures.sample_ids) == sorted(broken_ids)
    reasons = {f.sample_id: f.reason for f in result.failures}
    paths = dict(zip(*broken_view.values(["id", "filepath"])))
    for failure in result.failures:
        assert failure.filepath == paths[failure.sample_id]
        assert failure.filepath in failure.reason
    expected = ["does not exist", "empty", "not an image", "truncated", "truncated"]
    for sample_id, phrase in zip(broken_ids, expected):
        assert phrase in reasons[sample_id]
    # every good sample was written; the broken ones have no value
    assert sorted(broken_view.exists("pred").values("id")) == sorted(
        set(broken_view.values("id")) - set(broken_ids)
    )
    assert result.num_samples == len(broken_view)
    assert result.num_written == len(broken_view) - len(BROKEN)
    assert result.failures.to_dict()["num_failures"] == len(BROKEN)


def test_resume_retries_only_the_skipped_samples(setup, broken_view):
    _, bank, targets, _ = setup
    first = run(broken_view, bank, "pred")
    written = {s.id: s.pred for s in broken_view.exists("pred")}
    again = run(broken_view, bank, "pred", resume=True)
    assert again.num_samples == len(BROKEN)
    assert sorted(again.failures.sample_ids) == sorted(first.failures.sample_ids)
    # repair the files: a resumed run completes the field with the labels of a clean run
    originals = dict(zip(*targets.values(["id", "filepath"])))
    for sample in broken_view.limit(len(BROKEN)):
        shutil.copy(originals[sample.id], sample.filepath)
    done = run(broken_view, bank, "pred", resume=True)
    assert done.num_samples == len(BROKEN) and not done.failures
    assert len(broken_view.exists("pred", False)) == 0
    for sample in broken_view.exists("pred"):
        if sample.id in written:
            assert _labels(sample.pred) == _labels(written[sample.id])
    run(targets, bank, "pred_clean")
    clean = dict(zip(*targets.values(["id", "pred_clean"])))
    for sample_id, pred in zip(*broken_view.values(["id", "pred"])):
        assert _labels(pred) == _labels(clean[sample_id])


def test_skip_failures_false_raises_naming_the_file_after_writing_the_done_ones(setup, broken_view):
    _, bank, _, _ = setup
    view = broken_view.skip(len(BROKEN) - 1)  # a truncated JPEG first, then good images
    bad = view.first()
    good = view.skip(1)
    ordered = good.limit(2).concat(view.limit(1)).concat(good.skip(2))
    with pytest.raises(refseg.SampleError, match=os.path.basename(bad.filepath)) as info:
        run(ordered, bank, "pred_strict", skip_failures=False, write_every=1)
    assert info.value.failure.sample_id == bad.id
    assert sorted(ordered.exists("pred_strict").values("id")) == sorted(good.limit(2).values("id"))


def test_a_sample_failing_in_the_models_is_isolated_from_its_batch(setup, monkeypatch):
    _, bank, targets, _ = setup
    bad_id = targets.skip(2).first().id
    original = Segmenter.segment_batch

    def fail_on_one_size(self, images, image_sizes):
        if any(h == sizes[bad_id] for h, _ in image_sizes):
            raise RuntimeError("simulated model failure")
        return original(self, images, image_sizes)

    targets.compute_metadata()
    sizes = dict(zip(*targets.values(["id", "metadata.height"])))
    if list(sizes.values()).count(sizes[bad_id]) > 1:
        pytest.skip("two targets share the height that marks the failing one")
    monkeypatch.setattr(Segmenter, "segment_batch", fail_on_one_size)
    result = run(targets, bank, "pred_model_failure", batch_size=3)
    assert result.failures.sample_ids == [bad_id]
    assert "simulated model failure" in result.failures.failures[0].reason
    assert len(targets.exists("pred_model_failure")) == len(targets) - 1


def test_overwrite_clears_old_values_so_a_skipped_sample_keeps_none(setup, broken_view):
    _, bank, targets, _ = setup
    good = broken_view.skip(len(BROKEN))
    run(good, bank, "pred_over")
    first = good.first()
    path = first.filepath + ".broken.png"
    open(path, "wb").close()
    original_path = first.filepath
    first.filepath = path
    first.save()
    try:
        result = run(good, bank, "pred_over", overwrite=True)
        assert result.failures.sample_ids == [first.id]
        assert good.select(first.id).first().pred_over is None
        assert len(good.exists("pred_over")) == len(good) - 1
    finally:
        first.filepath = original_path
        first.save()


ODD_IMAGES = {
    "gray": lambda rgb: Image.fromarray(rgb).convert("L"),
    "rgba": lambda rgb: Image.fromarray(rgb).convert("RGBA"),
    "gray16": lambda rgb: Image.fromarray(
        (np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257)
    ),
    "palette": lambda rgb: Image.fromarray(rgb).convert("P"),
    "cmyk": lambda rgb: Image.fromarray(rgb).convert("CMYK"),
    "tiny": lambda rgb: Image.fromarray(rgb[:3, :4]),
    "sliver": lambda rgb: Image.fromarray(rgb[:2, :]),
}


def test_odd_but_valid_images_are_predicted(setup, tmp_path, dataset_name):
    import fiftyone as fo

    _, bank, targets, _ = setup
    rgb = np.asarray(Image.open(targets.first().filepath).convert("RGB"))
    samples = []
    for kind, make in ODD_IMAGES.items():
        suffix = "jpg" if kind == "cmyk" else "png"
        path = str(tmp_path / f"{kind}.{suffix}")
        make(rgb).save(path)
        samples.append(fo.Sample(filepath=path, tags=[kind]))
    dataset = fo.Dataset(dataset_name)
    dataset.add_samples(samples)
    result = run(dataset, bank, "pred", batch_size=3)
    assert not result.failures, result.failures.summary()
    assert len(dataset.exists("pred")) == len(ODD_IMAGES)
    for sample in dataset:
        height, width = np.asarray(Image.open(sample.filepath)).shape[:2]
        for detection in sample.pred.detections:
            x, y, w, h = detection.bounding_box
            assert 0 <= x and x + w <= 1 + 1e-6 and 0 <= y and y + h <= 1 + 1e-6
            assert np.isfinite(detection.confidence)


def test_the_stream_needs_no_fiftyone_and_takes_arrays(setup):
    _, bank, targets, _ = setup
    segmenter = Segmenter(ShapeProposer(), PaletteEncoder(), bank, CONFIG)
    paths = targets.limit(3).values("filepath")
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    from_files = list(segment_stream(segmenter, ["a", "b", "c"], paths, batch_size=2))
    from_arrays = list(segment_stream(segmenter, ["a", "b", "c"], arrays, batch_size=2))
    assert [r.key for r in from_files] == ["a", "b", "c"]
    for a, b in zip(from_files, from_arrays):
        assert a.ok and b.ok and b.filepath == ""
        np.testing.assert_array_equal(a.predictions.scores, b.predictions.scores)
        np.testing.assert_array_equal(a.predictions.boxes, b.predictions.boxes)
    bad = list(segment_stream(segmenter, ["x"], [np.zeros((0, 5, 3), np.uint8)]))
    assert not bad[0].ok and "not an image" in bad[0].error


def _labels(detections):
    return [
        (d.label, tuple(d.bounding_box), d.confidence, d.mask.tobytes())
        for d in detections.detections
    ]


def test_stream_results_follow_the_input_order_with_failures_in_place(setup, tmp_path):
    _, bank, targets, _ = setup
    segmenter = Segmenter(ShapeProposer(), PaletteEncoder(), bank, CONFIG)
    paths = targets.limit(3).values("filepath")
    missing = str(tmp_path / "missing.png")
    results = list(
        segment_stream(
            segmenter, list("abcd"), [paths[0], missing, paths[1], paths[2]], batch_size=3
        )
    )
    assert [r.key for r in results] == list("abcd")
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].filepath == missing and "does not exist" in results[1].error
    assert results[1].predictions is None
