"""Operator: one shard of a sharded run (predict, boxes to masks or a bank), executed by a
delegated worker.

Not offered in the App: ``refseg.runs`` queues one such operation per shard (from
``refseg.predict``, ``refseg.fill_box_masks`` or ``refseg.build_memory_bank`` with
``shards=N, delegate=True``, or their operators with ``shards`` > 1), and ``fiftyone delegated
launch`` workers execute them. Each loads its models once per worker process (the process's
model cache) and does the shard's samples not done yet.
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms


class RunShard(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "run_shard",
            "refseg: run shard",
            "One shard of a sharded refseg run (queued by refseg)",
            delegation="allowed",
            unlisted=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("run_id", required=True, label="Run", description="The sharded run")
        inputs.int("shard", required=True, min=0, label="Shard", description="0-based index")
        return _forms.form(inputs, "Run one shard")

    def execute(self, ctx):
        return _common.run_job(ctx, self, lambda progress: _run(ctx, progress))

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        outputs.str("run_id", label="Run")
        outputs.int("shard", label="Shard")
        outputs.str("task", label="Task")
        outputs.int("num_samples", label="Samples done by this execution")
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
            done / total if total else 1.0, f"Shard {index}: {done} of {total} done"
        ),
    )
    status = refseg.run_status(ctx.dataset, run_id)
    return {
        "run_id": run_id,
        "shard": index,
        "task": status.task,
        "num_samples": status.shards[index].history[-1]["num_samples"],
        "num_skipped": len(result.failures),
    }
