"""The refseg panel without a browser: its events through FiftyOne's operator execution path
(as the App calls them), and its helpers (thumbnails, last evaluation, threshold views).

No model runs: banks are made of ground-truth labels with made-up prototypes, predictions are
made from the ground truth (``panel_data``). ``test_browser_panel.py`` drives the same panel in
the App.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import sys
from pathlib import Path

import fiftyone.operators as foo
import pytest
from fiftyone.server.view import get_view
from panel_data import add_predictions, fake_bank, labels_of
from PIL import Image

import refseg
from refseg.synthetic import CLASSES, make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the plugin's panels package, imported on its own

from panels import thumbnails
from panels.last_evaluation import last_evaluation
from panels.threshold_views import thresholded

pytestmark = pytest.mark.usefixtures("installed_plugin")
PANEL = "@refseg/refseg/refseg_panel"
PRED = "bank_predictions"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    name = f"panel-{tmp_path_factory.getbasetemp().name}"
    ds = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=8, num_negative=1, seed=5
    )
    add_predictions(ds, PRED)
    positives = [labels_of(ds, name)[0] for name in CLASSES]
    negatives = [labels_of(ds, "red_square")[1]]
    refseg.save_bank(ds, "bank", fake_bank(ds, positives, negatives))
    refseg.evaluate(ds, PRED, "ground_truth", eval_key="first_eval")
    refseg.evaluate(ds.limit(4), PRED, "ground_truth", eval_key="last_eval")
    yield ds
    ds.delete()


def event(dataset, method: str, state: dict | None = None, view=None, **params):
    """Runs the panel's ``method`` as the App does; returns (its requests, the new state)."""
    ctx = {"view": view} if view is not None else {"dataset": dataset}
    request = dict(__method__=method, panel_id="panel", panel_state=dict(state or {}), **params)
    result = foo.execute_operator(PANEL, ctx, params=request)
    requests = result.executor.to_json()["requests"]
    new_state = dict(state or {})
    for r in requests:
        if r["operator_uri"] == "patch_panel_state":
            for path, value in r["params"]["state"].items():
                _set(new_state, path, value)
    return requests, new_state


def of(requests: list[dict], uri: str) -> list[dict]:
    return [r["params"] for r in requests if r["operator_uri"] == uri]


