"""``python -m refseg``: the missing-weights message, and the random-weights smoke run."""

from __future__ import annotations

import fiftyone as fo
import pytest
from stand_ins import PaletteEncoder, ShapeProposer

import refseg.bank_builder
import refseg.evaluation
import refseg.inference
from refseg.cli import main
from refseg.synthetic import make_shapes_dataset


@pytest.fixture
def empty_model_zoo(tmp_path, monkeypatch):
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(tmp_path / "zoo"))
    monkeypatch.setattr("refseg.models.weights._download", lambda url, path: "no network (test)")
    return tmp_path / "zoo"


def test_missing_weights_name_every_file_and_where_to_put_it(empty_model_zoo, capsys, dataset_name):
    assert main(["demo", "--dataset", dataset_name]) == 2
    message = capsys.readouterr().err
    for filename in ("sam2.1_hiera_large.pt", "dinov2_vitl14_pretrain.pth"):
        assert str(empty_model_zoo / filename) in message
    assert "--smoke" in message
    assert not fo.dataset_exists(dataset_name)  # nothing was done


def test_run_refuses_an_unknown_dataset(capsys):
    assert main(["run", "--dataset", "no-such-dataset-xyz", "--random-weights"]) == 2
    assert "No FiftyOne dataset named 'no-such-dataset-xyz'" in capsys.readouterr().err


@pytest.mark.parametrize("paper", [False, True])
def test_run_evaluates_paper_mode_with_the_research_code_boxes(
    paper, dataset_name, tmp_path, monkeypatch, capsys
):
    """``run --paper`` evaluates with the one-pixel-short COCO boxes, ``run`` with tight ones
    (the stand-in models replace SAM2 and DINOv2 here)."""
    make_shapes_dataset(dataset_name, str(tmp_path), num_positive=4, num_negative=1)
    for module, name in ((refseg.bank_builder, "build_memory_bank"), (refseg.inference, "predict")):
        real = getattr(module, name)
        monkeypatch.setattr(
            module,
            name,
            lambda *a, _real=real, **k: _real(
                *a, **{**k, "proposer": ShapeProposer(), "encoder": PaletteEncoder()}
            ),
        )
    evaluated = []
    real_evaluate = refseg.evaluation.evaluate

    def evaluate(*args, **kwargs):
        evaluated.append(kwargs.get("legacy_coco_box", False))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(refseg.evaluation, "evaluate", evaluate)
    # 16 x 16 = 256 prompts: one whole batch, which paper mode does not drop
    argv = ["run", "--dataset", dataset_name, "--random-weights", "--points-per-side", "16"]
    assert main(argv + (["--paper"] if paper else [])) == 0
    assert evaluated == [paper]
    assert "Average Precision" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*random weights")
def test_smoke_run_goes_end_to_end(capsys, dataset_name, tmp_path, monkeypatch):
    monkeypatch.setattr(fo.config, "default_dataset_dir", str(tmp_path))  # the demo's images
    assert main(["demo", "--smoke", "--dataset", dataset_name]) == 0
    assert len(list((tmp_path / dataset_name).glob("*.png"))) == 6
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "Average Precision" in out
    dataset = fo.load_dataset(dataset_name)
    assert dataset.count("refseg") == len(dataset) - len(
        dataset.match_labels(tags="refseg:reference")
    )
    assert "refseg_eval" in dataset.list_evaluations() and "refseg_bank" in dataset.list_runs()
    # a second run reuses the tagged references and refuses to overwrite without --overwrite
    assert main(["demo", "--smoke", "--dataset", dataset_name]) == 2
    assert "already" in capsys.readouterr().err
