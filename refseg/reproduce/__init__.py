"""Reproduction of the paper's protocols on local data: ``python -m refseg.reproduce``.

- :mod:`refseg.reproduce.protocols`: COCO-FSOD, PASCAL VOC splits and custom files as data;
- :mod:`refseg.reproduce.data`: COCO-format json + images into a persistent FiftyOne dataset;
- :mod:`refseg.reproduce.runner`: one resumable job per (protocol, shots, seed);
- :mod:`refseg.reproduce.table`: the published numbers next to the obtained ones;
- :mod:`refseg.reproduce.cli`: the command line (``docs/reproduce.md``).
"""

from refseg.reproduce.data import CocoSource, load_coco_dataset
from refseg.reproduce.protocols import COCO_FSOD, Protocol, custom_protocol, voc_protocol
from refseg.reproduce.runner import Job, JobResult, RunSettings, run_job
from refseg.reproduce.table import format_table

__all__ = [
    "COCO_FSOD",
    "CocoSource",
    "Job",
    "JobResult",
    "RunSettings",
    "Protocol",
    "custom_protocol",
    "format_table",
    "load_coco_dataset",
    "run_job",
    "voc_protocol",
]
