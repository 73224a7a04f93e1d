"""The engine stream: images in, one result per image out, in order. No FiftyOne here.

``segment_stream`` decodes images in DataLoader workers, segments them in batches with a
:class:`~refseg.segmenter.Segmenter` and yields one :class:`ImageResult` per input: its
predictions, or the reason it failed. An image that cannot be decoded, or that fails in the
models, never stops the stream: a failing batch is retried image by image so that only the bad
image fails. ``predict`` (FiftyOne), the benchmarks and every worker consume this same stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from refseg.failures import ImageReadError
from refseg.images import ImageSource, load_image
from refseg.predictions import Predictions
from refseg.segmenter import Segmenter
from refseg.timing import NoTimer, StageTimer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageResult:
    """What the stream made of one input image.

    Attributes:
        key: the caller's key of the image (a FiftyOne sample id, an index...).
        filepath: the image file ("" for an in-memory image).
        predictions: the detections, or None when the image failed.
        error: why the image failed (None when it did not).
    """

    key: str
    filepath: str
    predictions: Predictions | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class _Decoded:
    """One decoded target: its position, the (3, S, S) image and original (H, W), or an error."""

    index: int
    image: torch.Tensor | None
    size: tuple[int, int] | None
    error: str | None


class TargetImages(torch.utils.data.Dataset):
    """Target images decoded and resized to the proposer's S x S frame, for a DataLoader.

    Decoding runs in the DataLoader's workers; an image that cannot be read becomes an item
    carrying the reason instead of an exception, so one bad file does not end the loader.
    """

    def __init__(self, sources: Sequence[ImageSource], size: int) -> None:
        self.sources = list(sources)
        self.size = size

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> _Decoded:
        try:
            image, original = load_image(self.sources[index], self.size)
        except ImageReadError as error:
            return _Decoded(index, None, None, str(error))
        return _Decoded(index, image, original, None)


def _collate(items: list[_Decoded]) -> list[_Decoded]:
    return items


def target_loader(
    sources: Sequence[ImageSource], size: int, *, batch_size: int, num_workers: int
) -> torch.utils.data.DataLoader:
    """A DataLoader over target images in order, yielding lists of decoded items."""
    return torch.utils.data.DataLoader(
        TargetImages(sources, size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        persistent_workers=False,
    )


def segment_stream(
    segmenter: Segmenter,
    keys: Sequence[str],
    sources: Sequence[ImageSource],
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    timer: StageTimer | NoTimer = NoTimer(),
) -> Iterator[ImageResult]:
    """Segments images in order, one :class:`ImageResult` per input.

    Args:
        segmenter: the ready pipeline (models, bank, settings).
        keys: one key per image, returned with its result.
        sources: image file paths, or arrays / PIL images already in memory.
        batch_size: images encoded together.
        num_workers: DataLoader processes decoding images (0: in this process).
        timer: receives the decoding wait as ``decode_resize`` (the segmenter has its own).

    Yields:
        Results in input order, as each batch is done.
    """
    if len(keys) != len(sources):
        raise ValueError(f"got {len(keys)} keys for {len(sources)} images")
    loader = target_loader(
        sources, segmenter.proposer.image_size, batch_size=batch_size, num_workers=num_workers
    )
    for batch in _timed(loader, timer, "decode_resize"):
        outcomes = _segment_decoded([d for d in batch if d.error is None], segmenter)
        for decoded in batch:
            predictions, error = outcomes.get(decoded.index, (None, decoded.error))
            yield ImageResult(
                key=keys[decoded.index],
                filepath=_path_of(sources[decoded.index]),
                predictions=predictions,
                error=error,
            )


def _segment_decoded(
    decoded: list[_Decoded], segmenter: Segmenter
) -> dict[int, tuple[Predictions | None, str | None]]:
    """Segments decoded images as one batch; if the batch fails, image by image.

    Returns:
        index -> (predictions, None) or (None, reason).
    """
    if not decoded:
        return {}
    try:
        images = torch.stack([d.image for d in decoded])
        predictions = segmenter.segment_batch(images, [d.size for d in decoded])
        return {d.index: (p, None) for d, p in zip(decoded, predictions, strict=True)}
    except Exception as error:  # isolated per image below, reported per image
        if len(decoded) == 1:
            logger.debug("segmenting image %d failed", decoded[0].index, exc_info=True)
            return {decoded[0].index: (None, f"segmentation failed: {_describe(error)}")}
    outcomes: dict[int, tuple[Predictions | None, str | None]] = {}
    for item in decoded:
        outcomes.update(_segment_decoded([item], segmenter))
    return outcomes


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _path_of(source: ImageSource) -> str:
    return str(source) if isinstance(source, str) else ""


def _timed(items: Iterable, timer, stage: str) -> Iterator:
    """Yields from ``items``, charging the wait for each item to ``stage``."""
    iterator = iter(items)
    while True:
        with timer(stage):
            item = next(iterator, None)
        if item is None:
            return
        yield item
