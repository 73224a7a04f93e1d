"""Reproduction of the paper's protocols on local data: ``refseg reproduce``.

- :mod:`refseg.reproduce.protocols`: COCO-FSOD, PASCAL VOC splits and custom files as data;
- :mod:`refseg.reproduce.data`: COCO-format json + images into a persistent FiftyOne dataset;
- :mod:`refseg.reproduce.runner`: one resumable job per (protocol, shots, seed);
- :mod:`refseg.reproduce.table`: the published numbers next to the obtained ones;
- :mod:`refseg.reproduce.cli`: the ``reproduce`` subcommand (``docs/reproduce.md``).

The names below are imported on first use (PEP 562), so the command line's parser, which lives
in this package, loads without FiftyOne or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "COCO_FSOD": "refseg.reproduce.protocols",
    "CocoSource": "refseg.reproduce.data",
    "Job": "refseg.reproduce.runner",
    "JobResult": "refseg.reproduce.runner",
    "RunSettings": "refseg.reproduce.runner",
    "Protocol": "refseg.reproduce.protocols",
    "custom_protocol": "refseg.reproduce.protocols",
    "format_table": "refseg.reproduce.table",
    "load_coco_dataset": "refseg.reproduce.data",
    "run_job": "refseg.reproduce.runner",
    "voc_protocol": "refseg.reproduce.protocols",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'refseg.reproduce' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
