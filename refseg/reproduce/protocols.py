"""The paper's evaluation protocols as data: classes, shots, seeds, metric, published numbers.

Every number here is quoted from ``shared/design/method.md`` (the published results of
"No Time To Train", arXiv 2507.02798). The PASCAL VOC novel splits are the standard TFA/FsDet
ones, checked against the research code's ``no_time_to_train/dataset/metainfo.py`` and
``scripts/pascal_split.sh`` (shots 1, 2, 3, 5, 10; seed 33).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Metric = Literal["AP", "AP50"]
"""Which COCOeval statistic a protocol reports: AP over IoU .50:.95, or AP at IoU .50."""

COCO_NOVEL_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "boat", "bird", "cat",
    "dog", "horse", "sheep", "cow", "bottle", "chair", "couch", "potted plant", "dining table",
    "tv",
)  # fmt: skip
"""The 20 COCO-FSOD novel classes (the VOC classes under their COCO names)."""

VOC_NOVEL_SPLITS: dict[int, tuple[str, ...]] = {
    1: ("bird", "bus", "cow", "motorbike", "sofa"),
    2: ("aeroplane", "bottle", "cow", "horse", "sofa"),
    3: ("boat", "cat", "motorbike", "sheep", "sofa"),
}
"""PASCAL VOC few-shot novel classes per split (VOC class names)."""


@dataclass(frozen=True)
class Published:
    """One published result, in percent.

    Attributes:
        bbox: box AP of the protocol's metric, or None when not published.
        segm: mask AP of the protocol's metric, or None when not published.
        note: what the number is (e.g. "mean of 10 seeds"), shown in the table.
    """

    bbox: float | None
    segm: float | None
    note: str


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol.

    Attributes:
        name: short name used in dataset, run and field names (letters, digits, ``_``).
        title: what the table calls it.
        classes: the evaluated (novel) classes; None = the classes of the references file.
        shots: the shot counts run by default; empty = use every reference of the file as is.
        seeds: the sampling seeds run by default.
        metric: the reported COCOeval statistic.
        iou_types: the AP kinds reported ("bbox" and/or "segm").
        published: results keyed by (shots, seed); seed None = a mean over several seeds.
        headline: a published number without a (shots, seed) setting, shown under the table.
    """

    name: str
    title: str
    classes: tuple[str, ...] | None
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    metric: Metric
    iou_types: tuple[str, ...]
    published: dict[tuple[int, int | None], Published] = field(default_factory=dict)
    headline: str = ""

    def published_for(self, shots: int | None, seed: int | None) -> Published | None:
        """The seed's own published result, else the multi-seed mean, else None."""
        if shots is None:
            return None
        return self.published.get((shots, seed)) or self.published.get((shots, None))


_COCO_MEANS = {1: (24.5, 22.9), 2: (29.5, 27.5), 3: (32.3, 30.1), 5: (34.4, 32.1),
               10: (35.9, 33.4), 30: (37.0, 34.4)}  # fmt: skip

COCO_FSOD = Protocol(
    name="coco",
    title="COCO-FSOD (20 novel classes, val2017), nAP",
    classes=COCO_NOVEL_CLASSES,
    shots=(1, 2, 3, 5, 10, 30),
    seeds=(33,),
    metric="AP",
    iou_types=("bbox", "segm"),
    published={
        **{(k, None): Published(b, s, "mean of 10 seeds") for k, (b, s) in _COCO_MEANS.items()},
        (30, 33): Published(36.8, 34.2, "seed 33"),
    },
)


def voc_protocol(split: int) -> Protocol:
    """PASCAL VOC few-shot, one novel split (1, 2 or 3): box AP at IoU 0.5, COCO-style."""
    if split not in VOC_NOVEL_SPLITS:
        raise ValueError(
            f"PASCAL VOC split must be one of {sorted(VOC_NOVEL_SPLITS)}, got {split!r}"
        )
    return Protocol(
        name=f"voc_split{split}",
        title=f"PASCAL VOC few-shot split {split} ({', '.join(VOC_NOVEL_SPLITS[split])}), nAP50",
        classes=VOC_NOVEL_SPLITS[split],
        shots=(1, 2, 3, 5, 10),
        seeds=(33,),
        metric="AP50",
        iou_types=("bbox",),
        headline="paper: 71.2 nAP50 on PASCAL VOC few-shot (method.md gives no split or shot)",
    )


def custom_protocol(name: str = "custom", *, masks: bool = True) -> Protocol:
    """A user's references + targets files; classes come from the references file.

    Args:
        name: names the dataset's runs and fields.
        masks: whether the targets' ground truth has masks (then segm AP is reported too).
    """
    return Protocol(
        name=name,
        title=f"custom dataset {name!r}, AP",
        classes=None,
        shots=(),
        seeds=(),
        metric="AP",
        iou_types=("bbox", "segm") if masks else ("bbox",),
        headline=(
            "paper, for orientation only: CD-FSOD 22.4 nAP (mean over its datasets); the research "
            "code's bundled custom 1-shot demo (boat, bird; 10 COCO targets) bbox 47.8 / segm 45.8"
        ),
    )
