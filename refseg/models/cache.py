"""An explicit cache of loaded models, so a long-lived process loads each model once.

There is no module-level cache: whoever wants sharing (the FiftyOne App server, a notebook)
creates one :class:`ModelCache` and passes it to ``build_proposer`` / ``build_encoder``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from refseg.models.weights import file_digest

_Model = TypeVar("_Model")


class ModelKey(NamedTuple):
    """What makes two builds the same model.

    Attributes:
        kind: ``"proposer"`` or ``"encoder"``.
        name: registry name, e.g. ``"sam2.1_hiera_large"``.
        checkpoint: the explicit checkpoint path, absolute, or None.
        pretrained: False for random weights.
        device: the device as ``str(torch.device(...))`` with its index, e.g. ``"cuda:0"``.
        options: further builder options that change the model, as sorted (name, value) pairs.
    """

    kind: str
    name: str
    checkpoint: str | None
    pretrained: bool
    device: str
    options: tuple[tuple[str, Any], ...] = ()


class ModelCache:
    """Builds each model once per key and hands out the same instance afterwards.

    Also remembers checkpoint content hashes per (path, mtime, size), so a model's identity does
    not cost a re-read of a multi-gigabyte file. Safe to share between threads: builds run one
    at a time.
    """

    def __init__(self) -> None:
        self._models: dict[ModelKey, Any] = {}
        self._digests: dict[tuple[str, int, int], str] = {}
        self._lock = threading.RLock()

    def get_or_build(self, key: ModelKey, build: Callable[[], _Model]) -> _Model:
        """Returns the model cached under ``key``, calling ``build()`` first if there is none."""
        with self._lock:
            if key not in self._models:
                self._models[key] = build()
            return self._models[key]

    def checkpoint_digest(self, path: Path) -> str:
        """``file_digest(path)``, computed once per path, modification time and size."""
        stat = path.stat()
        memo_key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if memo_key not in self._digests:
                self._digests[memo_key] = file_digest(path)
            return self._digests[memo_key]

    def clear(self) -> None:
        """Forgets every cached model and digest (the models are freed once unreferenced)."""
        with self._lock:
            self._models.clear()
            self._digests.clear()

    def __len__(self) -> int:
        """Number of cached models."""
        return len(self._models)
