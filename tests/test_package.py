"""The package's surface: lazy public names, and an engine that imports without FiftyOne."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import refseg

ROOT = Path(__file__).resolve().parents[1]

# Run as `python -c`: makes `import fiftyone` fail, then runs the given script as __main__.
WITHOUT_FIFTYONE = """
import runpy, sys
class NoFiftyOne:
    def find_spec(self, name, path=None, target=None):
        if name == "fiftyone" or name.startswith("fiftyone."):
            raise ImportError(f"{name} is blocked: this run must work without FiftyOne")
sys.meta_path.insert(0, NoFiftyOne())
script, *sys.argv[1:] = sys.argv[1:]
sys.argv[0] = script
sys.path.insert(0, str(__import__("pathlib").Path(script).parent))
runpy.run_path(script, run_name="__main__")
"""


def test_public_names_are_objects_not_submodules() -> None:
    for name in refseg.__all__:
        assert importlib.util.find_spec(f"refseg.{name}") is None, name
    # Importing every submodule leaves each public name bound to its object.
    for module in ("inference", "evaluation", "segmenter", "memory", "sampling", "fiftyone_io"):
        importlib.import_module(f"refseg.{module}")
    assert refseg.predict.__module__ == "refseg.inference"
    assert refseg.evaluate.__module__ == "refseg.evaluation"
    assert callable(refseg.predict) and callable(refseg.evaluate)
    assert set(refseg.__all__) <= set(dir(refseg))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        refseg.nothing_here  # noqa: B018


def test_engine_modules_import_without_fiftyone(tmp_path: Path) -> None:
    script = tmp_path / "engine_imports.py"
    script.write_text(
        "import refseg, refseg.segmenter, refseg.models, refseg.encoding, refseg.compare\n"
        "import refseg.synthetic, sys\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'fiftyone'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_FIFTYONE, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_engine_benchmark_runs_without_fiftyone(tmp_path: Path) -> None:
    """benchmark_engine.py, for GPU machines with no database: both paths, same detections."""
    out = tmp_path / "engine.json"
    args = ["--images", "2", "--points-per-side", "4", "--batch-size", "2"]
    args += ["--width", "320", "--height", "240", "--device", "cpu", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_FIFTYONE, str(ROOT / "benchmarks/benchmark_engine.py")]
        + args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    run = results["runs"]["320x240"]
    for path in ("reference", "fast"):
        assert run[path]["images"] == 2
        stages = set(run[path]["stage_ms_per_image"])
        assert {"decode_resize", "sam2_encoder", "dinov2_encoder", "prompt_decoding"} <= stages
        assert 0.0 <= run[path]["share_outside_models"] < 1.0
    agreement = run["agreement"]
    assert agreement["matched"] == agreement["reference_detections"] == agreement["fast_detections"]
    assert agreement["min_mask_iou"] >= 0.98
    assert results["machine"]["device"] == "cpu"
    assert "speed-up" in result.stdout


@pytest.mark.slow
def test_gpu_check_rehearses_every_step_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh --quick on the CPU: wheels folder (empty here: sam2 is
    installed), decoder checks, the engine benchmark, one JSON; FiftyOne cannot be imported."""
    blocker = tmp_path / "blocked" / "fiftyone"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ImportError('the GPU check must not need FiftyOne')"
    )
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh"), str(wheels), "--device", "cpu"]
        + ["--quick", "--budget-s", "0", "--out", str(out)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(blocker.parent), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["passed"] is True
    checks = results["decoder_checks"]
    assert set(checks) == {
        "fp32_shared_vs_library",
        "bf16_shared_vs_fp32_library",
        "lighter_fp32",
        "lighter_bf16",
    }
    # On this CPU the shared and lighter decoders are bit-identical to the library's in fp32.
    for name in ("fp32_shared_vs_library", "lighter_fp32"):
        assert checks[name]["worst"] == {
            "logits_max_abs": 0.0,
            "iou_max_abs": 0.0,
            "mask_iou_min": 1.0,
        }
    assert 0.0 < checks["bf16_shared_vs_fp32_library"]["worst"]["logits_max_abs"] < 0.1
    assert all(part["same_prompts"] for part in checks["lighter_bf16"]["parts"])
    run = results["engine"]["runs"]["320x240"]
    for path in ("reference", "fast"):
        assert run[path]["images"] == 2 and run[path]["images_per_s"] > 0
        assert {"sam2_encoder", "dinov2_encoder", "prompt_decoding"} <= set(
            run[path]["stage_ms_per_image"]
        )
    assert results["engine"]["settings"]["fast"]["precision"] == "bf16"
    assert results["machine"]["torch"] == __import__("torch").__version__


def test_gpu_check_names_a_missing_wheels_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh"), str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "WHEELS_DIR must be a folder of wheels" in result.stderr
