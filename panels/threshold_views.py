"""The App's view with the panel's thresholds applied, re-applied on each threshold change.

``refseg.threshold_view`` appends one ``FilterLabels`` stage over the predictions field. When a
threshold changes again, that stage must be replaced, not stacked (stacking could only ever
raise thresholds). So the panel remembers the view the thresholds were first applied to (its
serialized stages, as the App sends them) and recognises the App's current view as "that view
plus our stage"; any other view (the user changed it) becomes the new base.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fiftyone as fo

FILTER_LABELS = "fiftyone.core.stages.FilterLabels"


def thresholded(
    dataset: fo.Dataset,
    app_stages: list[dict] | None,
    remembered_base: list[dict] | None,
    pred_field: str,
    thresholds: Mapping[str, float],
) -> tuple[fo.DatasetView, list[dict]]:
    """The view to show, and the base stages to remember for the next change.

    Args:
        dataset: the App's dataset.
        app_stages: the App's current view, serialized as the App sends it (``ctx.view`` 's
            stages: the request's ``view``); None or [] for the whole dataset.
        remembered_base: what this function returned last time, None at first.
        pred_field: the predictions field.
        thresholds: ``{class: threshold}``; classes absent keep every prediction.

    Returns:
        (``refseg.threshold_view`` of the base view, the base's serialized stages).
    """
    from fiftyone.server.view import get_view

    import refseg

    base = base_of(app_stages, remembered_base, pred_field)
    view = refseg.threshold_view(get_view(dataset, stages=base), pred_field, thresholds)
    return view, base


def base_of(app_stages: list[dict] | None, remembered_base: list[dict] | None, pred_field: str):
    """The view under the panel's thresholds: ``remembered_base`` when the App shows it with
    the thresholds stage on top, else the App's view itself (serialized stages)."""
    current = list(app_stages or [])
    if remembered_base is not None and _is_threshold_of(current, remembered_base, pred_field):
        return remembered_base
    return current


def _is_threshold_of(current: list[dict], base: list[dict], pred_field: str) -> bool:
    """Whether ``current`` is ``base`` plus one FilterLabels stage over ``pred_field``."""
    if len(current) != len(base) + 1:
        return False
    if [_comparable(s) for s in current[:-1]] != [_comparable(s) for s in base]:
        return False
    last = current[-1]
    return last.get("_cls") == FILTER_LABELS and _kwargs(last).get("field") == pred_field


def _comparable(stage: dict) -> dict:
    """A serialized stage without its ``_uuid`` (which identifies the instance, not what the
    stage does)."""
    return {k: v for k, v in stage.items() if k != "_uuid"}


def _kwargs(stage: dict) -> dict[str, Any]:
    """A serialized stage's arguments (stored as [name, value] pairs)."""
    return {name: value for name, value in stage.get("kwargs", [])}
