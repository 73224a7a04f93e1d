"""Operator: encode reference labels into a memory bank stored with the dataset."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms


class BuildMemoryBank(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "build_memory_bank",
            "refseg: build memory bank",
            "Encode reference labels with DINOv2 into a named memory bank",
            delegation="default",
        )

    def __call__(
        self,
        sample_collection,
        gt_field,
        name,
        *,
        tag=None,
        all_labels=False,
        sam2=None,
        dinov2=None,
        random_weights=False,
        device=None,
        context_ratio=None,
        mask_downsample=None,
        batch_size=None,
        overwrite=False,
        skip_failures=None,
        selected_labels=None,
        shards=None,
        delegate=False,
        delegation_target=None,
    ):
        """Builds a memory bank from the reference labels of ``gt_field`` and stores it with the
        dataset as ``name`` (see ``refseg.build_memory_bank``).

        The references are the labels tagged ``tag`` (default ``refseg.DEFAULT_TAG``), or every
        label of the field with ``all_labels=True``; ``selected_labels`` (App format) restricts
        them to those labels. ``skip_failures=True`` leaves out references whose image cannot
        be read (listed in the output) instead of failing. ``shards`` > 1 queues the build as
        that many delegated shard operations for ``fiftyone delegated launch`` workers (many
        references; the last shard stores the bank), and the results name the run
        (``refseg.run_status``). None arguments take the engine's defaults.

        Example::

            build = foo.get_operator("@refseg/refseg/build_memory_bank")
            build(dataset, "ground_truth", "my_bank", dinov2="dinov2_vitl14", delegate=True)
        """
        params = dict(
            gt_field=gt_field,
            name=name,
            tag=tag,
            source="all" if all_labels else "tagged",
            sam2=sam2,
            dinov2=dinov2,
            random_weights=random_weights,
            device=device,
            context_ratio=context_ratio,
            mask_downsample=mask_downsample,
            batch_size=batch_size,
            overwrite=overwrite,
            skip_failures=skip_failures,
            shards=shards,
        )
        if selected_labels:
            params["view_target"] = "SELECTED_LABELS"
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
        return _forms.form(inputs, "Build memory bank")

    def execute(self, ctx):
        return _common.run_job(ctx, self, lambda progress: _build(ctx, progress), _effects(ctx))

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        queued = _forms.queued_run_output(ctx)
        if queued is not None:
            return queued
        outputs = types.Object()
        outputs.str("name", label="Memory bank")
        outputs.int("num_references", label="References")
        _forms.summary(outputs)
        _forms.failures_output(outputs)
        return _forms.output_form(outputs, "Memory bank built")


def _inputs(ctx, inputs) -> None:
    import refseg
    from refseg.config import ReferenceConfig

    view = _forms.target_view(ctx, inputs, "Take reference labels from", allow_selected_labels=True)
    gt_field = _forms.detections_field(
        ctx,
        inputs,
        "gt_field",
        "Reference field",
        "The Detections field of the references",
        default="ground_truth",
    )
    if view is None or gt_field is None:
        return
    if _forms.reference_inputs(ctx, inputs, view, gt_field) is None:
        return
    _name_input(ctx, inputs)
    _forms.model_inputs(ctx, inputs)
    defaults = ReferenceConfig()
    inputs.float(
        "context_ratio",
        default=defaults.context_ratio,
        min=0.0,
        label="Context ratio",
        description="Context around each reference crop, as a fraction of its box",
    )
    choices = types.RadioGroup()
    for mode in ("area", "nearest"):
        choices.add_choice(mode, label=mode)
    inputs.enum(
        "mask_downsample",
        choices.values(),
        default=defaults.mask_downsample,
        label="Mask downsampling",
        view=choices,
        description="area keeps thin objects; nearest is the paper's",
    )
    inputs.int(
        "batch_size",
        default=_forms.engine_default(refseg.build_memory_bank, "batch_size"),
        min=1,
        label="Batch size",
        description="Reference crops encoded together",
    )
    inputs.bool(
        "skip_failures",
        default=_forms.engine_default(refseg.build_memory_bank, "skip_failures"),
        label="Skip unreadable images",
        description="Leave out references whose image cannot be read (they are listed) "
        "instead of failing",
        view=types.CheckboxView(),
    )
    _forms.shards_input(inputs, "encoding")
    _forms.delegation_notice(ctx, inputs)


def _name_input(ctx, inputs) -> None:
    from refseg import list_banks

    inputs.str(
        "name",
        default="bank",
        required=True,
        label="Bank name",
        description="Stored with the dataset under this name (letters, digits, _)",
    )
    name = ctx.params.get("name", "bank") or ""
    if not name.isidentifier():
        _forms.error(
            inputs, "name_invalid", f"'{name}' is not a valid bank name (letters, digits, _)"
        )
    elif name in list_banks(ctx.dataset):
        inputs.bool(
            "overwrite",
            default=False,
            label=f"Replace the bank '{name}'",
            view=types.CheckboxView(),
        )
        if not ctx.params.get("overwrite", False):
            _forms.error(
                inputs,
                "name_taken",
                f"A memory bank named '{name}' exists: tick 'Replace' or choose another name",
            )
    else:
        from refseg.field_safety import bank_name_problem

        problem = bank_name_problem(ctx.dataset, name, overwrite=False)
        _forms.field_problem(inputs, "name_taken", problem)


def _build(ctx, progress) -> dict:
    import refseg
    from refseg.config import ReferenceConfig
    from refseg.failures import FailureReport

    defaults = ReferenceConfig()
    config = ReferenceConfig(
        context_ratio=float(_forms.param(ctx, "context_ratio", defaults.context_ratio)),
        mask_downsample=_forms.param(ctx, "mask_downsample", defaults.mask_downsample),
    )
    tag = _forms.reference_tag(ctx)
    report = FailureReport("build_memory_bank")
    shards = _forms.shards_of(ctx)
    progress(0.0, "Loading models and encoding references" if shards == 1 else "Queueing shards")
    bank = refseg.build_memory_bank(
        ctx.target_view(),
        ctx.params["gt_field"],
        models=_forms.models_of(ctx),
        device=_forms.device_of(ctx),
        tag=tag,
        config=config,
        batch_size=int(
            _forms.param(
                ctx, "batch_size", _forms.engine_default(refseg.build_memory_bank, "batch_size")
            )
        ),
        name=ctx.params["name"],
        overwrite=bool(ctx.params.get("overwrite", False)),
        cache=_common.MODEL_CACHE.get(),
        progress=lambda done, total: progress(done / total, f"Encoded {done}/{total} references"),
        skip_failures=bool(
            _forms.param(
                ctx,
                "skip_failures",
                _forms.engine_default(refseg.build_memory_bank, "skip_failures"),
            )
        ),
        failures=report,
        shards=shards,
        delegate=shards > 1,
        delegation_target=ctx.delegation_target,
    )
    if shards > 1:
        return _forms.queued_run_results(bank)  # a RunStatus
    progress(1.0, f"Stored memory bank '{ctx.params['name']}'")
    return {
        "name": ctx.params["name"],
        "num_references": len(bank.references),
        "summary": bank_summary(bank),
        **_forms.failure_results(report),
    }


def bank_summary(bank) -> str:
    """Markdown: the bank's classes with their positive (shots) and negative references and
    their stored score threshold, and its models."""
    rows = "\n".join(
        f"| {name} | {count['positive']} | {count['negative']} | {bank.thresholds.get(name, '-')} |"
        for name, count in bank.counts().items()
    )
    return (
        f"| class | shots | negatives | threshold |\n|---|---|---|---|\n{rows}\n\n"
        f"Encoder: `{bank.encoder.get('name')}` ({bank.encoder.get('weights')}); "
        f"SAM2: `{bank.proposer.get('name')}`; settings: `{bank.settings.to_dict()}`"
    )


def _effects(ctx):
    return lambda results: [ctx.ops.reload_dataset()]
