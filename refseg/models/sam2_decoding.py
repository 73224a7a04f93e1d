"""SAM2's mask decoder with its prompt-independent work done once per image.

SAM2's ``MaskDecoder`` copies the image embedding once per prompt and runs its two-way
transformer on every copy. Until the first layer's image-to-token attention updates the image
tokens, that work does not depend on the prompt: the image tokens (embedding plus the constant
"no mask" dense embedding), the first layer's token-to-image keys and values, and its
image-to-token queries. :func:`prepare_decoder_state` computes them once per image;
:func:`decode_masks` then runs the rest per prompt with the model's own modules and weights.
The outputs equal the library's ``MaskDecoder.forward`` (bit for bit on the CPU in the tests);
only the order of work changes.

The predicted IoU does not depend on the upscaled mask embedding, so a caller that keeps only
some masks (the best multimask output of the confident prompts) runs the transformer on every
prompt (:func:`run_transformer`, :func:`predict_iou`) and upscales only the masks it keeps
(:func:`selected_mask_logits`); in float32 those masks are bit for bit the ones
:func:`decode_masks` gives.

Under autocast the state is made in the autocast dtype, so the transformer's residual stream
stays in it instead of returning to float32 at every addition, the image-side attentions are
folded (``sam2_attention``) and the upscaling runs in that dtype end to end
(``sam2_upscaling``).

Shapes: C = 256 channels, H x W = 64 x 64 image tokens (HW = 4096), heads h and per-head
width d of each attention (h * d = C / 2 in SAM2), T prompt-side tokens per prompt, M mask
tokens of the decoder (4: the single-mask output, then the three multimask outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from refseg.models.sam2_attention import shared_image_to_tokens, tokens_to_image, two_way_block
from refseg.models.sam2_upscaling import BlockUpscaling, prepare_block_upscaling

REDUCED_DTYPES = (torch.bfloat16, torch.float16)
"""Autocast dtypes that take the reduced-precision implementations."""

UPSCALING_CHUNKS = {"cpu": 4, "cuda": 64}
"""Masks upscaled at a time by :func:`selected_mask_logits`, per device type: a few keep the
(C/8, 4H, 4W) embeddings in a CPU's cache; on a GPU the chunk only bounds memory. The results
do not depend on it."""


@dataclass(frozen=True)
class DecoderImageState:
    """The prompt-independent part of the mask decoder for a batch of B images.

    Tensors are in the decoder's compute dtype: float32, or the autocast dtype when made under
    autocast.

    Attributes:
        image_tokens: (B, HW, C) image embedding plus the no-mask dense embedding, row-major.
        image_pe: (1, HW, C) the dense positional encoding of the image tokens.
        first_keys: (B, h, HW, d) first layer token-to-image attention keys.
        first_values: (B, h, HW, d) first layer token-to-image attention values.
        first_image_queries: (B, h, HW, d) first layer image-to-token attention queries.
        grid: (H, W) of the image tokens.
        upscaling: the upscaling chain in reduced precision (made under autocast for a decoder
            with high-resolution features), else None: the decoder's own modules upscale.
    """

    image_tokens: torch.Tensor
    image_pe: torch.Tensor
    first_keys: torch.Tensor
    first_values: torch.Tensor
    first_image_queries: torch.Tensor
    grid: tuple[int, int]
    upscaling: BlockUpscaling | None = None

    def select(self, index: int) -> "DecoderImageState":
        """The state of image ``index`` (a batch of one)."""
        pick = slice(index, index + 1)
        return DecoderImageState(
            image_tokens=self.image_tokens[pick],
            image_pe=self.image_pe,
            first_keys=self.first_keys[pick],
            first_values=self.first_values[pick],
            first_image_queries=self.first_image_queries[pick],
            grid=self.grid,
            upscaling=self.upscaling.select(index) if self.upscaling is not None else None,
        )


@dataclass(frozen=True)
class DecodedTokens:
    """The two-way transformer's outputs for N prompts on one image.

    Attributes:
        prompt_tokens: (N, T, C) the output and prompt tokens after the final attention.
        image_tokens: (N, HW, C) the image tokens, row-major.
    """

    prompt_tokens: torch.Tensor
    image_tokens: torch.Tensor

    def __len__(self) -> int:
        return self.prompt_tokens.shape[0]


def prepare_decoder_state(
    model: nn.Module,
    image_embed: torch.Tensor,
    high_res: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> DecoderImageState:
    """Computes the decoder's prompt-independent work for a batch of images.

    Args:
        model: a ``sam2`` ``SAM2Base``.
        image_embed: (B, C, H, W) the low-resolution image embedding the decoder reads.
        high_res: the batch's projected high-resolution maps, (B, C/8, 4H, 4W) and
            (B, C/4, 2H, 2W); used to prepare the reduced-precision upscaling under autocast.

    Returns:
        The state for :func:`decode_masks` (``select`` one image first).
    """
    prompt_encoder = model.sam_prompt_encoder
    decoder = model.sam_mask_decoder
    first = decoder.transformer.layers[0]
    grid = (image_embed.shape[2], image_embed.shape[3])
    dtype = _compute_dtype(image_embed)
    no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    image_tokens = _tokens(image_embed + no_mask).to(dtype)
    image_pe = _tokens(prompt_encoder.get_dense_pe()).to(dtype)
    to_image = first.cross_attn_token_to_image
    to_tokens = first.cross_attn_image_to_token
    reduced = dtype in REDUCED_DTYPES and decoder.use_high_res_features and high_res is not None
    return DecoderImageState(
        image_tokens=image_tokens,
        image_pe=image_pe,
        first_keys=_heads(to_image.k_proj(image_tokens + image_pe), to_image.num_heads),
        first_values=_heads(to_image.v_proj(image_tokens), to_image.num_heads),
        first_image_queries=_heads(to_tokens.q_proj(image_tokens + image_pe), to_tokens.num_heads),
        grid=grid,
        upscaling=prepare_block_upscaling(decoder.output_upscaling, high_res, dtype)
        if reduced
        else None,
    )


def decode_masks(
    model: nn.Module,
    state: DecoderImageState,
    high_res: tuple[torch.Tensor, torch.Tensor] | None,
    sparse: torch.Tensor,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decodes N prompts on one image, as ``MaskDecoder.forward`` would.

    Args:
        model: the ``SAM2Base`` that made ``state``.
        state: one image's state (``DecoderImageState.select``).
        high_res: that image's projected high-resolution maps, (1, C/8, 4H, 4W) and
            (1, C/4, 2H, 2W), or None for a decoder without high-resolution features.
        sparse: (N, T_p, C) sparse prompt embeddings from the prompt encoder.
        multimask: the three multimask outputs, or the single output with SAM2's
            stability fallback when the decoder has it (as ``MaskDecoder.forward``).

    Returns:
        logits: (N, M, 4H, 4W) mask logits, M = 3 or 1; iou: (N, M) predicted IoU.
    """
    decoder = model.sam_mask_decoder
    tokens = run_transformer(model, state, sparse)
    logits, iou = _masks_and_iou(decoder, tokens, state.grid, high_res)
    if multimask:
        return logits[:, 1:], iou[:, 1:]
    if decoder.dynamic_multimask_via_stability:
        return decoder._dynamic_multimask_via_stability(logits, iou)
    return logits[:, :1], iou[:, :1]


