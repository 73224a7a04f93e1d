"""The last evaluation of a predictions field, and its AP per class.

"Last evaluation" means: of the FiftyOne COCO detection evaluation runs stored on the dataset
whose predictions field and ground-truth field are the ones the panel shows (what
``refseg.evaluate(..., eval_key=...)`` and the 'refseg: evaluate' operator store, and any
``evaluate_detections(method="coco", compute_mAP=True)`` run), the one run most recently,
whatever samples it covered. A class's AP is that run's COCO AP of the class (IoU .50:.95,
masks or boxes as the run matched), read from its stored results: nothing is re-evaluated. For
ordinary data it equals the per-class AP of refseg's pycocotools tables (``refseg.evaluation``
says where the two can differ). Predictions written after that run are not reflected: the panel
shows the run's key and time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import fiftyone as fo


@dataclass(frozen=True)
class LastEvaluation:
    """The evaluation run the panel reports AP from.

    Attributes:
        key: its eval key.
        timestamp: when it was run (UTC), ISO 8601 to the second.
        iou_type: "segm" (mask IoU) or "bbox".
        ap: COCO AP in [0, 1] of each class that has ground truth in the run; classes without
            are absent.
    """

    key: str
    timestamp: str
    iou_type: str
    ap: dict[str, float] = field(default_factory=dict)


def last_evaluation(dataset: fo.Dataset, pred_field: str, gt_field: str) -> LastEvaluation | None:
    """The most recent COCO evaluation run of ``pred_field`` against ``gt_field`` that computed
    mAP, with its per-class AP; None when there is none."""
    runs = []
    for key in dataset.list_evaluations(
        type="detection", method="coco", pred_field=pred_field, gt_field=gt_field
    ):
        info = dataset.get_evaluation_info(key)
        if getattr(info.config, "compute_mAP", False):
            runs.append((info.timestamp, key, info.config))
    if not runs:
        return None
    timestamp, key, config = max(runs, key=lambda run: run[0])
    results = dataset.load_evaluation_results(key)
    ap = {}
    for name in results.classes:
        value = float(results.mAP(classes=[name]))
        if value >= 0:  # -1: no ground truth of the class in the run
            ap[str(name)] = value
    return LastEvaluation(
        key=key,
        timestamp=timestamp.isoformat(timespec="seconds"),
        iou_type="segm" if getattr(config, "use_masks", False) else "bbox",
        ap=ap,
    )
