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
import json
import os
import sys
import tempfile
import time
import uuid

os.environ.setdefault("FIFTYONE_DATABASE_NAME", f"refseg-bench-{uuid.uuid4().hex[:8]}")

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_common import (  # noqa: E402
    PeakMemory,
    agreement_summary,
    machine,
    path_configs,
    report,
    summarise,
    target_images,
)

import refseg  # noqa: E402
from refseg.models import ModelCache, build_encoder, build_proposer  # noqa: E402
from refseg.predictions import Predictions  # noqa: E402
from refseg.synthetic import CLASSES, make_shapes_dataset  # noqa: E402
from refseg.timing import StageTimer  # noqa: E402


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
    return {"field": field, **summarise(len(view), wall, timer, memory)}


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
    """Agreement of the two paths' stored detections over the view."""
    view = view.select_fields([reference["field"], fast["field"], "metadata"])
    return agreement_summary(
        [
            (
                to_predictions(sample, reference["field"], class_names),
                to_predictions(sample, fast["field"], class_names),
            )
            for sample in view
        ]
    )


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
    reference_config, fast_config = path_configs(args.points_per_side, device)
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
