"""Operator: one shard of a sharded predict run, executed by a delegated worker.

Not offered in the App: ``refseg.runs`` queues one such operation per shard (from
``refseg.predict(..., shards=N, delegate=True)`` or the predict operator with ``shards`` > 1),
and ``fiftyone delegated launch`` workers execute them. Each loads its models once per worker
process (the process's model cache) and predicts the shard's samples that have no value yet.
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms


class PredictShard(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "predict_shard",
            "refseg: predict shard",
            "One shard of a sharded predict run (queued by refseg)",
            delegation="allowed",
            unlisted=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("run_id", required=True, label="Run", description="The sharded run")
        inputs.int("shard", required=True, min=0, label="Shard", description="0-based index")
        return _forms.form(inputs, "Predict one shard")

    def execute(self, ctx):
        return _common.run_job(ctx, self, lambda progress: _run(ctx, progress))

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        outputs.str("run_id", label="Run")
        outputs.int("shard", label="Shard")
        outputs.int("num_samples", label="Samples predicted by this execution")
        outputs.int("num_detections", label="Detections written")
        outputs.int("num_skipped", label="Samples skipped (unreadable or failed)")
        return _forms.output_form(outputs, "Shard done")


def _run(ctx, progress) -> dict:
    import refseg

    run_id, index = ctx.params["run_id"], int(ctx.params["shard"])
    operation = ctx.request_params.get("run_doc")
    result = refseg.run_shard(
        ctx.dataset,
        run_id,
        index,
        operation_id=None if operation is None else str(operation),
        cache=_common.MODEL_CACHE.get(),
        progress=lambda done, total: progress(
            done / total if total else 1.0, f"Shard {index}: {done} of {total} samples"
        ),
    )
    return {
        "run_id": run_id,
        "shard": index,
        "num_samples": result.num_samples,
        "num_detections": result.num_detections,
        "num_skipped": len(result.failures),
    }
