"""Per-sample failures on the reference side: unreadable images while building a bank, making
masks from boxes and evaluating, and odd-but-valid images that must work."""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from stand_ins import PaletteEncoder, ShapeProposer

import refseg
from refseg.box_masks import iter_box_masks
from refseg.config import PredictConfig
from refseg.failures import FailureReport, SampleError
from refseg.synthetic import make_shapes_dataset, random_shapes, render, to_detection


def _broken_files(directory, good_png) -> dict[str, str]:
    """Paths of unreadable images: missing, empty, garbage, truncated PNG."""
    files = {"missing": str(directory / "missing.png")}
    for kind, data in (
        ("empty", b""),
        ("garbage", b"\x13\x37 this is not an image" * 20),
        ("truncated", good_png.read_bytes()[: good_png.stat().st_size // 2]),
    ):
        path = directory / f"{kind}.png"
        path.write_bytes(data)
        files[kind] = str(path)
    return files


REASONS = {
    "missing": "does not exist",
    "empty": "the file is empty",
    "garbage": "not an image format",
    "truncated": "cannot be decoded",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    name = f"reference-failures-{tmp_path_factory.getbasetemp().name}"
    images = tmp_path_factory.mktemp("images")
    dataset = make_shapes_dataset(name, str(images), num_positive=5, num_negative=0, seed=11)
    broken = _broken_files(tmp_path_factory.mktemp("broken"), images / "shapes_000.png")
    copies = []
    for kind, path in broken.items():  # each broken file carries a copy of sample 0's labels
        copies.append(
            fo.Sample(
                filepath=path, tags=["broken", kind], ground_truth=dataset.first().ground_truth
            )
        )
    dataset.add_samples(copies)
    yield dataset, broken
    dataset.delete()


def _build(view, **kwargs):
    options = dict(encoder=PaletteEncoder(), proposer=ShapeProposer(), progress=False)
    return refseg.build_memory_bank(view, "ground_truth", **{**options, **kwargs})


@pytest.mark.parametrize("kind", list(REASONS))
def test_an_unreadable_reference_is_an_error_naming_it_by_default(setup, kind):
    dataset, broken = setup
    view = dataset.match_tags("broken", bool=False).limit(2).concat(dataset.match_tags(kind))
    with pytest.raises(SampleError) as info:
        _build(view)
    failure = info.value.failure
    assert (
        failure.filepath == broken[kind]
        and failure.sample_id == dataset.match_tags(kind).first().id
    )
    assert REASONS[kind] in failure.reason and broken[kind] in str(info.value)
    assert "skip_failures=True" in str(info.value)


def test_unreadable_references_are_skipped_and_reported_when_asked(setup):
    dataset, broken = setup
    report = FailureReport("build_memory_bank")
    bank = _build(dataset, skip_failures=True, failures=report)
    good = dataset.match_tags("broken", bool=False)
    assert {r.sample_id for r in bank.references} == set(good.values("id"))
    assert len(bank.references) == good.count("ground_truth.detections")
    assert sorted(f.filepath for f in report) == sorted(broken.values())
    for failure in report:
        kind = dataset[failure.sample_id].tags[1]
        assert REASONS[kind] in failure.reason
    expected = _build(good)
    np.testing.assert_array_equal(bank.prototypes, expected.prototypes)


def test_no_readable_reference_at_all_is_an_error(setup):
    dataset, _ = setup
    with pytest.raises(ValueError, match="(?s)every image failed to be read.*4 sample"):
        _build(dataset.match_tags("broken"), skip_failures=True)


def test_box_masks_skip_unreadable_images_and_report_them(setup):
    dataset, broken = setup
    labels = list(refseg.reference_labels(dataset, "ground_truth"))
    report = FailureReport("boxes_to_masks")
    made = {}
    for image_masks in iter_box_masks(labels, ShapeProposer(), failures=report):
        made.update(image_masks)
    good = dataset.match_tags("broken", bool=False)
    assert set(made) == set(good.values("ground_truth.detections.id", unwind=True))
    assert sorted(f.filepath for f in report) == sorted(broken.values())
    for sample in good:  # the stand-in SAM2 recovers each drawn shape from its box
        for det in sample.ground_truth.detections:
            assert made[det.id].shape == det.mask.shape
            assert (made[det.id] == det.mask).mean() > 0.95
    with pytest.raises(SampleError, match="missing.png"):
        for _ in iter_box_masks(labels, ShapeProposer(), skip_failures=False):
            pass


def test_evaluate_leaves_out_images_without_a_readable_size_and_reports_them(setup):
    dataset, broken = setup
    dataset.clone_sample_field("ground_truth", "predictions")
    dataset.set_values(
        "predictions.detections.confidence",
        [[0.9] * len(d.detections) for d in dataset.values("ground_truth")],
    )
    report = FailureReport("evaluate")
    result = refseg.evaluate(dataset, "predictions", "ground_truth", eval_key="ev", failures=report)
    # evaluation needs only each image's size: the truncated PNG's header still gives it
    unreadable = ("missing", "empty", "garbage")
    assert sorted(f.filepath for f in report) == sorted(broken[kind] for kind in unreadable)
    assert all(REASONS[dataset[f.sample_id].tags[1]] in f.reason for f in report)
    assert result.num_images == len(dataset) - 3 and result.segm["AP"] == pytest.approx(1.0)
    assert result.fiftyone_map == pytest.approx(1.0)
    assert len(dataset.exists("ev_tp")) == len(dataset) - 3  # the run left them out too
    with pytest.raises(SampleError, match="skip_failures=True"):
        refseg.evaluate(dataset, "predictions", "ground_truth", skip_failures=False)


# -- odd but valid images ------------------------------------------------------------------


def _odd_images(directory) -> dict[str, tuple[str, list[fo.Detection]]]:
    """Images in every mode PIL reads, and of odd sizes, each with its shapes as labels."""
    rng = np.random.default_rng(3)
    made = {}
    for kind, (height, width) in {
        "gray": (150, 180),
        "rgba": (150, 180),
        "16bit": (150, 180),
        "palette": (150, 180),
        "cmyk": (150, 180),
        "tiny": (8, 8),
        "sliver": (3, 400),
    }.items():
        if kind == "tiny":
            pixels = np.full((8, 8, 3), 128, np.uint8)
            pixels[2:6, 2:6] = (217, 38, 38)
            detections = [
                fo.Detection(
                    label="red_square",
                    bounding_box=[0.25, 0.25, 0.5, 0.5],
                    mask=np.ones((4, 4), bool),
                )
            ]
        elif kind == "sliver":
            pixels = np.full((3, 400, 3), 128, np.uint8)
            pixels[:, 100:160] = (38, 204, 51)
            detections = [fo.Detection(label="green_disc", bounding_box=[0.25, 0.0, 0.15, 1.0])]
        else:
            shapes = random_shapes(["red_square", "green_disc"], height, width, rng)
            pixels = render(shapes, height, width, rng)
            detections = [to_detection(s, height, width) for s in shapes]
        image = Image.fromarray(pixels)
        if kind == "gray":
            image = image.convert("L")
        elif kind == "rgba":
            image = image.convert("RGBA")
        elif kind == "16bit":
            image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
        elif kind == "palette":
            image = image.convert("P", palette=Image.Palette.ADAPTIVE)
        elif kind == "cmyk":
            image = image.convert("CMYK")
        path = directory / (f"{kind}.jpg" if kind == "cmyk" else f"{kind}.png")
        image.save(path)
        made[kind] = (str(path), detections)
    return made


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    name = f"odd-images-{tmp_path_factory.getbasetemp().name}"
    dataset = fo.Dataset(name)
    images = _odd_images(tmp_path_factory.mktemp("odd"))
    dataset.add_samples(
        [
            fo.Sample(filepath=path, tags=[kind], ground_truth=fo.Detections(detections=dets))
            for kind, (path, dets) in images.items()
        ]
    )
    yield dataset
    dataset.delete()


def test_odd_but_valid_images_work_as_references_and_targets(odd):
    modes = {
        tags[0]: Image.open(path).mode for tags, path in zip(*odd.values(["tags", "filepath"]))
    }
    assert sorted(modes.values()) == sorted(["L", "RGBA", "I;16", "P", "CMYK", "RGB", "RGB"])
    bank = _build(odd)
    assert {r.sample_id for r in bank.references} == set(odd.values("id"))
    assert np.isfinite(bank.prototypes).all()
    sliver = next(r for r in bank.references if r.filepath.endswith("sliver.png"))
    assert sliver.mask_source == "box"  # the stand-in SAM2 made its mask
    refseg.predict(
        odd,
        bank,
        "predictions",
        config=PredictConfig(points_per_side=6),
        proposer=ShapeProposer(),
        encoder=PaletteEncoder(),
        num_workers=0,
        progress=False,
    )
    assert len(odd.exists("predictions")) == len(odd)
    scores = [
        c for per_sample in odd.values("predictions.detections.confidence") for c in per_sample
    ]
    assert scores and np.isfinite(scores).all()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*random weights")
def test_odd_images_with_the_real_architectures(odd):
    """DINOv2 ViT-S/14 and SAM2.1 Hiera-T (random weights) on the same images."""
    bank = refseg.build_memory_bank(
        odd,
        "ground_truth",
        dinov2="dinov2_vits14",
        sam2="sam2.1_hiera_tiny",
        pretrained=False,
        device="cpu",
        progress=False,
    )
    assert len(bank.references) == odd.count("ground_truth.detections")
    assert np.isfinite(bank.prototypes).all() and bank.dim == 384
