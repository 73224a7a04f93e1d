"""The panel's layout, built from its state on every render (nothing is computed here).

State keys (``ctx.panel.state``), written by the panel's events:

- ``choice.bank``, ``choice.pred_field``, ``choice.gt_field``: the dropdowns.
- ``banks``, ``fields``: the choices offered.
- ``rows``: per class ``{name, positive, negative, ap, stored}`` (``overview.ClassRow``
  without its thumbnails; ``stored``: the threshold stored with the bank),
  ``evaluation``: ``{key, timestamp, iou_type}`` or None, ``error``: why the bank cannot be
  shown, ``message``: the last action's outcome.
- ``thresholds``: the panel's ``{class: threshold}`` (the stored ones until a slider moves);
  ``class_<i>.threshold``: the slider of class ``i``; ``threshold_base``: the view they filter.

Panel data (sent once, not echoed back by every event): ``class_<i>.thumbs``, the thumbnails.
"""

from __future__ import annotations

from collections.abc import Callable

from fiftyone.operators import types

from .actions import ACTIONS

Handler = Callable
"""A bound method of the panel (an event the App calls back)."""


def no_bank(panel: types.Object, build: Handler) -> None:
    """The dataset has no memory bank yet."""
    panel.md(
        "No memory bank yet. Tag a few reference labels ('refseg: sample references' or by "
        "hand), then build one.",
        name="no_bank",
    )
    panel.btn("build", label="Build a memory bank", on_click=build, variant="contained")


def choices(
    panel: types.Object,
    banks: list[str],
    fields: list[str],
    on_bank: Handler,
    on_field: Handler,
) -> None:
    """The bank and the two fields the panel works with."""
    row = panel.h_stack("choice", gap=2)
    row.enum("bank", banks, label="Memory bank", view=_dropdown(banks), on_change=on_bank)
    for name, label in (("pred_field", "Predictions"), ("gt_field", "Ground truth")):
        row.enum(name, fields, label=label, view=_dropdown(fields), on_change=on_field)


def status(panel: types.Object, state) -> None:
    """The bank's totals, the evaluation AP comes from, the last outcome."""
    rows = state.get("rows") or []
    positive = sum(row["positive"] for row in rows)
    negative = sum(row["negative"] for row in rows)
    lines = [f"{len(rows)} classes; {positive} positive, {negative} negative references."]
    evaluation = state.get("evaluation")
    if evaluation:
        lines.append(
            f"AP from the last evaluation, `{evaluation['key']}` "
            f"({evaluation['iou_type']}, {evaluation['timestamp']} UTC)."
        )
    elif state.get("choice.pred_field") and state.get("choice.gt_field"):
        lines.append("These predictions have no evaluation yet: press Evaluate.")
    if state.get("message"):
        lines.append(f"**{state.get('message')}**")
    panel.md("  \n".join(lines), name="status")


def action_buttons(
    panel: types.Object, on_click: Handler, state, selection: tuple[bool, int, int]
) -> None:
    """The buttons that open refseg operators: on the bank and fields, then on the selected
    labels. ``selection``: (a sample is open, samples selected, labels selected)."""
    current_sample, num_samples, num_labels = selection
    fields = bool(state.get("choice.pred_field") and state.get("choice.gt_field"))
    runs = panel.h_stack("runs", gap=1)
    selected = panel.h_stack("selected", gap=1)
    for action in ACTIONS:
        on_labels = action.operator == "add_references"
        label, disabled = action.label, action.needs_fields and not fields
        if action.name == "preview":
            label = "Preview sample" if current_sample else "Preview"
            if num_samples and not current_sample:
                label = f"Preview {num_samples} selected"
            disabled = not (current_sample or num_samples)
        elif on_labels:
            disabled = not num_labels
        (selected if on_labels else runs).btn(
            action.name,
            label=label,
            on_click=on_click,
            params={"action": action.name},
            disabled=disabled,
            variant="outlined",
        )
    selected.md(f"{num_labels} labels selected", name="count")


def view_buttons(panel: types.Object, show_all: Handler, store: Handler, refresh: Handler) -> None:
    """The panel's own buttons: thresholds and view, and a refresh."""
    row = panel.h_stack("view_actions", gap=1)
    row.btn("store_thresholds", label="Store thresholds", on_click=store)
    row.btn("show_all", label="Show all predictions", on_click=show_all)
    row.btn("refresh", label="Refresh", on_click=refresh, icon="refresh")


def class_cards(
    panel: types.Object, rows: list[dict], thresholds: dict[str, float], on_threshold: Handler
) -> None:
    """Per class: counts, AP and threshold in one line, the thumbnails, the slider."""
    panel.md(
        "Thumbnails: positive references framed green, negative ones red. A threshold keeps "
        "the predictions of its class scoring above it (0: all); moving it filters the App's "
        "view at once.",
        name="legend",
    )
    for index, row in enumerate(rows):
        card = panel.v_stack(f"class_{index}", gap=0)
        card.md(_card_line(row, thresholds.get(row["name"])), name="line")
        if row["positive"] or row["negative"]:
            card.view("thumbs", types.ImageView(alt=f"references of {row['name']}"))
        card.float(
            "threshold",
            min=0.0,
            max=1.0,
            label="Threshold",
            view=types.SliderView(label="Threshold", view_multiple_of=0.01, value_precision=2),
            on_change=on_threshold,
        )


def _card_line(row: dict, threshold: float | None) -> str:
    ap = "no AP yet" if row["ap"] is None else f"AP {100 * row['ap']:.1f} %"
    shown = "no threshold" if threshold is None else f"threshold {threshold:.2f}"
    stored = row["stored"]
    if stored != threshold:
        shown += " (stored: " + ("none" if stored is None else f"{stored:.2f}") + ")"
    return (
        f"**{row['name']}**: {row['positive']} positive, {row['negative']} negative · "
        f"{ap} · {shown}"
    )


def _dropdown(values: list[str]) -> types.DropdownView:
    view = types.DropdownView()
    for value in values:
        view.add_choice(value, label=value)
    return view
