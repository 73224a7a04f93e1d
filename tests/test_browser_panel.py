"""The refseg panel in a real browser: the FiftyOne App with the plugin, driven by Chromium.

Same server, browser, skip and CI rules as ``test_browser.py`` (its fixtures are reused). The
dataset gets a memory bank built with random-weight DINOv2 ViT-S/14 (so the App server can
encode what the panel adds with the bank's own models), predictions made from the ground truth
(``panel_data.add_predictions``) and a stored evaluation of them.

The test opens the panel and checks that it lists the bank, every class with its counts,
thumbnails and AP; moves a class's threshold and checks that the App's view is filtered and
the threshold stored with the bank; selects a prediction in the sample modal and adds it as a
negative reference from the panel, checking the count in the panel and the bank.
"""

from __future__ import annotations

import re

import fiftyone as fo
import pytest
import test_browser as browser
from panel_data import add_predictions

import refseg
from refseg.synthetic import CLASSES, make_shapes_dataset

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:.*random weights")]

# The browser fixtures of test_browser.py; here ``app_url`` serves this module's ``dataset``.
sync_playwright, app_url, page = browser.sync_playwright, browser.app_url, browser.page

BANK = "panel_bank"
PREDICTIONS = f"{BANK}_predictions"


def make_curation_dataset(name: str, image_dir: str, *, persistent: bool = True) -> fo.Dataset:
    """A synthetic dataset with a bank of one reference per class, predictions made from the
    ground truth and their evaluation ``<predictions>_eval`` (see the module docstring)."""
    dataset = make_shapes_dataset(
        name, image_dir, num_positive=5, num_negative=1, seed=5, persistent=persistent
    )
    refs = refseg.sample_references(dataset, "ground_truth", shots=1, seed=0, classes=CLASSES)
    refseg.build_memory_bank(
        refs,
        "ground_truth",
        tag=refseg.DEFAULT_TAG,
        models=refseg.Models.of(sam2="sam2.1_hiera_tiny", dinov2="dinov2_vits14", pretrained=False),
        device="cpu",
        name=BANK,
        progress=False,
    )
    add_predictions(dataset, PREDICTIONS)
    refseg.evaluate(dataset, PREDICTIONS, "ground_truth", eval_key=f"{PREDICTIONS}_eval")
    return dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The App server's dataset (``app_url`` of ``test_browser`` serves this one)."""
    name = f"browser-panel-{tmp_path_factory.getbasetemp().name}"
    ds = make_curation_dataset(name, str(tmp_path_factory.mktemp("panel_images")))
    yield ds
    ds.delete()


def test_panel_shows_the_bank_filters_by_threshold_and_adds_a_negative(page, app_url, dataset):
    browser._dismiss_banners(page)
    panel = _open_panel(page)

    # the bank, its classes with counts, AP of the last evaluation and thumbnails
    panel.get_by_text("3 classes; 3 positive, 0 negative references.").wait_for()
    results = dataset.load_evaluation_results(f"{PREDICTIONS}_eval")
    for name in CLASSES:
        ap = 100 * results.mAP(classes=[name])
        panel.get_by_text(
            f"{name}: 1 positive, 0 negative · AP {ap:.1f} % · no threshold"
        ).wait_for()
    assert panel.locator("img[src^='data:image/png;base64,']").count() == len(CLASSES)
    assert panel.get_by_text(BANK, exact=True).count() >= 1
    browser._shot(page, "12_panel", panel)

    # a threshold filters the App's view at once; storing it saves it with the bank
    _move_slider(page, panel, "red_square", 0.8)
    line = panel.get_by_text(re.compile(r"^red_square: .* · threshold \d\.\d\d \(stored: none\)$"))
    threshold = float(re.search(r"threshold (\d\.\d\d)", line.inner_text()).group(1))
    assert abs(threshold - 0.8) <= 0.02  # where the click landed on the slider
    expected = refseg.threshold_view(dataset, PREDICTIONS, {"red_square": threshold})
    kept = expected.count(f"{PREDICTIONS}.detections")
    total = dataset.count(f"{PREDICTIONS}.detections")
    assert kept < total
    panel.get_by_text(f"Showing {kept} of {total} predictions of '{PREDICTIONS}'").wait_for()
    page.locator("[data-cy=view-bar] [data-cy=input-view-stage][value=FilterLabels]").wait_for()
    panel.get_by_role("button", name="Store thresholds").click()
    panel.get_by_text("Stored the thresholds of 1 classes").wait_for()
    dataset.reload()  # the App server saved the bank
    assert refseg.load_bank(dataset, BANK).thresholds == {"red_square": threshold}
    panel.get_by_text(re.compile(rf"^red_square: .* · threshold {threshold:.2f}$")).wait_for()
    browser._shot(page, "13_panel_threshold")

    # select a false positive in the sample modal and add it as a negative from the panel
    sample, wrong = _a_false_positive(expected)  # one the App shows above the threshold
    page.goto(f"{app_url}?id={sample.id}")
    modal = page.locator("[data-cy=modal]")
    modal.locator("[data-cy=sample-canvas]").wait_for()
    browser._wait_settled(page)
    modal.locator("[data-cy=checkbox-ground_truth]").click()  # only predictions under the cursor
    _click_label(page, sample, wrong)
    modal_panel = _open_panel(page, within=modal)
    modal_panel.get_by_text("1 labels selected").wait_for()
    modal_panel.get_by_role("button", name="Add as negatives").click()
    page.get_by_text(f"Adds 1 of '{PREDICTIONS}' as negative references of '{BANK}'").wait_for()
    browser._shot(page, "14_panel_add_negative_form")
    browser._execute(page)
    page.get_by_text("Added 1 negative references").wait_for(timeout=browser.MODEL_RUN_TIMEOUT)
    page.get_by_role("button", name="Done").or_(page.get_by_role("button", name="Close")).click()
    modal_panel.get_by_text("3 classes; 3 positive, 1 negative references.").wait_for()
    modal_panel.get_by_text(re.compile(rf"^{wrong.label}: 1 positive, 1 negative")).wait_for()
    _slider(modal_panel, wrong.label).scroll_into_view_if_needed()  # its card, thumbnails above
    browser._shot(page, "15_panel_negative_added", modal)

    dataset.reload()
    bank = refseg.load_bank(dataset, BANK)
    negatives = [r for r in bank.references if r.negative]
    assert [(r.label_id, r.label, r.field) for r in negatives] == [
        (wrong.id, wrong.label, PREDICTIONS)
    ]
    assert bank.thresholds == {"red_square": threshold}