def _set(state: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        state = state.setdefault(part, {})
    state[leaf] = value


def _get(state: dict, path: str):
    for part in path.split("."):
        state = state[part]
    return state


def _properties(output: dict) -> dict:
    """Every property of a rendered panel by its dotted path."""
    found = {}

    def walk(obj: dict, prefix: str) -> None:
        for name, prop in obj.get("properties", {}).items():
            found[prefix + name] = prop
            walk(prop["type"], f"{prefix}{name}.")

    walk(output["type"], "")
    return found


# -- the panel through FiftyOne's execution path ---------------------------------------------


def test_panel_is_registered_as_a_panel():
    panels = {p.uri for p in foo.list_operators(type="panel") if p.uri.startswith("@refseg")}
    assert panels == {PANEL}


def test_load_shows_counts_thresholds_ap_of_the_last_evaluation_and_thumbnails(dataset):
    requests, state = event(dataset, "on_load")
    bank = refseg.load_bank(dataset, "bank")
    assert state["banks"] == ["bank"] and state["choice"]["bank"] == "bank"
    assert state["choice"]["pred_field"] == PRED and state["choice"]["gt_field"] == "ground_truth"
    assert [(r["name"], r["positive"], r["negative"]) for r in state["rows"]] == [
        (name, c["positive"], c["negative"]) for name, c in bank.counts().items()
    ]
    assert ("red_square", 1, 1) in [
        (r["name"], r["positive"], r["negative"]) for r in state["rows"]
    ]
    assert state["evaluation"]["key"] == "last_eval"
    results = dataset.load_evaluation_results("last_eval")
    for row in state["rows"]:
        assert row["ap"] == pytest.approx(results.mAP(classes=[row["name"]]))
    data = {}
    for params in of(requests, "patch_panel_data"):
        data.update(params["data"])
    assert sorted(data) == [f"class_{i}.thumbs" for i in range(len(bank.class_names))]
    assert all(uri.startswith("data:image/png;base64,") for uri in data.values())
    assert all(_get(state, f"class_{i}.threshold") == 0.0 for i in range(3))


def test_render_offers_the_actions_enabled_by_the_selection(dataset):
    _, state = event(dataset, "on_load")
    requests, _ = event(dataset, "refresh", state)
    props = _properties(of(requests, "show_panel_output")[-1]["output"])
    assert props["choice.bank"]["type"]["values"] == ["bank"]
    assert props["choice.bank"]["on_change"] == f"{PANEL}#on_change_bank"
    assert props["selected.add_negatives"]["view"]["disabled"] is True
    assert props["runs.preview"]["view"]["disabled"] is True
    assert props["runs.predict"]["view"]["params"] == {"action": "predict"}
    assert props["class_0.threshold"]["on_change"] == f"{PANEL}#on_change_threshold"
    assert props["class_0.thumbs"]["view"]["name"] == "ImageView"

    label = dataset.first()[PRED].detections[0]
    selected = [{"label_id": label.id, "sample_id": dataset.first().id, "field": PRED}]
    ctx = {"dataset": dataset, "selected_labels": selected, "selected": [dataset.first().id]}
    request = {"__method__": "refresh", "panel_id": "panel", "panel_state": state}
    result = foo.execute_operator(PANEL, ctx, params=request)
    output = of(result.executor.to_json()["requests"], "show_panel_output")[-1]["output"]
    props = _properties(output)
    assert props["selected.add_negatives"]["view"]["disabled"] is False
    assert props["runs.preview"]["view"]["disabled"] is False
    assert props["runs.preview"]["view"]["label"] == "Preview 1 selected"


def test_actions_open_the_operators_prefilled(dataset):
    _, state = event(dataset, "on_load")
    expected = {
        "add_negatives": ("add_references", {"bank": "bank", "negative": True}),
        "predict": ("predict", {"bank": "bank", "label_field": PRED}),
        "evaluate": (
            "evaluate",
            {"pred_field": PRED, "gt_field": "ground_truth", "eval_key": f"{PRED}_eval"},
        ),
        "accept": (
            "accept_predictions",
            {"pred_field": PRED, "gt_field": "ground_truth", "bank": "bank", "which": "all"},
        ),
    }
    for action, (operator, params) in expected.items():
        requests, _ = event(dataset, "open_operator", state, action=action)
        (prompt,) = of(requests, "prompt_user_for_operation")
        assert prompt["operator_uri"] == f"@refseg/refseg/{operator}"
        assert prompt["params"] == params
        assert prompt["on_success"] == f"{PANEL}#refresh"


def test_moving_thresholds_filters_the_view_without_stacking_and_stores_on_request(dataset):
    _, state = event(dataset, "on_load")
    red = [r["name"] for r in state["rows"]].index("red_square")
    base = dataset.match_tags("negative", bool=False)  # the user's view
    requests, state = event(
        dataset, "on_change_threshold", state, view=base, path=f"class_{red}.threshold", value=0.9
    )
    (shown,) = of(requests, "set_view")
    high = refseg.threshold_view(base, PRED, {"red_square": 0.9})
    assert _ids(get_view(dataset, stages=shown["view"])) == _ids(high)
    assert state["thresholds"] == {"red_square": 0.9}

    # lowered on the view the panel set: replaces its filter (stacked, 0.9 would still hold)
    app_view = get_view(dataset, stages=shown["view"])
    requests, state = event(
        dataset,
        "on_change_threshold",
        state,
        view=app_view,
        path=f"class_{red}.threshold",
        value=0.6,
    )
    (shown,) = of(requests, "set_view")
    low = refseg.threshold_view(base, PRED, {"red_square": 0.6})
    assert _ids(get_view(dataset, stages=shown["view"])) == _ids(low) != _ids(high)
    assert state["message"] == (
        f"Showing {low.count(f'{PRED}.detections')} of {base.count(f'{PRED}.detections')} "
        f"predictions of '{PRED}'"
    )

    app_view = get_view(dataset, stages=shown["view"])
    _, state = event(dataset, "refresh", state, view=app_view)  # e.g. after an operation
    assert state["thresholds"] == {"red_square": 0.6}  # the view still shows them
    assert _get(state, f"class_{red}.threshold") == 0.6

    assert refseg.load_bank(dataset, "bank").thresholds == {}  # moving stores nothing
    _, state = event(dataset, "save_thresholds", state, view=app_view)
    assert refseg.load_bank(dataset, "bank").thresholds == {"red_square": 0.6}
    assert state["rows"][red]["stored"] == 0.6 and _get(state, f"class_{red}.threshold") == 0.6

    refseg.save_bank(
        dataset, "bank", refseg.load_bank(dataset, "bank").with_thresholds(None), overwrite=True
    )
    requests, state = event(dataset, "show_all", state, view=app_view)
    (shown,) = of(requests, "set_view")
    assert _ids(get_view(dataset, stages=shown["view"])) == _ids(base)
    assert state["thresholds"] == {} and _get(state, f"class_{red}.threshold") == 0.0
    assert state["threshold_base"] is None


def test_choosing_another_bank_restores_the_view_and_shows_that_bank(dataset):
    refseg.save_bank(dataset, "other", fake_bank(dataset, [labels_of(dataset, "green_disc")[0]]))
    _, state = event(dataset, "on_load", {"choice": {"bank": "bank"}})
    assert len(state["rows"]) == 3
    base = dataset.match_tags("negative", bool=False)
    requests, state = event(
        dataset, "on_change_threshold", state, view=base, path="class_0.threshold", value=0.9
    )
    (shown,) = of(requests, "set_view")
    requests, state = event(
        dataset,
        "on_change_bank",
        state,
        view=get_view(dataset, stages=shown["view"]),
        path="choice.bank",
        value="other",
    )
    (restored,) = of(requests, "set_view")
    assert _ids(get_view(dataset, stages=restored["view"])) == _ids(base)
    assert state["choice"]["bank"] == "other" and state["threshold_base"] is None
    assert [(r["name"], r["positive"]) for r in state["rows"]] == [("green_disc", 1)]
    assert state["thresholds"] == {}
    dataset.delete_run("other")


def test_a_dataset_without_banks_offers_to_build_one(tmp_path):
    empty = make_shapes_dataset("panel-empty", str(tmp_path), num_positive=1, num_negative=0)
    try:
        requests, state = event(empty, "on_load")
        assert state["banks"] == [] and state["rows"] == []
        props = _properties(of(requests, "show_panel_output")[-1]["output"])
        assert props["build"]["view"]["operator"] == f"{PANEL}#build_bank"
        requests, _ = event(empty, "build_bank", state)
        (prompt,) = of(requests, "prompt_user_for_operation")
        assert prompt["operator_uri"] == "@refseg/refseg/build_memory_bank"
    finally:
        empty.delete()


def _ids(view) -> list[str]:
    return sorted(view.values(f"{PRED}.detections.id", unwind=True))


# -- helpers --------------------------------------------------------------------------------


def test_thumbnail_strip_frames_positives_then_negatives_and_marks_unreadable_images(dataset):
    bank = refseg.load_bank(dataset, "bank")
    red = [r for r in bank.references if r.label == "red_square"]
    unreadable = dataclasses.replace(red[0], filepath="/nonexistent.png")
    strip = _decode(thumbnails.reference_strip([red[0], unreadable, red[1]]))
    tile, gap = thumbnails.TILE_PX, thumbnails.GAP_PX
    assert strip.size == (3 * tile + gap + 3 * gap, tile)  # a wider gap before the negative
    assert strip.getpixel((0, 0))[:3] == thumbnails.POSITIVE_RGB
    inner = thumbnails.FRAME_PX + 3  # off the cross drawn over a missing image
    assert strip.getpixel((tile + gap + inner, tile - inner))[:3] == thumbnails.MISSING_RGB
    assert strip.getpixel((2 * tile + 4 * gap, 0))[:3] == thumbnails.NEGATIVE_RGB
    many = _decode(thumbnails.reference_strip([red[0]] * 10))
    assert many.width == thumbnails.MAX_PER_POLARITY * (tile + gap) - gap
    assert thumbnails.reference_strip([]) is None


def test_last_evaluation_is_the_latest_run_of_these_fields(dataset):
    last = last_evaluation(dataset, PRED, "ground_truth")
    report = refseg.evaluate(dataset.limit(4), PRED, "ground_truth")
    assert last.key == "last_eval" and last.iou_type == "segm"
    assert set(last.ap) == {c for c in report.classes if report.per_class_ap["segm"][c] >= 0}
    for name, value in last.ap.items():
        assert value == pytest.approx(report.per_class_ap["segm"][name], abs=1e-6)
    assert last_evaluation(dataset, "ground_truth", PRED) is None


def test_threshold_view_base_is_kept_only_while_the_app_shows_the_panels_filter(dataset):
    user_view = dataset.match_tags("negative", bool=False)
    stages = user_view._serialize()
    first, base = thresholded(dataset, stages, None, PRED, {"red_square": 0.9})
    assert base == stages
    _, again = thresholded(dataset, first._serialize(), base, PRED, {"red_square": 0.5})
    assert again == stages
    changed = first.limit(2)  # the user changed the view since: it becomes the base
    _, moved = thresholded(dataset, changed._serialize(), base, PRED, {"red_square": 0.5})
    assert moved == changed._serialize()


def _decode(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :]))).convert("RGB")
