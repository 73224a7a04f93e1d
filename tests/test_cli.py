"""The ``refseg`` command line: its help, its error messages, and the random-weights smoke run."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import fiftyone as fo
import pytest
from stand_ins import PaletteEncoder, ShapeProposer

import refseg.bank_builder
import refseg.evaluation
import refseg.inference
from refseg.cli import main
from refseg.console import MONGODB_NOTICE, command_output, mongodb_notice_dropped
from refseg.models import RandomWeightsWarning, dinov2_spec, sam2_spec
from refseg.synthetic import make_shapes_dataset

ROOT = Path(__file__).resolve().parents[1]

# Prints every command's help, then which heavy packages that imported.
HELP_OF_EVERY_COMMAND = """
import contextlib, io, sys
from refseg.cli import main
for words in ([], ["demo"], ["run"], ["reproduce"], ["reproduce", "coco"], ["reproduce", "voc"],
              ["reproduce", "custom"]):
    with contextlib.redirect_stdout(io.StringIO()) as text:
        try:
            main([*words, "--help"], prog=sys.argv[1])
        except SystemExit as done:
            assert done.code == 0, done.code
    print(text.getvalue())
    print("=" * 20)
print(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "fiftyone", "numpy", "sam2"}))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Each command's --help text, keyed by its words ("" for the top level)."""
    done = subprocess.run(
        [sys.executable, "-c", HELP_OF_EVERY_COMMAND, "refseg"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    *texts, modules = done.stdout.split("=" * 20 + "\n")
    names = ["", "demo", "run", "reproduce", "reproduce coco", "reproduce voc", "reproduce custom"]
    return {"imported": modules.strip(), **dict(zip(names, texts, strict=True))}


def test_help_imports_neither_fiftyone_nor_torch(helps) -> None:
    assert helps["imported"] == "[]"


def test_help_lists_every_command_in_plain_text(helps) -> None:
    assert "{" not in helps[""].split("positional arguments:")[1].splitlines()[1]  # COMMAND
    for command in ("demo", "run", "reproduce"):
        assert f"\n    {command}" in helps[""]
    for protocol in ("coco", "voc", "custom"):
        assert f"\n    {protocol}" in helps["reproduce"]
    for text in helps.values():
        assert "``" not in text and ":func:" not in text and ":mod:" not in text


def test_help_shows_defaults_and_usage_lines_name_the_command(helps) -> None:
    words = {command: " ".join(text.split()) for command, text in helps.items()}  # unwrapped
    assert "(default: ground_truth)" in words["run"] and "(default: 33)" in words["demo"]
    assert "(default: data/coco)" in words["reproduce coco"]
    assert "(default: False)" not in words["run"] and "(default: None)" not in words["run"]
    assert helps["reproduce custom"].startswith("usage: refseg reproduce custom ")
    assert helps["reproduce"].startswith("usage: refseg reproduce ")
    for words in ("demo", "run", "reproduce coco"):
        assert "-q, --quiet" in helps[words] and "-v, --verbose" in helps[words]


def test_python_m_refseg_names_itself_so(capsys) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "refseg", "reproduce", "--help"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m refseg reproduce ")
    assert "python -m refseg reproduce coco --coco-root" in done.stdout
    # The old module entry point is gone: one command line, one spelling.
    old = subprocess.run(
        [sys.executable, "-m", "refseg.reproduce"], check=False, capture_output=True, cwd=ROOT
    )
    assert old.returncode != 0


@pytest.fixture
def empty_model_zoo(tmp_path, monkeypatch):
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(tmp_path / "zoo"))
    monkeypatch.setattr("refseg.models.weights._download", lambda url, path: "no network (test)")
    return tmp_path / "zoo"


def test_missing_weights_name_every_file_its_size_and_how_to_fetch_it(
    empty_model_zoo, capsys, dataset_name
):
    assert main(["demo", "--dataset", dataset_name]) == 2
    message = capsys.readouterr().err
    for spec, size, flag in (
        (sam2_spec("sam2.1_hiera_large"), "(898 MB,", "--sam2-checkpoint"),
        (dinov2_spec("dinov2_vitl14"), "(1.2 GB,", "--dinov2-checkpoint"),
    ):
        assert f"{spec.filename} {size}" in message
        assert f"curl -L -o {empty_model_zoo / spec.filename} {spec.url}" in message
        assert f"{flag} /path/to/{spec.filename}" in message
    assert "no network (test)" in message and "--smoke" in message
    assert "checkpoint=" not in message and "pretrained=" not in message
    assert message.startswith("refseg demo: error: model weights are missing")
    assert not fo.dataset_exists(dataset_name)  # nothing was done


def test_reproduce_names_its_flags_for_missing_weights(empty_model_zoo, capsys):
    argv = ["reproduce", "custom", "--references", "r.json", "--targets", "t.json", "--images", "i"]
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert message.startswith("refseg reproduce custom: error: model weights are missing")
    assert "sam2.1_hiera_large.pt (898 MB," in message
    assert "dinov2_vitl14_pretrain.pth (1.2 GB," in message
    assert "--sam2-checkpoint /path/to/sam2.1_hiera_large.pt" in message
    assert "add --random-weights" in message and "checkpoint=" not in message


def test_a_missing_explicit_checkpoint_names_its_flag(empty_model_zoo, tmp_path, capsys):
    dataset = fo.Dataset()
    missing = tmp_path / "nope.pt"
    argv = ["run", "--dataset", dataset.name, "--sam2-checkpoint", str(missing)]
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert f"--sam2-checkpoint {missing}: no such file (sam2.1_hiera_large.pt, 898 MB)" in message
    assert f"curl -L -o {missing} {sam2_spec('sam2.1_hiera_large').url}" in message
    assert "--dinov2-checkpoint /path/to/dinov2_vitl14_pretrain.pth" in message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--random-weights", "--sam2-checkpoint", "x.pt"], "--random-weights (or --smoke) and"),
        (["--smoke", "--dinov2-checkpoint", "x.pth"], "--sam2-checkpoint / --dinov2-checkpoint"),
        (["--random-weights", "--sam2", "sam3"], "--sam2: Unknown proposer 'sam3'"),
        (["--random-weights", "--dinov2", "vit"], "--dinov2: Unknown encoder 'vit'"),
    ],
)
def test_contradictions_and_unknown_models_name_the_flags(extra, expected, capsys, dataset_name):
    assert main(["demo", "--dataset", dataset_name, *extra]) == 2
    assert expected in capsys.readouterr().err
    assert not fo.dataset_exists(dataset_name)


