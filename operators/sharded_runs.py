"""Operator: the sharded runs of a dataset (predict, boxes to masks, bank builds): the state of
every shard, re-queue, cancel."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms

ACTIONS = {
    "status": "Status: progress and the state of every shard",
    "rerun": "Re-queue the failed, lost or missing shards (they resume)",
    "cancel": "Cancel: queued shards are not started; what was written stays",
}

RECENT = 20
"""Runs offered in the form, newest first."""


class ShardedRuns(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "sharded_runs",
            "refseg: sharded runs",
            "Follow the sharded runs of this dataset; re-queue failed shards or cancel",
            delegation="never",
        )

    def __call__(self, sample_collection, run_id, action="status"):
        """Runs ``action`` (``"status"``, ``"rerun"`` or ``"cancel"``) on the sharded run
        ``run_id`` of the dataset and returns its summary (see ``refseg.run_status``).

        Example::

            runs = foo.get_operator("@refseg/refseg/sharded_runs")
            runs(dataset, run_id, "rerun")
        """
        params = dict(run_id=run_id, action=action)
        return _common.call_operator(self, sample_collection, params)

    def resolve_input(self, ctx):
        inputs = types.Object()
        _inputs(ctx, inputs)
        return _forms.form(inputs, "Sharded runs")

    def execute(self, ctx):
        return _common.run_job(ctx, self, lambda progress: _run(ctx, progress))

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        outputs.str("state", label="State")
        outputs.float("progress", label="Progress")
        _forms.summary(outputs)
        return _forms.output_form(outputs, "Sharded run")


def _inputs(ctx, inputs) -> None:
    from refseg.run_record import list_sharded_runs, load_run

    runs = list_sharded_runs(ctx.dataset)[-RECENT:][::-1]
    if not runs:
        _forms.error(
            inputs,
            "no_runs",
            "This dataset has no sharded runs: queue one with Shards > 1 in predict, boxes to "
            "masks or build memory bank",
        )
        return
    choices = types.DropdownView()
    for run_id in runs:
        run = load_run(ctx.dataset, run_id)
        created = run["created"].strftime("%Y-%m-%d %H:%M")
        task = run.get("task", "predict").replace("_", " ")
        target = run.get("target", f"field:{run.get('label_field')}").split(":", 1)[1]
        choices.add_choice(
            run_id,
            label=f"{task} {target} ({run['num_shards']} shards, {created} UTC)",
            description=run_id,
        )
    inputs.enum("run_id", choices.values(), default=runs[0], required=True, label="Run",
                view=choices)  # fmt: skip
    actions = types.RadioGroup()
    for value, label in ACTIONS.items():
        actions.add_choice(value, label=label)
    inputs.enum("action", actions.values(), default="status", label="Action", view=actions)


def _run(ctx, progress) -> dict:
    import refseg

    run_id, action = ctx.params["run_id"], _forms.param(ctx, "action", "status")
    if action == "rerun":
        status = refseg.rerun_shards(ctx.dataset, run_id)
    elif action == "cancel":
        status = refseg.cancel_run(ctx.dataset, run_id)
    else:
        status = refseg.run_status(ctx.dataset, run_id)
    progress(1.0, status.state)
    return {
        "state": status.state,
        "progress": round(status.progress, 4),
        "summary": f"```\n{status.summary()}\n```",
    }
