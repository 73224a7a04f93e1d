"""``refseg reproduce`` end to end on tiny COCO-format fixtures written here.

The fast tests inject the deterministic stand-ins (``Components``); the ``slow`` one runs the
command with random-weight SAM2.1 Hiera-T and DINOv2 ViT-S/14.
"""

from __future__ import annotations

import json
import os

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from stand_ins import PaletteEncoder, ShapeProposer

import refseg
from refseg import cli as refseg_cli
from refseg.config import (
    PAPER_EVALUATE,
    PAPER_PREDICT,
    EvaluateConfig,
    PredictConfig,
    ReferenceConfig,
)
from refseg.models import Components
from refseg.presets import Preset
from refseg.reproduce import cli, runner
from refseg.reproduce.data import GT_FIELD, REFERENCES, TARGETS, CocoSource, load_coco_dataset
from refseg.reproduce.protocols import COCO_NOVEL_CLASSES
from refseg.reproduce.runner import RunSettings
from refseg.synthetic import CLASSES, NEGATIVE_CLASS, random_shapes, render

STAND_IN_MODELS = RunSettings(
    preset=Preset(
        reference=ReferenceConfig(),
        predict=PredictConfig(points_per_side=12, points_batch_size=50),
        evaluate=PAPER_EVALUATE,
    ),
    num_workers=0,
)


def stand_ins() -> Components:
    return Components(proposer=ShapeProposer(), encoder=PaletteEncoder())


# ---------------------------------------------------------------- fixture files


def write_coco(path, image_dir, images, *, masks=True, crowd=(), names=None, prefix="img"):
    """Writes images of synthetic shapes and their COCO json.

    ``images`` is a list of label lists (one per image); ``names`` maps a synthetic class to
    the category name written; annotation ids are the json order; ``crowd`` holds indices of
    annotations to mark iscrowd=1; ``masks`` False writes boxes only, "some" every other mask.
    """
    names = names or {}
    rng = np.random.default_rng(len(images) + len(prefix))
    os.makedirs(image_dir, exist_ok=True)
    categories = sorted({names.get(l, l) for labels in images for l in labels})
    cat_ids = {name: i + 1 for i, name in enumerate(categories)}
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for n, i in cat_ids.items()],
    }
    for index, labels in enumerate(images):
        height, width = 150, 190
        shapes = random_shapes(list(labels), height, width, rng)
        file_name = f"{prefix}_{index:03d}.png"
        Image.fromarray(render(shapes, height, width, rng)).save(os.path.join(image_dir, file_name))
        coco["images"].append(
            {"id": 100 + index, "file_name": file_name, "width": width, "height": height}
        )
        for shape in shapes:
            coco["annotations"].append(
                _annotation(
                    shape,
                    len(coco["annotations"]),
                    100 + index,
                    cat_ids[names.get(shape.label, shape.label)],
                )
            )
    for i, ann in enumerate(coco["annotations"]):
        ann["iscrowd"] = int(i in crowd)
        if masks is False or (masks == "some" and i % 2):
            del ann["segmentation"]
    with open(path, "w") as file:
        json.dump(coco, file)
    return coco


