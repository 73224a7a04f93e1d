"""What both benchmarks share: peak-memory sampling, the machine record, synthetic targets.

Imports neither FiftyOne nor a database, so ``benchmark_engine.py`` runs where only torch,
timm and sam2 are installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import threading
import time

import numpy as np
import psutil
import torch
from PIL import Image

from refseg.compare import agreement
from refseg.config import PAPER_PREDICT, PredictConfig
from refseg.models import Dinov2Encoder, Sam2Proposer, build_encoder, build_proposer
from refseg.precision import PRECISIONS, autocast_dtype, cpu_has_native_bf16
from refseg.predictions import Predictions
from refseg.synthetic import CLASSES, random_shapes, render
from refseg.timing import StageTimer

MODEL_STAGES = ("sam2_encoder", "dinov2_encoder", "prompt_decoding")
"""The stages inside the two image encoders and the prompt decoder."""


class PeakMemory:
    """Samples this process's resident memory (and CUDA's peak) while a block runs.

    Attributes (after the block):
        peak_host: bytes, the largest resident set size seen (sampled every ``interval`` s).
        peak_device: bytes, ``torch.cuda.max_memory_allocated`` on CUDA, else 0.
    """

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device, self.interval = device, interval
        self.peak_host = 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_device = (
            torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0
        )

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak_host = max(self.peak_host, process.memory_info().rss)
            time.sleep(self.interval)


def target_images(directory: str, count: int, width: int, height: int, seed: int) -> list[str]:
    """Writes ``count`` synthetic JPEG targets (shapes of the bank's classes on noise) and
    returns their paths; drawn at most ~200 px high, then resized to ``width`` x ``height``."""
    rng = np.random.default_rng(seed)
    paths = []
    scale = max(1, min(width, height) // 200)
    for index in range(count):
        small_h, small_w = height // scale, width // scale
        shapes = random_shapes(list(rng.choice(CLASSES, 3)), small_h, small_w, rng)
        image = Image.fromarray(render(shapes, small_h, small_w, rng)).resize((width, height))
        path = os.path.join(directory, f"target_{width}x{height}_{index:03d}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    return paths


def machine(device: torch.device) -> dict:
    """The machine a result was measured on."""
    info = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        # other processes share this machine's CPUs when the first figure exceeds cpu_count
        "load_average_1_5_15_min": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def path_settings(reference: PredictConfig, fast: PredictConfig, device: torch.device) -> dict:
    """The two paths' settings for the results, with the dtype each autocasts to here."""
    return {
        name: {**config.to_dict(), "autocast": str(autocast_dtype(config.precision, device))}
        for name, config in (("reference", reference), ("fast", fast))
    }


def path_configs(
    points_per_side: int, device: torch.device, precision: str | None = None
) -> tuple[PredictConfig, PredictConfig]:
    """The settings of the reference path (the paper's, 256 prompts a batch) and of the fast
    path: the product defaults ``PredictConfig()`` (prompt batches sized for the device), with
    ``precision`` when given."""
    reference = dataclasses.replace(
        PAPER_PREDICT,
        points_per_side=points_per_side,
        points_batch_size=min(256, points_per_side**2),
    )
    fast = dataclasses.replace(
        PredictConfig(),
        points_per_side=points_per_side,
        precision=precision or PredictConfig().precision,
    )
    return reference, fast


def summarise(images: int, wall: float, timer: StageTimer, memory: PeakMemory, cpu: float) -> dict:
    """One path's figures: rates, per-stage milliseconds per image, the share of the wall time
    spent outside the model stages, peak memory in MiB, and this process's CPU seconds per
    image (all threads; steadier than the wall time where other processes share the CPUs)."""
    model_time = sum(timer.seconds.get(stage, 0.0) for stage in MODEL_STAGES)
    return {
        "images": images,
        "wall_s": wall,
        "images_per_s": images / wall,
        "ms_per_image": 1000 * wall / images,
        "cpu_s_per_image": cpu / images,
        "stage_ms_per_image": {k: 1000 * v / images for k, v in sorted(timer.seconds.items())},
        "share_outside_models": 1.0 - model_time / wall,
        "peak_host_mb": memory.peak_host / 2**20,
        "peak_device_mb": memory.peak_device / 2**20,
    }


def agreement_summary(pairs: list[tuple[Predictions, Predictions]]) -> dict:
    """Totals of ``refseg.compare.agreement`` over (reference, fast) prediction pairs."""
    results = [agreement(reference, fast) for reference, fast in pairs]
    loose = [agreement(reference, fast, iou_threshold=0.9) for reference, fast in pairs]
    return {
        "matched": sum(r.matched for r in results),
        # bf16 can swap a detection for a near-duplicate candidate whose predicted IoU was
        # within rounding of it (random weights give many): those match at this lower IoU
        "matched_at_mask_iou_0.9": sum(r.matched for r in loose),
        "reference_detections": sum(r.total_a for r in results),
        "fast_detections": sum(r.total_b for r in results),
        "min_mask_iou": float(min((r.min_mask_iou for r in results), default=1.0)),
        "max_score_diff": float(max((r.max_score_diff for r in results), default=0.0)),
    }


def report(key: str, run: dict) -> None:
    """Prints one image size's reference and fast figures side by side."""
    print(f"\n== {key} images")
    stages = sorted(
        set(run["reference"]["stage_ms_per_image"]) | set(run["fast"]["stage_ms_per_image"])
    )
    print(f"{'':24s}{'reference':>12s}{'fast':>12s}")
    for name in (
        "images_per_s",
        "ms_per_image",
        "cpu_s_per_image",
        "share_outside_models",
        "peak_host_mb",
        "peak_device_mb",
    ):
        print(f"{name:24s}{run['reference'][name]:12.3f}{run['fast'][name]:12.3f}")
    for stage in stages:
        print(
            f"  {stage + ' ms':22s}{run['reference']['stage_ms_per_image'].get(stage, 0):12.1f}"
            f"{run['fast']['stage_ms_per_image'].get(stage, 0):12.1f}"
        )
    print(f"speed-up {run['speedup']:.2f}x; agreement {run['agreement']}")


def benchmark_arguments(description: str) -> argparse.ArgumentParser:
    """The options both benchmarks take: images, models, prompt grid, batching, device, output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--images", type=int, default=4, help="target images per path")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--sam2", default="sam2.1_hiera_tiny")
    parser.add_argument("--dinov2", default="dinov2_vits14")
    parser.add_argument("--sam2-checkpoint", default=None)
    parser.add_argument("--dinov2-checkpoint", default=None)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4, help="images a batch, fast path")
    parser.add_argument("--num-workers", type=int, default=1, help="decoding workers, fast path")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help=f"fast path precision (default: PredictConfig's, {PredictConfig().precision!r})",
    )
    parser.add_argument("--out", default=None, help="JSON results file")
    return parser


def results_path(args: argparse.Namespace, prefix: str = "") -> str:
    """``--out``, or ``benchmarks/results/<prefix><device>.json``."""
    if args.out is not None:
        return args.out
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return os.path.join(os.path.dirname(__file__), "results", f"{prefix}{name}.json")


def write_results(results: dict, path: str) -> None:
    """Writes the JSON results and says where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {path}")


def build_models(args: argparse.Namespace) -> tuple[Sam2Proposer, Dinov2Encoder, dict]:
    """The proposer and encoder of ``args`` (random weights unless a checkpoint is given) on
    ``--device``, and the results header naming the machine, models and prompt grid."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random_weights = args.sam2_checkpoint is None and args.dinov2_checkpoint is None
    weights = dict(pretrained=not random_weights, device=device)
    proposer = build_proposer(args.sam2, checkpoint=args.sam2_checkpoint, **weights)
    encoder = build_encoder(args.dinov2, checkpoint=args.dinov2_checkpoint, **weights)
    header = {
        "machine": machine(device),
        "models": {"sam2": args.sam2, "dinov2": args.dinov2, "random_weights": random_weights},
        "points_per_side": args.points_per_side,
    }
    return proposer, encoder, header
