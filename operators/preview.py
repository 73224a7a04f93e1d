"""Operator: try a memory bank on the open sample or a few selected ones, right away."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms
from .predict import predict_config, settings_inputs

MAX_SAMPLES = 4
"""The most samples one preview runs on (it always runs immediately)."""

FIELD = "refseg_preview"
"""The default field the preview writes (replaced by each preview)."""


class Preview(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "preview",
            "refseg: preview a memory bank",
            f"Run a bank on the open sample or up to {MAX_SAMPLES} selected samples",
            delegation="never",
        )

    def __call__(
        self,
        sample_collection,
        bank,
        sample_ids,
        *,
        label_field=FIELD,
        points_per_side=None,
        score_threshold=None,
        max_detections=None,
        use_bank_thresholds=None,
        sam2=None,
        random_weights=None,
        device=None,
    ):
        """Runs ``bank`` on the samples ``sample_ids`` (at most ``MAX_SAMPLES``), replacing
        ``label_field`` on them. Always immediate. ``use_bank_thresholds=True`` applies the
        bank's per-class score thresholds.

        Example::

            preview = foo.get_operator("@refseg/refseg/preview")
            preview(dataset, "my_bank", [sample.id])
        """
        params = dict(
            bank=bank,
            label_field=label_field,
            points_per_side=points_per_side,
            score_threshold=score_threshold,
            max_detections=max_detections,
            use_bank_thresholds=use_bank_thresholds,
            sam2=sam2,
            random_weights=random_weights,
            device=device,
        )
        return _common.call_operator(self, sample_collection, params, selected=list(sample_ids))

    def resolve_input(self, ctx):
        inputs = types.Object()
        _inputs(ctx, inputs)
        return _forms.form(inputs, "Preview a memory bank")

    def execute(self, ctx):
        return _common.run_job(
            ctx, self, lambda progress: _preview(ctx, progress), lambda results: _effects(ctx)
        )

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        _forms.summary(outputs)
        return _forms.output_form(outputs, "Preview")


def _sample_ids(ctx) -> list[str]:
    """The open sample, else the selected samples."""
    return [ctx.current_sample] if ctx.current_sample else list(ctx.selected)


def _inputs(ctx, inputs) -> None:
    ids = _sample_ids(ctx)
    if not ids:
        _forms.error(
            inputs,
            "no_samples",
            f"Open a sample, or select 1 to {MAX_SAMPLES} samples, to preview on",
        )
        return
    if len(ids) > MAX_SAMPLES:
        _forms.error(
            inputs,
            "too_many",
            f"{len(ids)} samples are selected; a preview runs on at most {MAX_SAMPLES} "
            "(use 'refseg: predict' for more)",
        )
        return
    _forms.notice(inputs, "samples", f"Preview on {len(ids)} sample(s)")
    from refseg.field_safety import output_field_problem

    key = _forms.bank_choice(ctx, inputs)
    if key is None:
        return
    bank = _forms.bank_models(ctx, inputs, key)
    if bank is None:
        return
    field = _forms.new_field_name(
        ctx,
        inputs,
        "label_field",
        "Preview field",
        "Replaced on these samples by each preview",
        default=FIELD,
    )
    if field is not None:
        problem = output_field_problem(ctx.dataset, field, overwrite=True, bank=bank)
        _forms.field_problem(inputs, "label_field_refused", problem)
    settings_inputs(inputs)


def _preview(ctx, progress) -> dict:
    import refseg

    key, field = ctx.params["bank"], _forms.param(ctx, "label_field", FIELD)
    bank = refseg.load_bank(ctx.dataset, key)
    view = ctx.dataset.select(_sample_ids(ctx), ordered=True)
    progress(0.0, f"Segmenting {len(view)} sample(s)")
    result = refseg.predict(
        view,
        bank,
        field,
        config=predict_config(ctx),
        device=_forms.device_of(ctx),
        models=_forms.models_of(ctx, bank),
        num_workers=0,
        overwrite=True,
        cache=_common.MODEL_CACHE.get(),
        progress=lambda done, total: progress(done / total, f"Segmented {done} of {total}"),
    )
    per_class = view.count_values(f"{field}.detections.label")
    rows = "\n".join(f"| {name} | {n} |" for name, n in sorted(per_class.items()))
    skipped = f"\n\n{result.failures.summary()}" if result.failures else ""
    return {
        "summary": f"{result.num_detections} detections in `{field}`\n\n"
        f"| class | detections |\n|---|---|\n{rows}{skipped}"
    }


def _effects(ctx) -> list:
    effects = [ctx.ops.reload_dataset()]
    if not ctx.current_sample:
        effects.append(ctx.ops.set_view(view=ctx.dataset.select(_sample_ids(ctx))))
    return effects
