"""The label fields the panel offers, and the ones it picks by default."""

from __future__ import annotations

import fiftyone as fo

GROUND_TRUTH = "ground_truth"


def detections_fields(dataset: fo.Dataset) -> list[str]:
    """The dataset's ``fo.Detections`` fields, sorted."""
    return sorted(dataset.get_field_schema(embedded_doc_type=fo.Detections))


def default_fields(
    fields: list[str], bank: str, pred_field: str | None, gt_field: str | None
) -> tuple[str | None, str | None]:
    """(predictions field, ground-truth field): the given ones while they exist; else
    ``<bank>_predictions`` (where 'refseg: predict' writes by default) and ``ground_truth``,
    else the first other fields; None where there is no field to offer.
    """
    if gt_field not in fields:
        gt_field = GROUND_TRUTH if GROUND_TRUTH in fields else next(iter(fields), None)
    if pred_field not in fields:
        preferred = f"{bank}_predictions"
        others = [f for f in fields if f != gt_field]
        pred_field = preferred if preferred in fields else next(iter(others), None)
    return pred_field, gt_field
