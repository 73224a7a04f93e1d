"""Times refseg.predict per image and per stage: the fast path against the paper's reference path.

    python benchmarks/benchmark_predict.py                       # CPU, random weights, small models
    python benchmarks/benchmark_predict.py --device cuda --sam2 sam2_hiera_large \\
        --dinov2 dinov2_vitl14 --points-per-side 32 --images 32 --batch-size 8
    python benchmarks/benchmark_predict.py --large               # + one 12-megapixel image

Both paths run on the same machine, models and images in one process:
- reference: the paper's settings (fp32, one image at a time, 256 prompts a batch, the ``sam2``
  package's own mask decoder on a copy of the image per prompt, soft merge on full-resolution
  masks);
- fast: the defaults, ``refseg.PredictConfig()`` (bf16 autocast where the device runs bf16
  natively, or the ``--precision`` given; prompt batches sized for the device, 64 on a CPU;
  only the kept masks upscaled; soft merge on low-resolution masks, only final detections
  upsampled), images batched, the mask decoder's prompt-independent work done once per image.
With no weight files (``--random-weights``, the default when none are given) the models have the
real architectures and FLOPs but random weights. Results go to a JSON file (``--out``) and a
table on stdout; README.md summarises them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid

os.environ.setdefault("FIFTYONE_DATABASE_NAME", f"refseg-bench-{uuid.uuid4().hex[:8]}")

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
from bench_common import (  # noqa: E402
    PeakMemory,
    agreement_summary,
    benchmark_arguments,
    build_models,
    path_configs,
    path_settings,
    report,
    results_path,
    summarise,
    target_images,
    write_results,
)

import refseg  # noqa: E402
from refseg.predictions import Predictions  # noqa: E402
from refseg.synthetic import CLASSES, make_shapes_dataset  # noqa: E402
from refseg.timing import StageTimer  # noqa: E402


def run_path(name, view, bank, config, batch_size, num_workers, models, device) -> dict:
    """One predict() run with a stage timer and memory sampling."""
    timer = StageTimer(device)
    field = f"bench_{name}"
    with PeakMemory(device) as memory:
        start, cpu_start = time.perf_counter(), time.process_time()
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
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"field": field, **summarise(len(view), wall, timer, memory, cpu)}


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
    proposer, encoder, header = build_models(args)
    device = proposer.device
    workdir = tempfile.mkdtemp(prefix="refseg-bench-")
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

    sizes = [(args.width, args.height, args.images)] + ([(4000, 3000, 1)] if args.large else [])
    reference_config, fast_config = path_configs(args.points_per_side, device, args.precision)
    results = {
        **header,
        "settings": path_settings(reference_config, fast_config, device),
        "runs": {},
    }
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
    write_results(results, results_path(args))
    fo.core.odm.database.get_db_client().drop_database(os.environ["FIFTYONE_DATABASE_NAME"])
    return 0


def parse_args():
    parser = benchmark_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="also one 4000x3000 (12 MP) image")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
