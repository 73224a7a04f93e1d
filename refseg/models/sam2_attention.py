"""SAM2's decoder transformer in reduced precision, with the image-side attentions folded.

Per prompt, the decoder's cross attentions pair T = 7 or 8 prompt-side tokens with HW = 4096
image tokens. The library projects all 4096 image tokens to queries or keys and values
(256 -> 128 channels each), runs an attention kernel made for long sequences on 8 keys, and
projects the 4096 outputs back (128 -> 256). Because one side has only T tokens per head,
the projections on the image side can be folded into the prompt side:

- token-to-image: the scores of head h are ``q_h W_k,h (x + pe)^T`` (the key bias is a
  constant per row and cancels in the softmax), and the output is ``(P_h x) W_v,h^T + b_v``
  (softmax rows sum to one): two (h * T) x C x HW products, no image-side projection;
- image-to-token: the scores are ``(x + pe) (W_q,h^T k_h^T) + b_q,h k_h^T`` and the output
  projection folds into the values: ``sum_h P_h (v_h W_o,h^T) + b_o``; two HW x C x (h * T)
  products instead of 256 -> 128 -> 256 projections around the attention. The scores are
  made transposed, (h * T, HW) per prompt, so the softmax over T runs along contiguous rows.

About half the multiply-adds of the library's attentions and no head reshuffling copies. The
arithmetic differs from the library's only by rounding (float32 agrees to 1e-6 in the
tests); it serves the autocast path only, the float32 path keeps the library's modules.

Shapes: N prompts, T prompt-side tokens, HW image tokens, C channels, h heads of width d.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def shared_image_to_tokens(
    attn: nn.Module, image_queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """The first block's image-to-token attention, the image's projected queries shared.

    Args:
        attn: the first block's ``cross_attn_image_to_token``.
        image_queries: (1, h, HW, d) the image's projected queries.
        keys: (N, T, C) prompt-side tokens plus their positional code; values: (N, T, C).

    Returns:
        (N, HW, C) the attention's output (after its output projection).
    """
    keys, values = _prompt_keys_values(attn, keys, values)
    n, t, heads, width = keys.shape
    # Per head, all N T prompt keys against the HW shared queries in one product.
    keys = keys.permute(2, 0, 1, 3).reshape(heads, n * t, width) * (1.0 / math.sqrt(width))
    scores = keys @ image_queries[0].transpose(1, 2)  # (h, N T, HW)
    scores = scores.reshape(heads, n, t, -1).transpose(0, 1).reshape(n, heads * t, -1)
    return _image_to_tokens_output(attn, scores, values)


def two_way_block(
    layer: nn.Module,
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_pe: torch.Tensor,
    key_pe: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` (a block after the first) with folded attentions.

    Args:
        layer: the block.
        queries: (N, T, C) prompt-side tokens; keys: (N, HW, C) image tokens.
        query_pe: (N, T, C) the prompt tokens; key_pe: (1, HW, C) the image positional code.
    """
    q = queries + query_pe
    queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
    keys_pe = keys + key_pe
    to_image = tokens_to_image(layer.cross_attn_token_to_image, queries + query_pe, keys_pe, keys)
    queries = layer.norm2(queries + to_image)
    queries = layer.norm3(queries + layer.mlp(queries))
    to_tokens = layer.cross_attn_image_to_token
    prompt_keys, values = _prompt_keys_values(to_tokens, queries + query_pe, queries)
    scores = _image_to_tokens_scores(to_tokens, keys_pe, prompt_keys)
    return queries, layer.norm4(keys + _image_to_tokens_output(to_tokens, scores, values))


def tokens_to_image(
    attn: nn.Module, queries: torch.Tensor, image_keys: torch.Tensor, image_values: torch.Tensor
) -> torch.Tensor:
    """``Attention(q=queries, k=image_keys, v=image_values)`` with the image side folded.

    Args:
        attn: a ``sam2`` ``Attention`` (the token-to-image one).
        queries: (N, T, C) prompt-side queries (positional code added).
        image_keys: (N, HW, C) image tokens plus their positional code.
        image_values: (N, HW, C) image tokens.

    Returns:
        (N, T, C) the attention's output (after its output projection).
    """
    n, t, _ = queries.shape
    heads = attn.num_heads
    q = attn.q_proj(queries).reshape(n, t, heads, -1)
    width = q.shape[-1]
    key_weight = attn.k_proj.weight.reshape(heads, width, -1).to(q.dtype)  # (h, d, C)
    folded = torch.einsum("nthd,hdc->nhtc", q, key_weight) * (1.0 / math.sqrt(width))
    scores = folded.reshape(n, heads * t, -1) @ image_keys.transpose(1, 2)  # (N, h T, HW)
    mixed = torch.softmax(scores, dim=-1) @ image_values  # (N, h T, C)
    value_weight = attn.v_proj.weight.reshape(heads, width, -1).to(q.dtype)
    attended = torch.einsum("nhtc,hdc->nthd", mixed.reshape(n, heads, t, -1), value_weight)
    return attn.out_proj(attended.reshape(n, t, heads * width) + attn.v_proj.bias.to(q.dtype))


def _prompt_keys_values(
    attn: nn.Module, keys: torch.Tensor, values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T, h, d) projected prompt-side keys and values of an image-to-token attention."""
    n, t, _ = keys.shape
    keys = attn.k_proj(keys).reshape(n, t, attn.num_heads, -1)
    return keys, attn.v_proj(values).reshape(n, t, attn.num_heads, -1)


def _image_to_tokens_scores(
    attn: nn.Module, image_queries: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """(N, h T, HW) scaled scores of the image tokens (N, HW, C, positional code added,
    not projected) against the projected prompt keys (N, T, h, d)."""
    n, t, heads, width = keys.shape
    scale = 1.0 / math.sqrt(width)
    query_weight = attn.q_proj.weight.reshape(heads, width, -1).to(keys.dtype)  # (h, d, C)
    query_bias = attn.q_proj.bias.reshape(heads, width).to(keys.dtype)
    folded = torch.einsum("nthd,hdc->nhtc", keys, query_weight).reshape(n, heads * t, -1)
    bias = torch.einsum("nthd,hd->nht", keys, query_bias).reshape(n, heads * t, 1)
    scores = (folded * scale) @ image_queries.transpose(1, 2)
    return scores.add_(bias * scale)


def _image_to_tokens_output(
    attn: nn.Module, scores: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """(N, HW, C) the image-to-token attention's projected output from its (N, h T, HW)
    scaled scores and the (N, T, h, d) prompt values."""
    n, t, heads, width = values.shape
    probabilities = torch.softmax(scores.reshape(n, heads, t, -1), dim=2)  # over the T keys
    out_weight = attn.out_proj.weight.reshape(-1, heads, width).to(values.dtype)  # (C, h, d)
    # Each head's probabilities sum to one, so b_o / h on every row of every head adds b_o.
    out_bias = attn.out_proj.bias.to(values.dtype) / heads
    folded = torch.einsum("nthd,chd->nhtc", values, out_weight) + out_bias
    return probabilities.reshape(n, heads * t, -1).transpose(1, 2) @ folded.reshape(
        n, heads * t, -1
    )
