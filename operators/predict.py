"""Operator: apply a memory bank to samples, writing a Detections field; resumable."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms

WRITE_EVERY = 8
"""Samples per database write: what an interrupted run can lose and re-does on 'continue'."""

TUNABLE = ("points_per_side", "score_threshold", "max_detections", "use_bank_thresholds")
"""The ``PredictConfig`` fields the form offers; the others keep their defaults."""


class Predict(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "predict",
            "refseg: predict",
            "Segment samples with a memory bank into a label field",
            delegation="default",
        )

    def __call__(
        self,
        sample_collection,
        bank,
        label_field,
        *,
        points_per_side=None,
        score_threshold=None,
        max_detections=None,
        use_bank_thresholds=None,
        batch_size=None,
        sam2=None,
        random_weights=None,
        device=None,
        overwrite=False,
        resume=False,
        shards=None,
        delegate=False,
        delegation_target=None,
    ):
        """Segments the samples with the stored memory bank ``bank`` into ``label_field``
        (see ``refseg.predict``). An existing field is refused unless ``overwrite=True``
        (replace) or ``resume=True`` (continue an interrupted run: only samples without a
        value are predicted). None arguments take the ``PredictConfig`` / engine defaults;
        ``random_weights`` defaults to what the bank was built with. The bank's negative
        references are always used; ``use_bank_thresholds=True`` also applies its per-class
        score thresholds. ``shards`` > 1 queues the run as that many delegated shard
        operations for ``fiftyone delegated launch`` workers (see ``refseg.runs``); the
        results then name the run (``refseg.run_status``).

        Example::

            predict = foo.get_operator("@refseg/refseg/predict")
            predict(dataset.match_tags("unlabeled"), "my_bank", "refseg", delegate=True)
            predict(dataset, "my_bank", "refseg", shards=8)  # 8 operations, any 8 workers
        """
        existing = "overwrite" if overwrite else "continue" if resume else None
        params = dict(
            bank=bank,
            label_field=label_field,
            points_per_side=points_per_side,
            score_threshold=score_threshold,
            max_detections=max_detections,
            use_bank_thresholds=use_bank_thresholds,
            batch_size=batch_size,
            sam2=sam2,
            random_weights=random_weights,
            device=device,
            existing=existing,
            shards=shards,
        )
        return _common.call_operator(
            self, sample_collection, params, delegate=delegate, delegation_target=delegation_target
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _inputs(ctx, inputs)
        return _forms.form(inputs, "Predict")

    def execute(self, ctx):
        return _common.run_job(
            ctx, self, lambda progress: _predict(ctx, progress), lambda results: _effects(ctx)
        )

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        queued = _forms.queued_run_output(ctx)
        if queued is not None:
            return queued
        outputs = types.Object()
        outputs.str("label_field", label="Label field")
        outputs.int("num_samples", label="Samples predicted")
        outputs.int("num_detections", label="Detections written")
        outputs.int("num_skipped", label="Samples skipped (unreadable or failed)")
        if ctx.results.get("skipped"):
            outputs.str("skipped", label="Skipped samples (run again with Continue to retry)")
        return _forms.output_form(outputs, "Predictions written")


def _inputs(ctx, inputs) -> None:
    view = _forms.target_view(ctx, inputs, "Predict on")
    key = _forms.bank_choice(ctx, inputs)
    if key is None:
        return
    bank = _forms.bank_models(ctx, inputs, key)
    field = _forms.new_field_name(
        ctx,
        inputs,
        "label_field",
        "Label field",
        "The Detections field to write",
        default=f"{key}_predictions",
    )
    if field is not None and view is not None:
        _existing_field_inputs(ctx, inputs, view, field, bank)
    if bank is None:
        return
    settings_inputs(inputs)
    _forms.shards_input(inputs, "run")
    _forms.delegation_notice(ctx, inputs)


def settings_inputs(inputs) -> None:
    """The prediction settings offered in forms, with the ``PredictConfig`` defaults."""
    import refseg
    from refseg.config import PredictConfig

    defaults = PredictConfig()
    inputs.int(
        "points_per_side",
        default=defaults.points_per_side,
        min=1,
        label="Points per side",
        description="Prompt grid density (points_per_side²)",
    )
    inputs.float(
        "score_threshold",
        default=defaults.score_threshold,
        label="Score threshold",
        description=(
            "Detections whose final confidence (after the soft merge of overlapping masks) "
            "is at or below this are dropped"
        ),
    )
    inputs.int(
        "max_detections",
        default=defaults.max_detections,
        min=1,
        label="Max detections",
        description="The most detections kept per image",
    )
    inputs.bool(
        "use_bank_thresholds",
        default=defaults.use_bank_thresholds,
        label="Use the bank's thresholds",
        description="Also drop detections at or below their class's threshold stored with the "
        "bank ('suggest thresholds' stores them)",
        view=types.CheckboxView(),
    )
    inputs.int(
        "batch_size",
        default=_forms.engine_default(refseg.predict, "batch_size"),
        min=1,
        label="Batch size",
        description="Images encoded together",
    )


def _existing_field_inputs(ctx, inputs, view, field: str, bank) -> None:
    """Refuses a field refseg may not write (``refseg.field_safety``: reserved, holding the
    bank's references, another type); an existing Detections field needs Continue or
    Overwrite."""
    from refseg.field_safety import output_field_problem

    problem = output_field_problem(view, field, overwrite=True, bank=bank)
    if _forms.field_problem(inputs, "label_field_refused", problem):
        return
    if field not in ctx.dataset.get_field_schema():
        return
    done = len(view.exists(field))
    choices = types.RadioGroup()
    choices.add_choice(
        "continue",
        label="Continue",
        description="Predict only the samples without a value (resume a run)",
    )
    choices.add_choice(
        "overwrite", label="Overwrite", description="Replace the field's values on these samples"
    )
    inputs.enum(
        "existing",
        choices.values(),
        label=f"Field '{field}' exists",
        view=choices,
        description=f"{done} of {len(view)} target samples already have predictions",
    )
    if ctx.params.get("existing") not in ("continue", "overwrite"):
        _forms.error(
            inputs,
            "field_exists",
            f"Field '{field}' already exists ({done} of {len(view)} samples done): "
            "choose Continue or Overwrite, or another field name",
        )


def predict_config(ctx):
    """``PredictConfig`` with the form's settings over its defaults."""
    import dataclasses

    from refseg.config import PredictConfig

    given = {name: ctx.params[name] for name in TUNABLE if ctx.params.get(name) is not None}
    return dataclasses.replace(PredictConfig(), **given)


def _predict(ctx, progress) -> dict:
    import refseg

    key, field = ctx.params["bank"], ctx.params["label_field"]
    view = ctx.target_view()
    existing = ctx.params.get("existing")
    shards = _forms.shards_of(ctx)
    if shards > 1:
        return _queue_shards(ctx, progress, view, key, field, existing, shards)
    todo = len(view.exists(field, False)) if existing == "continue" else len(view)
    bank = refseg.load_bank(ctx.dataset, key)
    progress(0.0, f"Loading models; {todo} samples to predict")
    result = refseg.predict(
        view,
        bank,
        field,
        config=predict_config(ctx),
        batch_size=int(
            _forms.param(ctx, "batch_size", _forms.engine_default(refseg.predict, "batch_size"))
        ),
        device=_forms.device_of(ctx),
        models=_forms.models_of(ctx, bank),
        num_workers=None if ctx.delegated else 0,
        write_every=WRITE_EVERY,
        overwrite=existing == "overwrite",
        resume=existing == "continue",
        cache=_common.MODEL_CACHE.get(),
        progress=lambda done, total: progress(done / total, f"Predicted {done} of {total} samples"),
    )
    return {
        "label_field": field,
        "num_samples": result.num_samples,
        "num_detections": result.num_detections,
        "num_skipped": len(result.failures),
        "skipped": result.failures.summary(limit=20) if result.failures else "",
    }


def _queue_shards(ctx, progress, view, key, field, existing, shards) -> dict:
    """Queues the run as ``shards`` delegated operations (``refseg.runs``); returns at once."""
    import refseg
    from refseg.runs import queue_predict

    progress(0.0, f"Queueing {shards} shard operations")
    bank = refseg.load_bank(ctx.dataset, key)
    status = queue_predict(
        view,
        key,
        field,
        shards=shards,
        models=_forms.models_of(ctx, bank),
        config=predict_config(ctx),
        batch_size=int(
            _forms.param(ctx, "batch_size", _forms.engine_default(refseg.predict, "batch_size"))
        ),
        device=_forms.device_of(ctx),
        write_every=WRITE_EVERY,
        overwrite=existing == "overwrite",
        resume=existing == "continue",
        delegation_target=ctx.delegation_target,
    )
    return {"label_field": field, **_forms.queued_run_results(status)}


def _effects(ctx) -> list:
    return [ctx.ops.reload_dataset(), ctx.ops.set_view(view=ctx.target_view())]