def run_transformer(
    model: nn.Module, state: DecoderImageState, sparse: torch.Tensor
) -> DecodedTokens:
    """The decoder's two-way transformer on N prompts of one image.

    Args:
        model: the ``SAM2Base`` that made ``state``.
        state: one image's state (``DecoderImageState.select``).
        sparse: (N, T_p, C) sparse prompt embeddings from the prompt encoder.
    """
    decoder = model.sam_mask_decoder
    if state.image_tokens.shape[0] != 1:
        raise ValueError(f"decoding needs one image's state, got {state.image_tokens.shape[0]}")
    sparse = sparse.to(state.image_tokens.dtype)
    prompt_tokens = torch.cat((_output_tokens(decoder, len(sparse), sparse.dtype), sparse), dim=1)
    queries, keys = _first_layer(decoder.transformer.layers[0], state, prompt_tokens)
    final = decoder.transformer.final_attn_token_to_image
    if _reduced(state):
        for layer in decoder.transformer.layers[1:]:
            queries, keys = two_way_block(layer, queries, keys, prompt_tokens, state.image_pe)
        attended = tokens_to_image(final, queries + prompt_tokens, keys + state.image_pe, keys)
    else:
        key_pe = state.image_pe.expand(len(sparse), -1, -1)
        for layer in decoder.transformer.layers[1:]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=prompt_tokens, key_pe=key_pe)
        attended = final(q=queries + prompt_tokens, k=keys + key_pe, v=keys)
    return DecodedTokens(decoder.transformer.norm_final_attn(queries + attended), keys)


