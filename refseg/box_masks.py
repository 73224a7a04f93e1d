"""Boxes to masks: SAM2 makes the instance masks of box-only labels, image by image."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from refseg.components import MaskProposer
from refseg.failures import FailureReport, ImageReadError, SampleError, SampleFailure
from refseg.images import load_image
from refseg.references import absolute_box, check_references, crop_to_box, masks_from_boxes_on
from refseg.sampling import ReferenceLabel


def iter_box_masks(
    labels: Sequence[ReferenceLabel],
    proposer: MaskProposer,
    *,
    skip_failures: bool = True,
    failures: FailureReport | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Masks for box-only labels, one image at a time, each cropped to its box as FiftyOne
    stores a detection's mask.

    Every box is checked first (``refseg.references.check_references``: a label without a
    box, with a zero-area box or a box outside the image raises before any image is read).
    An image that cannot be read is skipped and recorded in ``failures`` (sample id, path,
    reason), or raises with ``skip_failures=False``; the masks already yielded stay valid, so
    the caller writes them before the error propagates.

    Args:
        labels: the box-only labels (e.g. from ``refseg.reference_labels``).
        proposer: the mask proposer (SAM2).
        skip_failures: True skips unreadable images; False raises at the first one.
        failures: the report that receives skipped samples.

    Yields:
        ``{label id: (h, w) bool mask}`` for the labels of one image, ``(h, w)`` the label's
        box rounded to whole pixels (parts outside the image are False).

    Raises:
        InvalidReferenceError: a label's box is unusable; nothing is yielded.
        SampleError: ``skip_failures=False`` and an image cannot be read.
    """
    check_references(labels, need_class=False)
    report = failures if failures is not None else FailureReport("boxes_to_masks")
    by_image: dict[str, list[ReferenceLabel]] = {}
    for label in labels:
        by_image.setdefault(label.filepath, []).append(label)
    for filepath, group in by_image.items():
        try:
            image, (height, width) = load_image(filepath, proposer.image_size)
        except ImageReadError as error:
            for sample_id in dict.fromkeys(label.sample_id for label in group):
                failure = SampleFailure(sample_id, filepath, str(error))
                if not skip_failures:
                    raise SampleError(failure) from error
                report.add(failure)
            continue
        boxes = [absolute_box(label.detection, width, height) for label in group]
        full = masks_from_boxes_on(proposer, image, (height, width), boxes)
        yield {
            label.detection.id: crop_to_box(mask, box)
            for label, box, mask in zip(group, boxes, full)
        }
