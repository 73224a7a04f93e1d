"""The one-shot GPU check: decoder agreement on the device, then the engine benchmark.

Run by ``gpu_check.sh`` (which makes ``sam2`` and its pure-Python needs importable from a folder
of wheels); runnable alone where sam2 is installed:

    python benchmarks/gpu_check.py --device cuda --out gpu_check.json
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check.json  # rehearsal

1. Decoder checks, SAM2.1-L with random weights (``--quick``: SAM2.1-T) on two random images:
   - fp32: the shared decoder (refseg's default) against the ``sam2`` package's decoder, point
     prompts (multimask) and box prompts; equal up to float rounding;
   - bf16 autocast: the shared decoder (folded attentions, bf16 upscaling) against the library
     decoder in fp32: per-prompt mask IoU and predicted-IoU differences;
   - the lighter decoder (only the kept masks upscaled) against the full decoder's kept masks,
     fp32 and bf16: the same prompts, the same logits (fp32 up to rounding).
2. ``benchmark_engine.py`` with the paper's models (SAM2.1-L + DINOv2-L/14, random weights),
   32 x 32 prompts, 8 images a batch: the reference path (paper settings, fp32, library decoder)
   and the fast path in bf16.
3. One JSON (``--out``): the machine (GPU, torch, CUDA), each check's figures and verdict, and
   the engine figures (ms per image per stage, images/s, peak GPU memory, agreement).

The exit status is 0 when every check passed and the benchmark ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import torch

from refseg.geometry import point_grid
from refseg.models import build_proposer
from refseg.proposals import confident_best

HERE = os.path.dirname(os.path.abspath(__file__))
BOXES = torch.tensor(
    [[10.0, 20.0, 300.0, 400.0], [0.0, 0.0, 1024.0, 1024.0], [600.0, 600.0, 650.0, 700.0]]
)
PAPER = {"sam2": "sam2.1_hiera_large", "dinov2": "dinov2_vitl14", "points_per_side": 32}
QUICK = {"sam2": "sam2.1_hiera_tiny", "dinov2": "dinov2_vits14", "points_per_side": 4}
FP32_TOLERANCE = {"logits_max_abs": 1e-3, "iou_max_abs": 1e-4, "mask_iou_min": 0.999}
# Random weights give logits within about +-1 of 0, so bf16 rounding flips a few pixels'
# signs: per-prompt mask IoU is a pessimistic figure here (trained weights have sharp logits).
BF16_TOLERANCE = {"iou_max_abs": 0.02, "mask_iou_min": 0.95}


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    settings = QUICK if args.quick else PAPER
    started = time.perf_counter()
    results: dict = {"machine": machine(device), "settings": {**settings, "quick": args.quick}}
    results["decoder_checks"] = decoder_checks(device, settings, args.quick)
    results["decoder_checks_s"] = time.perf_counter() - started
    remaining = args.budget_s - (time.perf_counter() - started) if args.budget_s else None
    results["engine"] = engine_benchmark(device, settings, args.quick, remaining)
    results["total_s"] = time.perf_counter() - started
    checks = results["decoder_checks"]
    results["passed"] = (
        all(c["passed"] for c in checks.values()) and "error" not in results["engine"]
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({name: check["passed"] for name, check in checks.items()}))
    print(f"wrote {args.out}; passed: {results['passed']}; {results['total_s']:.0f} s")
    return 0 if results["passed"] else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--quick", action="store_true", help="tiny models, few prompts and images (rehearsal)"
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results", "gpu-check.json"))
    parser.add_argument(
        "--budget-s",
        type=float,
        default=450,
        help="the engine benchmark is stopped at this total (0: no limit)",
    )
    return parser.parse_args()


def machine(device: torch.device) -> dict:
    """Versions and the device, and where ``sam2`` was imported from (the wheel or not)."""
    import sam2
    import timm

    info = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timm": timm.__version__,
        "sam2_from": os.path.dirname(sam2.__file__),
        "python": sys.version.split()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = list(torch.cuda.get_device_capability(device))
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return info


def decoder_checks(device: torch.device, settings: dict, quick: bool) -> dict:
    """The decoder agreement checks of the module docstring; each with ``passed``.

    TF32 is off during the checks, so fp32 means fp32 on GPUs too (restored afterwards)."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return _decoder_checks(device, settings, quick)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _decoder_checks(device: torch.device, settings: dict, quick: bool) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights
        shared = build_proposer(settings["sam2"], pretrained=False, device=device)
    library = shared.with_decoder("library")
    images = torch.rand(2, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    points = point_grid(4 if quick else 16, shared.image_size)
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16)
    with torch.inference_mode():
        ours, theirs = shared.encode_images(images), library.encode_images(images)
        with bf16:
            ours_bf16 = shared.encode_images(images)
        checks = {"fp32_shared_vs_library": [], "bf16_shared_vs_fp32_library": []}
        checks.update(lighter_fp32=[], lighter_bf16=[])
        for index in range(2):
            one, reference = shared.select_image(ours, index), library.select_image(theirs, index)
            one_bf16 = shared.select_image(ours_bf16, index)
            for decode, prompts in (("decode_points", points), ("decode_boxes", BOXES)):
                expected = getattr(library, decode)(reference, prompts)
                got = getattr(shared, decode)(one, prompts)
                checks["fp32_shared_vs_library"].append(compare(got, expected))
                with bf16:
                    got = getattr(shared, decode)(one_bf16, prompts)
                checks["bf16_shared_vs_fp32_library"].append(compare(got, expected))
            checks["lighter_fp32"].append(lighter_versus_full(shared, one, points))
            with bf16:
                checks["lighter_bf16"].append(lighter_versus_full(shared, one_bf16, points))
    tolerances = {
        "fp32_shared_vs_library": FP32_TOLERANCE,
        "bf16_shared_vs_fp32_library": BF16_TOLERANCE,
        "lighter_fp32": FP32_TOLERANCE,
        "lighter_bf16": BF16_TOLERANCE,
    }
    return {name: verdict(parts, tolerances[name]) for name, parts in checks.items()}