def _annotation(shape, ann_id, image_id, category_id):
    rows, cols = np.nonzero(shape.mask)
    x1, y1, x2, y2 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
    rle = mask_utils.encode(np.asfortranarray(shape.mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id + 1,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": int(shape.mask.sum()),
        "segmentation": rle,
    }


REFERENCE_IMAGES = [
    ["red_square", "green_disc"],
    ["blue_triangle"],
    ["green_disc", "red_square"],
    ["blue_triangle", "red_square"],
]
TARGET_IMAGES = [
    ["red_square", "blue_triangle"],
    ["green_disc"],
    ["green_disc", "blue_triangle", "red_square"],
    ["blue_triangle", "green_disc"],
    [NEGATIVE_CLASS],
]


@pytest.fixture
def custom_files(tmp_path):
    """references json (masks), the same boxes only, targets json with one crowd region."""
    images = tmp_path / "images"
    refs = write_coco(tmp_path / "refs.json", images, REFERENCE_IMAGES, prefix="ref")
    write_coco(tmp_path / "refs_boxes.json", images, REFERENCE_IMAGES, prefix="ref", masks=False)
    targets = write_coco(tmp_path / "targets.json", images, TARGET_IMAGES, prefix="tgt", crowd=(1,))
    return tmp_path, refs, targets


def custom_args(root, dataset_name, refs="refs.json", *extra):
    return cli.parse_args([
        "custom", "--references", str(root / refs), "--targets", str(root / "targets.json"),
        "--images", str(root / "images"), "--dataset-name", dataset_name, "--quiet", *extra,
    ])  # fmt: skip


def run_custom(root, dataset_name, refs="refs.json", *extra) -> str:
    args = custom_args(root, dataset_name, refs, *extra)
    return cli.run(args, STAND_IN_MODELS, components=stand_ins())


def summary_of(root, dataset_name) -> dict:
    with open(root / f"{dataset_name}.summary.json") as file:
        return json.load(file)


def predictions(dataset_name: str, field: str) -> dict:
    dataset = fo.load_dataset(dataset_name)
    out = {}
    for path, dets in zip(*dataset.match_tags(TARGETS).values(["filepath", field])):
        out[path] = [
            (d.label, tuple(np.round(d.bounding_box, 6)), round(d.confidence, 6), d.mask.tobytes())
            for d in dets.detections
        ]
    return out


# ---------------------------------------------------------------- tests


def test_data_import_keeps_boxes_masks_and_crowd(tmp_path, dataset_name):
    coco = write_coco(
        tmp_path / "mixed.json", tmp_path / "images", TARGET_IMAGES, masks="some", crowd=(2,)
    )
    dataset = load_coco_dataset(
        dataset_name,
        [CocoSource(str(tmp_path / "mixed.json"), str(tmp_path / "images"), TARGETS)],
        progress=False,
    )
    labels = [d for dets in dataset.values(GT_FIELD) for d in (dets.detections if dets else [])]
    assert sorted(d.coco_id for d in labels) == [a["id"] for a in coco["annotations"]]
    with_mask = {d.coco_id for d in labels if d.mask is not None}
    assert with_mask == {a["id"] for a in coco["annotations"] if "segmentation" in a}
    assert [d.coco_id for d in labels if d.iscrowd] == [3]
    # the file's areas, which COCO evaluation reads, are kept on the labels
    areas = {a["id"]: a["area"] for a in coco["annotations"]}
    assert {d.coco_id: d["area"] for d in labels} == areas
    assert (
        set(dataset.get_field_schema()) >= {GT_FIELD, "coco_id"}
        and "refseg_import_boxes" not in dataset.get_field_schema()
    )
    # loading again reuses the complete dataset; other files under the same name are refused
    again = load_coco_dataset(
        dataset_name,
        [CocoSource(str(tmp_path / "mixed.json"), str(tmp_path / "images"), TARGETS)],
        progress=False,
    )
    assert again.count(f"{GT_FIELD}.detections") == len(labels)
    with pytest.raises(ValueError, match="not loaded from these files"):
        load_coco_dataset(
            dataset_name,
            [CocoSource(str(tmp_path / "mixed.json"), str(tmp_path / "images"), REFERENCES)],
        )


def test_custom_end_to_end_prints_table_and_summary(custom_files, dataset_name):
    root, refs, targets = custom_files
    table = run_custom(root, dataset_name)
    print(table)
    assert "custom dataset 'custom', AP" in table and "bbox AP" in table and "segm AP" in table
    row = next(line for line in table.splitlines() if line.lstrip().startswith("all"))
    assert row.split()[2] == str(len(TARGET_IMAGES))
    summary = summary_of(root, dataset_name)
    assert summary["dataset"] == dataset_name
    (job,) = summary["jobs"].values()
    assert job["reference_counts"] == {"blue_triangle": 2, "green_disc": 2, "red_square": 3}
    assert job["steps"] == {
        "references": "done",
        "bank": "done",
        "predict": f"done ({len(TARGET_IMAGES)} of {len(TARGET_IMAGES)} images)",
        "evaluate": "done",
    }
    assert job["metrics"]["bbox"]["AP"] > 0.5 and job["metrics"]["segm"]["AP"] > 0.5
    assert set(job["classes"]) == set(CLASSES)
    dataset = fo.load_dataset(dataset_name)
    assert dataset.persistent and dataset.has_evaluation(job["eval_key"])
    assert job["bank_name"] in refseg.list_banks(dataset)
    # the models' evaluate settings (here the paper's) decide the COCO boxes evaluated
    assert STAND_IN_MODELS.preset.evaluate == PAPER_EVALUATE
    targets = dataset.match_tags(TARGETS)
    reports = {
        legacy: refseg.evaluate(
            targets, job["pred_field"], GT_FIELD, classes=job["classes"], legacy_coco_box=legacy
        )
        for legacy in (True, False)
    }
    assert job["metrics"] == {"bbox": reports[True].bbox, "segm": reports[True].segm}
    assert reports[True].bbox != reports[False].bbox
    assert reports[True].segm == reports[False].segm  # the masks are never changed


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["coco"], PAPER_EVALUATE),
        (["voc", "--split", "1"], PAPER_EVALUATE),
        (["custom", "--references", "r.json", "--targets", "t.json", "--images", "i"], None),
        (
            ["custom", "--references", "r.json", "--targets", "t.json", "--images", "i",
             "--settings", "paper"],
            PAPER_EVALUATE,
        ),
    ],
)  # fmt: skip
def test_paper_settings_evaluate_with_the_research_code_boxes(command, expected):
    preset = cli.settings_from_args(cli.parse_args(command)).preset
    assert preset.evaluate == (expected or EvaluateConfig())
    assert preset.predict == (PAPER_PREDICT if expected else PredictConfig())
    assert preset == (refseg.PAPER if expected else refseg.DEFAULT)


