"""Calling the plugin's operators from tests: the operator by name, what an immediate run showed
in the App, the operators it triggered, and executing queued shard operations as a worker."""

from __future__ import annotations

import fiftyone.operators as foo

PLUGIN = "@refseg/refseg"


def op(name: str) -> foo.Operator:
    return foo.get_operator(f"{PLUGIN}/{name}")


def shown(result) -> dict:
    """The results an immediate run showed in the App (its ``show_output`` request)."""
    requests = result.executor.to_json()["requests"]
    return next(r["params"]["results"] for r in requests if r["operator_uri"] == "show_output")


def triggered(result) -> list[str]:
    return [r["operator_uri"] for r in result.executor.to_json()["requests"]]


def execute_shards(dataset, limit: int | None = None) -> list:
    """Executes the queued shard operations of ``dataset`` in this process, as a
    ``fiftyone delegated launch`` worker executes them; returns their outcomes."""
    from fiftyone.operators.delegated import DelegatedOperationService

    from refseg.run_record import SHARD_OPERATOR

    return DelegatedOperationService().execute_queued_operations(
        operator=SHARD_OPERATOR, dataset_name=dataset.name, limit=limit
    )