# -- driving the panel ----------------------------------------------------------------------


def _open_panel(page, within=None):
    """The refseg panel of the grid (or of ``within``, e.g. the sample modal), opened with
    "New panel" unless it is open already."""
    scope = within or page
    tab = scope.locator("[data-cy=panel-tab-refseg_panel]")
    if tab.count():
        tab.first.click()
    else:
        scope.locator("[data-cy=new-panel-btn]").first.click()
        page.get_by_text("refseg", exact=True).last.click()
    panel = scope.locator("[data-cy=panel-content-refseg_panel]").first
    panel.get_by_text("Memory bank").wait_for()
    return panel


def _move_slider(page, panel, name: str, value: float) -> None:
    """Clicks the threshold slider of class ``name`` where it means ``value`` (a click
    commits at once; keys would not: each committed step re-renders the slider, which loses
    the focus)."""
    rail = _slider(panel, name)
    rail.scroll_into_view_if_needed()
    box = rail.bounding_box()
    page.mouse.click(box["x"] + value * box["width"], box["y"] + box["height"] / 2)


def _slider(panel, name: str):
    """The threshold slider of class ``name``."""
    thumb = panel.locator(f"xpath=.//strong[text()='{name}']/following::input[@type='range'][1]")
    return thumb.locator("xpath=ancestor::span[contains(@class, 'MuiSlider-root')]")


def _a_false_positive(view):
    """A sample of ``view`` and a prediction of it that overlaps no ground-truth box."""
    for sample in view:
        truth = [d.bounding_box for d in sample.ground_truth.detections]
        for prediction in sample[PREDICTIONS].detections:
            if prediction.bounding_box not in truth:
                return sample, prediction
    raise AssertionError("panel_data.add_predictions made no false positive")


def _click_label(page, sample, label) -> None:
    """Clicks the centre of ``label`` in the modal's image, which the App draws scaled to fit
    its canvas and centred (the click selects the label)."""
    canvas = page.locator("[data-cy=modal] [data-cy=sample-canvas]").bounding_box()
    width, height = sample.metadata.width, sample.metadata.height
    scale = min(canvas["width"] / width, canvas["height"] / height)
    left = canvas["x"] + (canvas["width"] - scale * width) / 2
    top = canvas["y"] + (canvas["height"] - scale * height) / 2
    x, y, w, h = label.bounding_box
    point = (left + scale * width * (x + w / 2), top + scale * height * (y + h / 2))
    page.mouse.move(*point)
    page.wait_for_timeout(browser.SECOND // 2)
    page.mouse.click(*point)
    page.wait_for_timeout(browser.SECOND)
