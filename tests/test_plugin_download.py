"""The plugin installed as FiftyOne users install it: ``fiftyone plugins download <url>``.

A zip of this checkout's tracked files, laid out as GitHub serves a repository (one top-level
directory), is served from a loopback HTTP server. The real ``fiftyone`` command downloads it into
a temporary plugins directory. A separate Python process, which can import neither this
checkout nor a pip-installed refseg (site-packages without their ``.pth`` files, so no editable
install), then lists the plugin's operators and runs one on a tiny dataset: the plugin finds its
engine in its own directory.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import sysconfig
import threading
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "@refseg/refseg"
TOP_DIRECTORY = "refseg-main"  # what GitHub's "Download ZIP" of branch main holds

# Runs in the isolated process (python -S): site-packages without .pth files, then the plugin.
INSTALLED_PLUGIN_CHECK = """
import importlib.util, json, os, site, sys, tempfile
sys.path.extend(site.getsitepackages())  # no .pth files: no editable installs
importable_before = importlib.util.find_spec("refseg") is not None

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.plugins as fop
import fiftyone.plugins.context as fopc

errors = [str(e) for ctx in fopc.build_plugin_contexts(enabled=True) for e in ctx.errors]
operators = sorted(o.name for o in foo.list_operators() if o.plugin_name == PLUGIN)

from refseg.synthetic import make_shapes_dataset

dataset = make_shapes_dataset(
    "refseg-plugin-download", tempfile.mkdtemp(), num_positive=4, num_negative=0
)
result = foo.get_operator(PLUGIN + "/sample_references")(dataset, "ground_truth", shots=1, seed=0)
tagged = dataset.count_label_tags("ground_truth").get("refseg:reference", 0)
num_classes = len(dataset.distinct("ground_truth.detections.label"))
dataset.delete()
import fiftyone.core.odm.database as database
database.get_db_client().drop_database(os.environ["FIFTYONE_DATABASE_NAME"])

import refseg
print(json.dumps({
    "importable_before": importable_before,
    "plugin_dir": fop.find_plugin(PLUGIN),
    "refseg_file": refseg.__file__,
    "load_errors": errors,
    "operators": operators,
    "num_references": result.result["num_references"],
    "tagged": tagged,
    "num_classes": num_classes,
}))
"""


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout, so no list of tracked files: {listed.stderr.strip()}")
    return [name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        """No line per request on stderr."""


@pytest.fixture(scope="module")
def archive_url(tmp_path_factory):
    """URL of a zip of the checkout, served on 127.0.0.1 while the module's tests run."""
    served = tmp_path_factory.mktemp("served")
    archive = served / f"{TOP_DIRECTORY}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name in tracked_files():
            zipped.write(ROOT / name, f"{TOP_DIRECTORY}/{name}")
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{archive.name}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """Environment of the subprocesses: a fresh plugins directory, no checkout on the path."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(
        FIFTYONE_PLUGINS_DIR=str(tmp_path_factory.mktemp("plugins")),
        FIFTYONE_DATABASE_NAME=f"refseg-test-plugin-download-{uuid.uuid4().hex[:8]}",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


def fiftyone(*words: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Runs the ``fiftyone`` command installed beside this Python."""
    command = Path(sysconfig.get_path("scripts")) / "fiftyone"
    if not command.is_file():
        pytest.fail(f"no fiftyone command at {command}; is FiftyOne installed in this Python?")
    return subprocess.run(
        [str(command), *words],
        check=False,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def downloaded(archive_url, plugin_env, tmp_path_factory) -> Path:
    """Runs ``fiftyone plugins download <url>``; returns the plugin's directory."""
    elsewhere = tmp_path_factory.mktemp("cwd")  # not the checkout
    done = fiftyone("plugins", "download", archive_url, env=plugin_env, cwd=elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    plugin_dir = Path(plugin_env["FIFTYONE_PLUGINS_DIR"]) / "@refseg" / "refseg"
    assert (plugin_dir / "fiftyone.yml").is_file(), done.stdout + done.stderr
    return plugin_dir


def test_download_copies_the_plugin_with_its_engine(downloaded: Path, plugin_env) -> None:
    assert (downloaded / "__init__.py").is_file() and (downloaded / "refseg" / "cli.py").is_file()
    assert (downloaded / "requirements.txt").is_file()
    listed = fiftyone("plugins", "list", env=plugin_env, cwd=downloaded.parent)
    assert listed.returncode == 0 and PLUGIN in listed.stdout


def test_installed_plugin_lists_and_runs_operators_with_its_own_engine(
    downloaded: Path, plugin_env, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-S", "-c", f"PLUGIN = {PLUGIN!r}\n{INSTALLED_PLUGIN_CHECK}"],
        env=plugin_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["importable_before"] is False  # neither the checkout nor site-packages
    assert Path(found["plugin_dir"]) == downloaded
    assert Path(found["refseg_file"]).is_relative_to(downloaded)
    assert found["load_errors"] == []
    manifest = yaml.safe_load((ROOT / "fiftyone.yml").read_text())
    # FiftyOne lists panels among the operators
    assert found["operators"] == sorted(manifest["operators"] + manifest["panels"])
    assert found["num_references"] == found["tagged"] == found["num_classes"] > 0


def test_plugin_requirements_print_and_ensure(downloaded: Path, plugin_env) -> None:
    printed = fiftyone("plugins", "requirements", PLUGIN, "--print", env=plugin_env, cwd=downloaded)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.split()
    assert lines[0] == "fiftyone>=1.1"  # fiftyone.yml's fiftyone version
    wanted = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert lines[1:] == wanted
    ensured = fiftyone(
        "plugins", "requirements", PLUGIN, "--ensure", env=plugin_env, cwd=downloaded
    )
    assert ensured.returncode == 0, ensured.stdout + ensured.stderr
