"""Calling the plugin's operators from tests: the operator by name, what an immediate run showed
in the App, and the operators it triggered."""

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
