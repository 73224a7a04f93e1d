"""Negative references: instances a curator marks "not <class>", by a label tag.

The loop::

    refseg.predict(split_a, bank, "refseg")
    refseg.mark_false_positives(split_a, "refseg", "ground_truth")  # tags them NEGATIVE_TAG
    negatives = refseg.build_memory_bank(
        split_a, "refseg", tag=refseg.NEGATIVE_TAG, negative=True, models=Models.from_bank(bank)
    )
    bank = bank.with_references(negatives)  # or, in one step: refseg.add_references(bank,
    # split_a, "refseg", tag=refseg.NEGATIVE_TAG, negative=True)
    refseg.predict(split_b, bank, "refseg_b")  # scores lowered where proposals look like them

Any label of any Detections field can be tagged by hand in the App instead (a false positive,
or a ground-truth instance of a look-alike): the tag's label is the class it is "not". How the
score uses them: ``refseg.matching.class_scores_with_negatives``.
"""

from __future__ import annotations

from collections.abc import Sequence

from fiftyone.core.collections import SampleCollection

from refseg.matches import match_predictions

NEGATIVE_TAG = "refseg:negative"
"""The label tag that marks negative references ("not <the label's class>")."""


def mark_false_positives(
    view: SampleCollection,
    pred_field: str,
    gt_field: str,
    *,
    iou: float = 0.5,
    iou_type: str = "segm",
    tag: str = NEGATIVE_TAG,
    classes: Sequence[str] | None = None,
) -> list[str]:
    """Tags the false positives of ``pred_field`` with ``tag``, to use them as negatives.

    A false positive is a prediction that COCO matching at IoU ``iou`` leaves unmatched to
    ground truth of its class (``refseg.match_predictions``; predictions on a crowd region are
    not marked). Only the label tags of those predictions change.

    Args:
        view: the samples whose predictions to check (with ground truth: a curated split).
        pred_field: the predictions (``fo.Detections`` with confidences).
        gt_field: the ground truth.
        iou: the IoU threshold, in (0, 1).
        iou_type: ``"segm"`` (mask IoU) or ``"bbox"``.
        tag: the label tag to add.
        classes: only predictions of these classes (all when None).

    Returns:
        The label ids tagged, in view order.

    Raises:
        ValueError: as :func:`refseg.match_predictions`, or an empty ``tag``.
    """
    if not isinstance(tag, str) or not tag.strip():
        raise ValueError(f"tag must be a non-empty label tag, got {tag!r}")
    matches = match_predictions(
        view, pred_field, gt_field, iou=iou, iou_type=iou_type, classes=classes
    )
    ids = [p.label_id for p in matches.false_positives()]
    if ids:
        view._dataset.select_labels(ids=ids, fields=pred_field).tag_labels(
            tag, label_fields=pred_field
        )
    return ids
