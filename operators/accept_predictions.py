"""Operators: accept predictions into a ground-truth field with provenance, and undo an accept
(``refseg.accept`` / ``refseg.undo_accept``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms

WHICH = {
    "all": "Every prediction of the chosen samples (as the view shows them)",
    "thresholds": "Those above the memory bank's per-class thresholds",
    "selected": "The selected labels",
    "tagged": "Those carrying a label tag",
}


class AcceptPredictions(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "accept_predictions",
            "refseg: accept predictions",
            "Copy predictions into a ground-truth field, with provenance; never duplicates",
            delegation="allowed",
        )

    def __call__(
        self,
        sample_collection,
        pred_field,
        gt_field,
        *,
        which="all",
        bank=None,
        tag=None,
        iou=None,
        skip_overlapping=True,
        selected_labels=None,
        delegate=False,
        delegation_target=None,
    ):
        """Copies predictions of ``pred_field`` into ``gt_field`` (see ``refseg.accept``):
        ``which`` is ``"all"``, ``"thresholds"`` (above the stored thresholds of the bank
        ``bank``), ``"selected"`` (``selected_labels``, as ``ctx.selected_labels``) or
        ``"tagged"`` (carrying ``tag``). ``bank`` is also recorded as the labels' provenance.
        The result's ``accept_id`` undoes it (the ``undo_accept`` operator).

        Example::

            accept = foo.get_operator("@refseg/refseg/accept_predictions")
            accept(dataset, "refseg", "ground_truth", which="thresholds", bank="my_bank")
        """
        params = dict(
            pred_field=pred_field,
            gt_field=gt_field,
            which=which,
            bank=bank,
            tag=tag,
            iou=iou,
            skip_overlapping=skip_overlapping,
        )
        return _common.call_operator(
            self,
            sample_collection,
            params,
            delegate=delegate,
            delegation_target=delegation_target,
            selected_labels=selected_labels,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _inputs(ctx, inputs)
        return _forms.form(inputs, "Accept predictions into ground truth")

    def execute(self, ctx):
        return _common.run_job(
            ctx, self, lambda progress: _accept(ctx, progress), lambda r: [ctx.ops.reload_dataset()]
        )

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        outputs.str("accept_id", label="Accept id (undo with 'undo accept')")
        outputs.int("num_added", label="Labels added")
        outputs.int("num_skipped", label="Predictions skipped (duplicates)")
        outputs.str("skipped", label="Skipped", view=types.MarkdownView())
        return _forms.output_form(outputs, "Accepted")


class UndoAccept(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "undo_accept",
            "refseg: undo accept",
            "Remove exactly the labels one accept added",
            delegation="never",
            generator=False,
        )

    def __call__(self, sample_collection, accept_id, *, gt_field=None):
        """Removes the labels the accept ``accept_id`` added (``refseg.undo_accept``).

        Example::

            undo = foo.get_operator("@refseg/refseg/undo_accept")
            undo(dataset, result.result["accept_id"])
        """
        params = dict(accept_id=accept_id, gt_field=gt_field)
        return _common.call_operator(self, sample_collection, params)

    def resolve_input(self, ctx):
        import refseg

        inputs = types.Object()
        accepts = refseg.list_accepts(ctx.dataset)
        if not accepts:
            _forms.error(inputs, "no_accepts", "No accepted labels in this dataset to remove")
            return _forms.form(inputs, "Undo accept")
        choices = types.DropdownView()
        for accept_id, counts in accepts.items():
            where = ", ".join(f"{n} in '{f}'" for f, n in counts.items())
            choices.add_choice(accept_id, label=f"{accept_id}: {where}")
        latest = list(accepts)[-1]
        inputs.enum(
            "accept_id",
            choices.values(),
            default=latest,
            required=True,
            label="Accept",
            description="Its labels are removed; every other label stays",
            view=choices,
        )
        given = ctx.params.get("accept_id", latest)
        if given not in accepts:
            _forms.error(inputs, "unknown_accept", f"No label carries accept id '{given}'")
        return _forms.form(inputs, "Undo accept")

    def execute(self, ctx):
        import refseg

        removed = refseg.undo_accept(
            ctx.dataset, ctx.params["accept_id"], ctx.params.get("gt_field") or None
        )
        ctx.ops.reload_dataset()
        return {"removed": removed, "num_removed": sum(map(len, removed.values()))}

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        outputs.int("num_removed", label="Labels removed")
        return _forms.output_form(outputs, "Accept undone")


def _inputs(ctx, inputs) -> None:
    import refseg

    view = _forms.target_view(ctx, inputs, "Accept from")
    pred_field = _forms.detections_field(
        ctx, inputs, "pred_field", "Predictions field", "The predictions to accept"
    )
    if view is None or pred_field is None:
        return
    gt_field = _forms.new_field_name(
        ctx,
        inputs,
        "gt_field",
        "Ground truth field",
        "A Detections field (created if missing); its labels are never changed, new ones are "
        "appended",
        default="ground_truth",
    )
    if gt_field is not None:
        _gt_field_problem(ctx, inputs, view, gt_field, pred_field)
    choices = types.RadioGroup()
    for key, label in WHICH.items():
        choices.add_choice(key, label=label)
    which = _forms.param(ctx, "which", "all")
    inputs.enum("which", choices.values(), default="all", label="Accept", view=choices)
    _bank_input(ctx, inputs, required=which == "thresholds")
    if which == "tagged":
        _forms.tag_input(ctx, inputs, default="accept", description="The label tag to accept")
    if which == "selected":
        selected = [s for s in ctx.selected_labels if s["field"] == pred_field]
        if not selected:
            _forms.error(inputs, "no_selection", f"No labels of '{pred_field}' are selected")
        else:
            _forms.notice(inputs, "selection", f"{len(selected)} selected predictions")
    inputs.float(
        "iou",
        default=_forms.engine_default(refseg.accept, "iou"),
        min=0.05,
        max=1.0,
        label="Duplicate IoU",
        description="A prediction whose mask IoU with a label of its class already in the "
        "field is at least this is skipped",
    )
    inputs.bool(
        "skip_overlapping",
        default=True,
        label="Skip predictions that duplicate a label",
        view=types.CheckboxView(),
    )


def _gt_field_problem(ctx, inputs, view, gt_field, pred_field) -> None:
    from refseg.field_safety import field_name_problem

    problem = field_name_problem(view, gt_field, what="gt_field")
    if problem is None and gt_field == pred_field:
        problem = f"'{gt_field}' is the predictions field: accept into another field"
    schema = ctx.dataset.get_field_schema()
    if problem is None and gt_field in schema and gt_field not in _forms.detections_fields(view):
        problem = f"Field '{gt_field}' exists and is not a Detections field"
    _forms.field_problem(inputs, "gt_field_refused", problem)


def _bank_input(ctx, inputs, *, required: bool) -> None:
    import refseg

    banks = refseg.list_banks(ctx.dataset)
    choices = types.DropdownView()
    for key in banks:
        choices.add_choice(key, label=key)
    inputs.enum(
        "bank",
        choices.values(),
        required=required,
        label="Memory bank",
        description="The bank that made the predictions: recorded on the accepted labels, and "
        "its thresholds used with 'above the thresholds'",
        view=choices,
    )
    key = ctx.params.get("bank")
    if required and key in banks and not refseg.load_bank(ctx.dataset, key).thresholds:
        _forms.error(
            inputs, "no_thresholds", f"Bank '{key}' has no thresholds: run 'suggest thresholds'"
        )
    elif required and not banks:
        _forms.error(inputs, "no_banks", "This dataset has no memory bank")


def _accept(ctx, progress) -> dict:
    import refseg

    which = _forms.param(ctx, "which", "all")
    pred_field = ctx.params["pred_field"]
    key = ctx.params.get("bank") or None
    options = {}
    if which == "thresholds":
        options["thresholds"] = refseg.load_bank(ctx.dataset, key)
    elif which == "selected":
        options["label_ids"] = [
            s["label_id"] for s in ctx.selected_labels if s["field"] == pred_field
        ]
    elif which == "tagged":
        options["tag"] = _forms.param(ctx, "tag", "accept")
    progress(0.0, "Accepting predictions")
    result = refseg.accept(
        ctx.target_view(),
        pred_field,
        ctx.params["gt_field"],
        bank=key,
        iou=float(_forms.param(ctx, "iou", 0.5)),
        skip_overlapping=bool(_forms.param(ctx, "skip_overlapping", True)),
        **options,
    )
    progress(1.0, f"Added {len(result.added)} labels")
    skipped = "\n".join(f"- {s.label} {s.label_id}: {s.reason}" for s in result.skipped[:20])
    return {
        "accept_id": result.accept_id,
        "gt_field": result.gt_field,
        "added": list(result.added),
        "num_added": len(result.added),
        "num_skipped": len(result.skipped),
        "skipped": skipped,
    }
