"""SAM2 as refseg's :class:`~refseg.components.MaskProposer`.

The model comes from the ``sam2`` package (its shipped Hydra configs); weights are loaded here
from Meta's checkpoint files through a pure adapter, with missing and unexpected keys reported.
The image encoder runs once per batch; the prompt encoder and mask decoder run per prompt batch,
the decoder's prompt-independent work done once per image (``sam2_decoding``) unless the
library's own ``MaskDecoder.forward`` is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from refseg.models.preprocess import prepare_images
from refseg.models.registry import Sam2Spec
from refseg.models.sam2_decoding import (
    DecoderImageState,
    decode_masks,
    predict_iou,
    prepare_decoder_state,
    run_transformer,
    selected_mask_logits,
)
from refseg.models.weights import (
    CheckpointMismatchError,
    load_checkpoint_file,
    load_state_dict_strictly,
)
from refseg.proposals import confident_best

# SAM2's prompt-encoder labels: a positive click, and the two corners of a box.
_POSITIVE_POINT = 1
_BOX_CORNER_LABELS = (2, 3)

DecoderKind = Literal["shared", "library"]
DECODER_KINDS: tuple[DecoderKind, ...] = ("shared", "library")


@dataclass(frozen=True)
class Sam2Embedding:
    """SAM2 image features of a batch, made by ``Sam2Proposer.encode_images``.

    Attributes:
        image_embed: (B, 256, 64, 64) float32, the low-resolution image embedding
            (plus ``no_mem_embed`` only if the proposer was built with ``add_no_mem_embed``).
        high_res: the decoder's two high-resolution maps, already projected by the decoder's
            ``conv_s0`` / ``conv_s1``: (B, 32, 256, 256) and (B, 64, 128, 128) float32.
        decoder_state: the decoder's prompt-independent work for the B images, or None when
            the proposer decodes with the library's ``MaskDecoder.forward``.
    """

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]
    decoder_state: DecoderImageState | None = None

    @property
    def batch_size(self) -> int:
        """Number of images B."""
        return self.image_embed.shape[0]


def build_sam2_model(spec: Sam2Spec) -> nn.Module:
    """SAM2's architecture for ``spec`` on the CPU, in eval mode, with its initial weights.

    Built with SAM2's post-processing on: it only changes single-mask outputs (box prompts),
    which fall back to the best multimask output when unstable, as SAM2's image predictor does.
    Multimask outputs (point prompts) stay the plain decoder outputs.
    """
    from sam2.build_sam import build_sam2

    return build_sam2(
        spec.config, ckpt_path=None, device="cpu", mode="eval", apply_postprocessing=True
    )


def sam2_checkpoint_adapter(
    checkpoint: Mapping[str, Any], model: nn.Module
) -> Mapping[str, torch.Tensor]:
    """Returns the state dict inside a SAM2 checkpoint for ``model``.

    Meta's files hold ``{"model": state_dict}``; a bare state dict (``model.state_dict()``
    saved directly) is passed through. ``model`` is unused: the official layout already matches
    the ``sam2`` package's modules.
    """
    del model
    return checkpoint["model"] if "model" in checkpoint else checkpoint


def load_sam2_checkpoint(model: nn.Module, path: Path) -> None:
    """Loads a SAM2 checkpoint file into ``model`` in place (CPU, ``weights_only=True``).

    Raises:
        WeightsCorruptError: the file is truncated, damaged or not a weights file; the message
            names it and where to download it again.
        CheckpointMismatchError: keys are missing or unexpected, or tensors have other shapes;
            the message lists them and names the file.
    """
    state_dict = sam2_checkpoint_adapter(load_checkpoint_file(path), model)
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatchError(
            f"{path} holds a {type(state_dict).__name__} under 'model', not a state dict; pass "
            "the official SAM2 checkpoint file"
        )
    load_state_dict_strictly(
        model,
        state_dict,
        path,
        "Pass the checkpoint file made for this model name (SAM 2.0 and 2.1 files are not "
        "interchangeable).",
    )


class Sam2Proposer:
    """Class-agnostic masks from point or box prompts with SAM2 (a ``MaskProposer``).

    Attributes:
        identity: ``{"name": <registry name>, "weights": <file name and hash, or random>}``.
        image_size: 1024, the square input frame in pixels.
        mask_size: 256, the square low-resolution mask grid.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        spec: Sam2Spec,
        weights: str,
        add_no_mem_embed: bool = False,
        decoder: DecoderKind = "shared",
    ) -> None:
        """Wraps a built SAM2 model.

        Args:
            model: a ``sam2`` ``SAM2Base`` in eval mode, on the device it should run on.
            spec: the model's registry record (name, input frame, normalisation).
            weights: what its weights are, for ``identity`` (see ``weights.weights_label``).
            add_no_mem_embed: add SAM2's ``no_mem_embed`` to the image embedding, as SAM2's
                image predictor does. False (paper mode) uses the plain encoder output.
            decoder: ``"shared"`` does the decoder's prompt-independent work once per image
                (``sam2_decoding``; same outputs, less work); ``"library"`` runs the ``sam2``
                package's ``MaskDecoder.forward`` on a copy of the image per prompt, as the
                research code did.
        """
        if decoder not in DECODER_KINDS:
            raise ValueError(f"decoder must be one of {DECODER_KINDS}, got {decoder!r}")
        self._model = model
        self._spec = spec
        self._weights = weights
        self._add_no_mem_embed = add_no_mem_embed
        self.decoder = decoder
        extra = {"add_no_mem_embed": True} if add_no_mem_embed else {}
        self.identity: dict[str, Any] = {"name": spec.name, "weights": weights, **extra}
        self.image_size = spec.image_size
        self.mask_size = spec.mask_size

    def with_decoder(self, decoder: DecoderKind) -> "Sam2Proposer":
        """The same model (shared, not copied) decoding with the other ``decoder`` kind."""
        return Sam2Proposer(
            model=self._model,
            spec=self._spec,
            weights=self._weights,
            add_no_mem_embed=self._add_no_mem_embed,
            decoder=decoder,
        )

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on; inputs are moved there."""
        return next(self._model.parameters()).device

    @property
    def model(self) -> nn.Module:
        """The wrapped ``sam2`` model (read it, do not modify it)."""
        return self._model

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> Sam2Embedding:
        """Runs the image encoder once on a batch.

        Args:
            images: (B, 3, 1024, 1024) float RGB in [0, 1], not normalised.

        Returns:
            The batch's features; ``select_image`` picks one image for decoding.
        """
        spec = self._spec
        pixels = prepare_images(
            images, size=spec.image_size, mean=spec.mean, std=spec.std, device=self.device
        )
        backbone = self._model.forward_image(pixels)
        # The last three FPN levels, finest first; forward_image already projected the two
        # finest ones for the decoder.
        s0, s1, image_embed = backbone["backbone_fpn"][-3:]
        if self._add_no_mem_embed:
            image_embed = image_embed + self._model.no_mem_embed.view(1, -1, 1, 1)
        state = (
            prepare_decoder_state(self._model, image_embed, (s0, s1))
            if self.decoder == "shared"
            else None
        )
        return Sam2Embedding(image_embed=image_embed, high_res=(s0, s1), decoder_state=state)

    def select_image(self, embedding: Sam2Embedding, index: int) -> Sam2Embedding:
        """Returns the embedding of image ``index`` of a batch (a batch of one)."""
        if not 0 <= index < embedding.batch_size:
            raise IndexError(f"image index {index} is outside a batch of {embedding.batch_size}")
        pick = slice(index, index + 1)
        state = embedding.decoder_state
        return Sam2Embedding(
            image_embed=embedding.image_embed[pick],
            high_res=(embedding.high_res[0][pick], embedding.high_res[1][pick]),
            decoder_state=state.select(index) if state is not None else None,
        )

    @torch.inference_mode()
    def decode_points(
        self, embedding: Sam2Embedding, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decodes one positive point per prompt, multimask output (3 masks a prompt).

        Args:
            embedding: one image's embedding (from ``select_image``).
            points: (N, 2) float XY, pixels in the 1024 x 1024 input frame, as SAM2's image
                predictor takes them (the prompt encoder adds its own half-pixel shift).

        Returns:
            logits: (N, 3, 256, 256) float32 mask logits, the plain decoder output (no
                object-score masking, no clamping).
            iou: (N, 3) float32 predicted IoU in [0, 1].
        """
        return self._decode(embedding, *self._point_prompts(points), multimask=True)

    @torch.inference_mode()
    def decode_confident_points(
        self, embedding: Sam2Embedding, points: torch.Tensor, pred_iou_thresh: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``decode_points``, keeping each prompt's best candidate if its IoU > the threshold.

        With the shared decoder only the kept masks are upscaled (the predicted IoU does not
        depend on the mask); in float32 they equal ``decode_points``'s bit for bit. With the
        library decoder every candidate is decoded, then chosen.

        Args:
            embedding: one image's embedding (from ``select_image``).
            points: (N, 2) float XY, pixels in the 1024 x 1024 input frame.
            pred_iou_thresh: a prompt is kept when its best predicted IoU is > this.

        Returns:
            logits: (K, 256, 256) float32 mask logits; iou: (K,) float32 predicted IoU;
            prompts: (K,) int64 indices of the kept prompts in ``points``, ascending.
        """
        if embedding.decoder_state is None:
            logits, iou = self.decode_points(embedding, points)
            prompts, outputs = confident_best(iou, pred_iou_thresh)
            return logits[prompts, outputs], iou[prompts, outputs], prompts
        _check_single_image(embedding)
        points_and_labels = self._point_prompts(points)
        sparse, _ = self._model.sam_prompt_encoder(points=points_and_labels, boxes=None, masks=None)
        state = embedding.decoder_state
        tokens = run_transformer(self._model, state, sparse)
        iou = predict_iou(self._model.sam_mask_decoder, tokens)[:, 1:]  # the multimask outputs
        prompts, outputs = confident_best(iou, pred_iou_thresh)
        logits = selected_mask_logits(
            self._model, state, embedding.high_res, tokens, prompts, outputs + 1
        )
        return logits.float(), iou[prompts, outputs].float(), prompts

    @torch.inference_mode()
    def decode_boxes(
        self, embedding: Sam2Embedding, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decodes one box per prompt, single-mask output as SAM2's image predictor gives it.

        Args:
            embedding: one image's embedding (from ``select_image``).
            boxes: (N, 4) float XYXY, pixels in the 1024 x 1024 input frame.

        Returns:
            logits: (N, 256, 256) float32 mask logits; iou: (N,) float32 predicted IoU in [0, 1].
        """
        _check_prompts(boxes, "boxes", 4)
        corners = boxes.to(self.device, torch.float32).reshape(-1, 2, 2)
        labels = torch.tensor([_BOX_CORNER_LABELS], dtype=torch.int, device=self.device)
        labels = labels.expand(len(boxes), -1)
        logits, iou = self._decode(embedding, corners, labels, multimask=False)
        return logits[:, 0], iou[:, 0]

    def _point_prompts(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 2) XY points -> SAM2's (N, 1, 2) float32 coordinates and (N, 1) positive labels."""
        _check_prompts(points, "points", 2)
        coords = points.to(self.device, torch.float32)[:, None, :]
        labels = torch.full((len(points), 1), _POSITIVE_POINT, dtype=torch.int, device=self.device)
        return coords, labels

    def _decode(
        self, embedding: Sam2Embedding, coords: torch.Tensor, labels: torch.Tensor, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder then mask decoder, the image's features shared by all N prompts.

        Decodes with the embedding's decoder state when it has one (made by a ``"shared"``
        proposer), else with the library's ``MaskDecoder.forward``.
        """
        _check_single_image(embedding)
        n = len(coords)
        sparse, dense = self._model.sam_prompt_encoder(
            points=(coords, labels), boxes=None, masks=None
        )
        if embedding.decoder_state is not None:
            logits, iou = decode_masks(
                self._model, embedding.decoder_state, embedding.high_res, sparse, multimask
            )
            return logits.float(), iou.float()
        logits, iou, _, _ = self._model.sam_mask_decoder(
            image_embeddings=embedding.image_embed.expand(n, -1, -1, -1),
            image_pe=self._model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=[feat.expand(n, -1, -1, -1) for feat in embedding.high_res],
        )
        return logits.float(), iou.float()


def _check_single_image(embedding: Sam2Embedding) -> None:
    if embedding.batch_size != 1:
        raise ValueError(
            f"decoding needs one image's embedding, got a batch of {embedding.batch_size}; "
            f"call select_image(embedding, index) first"
        )


def _check_prompts(prompts: torch.Tensor, what: str, width: int) -> None:
    if prompts.ndim != 2 or prompts.shape[1] != width or len(prompts) == 0:
        raise ValueError(f"{what} must be (N, {width}) with N >= 1, got {tuple(prompts.shape)}")
