"""The two swappable components of the method, as small interfaces.

refseg never talks to SAM2 or DINOv2 directly: the pipeline calls a :class:`MaskProposer`
(class-agnostic masks from prompts) and a :class:`FeatureEncoder` (dense semantic features).
``refseg.models`` provides the real ones; tests provide deterministic stand-ins with the same
methods, so the method's logic can be scored on synthetic images.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class MaskProposer(Protocol):
    """Proposes class-agnostic masks from point or box prompts (SAM2's role).

    Attributes:
        identity: what the proposer is, e.g. ``{"name": "sam2.1_hiera_tiny", "weights": ...}``.
            Stored in memory banks and compared before predicting.
        image_size: side of the square input frame, in pixels (1024 for SAM2).
        mask_size: side of the square low-resolution mask grid (256 for SAM2).
        device: where its tensors live; inputs are moved there by the caller.
    """

    identity: dict[str, Any]
    image_size: int
    mask_size: int
    device: torch.device

    def encode_images(self, images: torch.Tensor) -> Any:
        """Encodes a batch of images once, for any number of prompts afterwards.

        Args:
            images: (B, 3, S, S) float32 RGB in [0, 1], S = ``image_size``, not normalised.

        Returns:
            An opaque per-batch embedding; ``select_image(embedding, b)`` picks image b.
        """

    def select_image(self, embedding: Any, index: int) -> Any:
        """Returns the embedding of image ``index`` of a batch made by ``encode_images``."""

    def decode_points(
        self, embedding: Any, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decodes one single positive point per prompt, multimask output.

        Args:
            embedding: one image's embedding (from ``select_image``).
            points: (N, 2) float32 XY in the S x S input frame, pixels.

        Returns:
            logits: (N, M, m, m) float mask logits on the m x m grid (m = ``mask_size``),
                M candidate masks per prompt (3 for SAM2's multimask output).
            iou: (N, M) float predicted IoU of each candidate, in [0, 1].
        """

    def decode_boxes(
        self, embedding: Any, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decodes one box per prompt, single-mask output.

        Args:
            embedding: one image's embedding (from ``select_image``).
            boxes: (N, 4) float32 XYXY in the S x S input frame, pixels.

        Returns:
            logits: (N, m, m) float mask logits; iou: (N,) predicted IoU in [0, 1].
        """


@runtime_checkable
class ImageProposer(Protocol):
    """Any proposal source at the image level (another segmenter, a detector's boxes...).

    A proposer that has a ``propose`` method is asked for an image's proposals directly, instead
    of the point grid being decoded with ``decode_points``; register its builder with
    ``refseg.models.register_model`` and it is chosen by name like SAM2 (no pipeline change).
    It needs ``identity``, ``image_size``, ``mask_size``, ``device``, ``encode_images`` and
    ``select_image`` as a :class:`MaskProposer`, and ``decode_boxes`` only where box-only
    references are encoded with it.
    """

    identity: dict[str, Any]
    image_size: int
    mask_size: int
    device: torch.device

    def encode_images(self, images: torch.Tensor) -> Any:
        """As :meth:`MaskProposer.encode_images`."""

    def select_image(self, embedding: Any, index: int) -> Any:
        """As :meth:`MaskProposer.select_image`."""

    def propose(self, embedding: Any, config: Any) -> Any:
        """Class-agnostic proposals of one image.

        Args:
            embedding: one image's embedding (from ``select_image``).
            config: the ``refseg.config.PredictConfig`` of the run.

        Returns:
            ``refseg.proposals.Proposals``: (N, m, m) float32 mask logits on the m x m grid
            and (N,) float32 confidences in [0, 1] that rank them for NMS.
        """


@runtime_checkable
class ConfidentPointDecoder(Protocol):
    """A proposer that can make only the masks the pipeline keeps (optional, for speed).

    ``refseg.proposals.propose`` uses it when a proposer has it, instead of ``decode_points``
    followed by the choice of each prompt's best candidate and the IoU filter; the results
    must be the same.
    """

    def decode_confident_points(
        self, embedding: Any, points: torch.Tensor, pred_iou_thresh: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decodes single positive points and keeps each prompt's best candidate if confident.

        Args:
            embedding: one image's embedding (from ``select_image``).
            points: (N, 2) float32 XY in the S x S input frame, pixels.
            pred_iou_thresh: a prompt is kept when its best predicted IoU is > this.

        Returns:
            logits: (K, m, m) float mask logits of the kept prompts' best candidates;
            iou: (K,) their predicted IoU; prompts: (K,) int64 their indices in ``points``,
            ascending (``refseg.proposals.confident_best`` of ``decode_points``'s IoU).
        """


@runtime_checkable
class FeatureEncoder(Protocol):
    """Dense semantic features of an image (DINOv2's role).

    Attributes:
        identity: what the encoder is, e.g. ``{"name": "dinov2_vitl14", "weights": ...}``.
            A memory bank is only valid with the encoder that made it.
        input_size: side of the square input, pixels (518 for DINOv2 at patch 14).
        grid_size: side of the output patch grid (``input_size // patch``, 37 for DINOv2).
        dim: feature dimension D.
        device: where its tensors live; inputs are moved there by the caller.
    """

    identity: dict[str, Any]
    input_size: int
    grid_size: int
    dim: int
    device: torch.device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features of a batch of images.

        Args:
            images: (B, 3, I, I) float32 RGB in [0, 1], I = ``input_size``, not normalised
                (the encoder applies its own normalisation).

        Returns:
            (B, G, G, D) float32 patch features, G = ``grid_size``, row-major (y, x).
        """
