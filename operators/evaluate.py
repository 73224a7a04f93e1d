"""Operator: COCO mAP of a predictions field, stored as a FiftyOne evaluation."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms


class Evaluate(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "evaluate",
            "refseg: evaluate",
            "COCO bbox and segm AP of predictions against ground truth",
            delegation="default",
        )

    def __call__(
        self,
        sample_collection,
        pred_field,
        gt_field,
        eval_key,
        *,
        classes=None,
        use_masks=None,
        overwrite=False,
        skip_failures=True,
        delegate=False,
        delegation_target=None,
    ):
        """Evaluates ``pred_field`` against ``gt_field`` and stores the FiftyOne evaluation
        ``eval_key`` (see ``refseg.evaluate``). Samples whose image size cannot be read are
        left out and listed in the output (``skip_failures=False`` fails instead).

        Example::

            evaluate = foo.get_operator("@refseg/refseg/evaluate")
            evaluate(dataset, "refseg", "ground_truth", "refseg_eval")
        """
        params = dict(
            pred_field=pred_field,
            gt_field=gt_field,
            eval_key=eval_key,
            classes=classes,
            use_masks=use_masks,
            overwrite=overwrite,
            skip_failures=skip_failures,
        )
        return _common.call_operator(
            self, sample_collection, params, delegate=delegate, delegation_target=delegation_target
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _inputs(ctx, inputs)
        return _forms.form(inputs, "Evaluate")

    def execute(self, ctx):
        return _common.run_job(
            ctx,
            self,
            lambda progress: _evaluate(ctx, progress),
            lambda results: [ctx.ops.reload_dataset()],
        )

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        outputs.str("eval_key", label="Evaluation key")
        outputs.float("segm_AP", label="Mask AP (IoU .50:.95)")
        outputs.float("bbox_AP", label="Box AP (IoU .50:.95)")
        outputs.str("coco", label="COCO tables", view=types.MarkdownView())
        outputs.int("num_failures", label="Samples skipped")
        _forms.failures_output(outputs)
        return _forms.output_form(outputs, "COCO evaluation")


def _inputs(ctx, inputs) -> None:
    import refseg

    view = _forms.target_view(ctx, inputs, "Evaluate")
    gt_field = _forms.detections_field(
        ctx,
        inputs,
        "gt_field",
        "Ground truth field",
        "The Detections field of the truth",
        default="ground_truth",
    )
    pred_field = _forms.detections_field(
        ctx,
        inputs,
        "pred_field",
        "Predictions field",
        "The Detections field to evaluate",
        exclude=(gt_field,),
    )
    if view is None or gt_field is None or pred_field is None:
        return
    eval_key = _forms.new_field_name(
        ctx,
        inputs,
        "eval_key",
        "Evaluation key",
        "Stored under this key; the Model Evaluation panel lists it",
        default=f"{pred_field}_eval",
    )
    if eval_key is not None and ctx.dataset.has_evaluation(eval_key):
        inputs.bool(
            "overwrite",
            default=False,
            label=f"Replace the evaluation '{eval_key}'",
            view=types.CheckboxView(),
        )
        if not ctx.params.get("overwrite", False):
            _forms.error(
                inputs,
                "eval_exists",
                f"Evaluation '{eval_key}' exists: tick 'Replace' or choose another key",
            )
    elif eval_key is not None:
        from refseg.field_safety import eval_key_problem

        problem = eval_key_problem(
            view, eval_key, pred_field=pred_field, gt_field=gt_field, overwrite=False
        )
        _forms.field_problem(inputs, "eval_key_refused", problem)
    use_masks = _forms.engine_default(refseg.evaluate, "use_masks")
    inputs.bool(
        "use_masks",
        default=use_masks,
        label="Match masks",
        description="The FiftyOne run matches by mask IoU (else box IoU)",
        view=types.CheckboxView(),
    )
    if _forms.param(ctx, "use_masks", use_masks):
        _check_masks(inputs, view, (gt_field, pred_field))
    labels = sorted(name for name in view.distinct(f"{gt_field}.detections.label") if name)
    inputs.list(
        "classes",
        types.String(),
        label="Classes",
        description="Evaluate only these classes (empty = every class)",
        view=types.AutocompleteView(choices=[types.Choice(c, label=c) for c in labels]),
    )
    _forms.notice(inputs, "count", f"{len(view)} samples will be evaluated")
    inputs.bool(
        "skip_failures",
        default=_forms.engine_default(refseg.evaluate, "skip_failures"),
        label="Skip unreadable images",
        description="Leave out samples whose image size cannot be read (they are listed) "
        "instead of failing",
        view=types.CheckboxView(),
    )
    _forms.delegation_notice(ctx, inputs)


def _check_masks(inputs, view, fields) -> None:
    for field in fields:
        missing = view.filter_labels(field, _forms.no_mask()).count(f"{field}.detections")
        if missing:
            _forms.error(
                inputs,
                f"{field}_masks",
                f"{missing} detection(s) of '{field}' have no mask: untick 'Match masks' "
                "or give them masks (refseg: boxes to masks)",
            )
            return


def _evaluate(ctx, progress) -> dict:
    import refseg
    from refseg.failures import FailureReport

    view = ctx.target_view()
    report = FailureReport("evaluate")
    progress(0.0, f"Evaluating {len(view)} samples")
    result = refseg.evaluate(
        view,
        ctx.params["pred_field"],
        ctx.params["gt_field"],
        eval_key=ctx.params["eval_key"],
        classes=ctx.params.get("classes") or None,
        use_masks=_forms.param(
            ctx, "use_masks", _forms.engine_default(refseg.evaluate, "use_masks")
        ),
        overwrite=bool(ctx.params.get("overwrite", False)),
        skip_failures=bool(
            _forms.param(
                ctx, "skip_failures", _forms.engine_default(refseg.evaluate, "skip_failures")
            )
        ),
        failures=report,
    )
    progress(1.0, "Evaluation stored")
    return {
        "eval_key": ctx.params["eval_key"],
        "segm_AP": result.segm["AP"],
        "bbox_AP": result.bbox["AP"],
        "coco": coco_markdown(result),
        **_forms.failure_results(report),
    }


def coco_markdown(report) -> str:
    """The 12 COCO statistics (bbox | segm) and the per-class AP as markdown tables."""
    from refseg.coco_metrics import STAT_NAMES

    stats = "\n".join(
        f"| {name} | {report.bbox[name]:.3f} | {report.segm[name]:.3f} |" for name in STAT_NAMES
    )
    classes = "\n".join(
        f"| {name} | {100 * report.per_class_ap['bbox'][name]:.1f} | "
        f"{100 * report.per_class_ap['segm'][name]:.1f} |"
        for name in report.classes
    )
    head = f"{report.num_images} images, {len(report.classes)} classes"
    if report.fiftyone_map is not None:
        head += f"; FiftyOne {report.fiftyone_iou_type} mAP {report.fiftyone_map:.3f}"
    return (
        f"{head}\n\n| metric | bbox | segm |\n|---|---|---|\n{stats}\n\n"
        f"| class | bbox AP % | segm AP % |\n|---|---|---|\n{classes}"
    )
