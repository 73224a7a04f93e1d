"""Operator: set the App's view to the predictions above their class's score threshold, without
re-running any model (``refseg.threshold_view``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms


class ApplyThresholds(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "apply_thresholds",
            "refseg: apply thresholds",
            "Show the predictions above their class's threshold (a bank's, or given ones)",
            delegation="never",
            generator=False,
        )

    def __call__(self, sample_collection, pred_field, *, bank=None, thresholds=None):
        """Sets the App's view to ``sample_collection`` with the predictions of ``pred_field``
        at or below their class's threshold filtered out: the thresholds stored with the bank
        ``bank``, or ``thresholds`` (``{class: value}``, which win where both name a class).
        Returns the number of predictions kept.

        Example::

            apply = foo.get_operator("@refseg/refseg/apply_thresholds")
            apply(dataset, "refseg", thresholds={"cat": 0.6})
        """
        params = dict(pred_field=pred_field, bank=bank, thresholds=thresholds)
        return _common.call_operator(self, sample_collection, params)

    def resolve_input(self, ctx):
        inputs = types.Object()
        _inputs(ctx, inputs)
        return _forms.form(inputs, "Apply score thresholds")

    def execute(self, ctx):
        import refseg

        view = ctx.target_view()
        field = ctx.params["pred_field"]
        thresholds = thresholds_of(ctx)
        filtered = refseg.threshold_view(view, field, thresholds)
        ctx.ops.set_view(view=filtered)
        return {
            "thresholds": thresholds,
            "num_kept": filtered.count(f"{field}.detections"),
            "num_predictions": view.count(f"{field}.detections"),
        }

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        outputs.int("num_kept", label="Predictions shown")
        outputs.int("num_predictions", label="Predictions in all")
        return _forms.output_form(outputs, "Thresholds applied")


def thresholds_of(ctx) -> dict[str, float]:
    """The bank's stored thresholds, overridden by the ``thresholds`` parameter."""
    import refseg

    values = {}
    key = ctx.params.get("bank")
    if key:
        values.update(refseg.load_bank(ctx.dataset, key).thresholds)
    values.update(ctx.params.get("thresholds") or {})
    return values


def _inputs(ctx, inputs) -> None:
    import refseg
    from refseg.memory import BankFileError

    view = _forms.target_view(ctx, inputs, "Filter")
    field = _forms.detections_field(
        ctx, inputs, "pred_field", "Predictions field", "The predictions to filter"
    )
    if view is None or field is None:
        return
    banks = refseg.list_banks(ctx.dataset)
    choices = types.DropdownView()
    for key in banks:
        choices.add_choice(key, label=key)
    inputs.enum(
        "bank",
        choices.values(),
        label="Thresholds of memory bank",
        description="Use the thresholds stored with this bank ('suggest thresholds' stores them)",
        view=choices,
    )
    try:
        thresholds = thresholds_of(ctx)
    except (BankFileError, ValueError) as problem:
        _forms.error(inputs, "bank_damaged", str(problem))
        return
    if not thresholds:
        _forms.error(
            inputs,
            "no_thresholds",
            "No thresholds: choose a bank that has some (run 'suggest thresholds') or pass "
            "thresholds={class: value}",
        )
        return
    listed = ", ".join(f"{c} > {t:.3f}" for c, t in sorted(thresholds.items()))
    _forms.notice(inputs, "thresholds_used", f"Keeps {listed}")
