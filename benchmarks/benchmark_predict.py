"""Times refseg.predict per image and per stage: the fast path against the paper's reference path.

    python benchmarks/benchmark_predict.py                       # CPU, random weights, small models
    python benchmarks/benchmark_predict.py --device cuda --sam2 sam2_hiera_large \\
        --dinov2 dinov2_vitl14 --points-per-side 32 --images 32 --batch-size 8
    python benchmarks/benchmark_predict.py --large               # + one 12-megapixel image

Both paths run on the same machine, models and images in one process:
- reference: the paper's settings (fp32, one image at a time, 256 prompts a batch, the ``sam2``
  package's own mask decoder on a copy of the image per prompt, soft merge on full-resolution
  masks);
- fast: ``refseg.FAST_PREDICT`` (bf16 autocast on CUDA, 1024 prompts a batch on CUDA and 64 on
  a CPU, soft merge on low-resolution masks, only final detections upsampled), images batched,
  the mask decoder's prompt-independent work done once per image.
With no weight files (``--random-weights``, the default when none are given) the models have the
real architectures and FLOPs but random weights. Results go to a JSON file (``--out``) and a
table on stdout; README.md summarises them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid

os.environ.setdefault("FIFTYONE_DATABASE_NAME", f"refseg-bench-{uuid.uuid4().hex[:8]}")

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import refseg  # noqa: E402
from refseg.compare import agreement  # noqa: E402
from refseg.models import ModelCache, build_encoder, build_proposer  # noqa: E402
from refseg.predictions import Predictions  # noqa: E402
from refseg.synthetic import CLASSES, make_shapes_dataset, random_shapes, render  # noqa: E402
from refseg.timing import StageTimer  # noqa: E402

MODEL_STAGES = ("sam2_encoder", "dinov2_encoder", "prompt_decoding")


class PeakMemory:
    """Samples this process's resident memory (and CUDA's peak) while a block runs."""

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
    """Synthetic target images of the given size (shapes of the bank's classes on noise)."""
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


def run_path(name, view, bank, config, batch_size, num_workers, models, device) -> dict:
    """One predict() run with a stage timer and memory sampling."""
    timer = StageTimer(device)
    field = f"bench_{name}"
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        refseg.predict(
            view,
            bank,
            field,
            config=config,
            batch_size=batch_size,
            num_workers=num_workers,
            overwrite=True,
            progress=False,
            timer=timer,
            **models,
        )
        wall = time.perf_counter() - start
    images = len(view)
    model_time = sum(timer.seconds.get(stage, 0.0) for stage in MODEL_STAGES)
    return {
        "field": field,
        "images": images,
        "wall_s": wall,
        "images_per_s": images / wall,
        "ms_per_image": 1000 * wall / images,
        "stage_ms_per_image": {k: 1000 * v / images for k, v in sorted(timer.seconds.items())},
        "share_outside_models": 1.0 - model_time / wall,
        "peak_host_mb": memory.peak_host / 2**20,
        "peak_device_mb": memory.peak_device / 2**20,
    }


def to_predictions(sample, field: str, class_names: tuple[str, ...]) -> Predictions:
    """A stored Detections field back as Predictions (for comparing paths)."""
    width, height = sample.metadata.width, sample.metadata.height
    detections = sample[field].detections
    boxes = np.array(
        [
            [
                d.bounding_box[0] * width,
                d.bounding_box[1] * height,
                (d.bounding_box[0] + d.bounding_box[2]) * width,
                (d.bounding_box[1] + d.bounding_box[3]) * height,
            ]
            for d in detections
        ],
        np.float32,
    )
    return Predictions(
        boxes=np.round(boxes).reshape(-1, 4),
        masks=tuple(d.mask for d in detections),
        scores=np.array([d.confidence for d in detections], np.float32),
        labels=np.array([class_names.index(d.label) for d in detections], np.int64),
        class_names=class_names,
        image_size=(height, width),
    )


def compare(view, reference: dict, fast: dict, class_names) -> dict:
    matched = total_ref = total_fast = 0
    min_iou, max_diff = 1.0, 0.0
    view = view.select_fields([reference["field"], fast["field"], "metadata"])
    for sample in view:
        result = agreement(
            to_predictions(sample, reference["field"], class_names),
            to_predictions(sample, fast["field"], class_names),
        )
        matched += result.matched
        total_ref += result.total_a
        total_fast += result.total_b
        min_iou = min(min_iou, result.min_mask_iou)
        max_diff = max(max_diff, result.max_score_diff)
    return {
        "matched": matched,
        "reference_detections": total_ref,
        "fast_detections": total_fast,
        "min_mask_iou": min_iou,
        "max_score_diff": max_diff,
    }


def main() -> int:
    args = parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random_weights = args.sam2_checkpoint is None and args.dinov2_checkpoint is None
    workdir = tempfile.mkdtemp(prefix="refseg-bench-")
    cache = ModelCache()
    proposer = build_proposer(
        args.sam2,
        checkpoint=args.sam2_checkpoint,
        pretrained=not random_weights,
        device=device,
        cache=cache,
    )
    encoder = build_encoder(
        args.dinov2,
        checkpoint=args.dinov2_checkpoint,
        pretrained=not random_weights,
        device=device,
        cache=cache,
    )
    models = {"proposer": proposer, "encoder": encoder}
    reference_models = {"proposer": proposer.with_decoder("library"), "encoder": encoder}
    references = make_shapes_dataset(
        f"bench-refs-{uuid.uuid4().hex[:6]}",
        os.path.join(workdir, "refs"),
        num_positive=6,
        num_negative=0,
    )
    tagged = refseg.sample_references(references, "ground_truth", shots=1, seed=0, classes=CLASSES)
    bank = refseg.build_memory_bank(
        tagged, "ground_truth", tag=refseg.DEFAULT_TAG, progress=False, **models
    )

    results = {
        "machine": machine(device),
        "models": {"sam2": args.sam2, "dinov2": args.dinov2, "random_weights": random_weights},
        "points_per_side": args.points_per_side,
        "runs": {},
    }
    sizes = [(args.width, args.height, args.images)] + ([(4000, 3000, 1)] if args.large else [])
    reference_config = dataclasses.replace(
        refseg.PAPER_PREDICT,
        points_per_side=args.points_per_side,
        legacy_coco_box=False,
        points_batch_size=min(256, args.points_per_side**2),
    )
    # large prompt batches pay on GPUs; on a CPU they only raise peak memory
    fast_config = dataclasses.replace(
        refseg.FAST_PREDICT,
        points_per_side=args.points_per_side,
        points_batch_size=1024 if device.type == "cuda" else 64,
    )
    for width, height, count in sizes:
        dataset = fo.Dataset(f"bench-{width}x{height}-{uuid.uuid4().hex[:6]}")
        dataset.add_samples(
            [fo.Sample(filepath=p) for p in target_images(workdir, count, width, height, seed=1)]
        )
        dataset.compute_metadata()
        warmup = dataset.limit(1)
        refseg.predict(
            warmup,
            bank,
            "bench_warmup",
            config=fast_config,
            num_workers=0,
            progress=False,
            **models,
        )
        reference = run_path(
            "reference", dataset, bank, reference_config, 1, 0, reference_models, device
        )
        fast = run_path(
            "fast",
            dataset,
            bank,
            fast_config,
            min(args.batch_size, count),
            args.num_workers,
            models,
            device,
        )
        key = f"{width}x{height}"
        results["runs"][key] = {
            "reference": reference,
            "fast": fast,
            "speedup": fast["images_per_s"] / reference["images_per_s"],
            "agreement": compare(dataset, reference, fast, bank.class_names),
        }
        report(key, results["runs"][key])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.out}")
    fo.core.odm.database.get_db_client().drop_database(os.environ["FIFTYONE_DATABASE_NAME"])
    return 0


def report(key: str, run: dict) -> None:
    print(f"\n== {key} images")
    stages = sorted(
        set(run["reference"]["stage_ms_per_image"]) | set(run["fast"]["stage_ms_per_image"])
    )
    print(f"{'':24s}{'reference':>12s}{'fast':>12s}")
    for name in (
        "images_per_s",
        "ms_per_image",
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


def machine(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4, help="target images per run")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--sam2", default="sam2.1_hiera_tiny")
    parser.add_argument("--dinov2", default="dinov2_vits14")
    parser.add_argument("--sam2-checkpoint", default=None)
    parser.add_argument("--dinov2-checkpoint", default=None)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument(
        "--batch-size", type=int, default=4, help="images per batch on the fast path"
    )
    parser.add_argument(
        "--num-workers", type=int, default=1, help="decoding workers on the fast path"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--large", action="store_true", help="also one 4000x3000 (12 MP) image")
    parser.add_argument(
        "--out", default=None, help="JSON results (default benchmarks/results/<device>.json)"
    )
    args = parser.parse_args()
    if args.out is None:
        name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        args.out = os.path.join(os.path.dirname(__file__), "results", f"{name}.json")
    return args


if __name__ == "__main__":
    sys.exit(main())
