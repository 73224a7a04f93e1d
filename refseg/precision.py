"""The autocast dtype of a ``PredictConfig.precision`` on a device, and which devices run bf16
natively (``precision="auto"``).

bf16 pays where the hardware multiplies bf16 natively: CUDA GPUs of compute capability 8.0 or
more (Ampere, Hopper, ...) and x86 CPUs with AVX512-BF16 or AMX-BF16. Elsewhere bf16 is
emulated and slower than float32, so ``"auto"`` stays in float32 there.
"""

from __future__ import annotations

import functools

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""The values of ``PredictConfig.precision``."""

CPUINFO = "/proc/cpuinfo"
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype to autocast to for ``precision`` on ``device``, or None for plain float32.

    Args:
        precision: ``"fp32"`` (no autocast), ``"bf16"`` (bf16 autocast on CUDA and on CPUs),
            ``"fp16"`` (fp16 autocast on CUDA; float32 elsewhere) or ``"auto"`` (bf16 where
            :func:`native_bf16` says the device runs it natively, float32 elsewhere).
        device: where the model runs.

    Raises:
        ValueError: ``precision`` is none of :data:`PRECISIONS`.
    """
    kind = torch.device(device).type
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if precision == "bf16":
        return torch.bfloat16 if kind in ("cuda", "cpu") else None
    if precision == "fp16":
        return torch.float16 if kind == "cuda" else None
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 natively (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX-BF16, asked of torch, else of /proc/cpuinfo."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    return bool(_BF16_CPU_FLAGS & cpu_flags())


def cpu_flags(path: str | None = None) -> frozenset[str]:
    """The feature flags of the first processor listed in ``path`` (default :data:`CPUINFO`);
    empty where it cannot be read (not Linux)."""
    try:
        with open(path or CPUINFO) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()