class Interrupted(Exception):
    pass


def test_resumes_after_the_bank_and_after_some_predictions(custom_files, dataset_name, monkeypatch):
    root, _, _ = custom_files
    reference_name = f"{dataset_name}-ref"
    try:
        run_custom(root, reference_name)  # uninterrupted, for comparison
        expected = predictions(
            reference_name, summary_of(root, reference_name)["jobs"].popitem()[1]["pred_field"]
        )
    finally:
        fo.delete_dataset(reference_name) if fo.dataset_exists(reference_name) else None
    real_predict, real_build = runner.predict, runner.build_memory_bank
    calls = {"build": 0, "predicted": []}

    def build(*args, **kwargs):
        calls["build"] += 1
        return real_build(*args, **kwargs)

    def predict_then_stop(count):
        def fake(view, bank, field, **kwargs):
            todo = view.exists(field, False) if field in view._dataset.get_field_schema() else view
            calls["predicted"].append(len(todo))
            if count:
                real_predict(todo.limit(count), bank, field, **kwargs)
            raise Interrupted

        return fake

    monkeypatch.setattr(runner, "build_memory_bank", build)
    monkeypatch.setattr(runner, "predict", predict_then_stop(0))
    with pytest.raises(Interrupted):  # stops right after the bank
        run_custom(root, dataset_name)
    monkeypatch.setattr(runner, "predict", predict_then_stop(2))
    with pytest.raises(Interrupted):  # stops after two images
        run_custom(root, dataset_name)
    assert calls["build"] == 1
    monkeypatch.setattr(
        runner,
        "predict",
        lambda view, *a, **k: (
            calls["predicted"].append(len(view.exists(a[1], False))),
            real_predict(view, *a, **k),
        )[1],
    )
    table = run_custom(root, dataset_name)
    assert calls == {"build": 1, "predicted": [5, 5, 3]}
    (job,) = summary_of(root, dataset_name)["jobs"].values()
    assert job["steps"]["bank"] == "skipped (stored)" and job["steps"]["references"].startswith(
        "skipped"
    )
    assert job["steps"]["predict"] == "done (3 of 5 images)"
    assert predictions(dataset_name, job["pred_field"]) == expected
    assert "custom dataset" in table
    # a fourth run finds everything done and reprints the same numbers
    again = run_custom(root, dataset_name)
    (job2,) = summary_of(root, dataset_name)["jobs"].values()
    assert all(step.startswith("skipped") for step in job2["steps"].values())
    assert job2["metrics"] == job["metrics"] and again == table
    assert calls["build"] == 1 and len(calls["predicted"]) == 3


