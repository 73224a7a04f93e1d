"""SAM2's mask decoder with its prompt-independent work done once per image.

SAM2's ``MaskDecoder`` copies the image embedding once per prompt and runs its two-way
transformer on every copy. Until the first layer's image-to-token attention updates the image
tokens, that work does not depend on the prompt: the image tokens (embedding plus the constant
"no mask" dense embedding), the first layer's token-to-image keys and values, and its
image-to-token queries. :func:`prepare_decoder_state` computes them once per image;
:func:`decode_masks` then runs the rest per prompt with the model's own modules and weights.
The outputs equal the library's ``MaskDecoder.forward`` (bit for bit on the CPU in the tests);
only the order of work changes.

Shapes: C = 256 channels, H x W = 64 x 64 image tokens (HW = 4096), heads h and per-head
width d of each attention (h * d = C / 2 in SAM2), T prompt-side tokens per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DecoderImageState:
    """The prompt-independent part of the mask decoder for a batch of B images.

    Attributes:
        image_tokens: (B, HW, C) image embedding plus the no-mask dense embedding, row-major.
        image_pe: (1, HW, C) the dense positional encoding of the image tokens.
        first_keys: (B, h, HW, d) first layer token-to-image attention keys.
        first_values: (B, h, HW, d) first layer token-to-image attention values.
        first_image_queries: (B, h, HW, d) first layer image-to-token attention queries.
        grid: (H, W) of the image tokens.
    """

    image_tokens: torch.Tensor
    image_pe: torch.Tensor
    first_keys: torch.Tensor
    first_values: torch.Tensor
    first_image_queries: torch.Tensor
    grid: tuple[int, int]

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
        )


def prepare_decoder_state(model: nn.Module, image_embed: torch.Tensor) -> DecoderImageState:
    """Computes the decoder's prompt-independent work for a batch of images.

    Args:
        model: a ``sam2`` ``SAM2Base``.
        image_embed: (B, C, H, W) the low-resolution image embedding the decoder reads.

    Returns:
        The state for :func:`decode_masks` (``select`` one image first).
    """
    prompt_encoder = model.sam_prompt_encoder
    first = model.sam_mask_decoder.transformer.layers[0]
    grid = (image_embed.shape[2], image_embed.shape[3])
    no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    image_tokens = _tokens(image_embed + no_mask)
    image_pe = _tokens(prompt_encoder.get_dense_pe()).to(image_tokens.dtype)
    to_image = first.cross_attn_token_to_image
    to_tokens = first.cross_attn_image_to_token
    return DecoderImageState(
        image_tokens=image_tokens,
        image_pe=image_pe,
        first_keys=_heads(to_image.k_proj(image_tokens + image_pe), to_image.num_heads),
        first_values=_heads(to_image.v_proj(image_tokens), to_image.num_heads),
        first_image_queries=_heads(to_tokens.q_proj(image_tokens + image_pe), to_tokens.num_heads),
        grid=grid,
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
    if state.image_tokens.shape[0] != 1:
        raise ValueError(f"decode_masks needs one image's state, got {state.image_tokens.shape[0]}")
    prompt_tokens = torch.cat((_output_tokens(decoder, len(sparse), sparse.dtype), sparse), dim=1)
    queries, keys = _first_layer(decoder.transformer.layers[0], state, prompt_tokens)
    key_pe = state.image_pe.expand(len(sparse), -1, -1)
    for layer in decoder.transformer.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=prompt_tokens, key_pe=key_pe)
    final = decoder.transformer.final_attn_token_to_image
    queries = queries + final(q=queries + prompt_tokens, k=keys + key_pe, v=keys)
    queries = decoder.transformer.norm_final_attn(queries)
    logits, iou = _masks_and_iou(decoder, queries, keys, state.grid, high_res)
    if multimask:
        return logits[:, 1:], iou[:, 1:]
    if decoder.dynamic_multimask_via_stability:
        return decoder._dynamic_multimask_via_stability(logits, iou)
    return logits[:, :1], iou[:, :1]


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
    # The queries are copied per prompt rather than broadcast: a stride-0 batch has given
    # silently wrong results in a CUDA attention kernel (pytorch/pytorch#191937), and the
    # copy is cheap next to the projection it replaces.
    to_tokens = layer.cross_attn_image_to_token
    k = _heads(to_tokens.k_proj(queries + prompt_tokens), to_tokens.num_heads)
    v = _heads(to_tokens.v_proj(queries), to_tokens.num_heads)
    image_queries = state.first_image_queries.expand(n, -1, -1, -1).contiguous()
    attended = F.scaled_dot_product_attention(image_queries, k, v)
    keys = layer.norm4(state.image_tokens + to_tokens.out_proj(_merge_heads(attended)))
    return queries, keys


def _masks_and_iou(
    decoder: nn.Module,
    tokens: torch.Tensor,
    image_tokens: torch.Tensor,
    grid: tuple[int, int],
    high_res: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All mask tokens' logits (N, K, 4H, 4W) and IoU predictions (N, K) from the transformer
    outputs: (N, T, C) prompt-side tokens and (N, HW, C) image tokens."""
    n = len(tokens)
    first_output = 1 if decoder.pred_obj_scores else 0
    image = image_tokens.transpose(1, 2).reshape(n, -1, *grid)
    if decoder.use_high_res_features:
        conv1, norm1, act1, conv2, act2 = decoder.output_upscaling
        fine, medium = high_res
        upscaled = act1(norm1(conv1(image) + medium))
        upscaled = act2(conv2(upscaled) + fine)
    else:
        upscaled = decoder.output_upscaling(image)
    mask_tokens = tokens[:, first_output + 1 : first_output + 1 + decoder.num_mask_tokens]
    hyper = torch.stack(
        [mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    logits = (hyper @ upscaled.flatten(2)).reshape(n, -1, *upscaled.shape[2:])
    iou = decoder.iou_prediction_head(tokens[:, first_output])
    return logits, iou


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
