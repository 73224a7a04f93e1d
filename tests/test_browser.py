"""End to end in a real browser: the FiftyOne App with the plugin, driven by Chromium.

Starts the App server (``python -m fiftyone.server.main``) on a free localhost port with
``FIFTYONE_PLUGINS_DIR`` pointing at a directory that holds a symlink to this repository and this
test run's own database (``conftest.py``), on a small synthetic dataset. Playwright drives
Debian's Chromium through the operator browser: sample references, build memory bank, predict
and evaluate, each through its form (models with random weights, on the CPU). Then the database
must hold the predictions field and the evaluation.

Screenshots of every step go to ``test-results/browser/``; with ``REFSEG_UPDATE_SCREENSHOTS=1``
the ones the README shows are also written, compressed, to ``docs/images/``.

Runs by default and in CI. Missing Chromium is installed with apt-get (as root), missing
Playwright with pip; where that is impossible the test is skipped with the reason, except in CI
(``CI=true``), where it fails instead. Skip it locally with ``-m "not browser"`` or
``REFSEG_SKIP_BROWSER=1``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-results" / "browser"
DOC_IMAGES = REPO / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DOC_SHOTS = {
    "01_operator_browser",
    "04_build_form",
    "06_build_result",
    "07_predict_form",
    "09_predictions",
    "11_evaluate_result",
    "12_panel",
    "13_panel_threshold",
    "15_panel_negative_added",
}
"""The screenshots README.md shows (the panel's are taken by ``test_browser_panel.py``)."""

DOC_COLOURS = 128
"""Palette of the README's screenshots: the App's flat UI keeps well, the files stay small."""

SECOND = 1000  # Playwright timeouts are in milliseconds
DIALOG = ".MuiDialog-paper"
"""The operator browser's and the operator forms' box (the README's screenshots of them)."""
MODEL_RUN_TIMEOUT = 240 * SECOND


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


def _ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        _unavailable(
            f"{CHROMIUM} is missing and cannot be installed here (needs apt-get as "
            "root); install Debian's chromium package"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode:
            _unavailable(f"'{' '.join(command)}' failed: {done.stderr[-500:]}")


def _ensure_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "playwright"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode:
            _unavailable(
                f"playwright is missing and pip could not install it: {done.stderr[-500:]}"
            )
        from playwright.sync_api import sync_playwright
    return sync_playwright


@pytest.fixture(scope="module")
def sync_playwright():
    if os.environ.get("REFSEG_SKIP_BROWSER") and not IN_CI:
        pytest.skip("REFSEG_SKIP_BROWSER is set")
    _ensure_chromium()
    return _ensure_playwright()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A persistent (the App server is another process) 4-image synthetic dataset."""
    from refseg.synthetic import make_shapes_dataset

    name = f"browser-{tmp_path_factory.getbasetemp().name}"
    ds = make_shapes_dataset(
        name,
        str(tmp_path_factory.mktemp("images")),
        num_positive=3,
        num_negative=1,
        seed=5,
        persistent=True,
    )
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def app_url(dataset, tmp_path_factory):
    """The App server with the plugin, on a free port, killed afterwards."""
    plugins = tmp_path_factory.mktemp("plugins")
    (plugins / "refseg").symlink_to(REPO, target_is_directory=True)
    port = _free_port()
    env = dict(
        os.environ,
        FIFTYONE_PLUGINS_DIR=str(plugins),
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS="true",  # offers "Schedule" (delegated) in forms
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fiftyone.server.main",
            "--port",
            str(port),
            "--address",
            "127.0.0.1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_http(url, server, timeout_s=180)
        yield f"{url}/datasets/{dataset.name}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def page(sync_playwright, app_url):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(60 * SECOND)
        page.goto(app_url, timeout=180 * SECOND)
        page.locator("[data-cy=selector-dataset]").wait_for()
        yield page
        browser.close()


def test_app_workflow_through_operator_forms(page, dataset):
    started = time.monotonic()
    _dismiss_banners(page)

    _open_operator_browser(page, "refseg")
    listing = page.locator("[data-cy=operators-browser]")
    for label in _listed_operator_labels():
        listing.get_by_text(label, exact=True).wait_for()
    _shot(page, "01_operator_browser", DIALOG)
    page.keyboard.press("Escape")

    _open_operator(page, "refseg: sample references")
    _input_after(page, "Shots (K)").fill("1")
    _input_after(page, "Seed").fill("0")
    page.get_by_text("Instances per class").wait_for()
    _shot(page, "02_sample_references_form")
    _execute(page)
    page.get_by_text("References tagged").wait_for()
    _shot(page, "03_sample_references_result")
    _close(page)

    _open_operator(page, "refseg: build memory bank")
    page.get_by_text(re.compile(r"^\d+ references: ")).wait_for()
    _input_after(page, "Bank name").fill("browser_bank")
    _choose(page, "SAM2 model", "sam2.1_hiera_tiny")
    _choose(page, "DINOv2 model", "dinov2_vits14")
    page.get_by_text("Random weights (testing only)").click()
    _choose(page, "Device", "cpu")
    _shot(page, "04_build_form", DIALOG)
    _execute(page)
    _shot(page, "05_build_progress")
    page.get_by_text("References:").wait_for(timeout=MODEL_RUN_TIMEOUT)
    _shot(page, "06_build_result", DIALOG)
    _close(page)

    _open_operator(page, "refseg: predict")
    page.get_by_text("Points per side").wait_for()
    page.get_by_text("Entire dataset").click()  # the view shows only the references now
    _input_after(page, "Points per side").fill("4")
    _input_after(page, "Max detections").fill("10")
    _choose(page, "Device", "cpu")
    _wait_settled(page)
    _shot(page, "07_predict_form", DIALOG)
    _execute(page)
    page.get_by_text("Detections written").wait_for(timeout=MODEL_RUN_TIMEOUT)
    _shot(page, "08_predict_result")
    _close(page)
    page.wait_for_timeout(3 * SECOND)  # the grid reloads with the new field
    page.mouse.move(5, 790)  # no tile hovered
    _shot(page, "09_predictions", page.locator("[data-cy=fo-grid]"))

    _open_operator(page, "refseg: evaluate")
    page.get_by_text("Evaluation key").wait_for()
    _choose(page, "Predictions field", "browser_bank_predictions")
    _wait_settled(page)
    _shot(page, "10_evaluate_form")
    _execute(page)
    page.get_by_text("Mask AP (IoU .50:.95)").wait_for(timeout=MODEL_RUN_TIMEOUT)
    _shot(page, "11_evaluate_result", DIALOG)
    _close(page)

    dataset.reload()
    assert "browser_bank_predictions" in dataset.get_field_schema()
    assert len(dataset.exists("browser_bank_predictions")) == len(dataset)
    assert "browser_bank_predictions_eval" in dataset.list_evaluations()
    import refseg

    assert refseg.list_banks(dataset) == ["browser_bank"]
    print(f"browser workflow took {time.monotonic() - started:.0f} s")


# -- driving the App ------------------------------------------------------------------------


def _dismiss_banners(page) -> None:
    dismiss = page.get_by_text("Dismiss", exact=True)
    try:
        dismiss.wait_for(timeout=5 * SECOND)
        dismiss.click()
    except Exception:  # no banner this time
        pass


def _open_operator_browser(page, query: str) -> None:
    page.keyboard.press("Escape")
    page.locator("body").click(position={"x": 5, "y": 790})
    page.keyboard.press("Backquote")
    page.keyboard.type(query)


def _open_operator(page, label: str) -> None:
    _open_operator_browser(page, label)
    page.get_by_text(label, exact=True).first.click()
    page.get_by_role("button", name="Cancel").wait_for()
    _wait_settled(page)


def _input_after(page, label: str):
    """The first input after the field label ``label``."""
    return page.locator(f"xpath=//*[normalize-space(text())='{label}']/following::input[1]")


def _choose(page, label: str, option: str) -> None:
    """Picks ``option`` in the dropdown labelled ``label``."""
    page.locator(
        f"xpath=//*[normalize-space(text())='{label}']/following::*[@role='combobox'][1]"
    ).click()
    page.get_by_role("option", name=option, exact=True).click()
    _wait_settled(page)


def _wait_settled(page) -> None:
    """Lets the dynamic form re-resolve after an edit (the App keeps connections open, so
    there is no network-idle moment to wait for)."""
    page.wait_for_timeout(2.5 * SECOND)


def _execute(page) -> None:
    """Runs the operation now: the main button, or "Execute" in its menu when the button
    offers delegated execution ("Schedule", the default of the heavy operators)."""
    _wait_settled(page)
    main = page.locator("button.MuiButtonGroup-grouped").first
    if main.inner_text().strip() != "Execute":
        page.locator("button.MuiButtonGroup-grouped").nth(1).click()
        page.locator("#split-button-menu [role=menuitem]").filter(has_text="Execute").click()
        page.wait_for_timeout(SECOND)
    if main.is_visible() and main.inner_text().strip() == "Execute":
        main.click()
    page.wait_for_timeout(2 * SECOND)


def _close(page) -> None:
    page.get_by_role("button", name="Done").or_(page.get_by_role("button", name="Close")).click()
    page.wait_for_timeout(SECOND)


def _shot(page, name: str, region=None) -> None:
    """A screenshot of the page in ``ARTIFACTS``; with ``REFSEG_UPDATE_SCREENSHOTS`` set, one
    of ``DOC_SHOTS`` is also written, compressed, to ``docs/images/``, cropped to ``region``
    (a CSS selector or a locator; default the whole page)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("REFSEG_UPDATE_SCREENSHOTS") and name in DOC_SHOTS:
        _compress(path, DOC_IMAGES / f"{name}.png", _box(page, region))


def _box(page, region) -> dict | None:
    """The box of ``region``: a locator's, or the largest of the elements a selector matches
    (a dialog that is closing can linger beside the open one)."""
    if region is None:
        return None
    if not isinstance(region, str):
        return region.bounding_box()
    boxes = [box for box in (e.bounding_box() for e in page.locator(region).all()) if box]
    return max(boxes, key=lambda box: box["width"] * box["height"], default=None)


def _compress(source: Path, target: Path, box: dict | None) -> None:
    """A ``DOC_COLOURS``-colour PNG of ``source``, cropped to ``box`` (page pixels)."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image = image.convert("RGB")
        if box is not None:
            left, top = max(int(box["x"]), 0), max(int(box["y"]), 0)
            right = min(int(box["x"] + box["width"]), image.width)
            bottom = min(int(box["y"] + box["height"]), image.height)
            image = image.crop((left, top, right, bottom))
        image.quantize(colors=DOC_COLOURS).save(target, optimize=True)


def _listed_operator_labels() -> list[str]:
    """The labels of the plugin's operators that the operator browser lists."""
    sys.path.insert(0, str(REPO))
    try:
        from operators import OPERATORS
    finally:
        sys.path.remove(str(REPO))
    configs = [operator().config for operator in OPERATORS]
    return [config.label for config in configs if not config.unlisted]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_http(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"the App server exited ({server.returncode}); see {ARTIFACTS}/server.log"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the App server did not answer at {url} within {timeout_s} s")