def predict_iou(decoder: nn.Module, tokens: DecodedTokens) -> torch.Tensor:
    """(N, M) float32 predicted IoU of every mask token (single-mask output first).

    The head runs in float32 even under autocast (a few small matrix products): it ranks the
    proposals, and bf16's 8-bit mantissa would round the IoUs of neighbouring prompts (often
    within 0.001 of each other) into ties.
    """
    first_output = 1 if decoder.pred_obj_scores else 0
    token = tokens.prompt_tokens[:, first_output]
    with torch.autocast(token.device.type, enabled=False):
        return decoder.iou_prediction_head(token.float())


def selected_mask_logits(
    model: nn.Module,
    state: DecoderImageState,
    high_res: tuple[torch.Tensor, torch.Tensor] | None,
    tokens: DecodedTokens,
    prompts: torch.Tensor,
    mask_tokens: torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor:
    """The logits of chosen (prompt, mask token) pairs, upscaling only those prompts.

    In float32 each mask equals, bit for bit, the one :func:`decode_masks` gives for that
    prompt and token: the same modules run on a subset of the prompts, ``chunk`` at a time.

    Args:
        model: the ``SAM2Base`` that made ``state``.
        state: one image's state.
        high_res: that image's projected high-resolution maps (as :func:`decode_masks`).
        tokens: the transformer outputs of N prompts (:func:`run_transformer`).
        prompts: (K,) int64 prompt indices in [0, N).
        mask_tokens: (K,) int64 mask token of each pair, in [0, M) (0 = single-mask output).
        chunk: prompts upscaled at a time; default ``UPSCALING_CHUNKS`` of the device.

    Returns:
        (K, 4H, 4W) mask logits in the compute dtype.
    """
    decoder = model.sam_mask_decoder
    kind = tokens.image_tokens.device.type
    chunk = chunk or UPSCALING_CHUNKS.get(kind, UPSCALING_CHUNKS["cuda"])
    size = (4 * state.grid[0], 4 * state.grid[1])
    if len(prompts) == 0:
        return tokens.image_tokens.new_zeros((0, *size))
    hyper = _hypernetworks(decoder, tokens.prompt_tokens)  # (N, M, C/8), cheap for all
    masks = []
    for rows, chosen in zip(prompts.split(chunk), mask_tokens.split(chunk), strict=True):
        image_tokens = tokens.image_tokens[rows]
        if state.upscaling is not None:
            masks.append(state.upscaling.mask_logits(image_tokens, hyper[rows, chosen]))
            continue
        upscaled = _upscale(decoder, _image_grid(image_tokens, state.grid), high_res).flatten(2)
        # All M tokens' products, then the chosen one: a one-row product rounds differently.
        logits = hyper[rows] @ upscaled
        masks.append(logits[torch.arange(len(rows), device=rows.device), chosen])
    return torch.cat(masks).reshape(-1, *size)


def _first_layer(
    layer: nn.Module, state: DecoderImageState, prompt_tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two-way block with the shared image work read from ``state``.

    Returns (N, T, C) updated prompt-side tokens and (N, HW, C) updated image tokens.
    """
    n, t, _ = prompt_tokens.shape
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=prompt_tokens, k=prompt_tokens, v=prompt_tokens)
    else:
        q = prompt_tokens + prompt_tokens
        queries = prompt_tokens + layer.self_attn(q=q, k=q, v=prompt_tokens)
    queries = layer.norm1(queries)

    # Token-to-image: every query row attends to the same keys, so the N prompts' tokens are
    # folded into one query sequence instead of copying the image's keys N times.
    to_image = layer.cross_attn_token_to_image
    q = _heads(to_image.q_proj(queries + prompt_tokens).reshape(1, n * t, -1), to_image.num_heads)
    attended = F.scaled_dot_product_attention(q, state.first_keys, state.first_values)
    queries = layer.norm2(queries + to_image.out_proj(_merge_heads(attended).reshape(n, t, -1)))
    queries = layer.norm3(queries + layer.mlp(queries))

    # Image-to-token: the image's queries are shared, the prompt-side keys and values are not.
    to_tokens = layer.cross_attn_image_to_token
    if _reduced(state):
        attended = shared_image_to_tokens(
            to_tokens, state.first_image_queries, queries + prompt_tokens, queries
        )
        return queries, layer.norm4(state.image_tokens + attended)
    # The queries are copied per prompt rather than broadcast: a stride-0 batch has given
    # silently wrong results in a CUDA attention kernel (pytorch/pytorch#191937), and the
    # copy is cheap next to the projection it replaces.
    k = _heads(to_tokens.k_proj(queries + prompt_tokens), to_tokens.num_heads)
    v = _heads(to_tokens.v_proj(queries), to_tokens.num_heads)
    image_queries = state.first_image_queries.expand(n, -1, -1, -1).contiguous()
    attended = F.scaled_dot_product_attention(image_queries, k, v)
    keys = layer.norm4(state.image_tokens + to_tokens.out_proj(_merge_heads(attended)))
    return queries, keys


def _reduced(state: DecoderImageState) -> bool:
    """Whether the state was made under bf16 or fp16 autocast (the folded attentions of
    ``sam2_attention`` then replace the library's on the image side)."""
    return state.image_tokens.dtype in REDUCED_DTYPES


def _masks_and_iou(
    decoder: nn.Module,
    tokens: DecodedTokens,
    grid: tuple[int, int],
    high_res: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All mask tokens' logits (N, M, 4H, 4W) and IoU predictions (N, M)."""
    upscaled = _upscale(decoder, _image_grid(tokens.image_tokens, grid), high_res)
    hyper = _hypernetworks(decoder, tokens.prompt_tokens)
    logits = (hyper @ upscaled.flatten(2)).reshape(len(tokens), -1, *upscaled.shape[2:])
    return logits, predict_iou(decoder, tokens)


def _upscale(
    decoder: nn.Module, image: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """(N, C, H, W) image tokens -> (N, C/8, 4H, 4W) mask embedding, the decoder's modules."""
    if not decoder.use_high_res_features:
        return decoder.output_upscaling(image)
    conv1, norm1, act1, conv2, act2 = decoder.output_upscaling
    fine, medium = high_res
    upscaled = act1(norm1(conv1(image) + medium))
    return act2(conv2(upscaled) + fine)


def _hypernetworks(decoder: nn.Module, prompt_tokens: torch.Tensor) -> torch.Tensor:
    """(N, T, C) prompt-side tokens -> (N, M, C/8) the mask tokens' hypernetwork outputs."""
    first_output = 1 if decoder.pred_obj_scores else 0
    mask_tokens = prompt_tokens[:, first_output + 1 : first_output + 1 + decoder.num_mask_tokens]
    return torch.stack(
        [mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )


def _image_grid(image_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, HW, C) row-major tokens -> (N, C, H, W)."""
    return image_tokens.transpose(1, 2).reshape(len(image_tokens), -1, *grid)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for ``x``'s device, else ``x``'s dtype."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def _output_tokens(decoder: nn.Module, n: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, K', C) the decoder's learned output tokens (object score, IoU, mask tokens)."""
    learned = [decoder.iou_token.weight, decoder.mask_tokens.weight]
    if decoder.pred_obj_scores:
        learned.insert(0, decoder.obj_score_token.weight)
    return torch.cat(learned).to(dtype).unsqueeze(0).expand(n, -1, -1)


def _tokens(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, HW, C), row-major."""
    return grid.flatten(2).transpose(1, 2)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, h * d) -> (B, h, L, d)."""
    b, length, width = x.shape
    return x.reshape(b, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, h, L, d) -> (B, L, h * d)."""
    b, heads, length, width = x.shape
    return x.transpose(1, 2).reshape(b, length, heads * width)
