"""What every refseg operator shares: config, Python calls, progress in both modes, models.

Nothing here imports ``refseg`` (and so torch) at module import: the App server re-runs the
plugin's ``register`` on requests, so the engine is imported inside functions, the first time a
form or an execution needs it.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterator

import fiftyone as fo
import fiftyone.operators as foo

Progress = Callable[[float, str], None]
"""Called as ``progress(fraction in [0, 1], label)`` while an operator works."""

Work = Callable[[Progress], dict]
"""The body of a heavy operator: does the job, reporting progress, and returns its results."""

PROGRESS_INTERVAL_S = 0.5
"""Progress updates closer together than this are dropped (the last one always goes out)."""


DELEGATION = {
    "default": dict(allow_delegated_execution=True, default_choice_to_delegated=True),
    "allowed": dict(allow_delegated_execution=True),
    "never": dict(allow_delegated_execution=False),
}
"""Execution modes: heavy operators default to delegated, light ones run immediately."""


def operator_config(
    name: str,
    label: str,
    description: str,
    *,
    delegation: str,
    generator: bool = True,
    unlisted: bool = False,
) -> foo.OperatorConfig:
    """The config every refseg operator uses: dynamic forms, immediate execution allowed;
    ``unlisted`` hides it from the App's operator browser (operators queued by refseg itself)."""
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        dynamic=True,
        allow_immediate_execution=True,
        execute_as_generator=generator,
        unlisted=unlisted,
        **DELEGATION[delegation],
    )


class ProcessModelCache:
    """The one ``refseg.models.ModelCache`` of this process, created on first use.

    Why a process-level object: the App server executes every immediate operation in the same
    long-lived process, so a SAM2 or DINOv2 model loaded for one request (seconds to a minute,
    gigabytes) is reused by the next instead of being loaded again. Delegated runs executed by
    ``fiftyone delegated launch`` share the cache of that process the same way. ``clear()``
    frees the models.
    """

    def __init__(self) -> None:
        self._cache = None
        self._lock = threading.Lock()

    def get(self):
        """The shared ``ModelCache``."""
        with self._lock:
            if self._cache is None:
                from refseg.models import ModelCache

                self._cache = ModelCache()
            return self._cache

    def clear(self) -> None:
        """Forgets every loaded model."""
        with self._lock:
            if self._cache is not None:
                self._cache.clear()


MODEL_CACHE = ProcessModelCache()


# -- Python entry point ---------------------------------------------------------------------


def call_operator(
    operator: foo.Operator,
    sample_collection: fo.core.collections.SampleCollection,
    params: dict[str, Any],
    *,
    delegate: bool = False,
    delegation_target: str | None = None,
    **request: Any,
) -> Any:
    """What each operator's ``__call__`` does: runs it on a dataset or view through FiftyOne's
    operator execution path (the App's path), immediately or queued for a delegated service.

    ``params`` equal to None are left out, so the operator applies its defaults (those of the
    engine's settings dataclasses). ``request`` holds further context keys such as
    ``selected``, ``selected_labels`` or ``current_sample``; those equal to None are left out.
    """
    if isinstance(sample_collection, fo.DatasetView):
        ctx = dict(view=sample_collection)
    else:
        ctx = dict(dataset=sample_collection)
    return foo.execute_operator(
        operator.uri,
        ctx,
        params={k: v for k, v in params.items() if v is not None},
        request_delegation=delegate,
        delegation_target=delegation_target,
        **{k: v for k, v in request.items() if v is not None},
    )


# -- form helpers ---------------------------------------------------------------------------


# -- execution with progress ----------------------------------------------------------------


class _Throttle:
    """Forwards progress at most every ``PROGRESS_INTERVAL_S`` seconds, and always at 100 %."""

    def __init__(self, send: Callable[[float, str], None]) -> None:
        self._send = send
        self._last = 0.0

    def __call__(self, fraction: float, label: str) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - self._last >= PROGRESS_INTERVAL_S:
            self._last = now
            self._send(min(max(fraction, 0.0), 1.0), label)


def run_job(
    ctx,
    operator: foo.Operator,
    work: Work,
    effects: Callable[[dict], list] | None = None,
) -> dict | Iterator[Any]:
    """Runs ``work`` with progress reported in both execution modes.

    Delegated: progress goes to the run's record (``ctx.set_progress``) and the results dict is
    returned, so the run keeps it and ``resolve_output`` shows it.

    Immediate (App or Python): returns a generator. ``work`` runs on a worker thread while the
    generator streams progress to the App; then come the App effects ``effects(results)``
    (reload, set view) and the results shown with the operator's ``resolve_output``. An error
    is shown as a notification and raised.
    """
    if ctx.delegated:
        return work(_Throttle(lambda f, label: ctx.set_progress(progress=f, label=label)))
    return _stream(ctx, operator, work, effects)


def _stream(ctx, operator, work, effects) -> Iterator[Any]:
    updates: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["results"] = work(_Throttle(lambda f, label: updates.put((f, label))))
        except BaseException as exc:  # re-raised on the generator's thread below
            outcome["error"] = exc
        finally:
            updates.put(None)

    thread = threading.Thread(target=target, name=f"refseg:{operator.name}", daemon=True)
    thread.start()
    while (update := updates.get()) is not None:
        yield ctx.ops.set_progress(progress=update[0], label=update[1])
    thread.join()
    if "error" in outcome:
        yield ctx.ops.notify(f"{operator.config.label} failed: {outcome['error']}", "error")
        raise outcome["error"]
    results = outcome["results"]
    for effect in effects(results) if effects else []:
        yield effect
    yield from show_results(ctx, operator, results)


def show_results(ctx, operator: foo.Operator, results: dict) -> Iterator[Any]:
    """Shows ``results`` in the App with the operator's ``resolve_output``."""
    ctx.request_params["results"] = results
    outputs = operator.resolve_output(ctx)
    if outputs is not None:
        yield ctx.ops.show_output(outputs.to_json(), results)