def compare(got: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...]) -> dict:
    """Differences between two (logits, iou) decodes of the same prompts."""
    logits, iou = got[0].float(), got[1].float()
    want_logits, want_iou = expected[0].float(), expected[1].float()
    mine, theirs = logits > 0, want_logits > 0
    union = (mine | theirs).flatten(2 if mine.ndim == 4 else 1).sum(-1)
    inter = (mine & theirs).flatten(2 if mine.ndim == 4 else 1).sum(-1)
    mask_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return {
        "logits_max_abs": float((logits - want_logits).abs().max()),
        "iou_max_abs": float((iou - want_iou).abs().max()),
        "mask_iou_min": float(mask_iou.min()),
    }


def lighter_versus_full(proposer, embedding, points: torch.Tensor) -> dict:
    """The kept masks of ``decode_confident_points`` against those chosen from
    ``decode_points``, at the median best IoU (about half the prompts kept)."""
    logits, iou = proposer.decode_points(embedding, points)
    threshold = float(iou.max(dim=1).values.median())
    prompts, outputs = confident_best(iou, threshold)
    kept_logits, kept_iou, kept = proposer.decode_confident_points(embedding, points, threshold)
    figures = {"kept": len(kept), "of": len(points), "same_prompts": torch.equal(kept, prompts)}
    if not figures["same_prompts"]:
        return {**figures, "logits_max_abs": float("inf"), "iou_max_abs": float("inf")}
    return {
        **figures,
        **compare((kept_logits, kept_iou), (logits[prompts, outputs], iou[prompts, outputs])),
    }


def verdict(parts: list[dict], tolerance: dict) -> dict:
    """The worst figures over ``parts`` and whether they are within ``tolerance``."""
    worst = {
        "logits_max_abs": max(p["logits_max_abs"] for p in parts),
        "iou_max_abs": max(p["iou_max_abs"] for p in parts),
        "mask_iou_min": min(p.get("mask_iou_min", 0.0) for p in parts),
    }
    passed = all(p.get("same_prompts", True) for p in parts)
    passed &= worst["iou_max_abs"] <= tolerance["iou_max_abs"]
    passed &= worst["mask_iou_min"] >= tolerance["mask_iou_min"]
    if "logits_max_abs" in tolerance:
        passed &= worst["logits_max_abs"] <= tolerance["logits_max_abs"]
    return {"passed": bool(passed), "worst": worst, "tolerance": tolerance, "parts": parts}


def engine_benchmark(
    device: torch.device, settings: dict, quick: bool, budget_s: float | None
) -> dict:
    """Runs benchmark_engine.py in a child process for at most ``budget_s`` (None: no limit);
    its JSON, or the error it ended with."""
    out = os.path.join(HERE, "results", f".gpu-check-engine-{os.getpid()}.json")
    command = [sys.executable, os.path.join(HERE, "benchmark_engine.py"), "--device", str(device)]
    command += ["--sam2", settings["sam2"], "--dinov2", settings["dinov2"]]
    command += ["--points-per-side", str(settings["points_per_side"]), "--precision", "bf16"]
    if quick:
        command += ["--images", "2", "--batch-size", "2", "--width", "320", "--height", "240"]
    else:
        command += ["--images", "32", "--batch-size", "8"]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command + ["--out", out],
            capture_output=True,
            text=True,
            timeout=None if budget_s is None else max(budget_s, 1),
        )
    except subprocess.TimeoutExpired as timeout:
        tail = (timeout.stderr or b"")[-4000:]
        return {"error": f"stopped after {timeout.timeout:.0f} s: {tail!r}", "command": command}
    if done.returncode != 0:
        return {"error": done.stderr[-4000:], "command": command}
    with open(out) as f:
        figures = json.load(f)
    os.remove(out)
    return {**figures, "command": command, "wall_s": time.perf_counter() - started}


if __name__ == "__main__":
    sys.exit(main())