def test_box_only_references_get_masks_from_the_proposer(custom_files, dataset_name):
    root, _, _ = custom_files
    table = run_custom(root, dataset_name, "refs_boxes.json", "--shots", "1", "--seeds", "5")
    (job,) = summary_of(root, dataset_name)["jobs"].values()
    assert (
        job["shots"] == 1
        and job["seed"] == 5
        and job["reference_counts"] == {c: 1 for c in CLASSES}
    )
    bank = refseg.load_bank(fo.load_dataset(dataset_name), job["bank_name"])
    assert {r.mask_source for r in bank.references} == {"box"}
    assert table.splitlines()[2].split()[:2] == ["1", "5"]


COCO_NAMES = {
    "red_square": "bus",
    "green_disc": "cat",
    "blue_triangle": "dog",
    NEGATIVE_CLASS: "giraffe",
}


def test_coco_protocol_on_the_coco_layout_with_limit(tmp_path, dataset_name):
    """20 train images (one per novel class, plus a non-novel 'giraffe' image), 4 val images."""
    root = tmp_path / "coco"
    shapes = [CLASSES[i % 3] for i in range(20)]
    names = dict(COCO_NAMES)
    os.makedirs(root / "annotations")
    train = write_coco(
        root / "annotations" / "instances_train2017.json",
        root / "train2017",
        [[s] for s in shapes] + [[NEGATIVE_CLASS]],
        names={},
        prefix="train",
    )
    # rename categories: the i-th image's shape becomes the i-th novel class
    train["categories"] = [
        {"id": i + 1, "name": n} for i, n in enumerate([*COCO_NOVEL_CLASSES, "giraffe"])
    ]
    for i, ann in enumerate(train["annotations"]):
        ann["category_id"] = i + 1
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(train))
    write_coco(
        root / "annotations" / "instances_val2017.json",
        root / "val2017",
        TARGET_IMAGES[:4],
        names=names,
        prefix="val",
        crowd=(0,),
    )
    args = cli.parse_args(
        [
            "coco",
            "--coco-root",
            str(root),
            "--shots",
            "1",
            "--limit",
            "3",
            "--dataset-name",
            dataset_name,
            "--quiet",
        ]
    )
    table = cli.run(args, STAND_IN_MODELS, components=stand_ins())
    print(table)
    dataset = fo.load_dataset(dataset_name)
    assert len(dataset.match_tags(REFERENCES)) == 20 and len(dataset.match_tags(TARGETS)) == 4
    assert "giraffe" not in dataset.match_tags(REFERENCES).distinct(f"{GT_FIELD}.detections.label")
    (job,) = summary_of(root, dataset_name)["jobs"].values()
    assert job["num_targets"] == 3 and job["limit"] == 3 and len(job["reference_counts"]) == 20
    assert job["classes"] == list(COCO_NOVEL_CLASSES)
    row = table.splitlines()[2].split()
    assert (
        row[:3] == ["1", "33", "3"]
        and "24.5" in row
        and "22.9" in row
        and "mean of 10 seeds" in table
    )
    assert "LIMITED" in table


@pytest.mark.slow
def test_command_with_random_weight_models(custom_files, dataset_name, capsys):
    root, _, _ = custom_files
    argv = ["custom", "--references", str(root / "refs.json"), "--targets", str(root / "targets.json"),
            "--images", str(root / "images"), "--dataset-name", dataset_name, "--quiet", "--random-weights",
            "--sam2", "sam2.1_hiera_tiny", "--dinov2", "dinov2_vits14", "--points-per-side", "4",
            "--shots", "1", "--limit", "1", "--device", "cpu", "--num-workers", "0"]  # fmt: skip
    assert refseg_cli.main(["reproduce", *argv]) == 0
    first = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in first and "LIMITED" in first and "fiftyone app launch" in first
    assert refseg_cli.main(["reproduce", *argv]) == 0  # everything stored: a re-run only reprints
    (job,) = summary_of(root, dataset_name)["jobs"].values()
    assert all(step.startswith("skipped") for step in job["steps"].values())
    assert capsys.readouterr().out == first
