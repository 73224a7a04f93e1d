"""Operator: SAM2 box prompts fill in the masks of box-only reference labels."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms


class BoxesToMasks(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "boxes_to_masks",
            "refseg: boxes to masks",
            "Make masks for box-only labels with SAM2 box prompts",
            delegation="default",
        )

    def __call__(
        self,
        sample_collection,
        gt_field,
        *,
        output_field=None,
        tag=None,
        all_labels=False,
        sam2=None,
        random_weights=False,
        device=None,
        skip_failures=True,
        shards=None,
        delegate=False,
        delegation_target=None,
    ):
        """Fills the masks of the box-only labels of ``gt_field`` (those tagged ``tag``, default
        ``refseg.DEFAULT_TAG``, or all with ``all_labels=True``): in place, or in
        ``output_field``, a copy of ``gt_field`` with the masks filled. Samples whose image
        cannot be read are skipped and listed in the output (``skip_failures=False`` fails at
        the first one, after writing the masks already made). ``shards`` > 1 queues the work
        as that many delegated shard operations for ``fiftyone delegated launch`` workers, and
        the results name the run (``refseg.run_status``).

        Example::

            boxes_to_masks = foo.get_operator("@refseg/refseg/boxes_to_masks")
            boxes_to_masks(dataset, "ground_truth", output_field="gt_masks", delegate=True)
        """
        params = dict(
            gt_field=gt_field,
            write="new_field" if output_field else "in_place",
            output_field=output_field,
            tag=tag,
            source="all" if all_labels else "tagged",
            sam2=sam2,
            random_weights=random_weights,
            device=device,
            skip_failures=skip_failures,
            shards=shards,
        )
        return _common.call_operator(
            self, sample_collection, params, delegate=delegate, delegation_target=delegation_target
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _inputs(ctx, inputs)
        return _forms.form(inputs, "Boxes to masks")

    def execute(self, ctx):
        return _common.run_job(
            ctx,
            self,
            lambda progress: _fill(ctx, progress),
            lambda results: [ctx.ops.reload_dataset()],
        )

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        queued = _forms.queued_run_output(ctx)
        if queued is not None:
            return queued
        outputs = types.Object()
        outputs.int("num_masks", label="Masks made")
        outputs.str("field", label="Written to")
        outputs.int("num_failures", label="Samples skipped")
        _forms.failures_output(outputs)
        return _forms.output_form(outputs, "Boxes to masks")


def _inputs(ctx, inputs) -> None:
    view = _forms.target_view(ctx, inputs, "Make masks in", allow_selected_labels=True)
    gt_field = _forms.detections_field(
        ctx,
        inputs,
        "gt_field",
        "Label field",
        "The Detections field with box-only labels",
        default="ground_truth",
    )
    if view is None or gt_field is None:
        return
    labels = _forms.reference_inputs(ctx, inputs, view, gt_field)
    if labels is None:
        return
    if not labels.filter_labels(gt_field, _forms.no_mask()).count(f"{gt_field}.detections"):
        _forms.error(inputs, "no_boxes", "Every chosen label already has a mask")
        return
    choices = types.RadioGroup()
    choices.add_choice("in_place", label="In place", description=f"Set the masks on '{gt_field}'")
    choices.add_choice(
        "new_field",
        label="New field",
        description=f"Write a copy of '{gt_field}' with the masks filled",
    )
    inputs.enum("write", choices.values(), default="in_place", label="Write", view=choices)
    if _forms.param(ctx, "write", "in_place") == "new_field":
        field = _forms.new_field_name(
            ctx,
            inputs,
            "output_field",
            "New field",
            "Created as a copy of the label field",
            default=f"{gt_field}_masks",
        )
        if field is not None:
            from refseg.field_safety import new_field_problem

            problem = new_field_problem(ctx.dataset, field, what="output_field")
            _forms.field_problem(inputs, "field_exists", problem)
    _forms.model_inputs(ctx, inputs, dinov2=False)
    inputs.bool(
        "skip_failures",
        default=True,
        label="Skip unreadable images",
        description="Skip samples whose image cannot be read (they are listed) instead of failing",
        view=types.CheckboxView(),
    )
    _forms.shards_input(inputs, "work")
    _forms.delegation_notice(ctx, inputs)


def _fill(ctx, progress) -> dict:
    import refseg

    gt_field = ctx.params["gt_field"]
    output_field = None
    if _forms.param(ctx, "write", "in_place") == "new_field":
        output_field = ctx.params["output_field"]
    shards = _forms.shards_of(ctx)
    progress(0.0, "Loading SAM2" if shards == 1 else "Queueing shards")
    result = refseg.fill_box_masks(
        ctx.target_view(),
        gt_field,
        output_field=output_field,
        tag=_forms.reference_tag(ctx),
        models=_forms.models_of(ctx),
        device=_forms.device_of(ctx),
        cache=_common.MODEL_CACHE.get(),
        skip_failures=bool(_forms.param(ctx, "skip_failures", True)),
        progress=lambda done, total: progress(done / total, f"Made {done} of {total} masks"),
        shards=shards,
        delegate=shards > 1,
        delegation_target=ctx.delegation_target,
    )
    if shards > 1:
        return _forms.queued_run_results(result)  # a RunStatus
    return {
        "num_masks": result.num_masks,
        "field": result.field,
        **_forms.failure_results(result.failures),
    }
