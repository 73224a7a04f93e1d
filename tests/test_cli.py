"""``python -m refseg``: the missing-weights message, and the random-weights smoke run."""

from __future__ import annotations

import fiftyone as fo
import pytest

from refseg.cli import main


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
