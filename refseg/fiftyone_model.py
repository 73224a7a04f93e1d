"""A memory bank as a FiftyOne model: ``dataset.apply_model(refseg.as_model(bank), "refseg")``.

FiftyOne then brings its own batching, ``skip_failures``, progress and label writing. Images
are loaded in FiftyOne's data loader by refseg's own decoder (the one ``refseg.predict`` uses,
through ``SupportsGetItem``), so both give the same labels on the same images and batch sizes.
``refseg.predict`` remains the richer entry point: resumable runs, the failure report, locks,
many devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.models as fomo
import fiftyone.utils.torch as fout
import torch

from refseg import arguments
from refseg.components import FeatureEncoder, MaskProposer
from refseg.config import PredictConfig
from refseg.fiftyone_io import to_detections
from refseg.images import ImageSource, load_image
from refseg.memory import MemoryBank
from refseg.models import ModelCache, Models
from refseg.segmenter import Segmenter


class _LoadTarget(fout.GetItem):
    """Loads one sample's image as ``refseg.predict`` does: ((3, S, S) float32, (H, W))."""

    def __init__(self, size: int, field_mapping: dict | None = None) -> None:
        self.size = size
        super().__init__(field_mapping=field_mapping)

    @property
    def required_keys(self) -> list[str]:
        return ["filepath"]

    def __call__(self, d: dict[str, Any]) -> tuple[torch.Tensor, tuple[int, int]]:
        return load_image(d["filepath"], self.size)


class RefsegModel(fomo.Model, fomo.SupportsGetItem):
    """A memory bank, its models and settings, as a ``fiftyone.core.models.Model``.

    ``predict``/``predict_all`` take images as FiftyOne hands them: the ``(image, (H, W))``
    items of its data loader, or arrays / PIL images / file paths when called directly. Each
    returns ``fo.Detections`` with masks and confidences, as ``refseg.predict`` writes them.

    Args:
        segmenter: the ready pipeline (see :func:`as_model`).
    """

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return True  # images keep their own original sizes

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return False

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        if value:
            raise ValueError("refseg's model loads and preprocesses images itself")

    @property
    def has_collate_fn(self) -> bool:
        return True

    @staticmethod
    def collate_fn(batch: list) -> list:
        return list(batch)

    def build_get_item(self, field_mapping: dict | None = None) -> fout.GetItem:
        return _LoadTarget(self.segmenter.proposer.image_size, field_mapping=field_mapping)

    def predict(self, arg: Any) -> fo.Detections:
        return self.predict_all([arg])[0]

    def predict_all(self, args: list) -> list[fo.Detections]:
        items = [self._as_item(arg) for arg in args]
        images = torch.stack([image for image, _ in items])
        predictions = self.segmenter.segment_batch(images, [size for _, size in items])
        return [to_detections(p) for p in predictions]

    def _as_item(self, arg: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """A data-loader item as it is, anything else decoded as ``refseg.predict`` does."""
        if isinstance(arg, tuple) and len(arg) == 2 and torch.is_tensor(arg[0]):
            return arg
        source: ImageSource = str(arg) if isinstance(arg, Path) else arg
        return load_image(source, self.segmenter.proposer.image_size)


def as_model(
    bank: MemoryBank,
    *,
    models: Models | None = None,
    config: PredictConfig = PredictConfig(),
    device: str | torch.device | None = None,
    cache: ModelCache | None = None,
    proposer: MaskProposer | None = None,
    encoder: FeatureEncoder | None = None,
) -> RefsegModel:
    """A memory bank as a FiftyOne model, for ``apply_model``::

        dataset.apply_model(refseg.as_model(bank), "refseg", batch_size=4)

    Args:
        bank: the memory bank.
        models: the proposer and encoder; None uses the bank's (checked before loading).
        config: prediction settings.
        device: torch device; default CUDA when available.
        cache: a ModelCache to reuse loaded models.
        proposer, encoder: ready components instead of building them.

    Returns:
        A :class:`RefsegModel`; its labels equal ``refseg.predict``'s on the same images.

    Raises:
        ValueError: ``bank`` is not a MemoryBank, ``config`` not a PredictConfig (or a dict of
            one), or models that do not fit the bank.
    """
    if not isinstance(bank, MemoryBank):
        raise ValueError(
            "as_model needs a refseg.MemoryBank (refseg.build_memory_bank, "
            f"refseg.load_bank(dataset, name) or MemoryBank.load(path)), got {type(bank).__name__}"
        )
    config = arguments.settings(config, PredictConfig)
    if proposer is None or encoder is None:
        models = models or Models.from_bank(bank)
        if encoder is None:
            models.check_bank(bank)
            encoder = models.build_component(
                "encoder", device=device, cache=cache, expect=bank.encoder
            )
        if proposer is None:
            proposer = models.build_component("proposer", device=device, cache=cache)
    return RefsegModel(Segmenter(proposer, encoder, bank, config))
