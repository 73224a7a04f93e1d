"""Per-stage wall-clock timing of the prediction pipeline, for benchmarks."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch


class StageTimer:
    """Accumulates wall-clock seconds per named stage.

    On CUDA devices the device is synchronised at both ends of a stage, so asynchronous kernels
    are charged to the stage that launched them (this slows the pipeline a little; use a timer
    only when measuring).

    Example::

        timer = StageTimer(torch.device("cuda"))
        with timer("sam2_encoder"):
            ...
        timer.seconds  # {"sam2_encoder": 0.012}
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self._cuda = torch.device(device or "cpu").type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] += time.perf_counter() - start
            self.calls[stage] += 1

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()


class NoTimer:
    """A timer that measures nothing (the default: no synchronisation, no bookkeeping)."""

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        yield
