"""The package's surface: lazy public names, and an engine that imports without FiftyOne."""

from __future__ import annotations

import importlib
import importlib.util
import json
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
