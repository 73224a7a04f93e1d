"""The refseg panel: the curation loop of one memory bank, in the App.

It shows the dataset's banks (choose one) and, per class of the chosen bank, its positive and
negative reference counts with thumbnails, its AP in the last evaluation (``last_evaluation``)
and its score threshold. Its buttons open the refseg operators prefilled (``actions``): preview,
predict, evaluate, suggest thresholds, accept, add the selected labels as positives or
negatives. Moving a class's threshold sets the App's view to the predictions above the
thresholds at once (``refseg.threshold_view``); "Store thresholds" saves them with the bank.

Like the operators, nothing here imports ``refseg`` (and so torch) at module import.
"""

from __future__ import annotations

import fiftyone.operators as foo
from fiftyone.operators import types

from . import layout
from .actions import BY_NAME, Choice

PLUGIN = "@refseg/refseg"


class RefsegPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="refseg_panel",
            label="refseg",
            help_markdown="Curate a refseg memory bank: references, thresholds, AP, actions",
            icon="auto_fix_high",
            surfaces="grid modal",
        )

    # -- events -------------------------------------------------------------------------

    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.state.clear()
        self._refresh(ctx)

    def on_change_selected(self, ctx):
        """Nothing to compute: the render after it updates the Preview button."""

    def on_change_selected_labels(self, ctx):
        """Nothing to compute: the render after it updates the add buttons."""

    def on_change_current_sample(self, ctx):
        """Nothing to compute: the render after it updates the Preview button."""

    def on_change_bank(self, ctx):
        """Another bank: its thresholds replace the panel's (the App's view is restored)."""
        self._restore_view(ctx)
        ctx.panel.state.set({"choice.bank": ctx.params.get("value"), "choice.pred_field": None})
        self._refresh(ctx)

    def on_change_field(self, ctx):
        self._restore_view(ctx)
        ctx.panel.state.set(ctx.params["path"], ctx.params.get("value"))
        self._refresh(ctx)

    def refresh(self, ctx):
        """The Refresh button, and what runs after an operation the panel opened succeeds."""
        ctx.panel.state.message = None
        self._refresh(ctx)

    def open_operator(self, ctx):
        """Opens the form of the operator of the clicked action, prefilled."""
        action = BY_NAME[ctx.params["action"]]
        ctx.prompt(action.uri, params=action.params(self._choice(ctx)), on_success=self.refresh)

    def build_bank(self, ctx):
        ctx.prompt(f"{PLUGIN}/build_memory_bank", on_success=self.refresh)

    def on_change_threshold(self, ctx):
        """Filters the App's view at once with the panel's thresholds, the moved one
        included (``refseg.threshold_view``; 0 keeps every prediction of the class)."""
        from .threshold_views import thresholded

        state = ctx.panel.state
        field = state.get("choice.pred_field")
        if not field:
            state.message = "Choose a predictions field first"
            return
        index = int(ctx.params["path"].split(".")[0].removeprefix("class_"))
        name = state.rows[index]["name"]
        thresholds = {k: v for k, v in (state.thresholds or {}).items() if k != name}
        value = round(float(ctx.params["value"]), 4)
        if value > 0:
            thresholds[name] = value
        view, base = thresholded(
            ctx.dataset, ctx.request_params.get("view"), state.threshold_base, field, thresholds
        )
        ctx.ops.set_view(view=view)
        kept, total = view.count(f"{field}.detections"), _count(ctx, base, field)
        state.set(
            {
                "thresholds": thresholds,
                "threshold_base": base,
                "message": f"Showing {kept} of {total} predictions of '{field}'",
            }
        )

    def save_thresholds(self, ctx):
        """Stores the panel's thresholds with the bank (replacing the stored ones)."""
        import refseg

        state = ctx.panel.state
        key = state.get("choice.bank")
        bank = refseg.load_bank(ctx.dataset, key)
        thresholds = state.thresholds or {}
        refseg.save_bank(ctx.dataset, key, bank.with_thresholds(thresholds), overwrite=True)
        self._refresh(ctx)
        state.message = f"Stored the thresholds of {len(thresholds)} classes with '{key}'"

    def show_all(self, ctx):
        """Sets the App's view back to the view the thresholds were applied to; the sliders
        go back to the stored thresholds."""
        self._restore_view(ctx)
        self._refresh(ctx)
        ctx.panel.state.message = "Showing every prediction"

    # -- render -------------------------------------------------------------------------

    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        if state.error:
            panel.md(state.error, name="error")
        banks = state.banks or []
        if not banks:
            layout.no_bank(panel, self.build_bank)
            return _property(panel)
        layout.choices(panel, banks, state.fields or [], self.on_change_bank, self.on_change_field)
        layout.status(panel, state)
        selection = (bool(ctx.current_sample), len(ctx.selected), len(ctx.selected_labels))
        layout.action_buttons(panel, self.open_operator, state, selection)
        layout.view_buttons(panel, self.show_all, self.save_thresholds, self.refresh)
        layout.class_cards(
            panel, state.rows or [], state.thresholds or {}, self.on_change_threshold
        )
        return _property(panel)

    # -- helpers ------------------------------------------------------------------------

    def _refresh(self, ctx) -> None:
        """Recomputes what the panel shows of the chosen bank (bank and fields default to the
        last bank, its predictions field and 'ground_truth' where they exist). The sliders show
        the stored thresholds, or the panel's while the App's view is filtered by them."""
        import refseg
        from refseg.memory import BankFileError

        from ._fields import default_fields, detections_fields
        from .overview import bank_overview

        banks = refseg.list_banks(ctx.dataset)
        fields = detections_fields(ctx.dataset)
        state = ctx.panel.state
        state.set({"banks": banks, "fields": fields, "error": None})
        if not banks:
            state.rows = []
            return
        key = state.get("choice.bank")
        key = key if key in banks else banks[-1]
        pred, gt = default_fields(
            fields, key, state.get("choice.pred_field"), state.get("choice.gt_field")
        )
        state.set({"choice.bank": key, "choice.pred_field": pred, "choice.gt_field": gt})
        try:
            overview = bank_overview(ctx.dataset, key, pred, gt)
        except (ValueError, BankFileError) as problem:
            state.set({"rows": [], "evaluation": None, "error": f"**{problem}**"})
            return
        evaluation = overview.evaluation
        thresholds = {r.name: r.threshold for r in overview.rows if r.threshold}
        if state.threshold_base is not None:  # the App's view shows the panel's thresholds
            names = {r.name for r in overview.rows}
            thresholds = {k: v for k, v in (state.thresholds or {}).items() if k in names}
        updates = {
            "rows": [_row_state(row) for row in overview.rows],
            "evaluation": None if evaluation is None else _evaluation_state(evaluation),
            "thresholds": thresholds,
        }
        thumbnails = {}
        for index, row in enumerate(overview.rows):
            updates[f"class_{index}.threshold"] = thresholds.get(row.name, 0.0)
            thumbnails[f"class_{index}.thumbs"] = row.thumbnails
        state.set(updates)
        ctx.panel.data.set(thumbnails)

    def _restore_view(self, ctx) -> None:
        """Sets the App's view back to the view the panel's thresholds filter, if they do."""
        from fiftyone.server.view import get_view

        from .threshold_views import base_of

        state = ctx.panel.state
        if state.threshold_base is None:
            return
        field = state.get("choice.pred_field")
        base = base_of(ctx.request_params.get("view"), state.threshold_base, field)
        ctx.ops.set_view(view=get_view(ctx.dataset, stages=base))
        state.threshold_base = None

    def _choice(self, ctx) -> Choice:
        state = ctx.panel.state
        return Choice(
            bank=state.get("choice.bank"),
            pred_field=state.get("choice.pred_field"),
            gt_field=state.get("choice.gt_field"),
        )


def _row_state(row) -> dict:
    return {
        "name": row.name,
        "positive": row.positive,
        "negative": row.negative,
        "ap": row.ap,
        "stored": row.threshold,
    }


def _evaluation_state(evaluation) -> dict:
    return {
        "key": evaluation.key,
        "timestamp": evaluation.timestamp,
        "iou_type": evaluation.iou_type,
    }


def _count(ctx, stages: list[dict], field: str) -> int:
    from fiftyone.server.view import get_view

    return get_view(ctx.dataset, stages=stages).count(f"{field}.detections")


def _property(panel: types.Object) -> types.Property:
    return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))
