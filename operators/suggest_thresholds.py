"""Operator: suggest a score threshold per class from predictions and ground truth, show them
with precision and recall, store them with a bank, and optionally show the thresholded view."""

from __future__ import annotations

import dataclasses

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms

NO_BANK = "-"
"""The bank choice that stores nothing."""


class SuggestThresholds(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "suggest_thresholds",
            "refseg: suggest thresholds",
            "A score threshold per class (best F1, or a precision asked for), stored with a bank",
            delegation="allowed",
        )

    def __call__(
        self,
        sample_collection,
        pred_field,
        gt_field,
        *,
        iou=None,
        target_precision=None,
        bank=None,
        apply=False,
        delegate=False,
        delegation_target=None,
    ):
        """Suggests per-class thresholds from ``pred_field`` against ``gt_field`` (see
        ``refseg.suggest_thresholds``: COCO matching at ``iou``, default 0.5; the best F1, or
        the lowest threshold reaching ``target_precision``), stores them with the stored bank
        ``bank`` when given, and with ``apply=True`` sets the App's view to the predictions
        above them.

        Example::

            suggest = foo.get_operator("@refseg/refseg/suggest_thresholds")
            suggest(dataset, "refseg", "ground_truth", target_precision=0.9, bank="my_bank")
        """
        params = dict(
            pred_field=pred_field,
            gt_field=gt_field,
            iou=iou,
            target_precision=target_precision,
            bank=bank,
            apply=apply,
        )
        return _common.call_operator(
            self, sample_collection, params, delegate=delegate, delegation_target=delegation_target
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _inputs(ctx, inputs)
        return _forms.form(inputs, "Suggest score thresholds")

    def execute(self, ctx):
        return _common.run_job(ctx, self, lambda progress: _suggest(ctx, progress), _effects(ctx))

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        outputs.str("table", label="Suggested thresholds", view=types.MarkdownView())
        outputs.str("message", label="Stored")
        return _forms.output_form(outputs, "Score thresholds")


def _inputs(ctx, inputs) -> None:
    import refseg

    view = _forms.target_view(ctx, inputs, "Evaluate on")
    gt_field = _forms.detections_field(
        ctx, inputs, "gt_field", "Ground truth field", "The truth", default="ground_truth"
    )
    pred_field = _forms.detections_field(
        ctx,
        inputs,
        "pred_field",
        "Predictions field",
        "The predictions to threshold",
        exclude=(gt_field,),
    )
    if view is None or gt_field is None or pred_field is None:
        return
    inputs.float(
        "iou",
        default=_forms.engine_default(refseg.suggest_thresholds, "iou"),
        min=0.05,
        max=0.95,
        label="IoU",
        description="Mask IoU at which a prediction matches ground truth (COCO matching)",
    )
    inputs.float(
        "target_precision",
        min=0.0,
        max=1.0,
        label="Precision asked for (optional)",
        description="Empty: the threshold of best F1 per class; else the lowest threshold "
        "whose precision reaches this",
    )
    banks = refseg.list_banks(ctx.dataset)
    choices = types.DropdownView()
    choices.add_choice(NO_BANK, label="Do not store")
    for key in banks:
        choices.add_choice(key, label=key)
    inputs.enum(
        "bank",
        choices.values(),
        default=NO_BANK,
        label="Store with memory bank",
        description="The thresholds replace the bank's stored ones (predict applies them with "
        "'use bank thresholds'; 'apply thresholds' filters a view with them)",
        view=choices,
    )
    inputs.bool(
        "apply",
        default=False,
        label="Show the thresholded predictions",
        description="Set the App's view to the predictions above their class's threshold",
        view=types.CheckboxView(),
    )
    if ctx.params.get("apply") and ctx.requesting_delegated_execution:
        _forms.notice(inputs, "apply_delegated", "A queued run cannot change the App's view")


def _suggest(ctx, progress) -> dict:
    import refseg

    progress(0.0, "Matching predictions to ground truth")
    target = ctx.params.get("target_precision") or None
    table = refseg.suggest_thresholds(
        ctx.target_view(),
        ctx.params["pred_field"],
        ctx.params["gt_field"],
        iou=float(_forms.param(ctx, "iou", 0.5)),
        target_precision=target,
    )
    key = ctx.params.get("bank") or NO_BANK
    message = "Not stored"
    if key != NO_BANK:
        bank = refseg.load_bank(ctx.dataset, key)
        kept = {c: t for c, t in table.thresholds.items() if c in bank.class_names}
        refseg.save_bank(ctx.dataset, key, bank.with_thresholds(kept), overwrite=True)
        message = f"Stored {len(kept)} thresholds with the memory bank '{key}'"
    progress(1.0, "Done")
    return {
        "table": table.to_markdown(),
        "thresholds": table.thresholds,
        "message": message,
        "rows": [dataclasses.asdict(row) for row in table.rows],
    }


def _effects(ctx):
    def effects(results: dict) -> list:
        if not ctx.params.get("apply"):
            return []
        import refseg

        view = refseg.threshold_view(
            ctx.target_view(), ctx.params["pred_field"], results["thresholds"]
        )
        return [ctx.ops.set_view(view=view)]

    return effects
