"""SAM2's mask upscaling kept in one reduced precision, as matrix products in block layout.

SAM2's decoder turns the (N, C, H, W) image tokens into the (N, C/8, 4H, 4W) mask embedding
with two transposed convolutions of kernel 2 and stride 2, each followed by an addition of a
high-resolution feature map, a channel LayerNorm after the first and GELUs. Under autocast
this chain leaves the reduced precision at the LayerNorm (its float32 affine weights promote
the result) and converts back for the second convolution; on a CPU the casts, the
channel-first LayerNorm and the broadcast additions of (C/8, 4H, 4W) maps cost more than the
convolutions themselves.

A transposed convolution with kernel = stride = 2 is one matrix product per input pixel, each
pixel giving its own 2 x 2 block of output pixels. Kept in that "block" layout (tokens row
major, then the sub-pixel offsets, channels last), the whole chain is two matrix products,
two contiguous additions, one last-dimension LayerNorm and two GELUs in one dtype, and the
mask product reads the channels-last embedding directly. The high-resolution maps (with the
convolutions' biases folded in) are rearranged into that layout once per image. Only the
chosen masks are rearranged back to raster order.

This path serves reduced precision only: in float32 the decoder keeps the library's modules,
whose bits the tests pin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BlockUpscaling:
    """The upscaling chain of one decoder, prepared for a batch of B images in one dtype.

    Shapes: C channels (256), H x W image tokens (64 x 64), HW = H * W; the first stage gives
    C1 = C/4 channels on a 2H x 2W grid, the second C2 = C/8 on 4H x 4W.

    Attributes:
        first_weight: (C, 4 * C1) the first transposed convolution, columns (ky, kx, out).
        medium: (B, 4 * HW, C1) the (2H, 2W) high-resolution map plus the first bias, rows
            (y, x, ky, kx).
        norm_weight, norm_bias: (C1,) the channel LayerNorm's affine parameters.
        norm_eps: its epsilon.
        second_weight: (C1, 4 * C2) the second transposed convolution, columns (ky, kx, out).
        fine: (B, 4 * HW, 4 * C2) the (4H, 4W) high-resolution map plus the second bias, rows
            (y, x, ky1, kx1), columns (ky2, kx2, channel).
        grid: (H, W).
    """

    first_weight: torch.Tensor
    medium: torch.Tensor
    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    norm_eps: float
    second_weight: torch.Tensor
    fine: torch.Tensor
    grid: tuple[int, int]

    def select(self, index: int) -> BlockUpscaling:
        """The upscaling of image ``index`` (a batch of one)."""
        pick = slice(index, index + 1)
        return BlockUpscaling(
            first_weight=self.first_weight,
            medium=self.medium[pick],
            norm_weight=self.norm_weight,
            norm_bias=self.norm_bias,
            norm_eps=self.norm_eps,
            second_weight=self.second_weight,
            fine=self.fine[pick],
            grid=self.grid,
        )

    def mask_logits(self, image_tokens: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """One mask per row: the upscaled embedding of its image tokens times its hypernetwork
        output, as ``MaskDecoder.predict_masks`` computes it, in this upscaling's dtype.

        Args:
            image_tokens: (K, HW, C) the transformer's image tokens, row-major (a few rows at
                a time: the (K, 16 HW, C2) embedding is held at once).
            hyper: (K, C2) the hypernetwork output of the mask token chosen for each row.

        Returns:
            (K, 4H, 4W) mask logits in this upscaling's dtype.
        """
        dtype = self.fine.dtype
        with torch.autocast(image_tokens.device.type, enabled=False):  # dtypes are explicit
            blocks = self._block_logits(image_tokens.to(dtype), hyper.to(dtype))
        return _raster(blocks, self.grid)

    def _block_logits(self, tokens: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """(k, HW, C) tokens and (k, C2) rows -> (k, 16 * HW) logits in block layout."""
        k, c1 = len(tokens), self.norm_weight.shape[0]
        medium = (tokens @ self.first_weight).reshape(k, -1, c1)  # (k, 4HW, C1)
        medium += self.medium
        medium = F.gelu(
            F.layer_norm(medium, (c1,), self.norm_weight, self.norm_bias, self.norm_eps)
        )
        fine = medium @ self.second_weight  # (k, 4HW, 4 * C2)
        fine += self.fine
        fine = F.gelu(fine).reshape(k, -1, hyper.shape[1])  # (k, 16HW, C2)
        return (fine @ hyper.unsqueeze(2)).squeeze(2)


def prepare_block_upscaling(
    upscaling: nn.Sequential,
    high_res: tuple[torch.Tensor, torch.Tensor],
    dtype: torch.dtype,
) -> BlockUpscaling:
    """Rearranges a decoder's ``output_upscaling`` and a batch's high-resolution maps.

    Args:
        upscaling: ``MaskDecoder.output_upscaling`` of a decoder with high-resolution features:
            (ConvTranspose2d, LayerNorm2d, GELU, ConvTranspose2d, GELU).
        high_res: the batch's projected maps, (B, C2, 4H, 4W) and (B, C1, 2H, 2W).
        dtype: the reduced precision to keep the chain in.

    Raises:
        ValueError: the convolutions are not kernel 2, stride 2 without padding, or the
            activations are not GELUs (another decoder than SAM2's).
    """
    first, norm, first_act, second, second_act = upscaling
    for conv in (first, second):
        _check_block_conv(conv)
    if type(norm).__name__ != "LayerNorm2d":
        raise ValueError(f"block upscaling needs SAM2's channel LayerNorm2d, got {norm}")
    for act in (first_act, second_act):
        if not isinstance(act, nn.GELU) or act.approximate != "none":
            raise ValueError(f"block upscaling needs exact GELU activations, got {act}")
    fine, medium = high_res
    b, c2, fine_h, fine_w = fine.shape
    h, w = fine_h // 4, fine_w // 4
    c1 = medium.shape[1]
    # medium[b, c, 2y + ky, 2x + kx] -> rows (y, x, ky, kx), channels last
    medium = medium.reshape(b, c1, h, 2, w, 2).permute(0, 2, 4, 3, 5, 1)
    # fine[b, c, 4y + 2ky1 + ky2, 4x + 2kx1 + kx2] -> rows (y, x, ky1, kx1), cols (ky2, kx2, c)
    fine = fine.reshape(b, c2, h, 2, 2, w, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1)
    return BlockUpscaling(
        first_weight=_block_weight(first).to(dtype),
        medium=(medium + first.bias).to(dtype).reshape(b, 4 * h * w, c1),
        norm_weight=norm.weight.to(dtype),
        norm_bias=norm.bias.to(dtype),
        norm_eps=float(norm.eps),
        second_weight=_block_weight(second).to(dtype),
        fine=(fine + second.bias).to(dtype).reshape(b, 4 * h * w, 4 * c2),
        grid=(h, w),
    )


def _check_block_conv(conv: nn.Module) -> None:
    if not (
        isinstance(conv, nn.ConvTranspose2d)
        and conv.kernel_size == conv.stride == (2, 2)
        and conv.padding == conv.output_padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.bias is not None
    ):
        raise ValueError(
            f"block upscaling needs ConvTranspose2d(kernel_size=2, stride=2) with a bias and "
            f"no padding, got {conv}"
        )


def _block_weight(conv: nn.ConvTranspose2d) -> torch.Tensor:
    """(C_in, C_out, 2, 2) transposed-convolution weight -> (C_in, 4 C_out), cols (ky, kx, out)."""
    c_in = conv.weight.shape[0]
    return conv.weight.permute(0, 2, 3, 1).reshape(c_in, -1)


def _raster(blocks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(K, 16 * HW) logits, block layout (y, x, ky1, kx1, ky2, kx2) -> (K, 4H, 4W) raster."""
    h, w = grid
    k = len(blocks)
    blocks = blocks.reshape(k, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
    return blocks.reshape(k, 4 * h, 4 * w)
