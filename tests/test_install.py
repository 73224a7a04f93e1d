"""install.sh's choice of interpreter, without a multi-gigabyte install.

A stock Debian 12 / Ubuntu 23.04+ Python is "externally managed" (PEP 668): pip refuses to install
into it. The tests build such an interpreter from the one running them (a copy of its executable
next to a standard library directory of links that also holds the EXTERNALLY-MANAGED marker), so
they run on any machine. They call install.sh's --print-python mode, and its functions sourced
into bash (sourcing defines them without running anything).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "install.sh"


def make_python(directory: Path, *, externally_managed: bool, ensurepip: bool = True) -> Path:
    """A Python installation under ``directory`` that is this test's interpreter underneath.

    Its prefix is ``directory``: the executable is a copy of the base interpreter's, and
    ``lib/pythonX.Y`` links to every entry of the base standard library (site-packages included),
    leaving out ``ensurepip`` when asked, and adds the PEP 668 marker when asked.
    """
    executable = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    bin_dir, lib_dir = directory / "bin", directory / "lib"
    fake_stdlib = lib_dir / stdlib.name
    bin_dir.mkdir(parents=True)
    fake_stdlib.mkdir(parents=True)
    python = bin_dir / "python3"
    shutil.copy2(executable, python)
    libdir = sysconfig.get_config_var("LIBDIR")
    for shared in Path(libdir).glob("libpython*") if libdir else ():
        (lib_dir / shared.name).symlink_to(shared)
    for entry in stdlib.iterdir():
        if entry.name == "EXTERNALLY-MANAGED" or (entry.name == "ensurepip" and not ensurepip):
            continue
        (fake_stdlib / entry.name).symlink_to(entry)
    if externally_managed:
        (fake_stdlib / "EXTERNALLY-MANAGED").write_text(
            "[externally-managed]\nError=This Python is managed by the system (a test's stand-in).\n"
        )
    prefix = run([str(python), "-c", "import sys; print(sys.prefix)"]).stdout.strip()
    if prefix != str(directory):
        pytest.skip(f"cannot relocate this interpreter for the test (its prefix stays {prefix})")
    return python


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, **kwargs.pop("env", {})}
    return subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, timeout=300, **kwargs
    )


def install_sh(*options: str, python: str | Path) -> subprocess.CompletedProcess:
    return run(["bash", str(INSTALL), *options], env={"PYTHON": str(python)})


def sourced(script: str, python: str | Path, venv: Path) -> subprocess.CompletedProcess:
    """Runs ``script`` in bash after sourcing install.sh, with PYTHON and VENV_DIR set."""
    return run(
        ["bash", "-c", f'source "{INSTALL}"; PYTHON="{python}"; VENV_DIR="{venv}"; {script}']
    )


@pytest.fixture(scope="module")
def managed_python(tmp_path_factory) -> Path:
    return make_python(tmp_path_factory.mktemp("managed"), externally_managed=True)


def test_the_stand_in_is_externally_managed_for_pip_itself(managed_python: Path) -> None:
    # pip's --python runs this environment's pip for another interpreter, as pip would run there.
    command = [sys.executable, "-m", "pip", "--python", str(managed_python), "install"]
    refused = run([*command, "--no-index", "refseg-nothing"])
    assert refused.returncode != 0
    assert "externally-managed-environment" in refused.stdout + refused.stderr


def test_default_is_the_project_venv_even_for_a_managed_python(managed_python: Path) -> None:
    done = install_sh("--print-python", python=managed_python)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(ROOT / ".venv" / "bin" / "python")


def test_no_venv_refuses_a_managed_python_and_says_what_to_do(managed_python: Path) -> None:
    done = install_sh("--no-venv", "--print-python", python=managed_python)
    assert done.returncode == 1 and done.stdout == ""
    assert "externally managed (PEP 668)" in done.stderr
    assert "without --no-venv" in done.stderr and str(ROOT / ".venv") in done.stderr


def test_no_venv_uses_an_ordinary_python_as_it_is() -> None:
    """The interpreter running the tests (pyenv's, a venv's, conda's) is not managed."""
    own = run([sys.executable, "-c", "import sys; print(sys.executable)"]).stdout.strip()
    done = install_sh("--no-venv", "--print-python", python=sys.executable)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == own


def test_a_managed_python_makes_a_working_venv(managed_python: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    done = sourced("ensure_venv", managed_python, venv)
    assert done.returncode == 0, done.stderr
    assert "creating the virtual environment" in done.stdout
    python = venv / "bin" / "python"
    prefixes = run([str(python), "-c", "import sys; print(sys.prefix, sys.base_prefix)"])
    assert prefixes.stdout.split() == [str(venv), str(managed_python.parents[1])]
    assert sourced(f'externally_managed "{python}"', managed_python, venv).returncode == 1
    assert run([str(python), "-m", "pip", "--version"]).returncode == 0
    again = sourced("ensure_venv", managed_python, venv)
    assert again.returncode == 0 and "reusing the virtual environment" in again.stdout


def test_without_ensurepip_the_message_names_the_debian_package(tmp_path: Path) -> None:
    """Debian and Ubuntu ship venv's pip bootstrap separately, in python3-venv."""
    bare = make_python(tmp_path / "bare", externally_managed=True, ensurepip=False)
    venv = tmp_path / "venv"
    done = sourced("ensure_venv", bare, venv)
    assert done.returncode == 1
    assert "sudo apt install python3-venv" in done.stderr
    # The half-made environment is made again by the next run, once venv works.
    whole = make_python(tmp_path / "whole", externally_managed=True)
    again = sourced("ensure_venv", whole, venv)
    assert again.returncode == 0, again.stderr
    assert "incomplete (no pip); making it again" in again.stdout
    assert run([str(venv / "bin" / "python"), "-m", "pip", "--version"]).returncode == 0


def test_a_directory_that_is_not_a_venv_is_left_alone(managed_python: Path, tmp_path: Path) -> None:
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "notes.txt").write_text("mine")
    done = sourced("ensure_venv", managed_python, tmp_path / "venv")
    assert done.returncode == 1 and "is not a virtual environment" in done.stderr
    assert (tmp_path / "venv" / "notes.txt").read_text() == "mine"


def test_help_and_unknown_options() -> None:
    helped = run(["bash", str(INSTALL), "--help"])
    assert helped.returncode == 0
    for option in ("--with-tests", "--no-venv", "--print-python", "PEP 668"):
        assert option in helped.stdout
    unknown = run(["bash", str(INSTALL), "--bogus"])
    assert unknown.returncode == 1 and "unknown option --bogus" in unknown.stderr


def test_ci_runs_the_test_command_of_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Set up and run the tests.*?```bash\n(.*?)\n```", readme, re.DOTALL)
    assert block, "README.md has no test command block"
    steps = [step.strip() for step in block.group(1).split("&&")]
    ci_lines = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    assert steps == ["bash install.sh --with-tests", ".venv/bin/python -m pytest -q"]
    assert set(steps) <= ci_lines


def test_readme_quick_start_runs_what_install_sh_makes() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)\n```", readme, re.DOTALL)
    assert block and block.group(1).strip() == "bash install.sh && .venv/bin/refseg demo"
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'refseg = "refseg.cli:main"' in scripts
