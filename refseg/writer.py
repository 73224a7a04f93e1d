"""The FiftyOne writer: per-sample predictions to a label field, in batched background writes.

Labels are built and written on one background thread, one batched ``set_values`` per
``write_every`` samples, so host work overlaps the next batch's device work; at most one write
is in flight and its errors surface in the caller's thread. Each sample's document is updated
whole (MongoDB updates one document atomically), so a run killed at any point leaves only whole
``fo.Detections``, and ``resume`` finds exactly the samples that still lack a value.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import fiftyone as fo

from refseg.fiftyone_io import to_detections, write_detections
from refseg.predictions import Predictions
from refseg.timing import NoTimer, StageTimer


class LabelWriter:
    """Collects ``{sample id: Predictions}`` and writes them into ``field`` in batches.

    Usage::

        with LabelWriter(view, "refseg", write_every=64) as writer:
            for sample_id, predictions in results:
                writer.put(sample_id, predictions)

    Leaving the block writes what is pending, also when the block raises (the predictions
    made so far are valid), and waits for the write in flight.

    Args:
        view: the samples' collection (writes go to its dataset, by sample id).
        field: the label field.
        write_every: samples per batched write.
        to_label: turns one image's Predictions into the stored label.
        timer: receives ``label_building`` and ``db_writes`` times.
    """

    def __init__(
        self,
        view: fo.core.collections.SampleCollection,
        field: str,
        *,
        write_every: int = 64,
        to_label: Callable[[Predictions], Any] = to_detections,
        timer: StageTimer | NoTimer = NoTimer(),
    ) -> None:
        if write_every < 1:
            raise ValueError(f"write_every must be >= 1, got {write_every}")
        self._view = view
        self._field = field
        self._write_every = write_every
        self._to_label = to_label
        self._timer = timer
        self._pending: dict[str, Predictions] = {}
        self._in_flight: Future | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refseg-writer")
        self.num_written = 0
        self.num_detections = 0

    def put(self, sample_id: str, predictions: Predictions) -> None:
        """Queues one sample's predictions; writes a batch when ``write_every`` are queued."""
        self._pending[sample_id] = predictions
        self.num_detections += len(predictions)
        if len(self._pending) >= self._write_every:
            self._submit()

    def flush(self) -> None:
        """Writes everything queued and waits until it is stored."""
        self._submit()
        self._wait()

    def close(self) -> None:
        """Flushes and stops the background thread."""
        try:
            self.flush()
        finally:
            self._executor.shutdown(wait=True)

    def __enter__(self) -> "LabelWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()  # keep what was made before the error
        except Exception:  # noqa: BLE001 - the original error is the one to report
            self._executor.shutdown(wait=False)

    def _submit(self) -> None:
        """Waits for the previous write, then writes the pending batch in the background."""
        self._wait()
        if self._pending:
            batch, self._pending = self._pending, {}
            self._in_flight = self._executor.submit(self._write, batch)

    def _wait(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.result()

    def _write(self, batch: dict[str, Predictions]) -> None:
        with self._timer("label_building"):
            values = {sample_id: self._to_label(p) for sample_id, p in batch.items()}
        with self._timer("db_writes"):
            write_detections(self._view, self._field, values)
        self.num_written += len(values)