def test_run_refuses_an_unknown_dataset(capsys):
    assert main(["run", "--dataset", "no-such-dataset-xyz", "--random-weights"]) == 2
    assert "No FiftyOne dataset named 'no-such-dataset-xyz' (--dataset)" in capsys.readouterr().err


def test_existing_outputs_are_refused_before_any_work(capsys):
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath="a.png", refseg=fo.Detections()))
    assert main(["run", "--dataset", dataset.name, "--random-weights"]) == 2
    message = capsys.readouterr().err
    assert "already has the field 'refseg' (--pred-field); add --overwrite" in message
    assert not dataset.list_runs() and "ground_truth" not in dataset.get_field_schema()


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as done:
        main(["demo", "--smoke", "--quiet", "--verbose"])
    assert done.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_only_fiftyones_mongodb_6_notice_is_dropped(caplog) -> None:
    database = logging.getLogger("fiftyone.core.odm.database")
    other = "Your MongoDB feature compatibility is greater than your server version."
    with caplog.at_level(logging.WARNING, logger=database.name):
        with mongodb_notice_dropped():
            database.warning(f"{MONGODB_NOTICE}. Please refer to https://deprecation.voxel51.com")
            database.warning(other)
        database.warning(f"{MONGODB_NOTICE} (after the block)")
    assert [r.getMessage() for r in caplog.records] == [
        other,
        f"{MONGODB_NOTICE} (after the block)",
    ]


def test_quiet_settings_last_only_for_the_command() -> None:
    fiftyone_logger = logging.getLogger("fiftyone")
    before = (
        fo.config.show_progress_bars,
        fiftyone_logger.level,
        logging.getLogger("refseg").level,
    )
    with command_output(quiet=True):
        assert fo.config.show_progress_bars is False
        assert fiftyone_logger.level == logging.getLogger("refseg").level == logging.WARNING
    after = (fo.config.show_progress_bars, fiftyone_logger.level, logging.getLogger("refseg").level)
    assert after == before


def test_random_weight_warnings_point_at_the_callers_line() -> None:
    """Not at refseg's internals: the user's call is the line a warning shows and dedupes on."""
    from types import SimpleNamespace

    from refseg.models import RANDOM, ModelEntry, Models, register_model
    from refseg.models.weights import warn_random_weights

    def build(checkpoint, label, device):
        return SimpleNamespace(identity={"name": "test_warning_encoder", "weights": label})

    register_model(ModelEntry("encoder", "test_warning_encoder", build=build), overwrite=True)
    models = Models(encoder="test_warning_encoder", encoder_weights=RANDOM)
    with pytest.warns(RandomWeightsWarning) as direct:
        warn_random_weights("dinov2_vits14")
    with pytest.warns(RandomWeightsWarning) as nested:
        models.build_component("encoder", device="cpu")  # as build_memory_bank and predict do
    for record in (direct, nested):
        assert [Path(w.filename) for w in record] == [Path(__file__)]
        assert issubclass(record[0].category, UserWarning)


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
def test_smoke_run_goes_end_to_end_without_warnings(capsys, dataset_name, tmp_path, monkeypatch):
    monkeypatch.setattr(fo.config, "default_dataset_dir", str(tmp_path))  # the demo's images
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RandomWeightsWarning)
        assert main(["demo", "--smoke", "--dataset", dataset_name]) == 0
    assert not [w for w in caught if issubclass(w.category, RandomWeightsWarning)]
    assert len(list((tmp_path / dataset_name).glob("*.png"))) == 6
    out, err = capsys.readouterr()
    assert "RANDOM WEIGHTS" in out and "Average Precision" in out
    assert err.count("Random weights: SAM2 and DINOv2 get seeded random weights") == 1
    assert f"Creating the demo dataset {dataset_name!r}" in err
    assert MONGODB_NOTICE not in err and "Warning" not in err
    dataset = fo.load_dataset(dataset_name)
    assert dataset.count("refseg") == len(dataset) - len(
        dataset.match_labels(tags="refseg:reference")
    )
    assert "refseg_eval" in dataset.list_evaluations() and "refseg_bank" in dataset.list_runs()
    # A second run reuses the tagged references and refuses to replace anything without
    # --overwrite; --quiet prints nothing but the error.
    assert main(["demo", "--smoke", "--quiet", "--dataset", dataset_name]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("Random weights:")
    assert "already has the memory bank 'refseg_bank' (--bank-name)" in err
    assert "add --overwrite" in err
