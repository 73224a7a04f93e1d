"""Deterministic stand-ins for SAM2 and DINOv2 with the same interfaces, for synthetic shapes.

``ShapeProposer`` behaves like a prompted segmenter on ``refseg.synthetic`` images: a point on a
shape yields (its left 40 %, the whole shape, a square distractor) with predicted IoUs
(0.6, 0.9, 0.5), except that a point on the left part prefers the part (0.88 against 0.86), so
parts survive to the soft merge; a point on the background yields small square distractors.
``PaletteEncoder`` gives each patch a feature encoding its colour: a soft assignment to the
synthetic palette, mapped to D dimensions by a fixed random rotation; it counts the images it
encodes (``encoded_images``), so tests can check what is re-encoded. Nothing here looks at
ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from refseg.synthetic import CLASSES, PALETTE

SATURATION_THRESHOLD = 0.3


@dataclass(frozen=True)
class ShapeEmbedding:
    """Per-image 'embedding': connected components of saturated pixels, (S, S) int64."""

    components: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.components.device


class ShapeProposer:
    """A MaskProposer for synthetic shapes (see the module docstring)."""

    def __init__(self, image_size: int = 128, mask_size: int = 128) -> None:
        self.identity = {"name": "shape-proposer", "weights": "none"}
        self.image_size = image_size
        self.mask_size = mask_size
        self.device = torch.device("cpu")
        self.encoded_batches = 0

    def encode_images(self, images: torch.Tensor) -> list[ShapeEmbedding]:
        self.encoded_batches += 1
        saturation = images.max(dim=1).values - images.min(dim=1).values
        embeddings = []
        for mask in (saturation > SATURATION_THRESHOLD).numpy():
            components, _ = ndimage.label(mask)
            embeddings.append(ShapeEmbedding(torch.from_numpy(components.astype(np.int64))))
        return embeddings

    def select_image(self, embedding: list[ShapeEmbedding], index: int) -> ShapeEmbedding:
        return embedding[index]

    def decode_points(self, embedding: ShapeEmbedding, points: torch.Tensor):
        masks, ious = [], []
        for x, y in points.tolist():
            component = int(embedding.components[int(y), int(x)])
            if component:
                whole = embedding.components == component
                part = _left_part(whole)
                candidates = [part, whole, _square(self.image_size, x, y, 24)]
                scores = [0.88, 0.86, 0.5] if part[int(y), int(x)] else [0.6, 0.9, 0.5]
            else:
                candidates = [_square(self.image_size, x, y, s) for s in (6, 10, 14)]
                scores = [0.3, 0.45, 0.35]
            masks.append(torch.stack([self._logits(c) for c in candidates]))
            ious.append(torch.tensor(scores))
        return torch.stack(masks), torch.stack(ious)

    def decode_boxes(self, embedding: ShapeEmbedding, boxes: torch.Tensor):
        masks = []
        for x1, y1, x2, y2 in boxes.tolist():
            inside = torch.zeros_like(embedding.components, dtype=torch.bool)
            inside[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
            masks.append(self._logits(inside & (embedding.components > 0)))
        return torch.stack(masks), torch.full((len(masks),), 0.95)

    def _logits(self, mask: torch.Tensor) -> torch.Tensor:
        """(m, m) logits: +-10 scaled by the area fraction of each low-resolution cell."""
        fraction = F.adaptive_avg_pool2d(mask[None, None].float(), self.mask_size)[0, 0]
        return (fraction - 0.5) * 20.0


class PaletteEncoder:
    """A FeatureEncoder whose patch features encode colour (see the module docstring)."""

    def __init__(self, input_size: int = 112, patch_size: int = 8, dim: int = 16) -> None:
        self.identity = {"name": "palette-encoder", "weights": f"dim={dim}"}
        self.input_size = input_size
        self.grid_size = input_size // patch_size
        self.dim = dim
        self.device = torch.device("cpu")
        self.palette = torch.tensor(list(PALETTE.values()), dtype=torch.float32)
        rotation, _ = torch.linalg.qr(
            torch.randn(dim, dim, generator=torch.Generator().manual_seed(0))
        )
        self.projection = rotation[: len(PALETTE)]
        self.encoded_images = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encoded_images += images.shape[0]
        pixels = images.permute(0, 2, 3, 1)
        distance = torch.cdist(pixels.reshape(-1, 3), self.palette).reshape(*pixels.shape[:3], -1)
        assignment = torch.softmax(-distance / 0.05, dim=-1)
        features = assignment @ self.projection
        pooled = F.adaptive_avg_pool2d(features.permute(0, 3, 1, 2), self.grid_size)
        return pooled.permute(0, 2, 3, 1)


def _left_part(mask: torch.Tensor) -> torch.Tensor:
    """The mask's columns left of 40 % of its width (box IoU with the whole < 0.5)."""
    columns = torch.nonzero(mask.any(dim=0)).flatten()
    cut = int(columns.min()) + int(0.4 * (int(columns.max()) + 1 - int(columns.min())))
    part = mask.clone()
    part[:, cut:] = False
    return part


def _square(size: int, x: float, y: float, side: int) -> torch.Tensor:
    mask = torch.zeros((size, size), dtype=torch.bool)
    x1, y1 = max(0, int(x) - side // 2), max(0, int(y) - side // 2)
    mask[y1 : y1 + side, x1 : x1 + side] = True
    return mask


STAND_IN_MODELS = dict(
    proposer="shape-proposer",
    encoder="palette-encoder",
    proposer_weights="random",
    encoder_weights="random",
)
"""The stand-ins' ``refseg.Models`` fields, once registered under these names (conftest's
``stand_in_models`` fixture), so that worker code builds them as it builds SAM2 and DINOv2."""


def build_palette_encoder(checkpoint, label, device) -> PaletteEncoder:
    """The registry's builder of the ``palette-encoder``: its identity names ``label``."""
    encoder = PaletteEncoder()
    encoder.identity = {"name": "palette-encoder", "weights": label}
    return encoder


def stand_in_bank(
    dataset,
    *,
    shots: int = 1,
    seed: int = 0,
    encoder: PaletteEncoder | None = None,
    name: str | None = None,
):
    """Samples ``shots`` references per class of ``"ground_truth"`` with ``seed`` (their labels
    tagged ``refseg.DEFAULT_TAG``) and builds their memory bank with the stand-ins.

    Args:
        encoder: the PaletteEncoder to encode with (e.g. to count what it encodes later).
        name: also store the bank with the dataset under this name.

    Returns:
        ``(the references' samples, the bank, the other samples)``.
    """
    import refseg

    refs = refseg.sample_references(
        dataset, "ground_truth", shots=shots, seed=seed, classes=CLASSES
    )
    bank = refseg.build_memory_bank(
        refs,
        "ground_truth",
        tag=refseg.DEFAULT_TAG,
        encoder=encoder or PaletteEncoder(),
        proposer=ShapeProposer(),
        name=name,
        progress=False,
    )
    return refs, bank, dataset.exclude(refs.values("id"))


def predict_with_stand_ins(view, bank, field: str, config, **kwargs):
    """``refseg.predict`` with the stand-ins, in this process, without a progress bar;
    ``kwargs`` override any of these."""
    import refseg

    options = dict(
        config=config,
        proposer=ShapeProposer(),
        encoder=PaletteEncoder(),
        num_workers=0,
        progress=False,
    )
    return refseg.predict(view, bank, field, **{**options, **kwargs})
