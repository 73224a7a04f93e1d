"""Images/s of refseg.predict with 1, 2, ... worker processes: the scale-out path.

    python benchmarks/benchmark_scaling.py                   # CPU: ["cpu"] vs ["cpu", "cpu"]
    python benchmarks/benchmark_scaling.py --device cuda --workers 1,2,4,8 --images 256 \\
        --sam2 sam2.1_hiera_large --dinov2 dinov2_vitl14 --points-per-side 32 --batch-size 8

Each run is ``refseg.predict(view, bank, field, devices=[...])``: one spawned worker process per
device, each building its own models and predicting its shard through the same engine stream
and label writer as a single-process run (``refseg.parallel``). With ``--device cpu`` the k
workers share the machine's cores: each gets ``cores // k`` torch threads, so the figure says
how well k processes use the same cores, not what k machines would give. With ``--device cuda``
worker i runs on ``cuda:i`` (k <= the number of GPUs). Every run starts its workers afresh, so
``wall_s`` includes process start and model building; ``steady_images_per_s`` leaves out the
time until the first image is done. Results go to ``--out`` (default
``benchmarks/results/scaling-<device>.json``) and a table; the commands for a GPU machine and
for many machines are printed at the end.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid

os.environ.setdefault("FIFTYONE_DATABASE_NAME", f"refseg-bench-{uuid.uuid4().hex[:8]}")

import fiftyone as fo  # noqa: E402
import torch  # noqa: E402
from bench_common import benchmark_arguments, machine, results_path, target_images  # noqa: E402

import refseg  # noqa: E402
from refseg.config import PredictConfig  # noqa: E402
from refseg.models import Models  # noqa: E402
from refseg.synthetic import CLASSES, make_shapes_dataset  # noqa: E402

GPU_COMMANDS = """
On a machine with N GPUs, one worker process per GPU, from Python:
    refseg.predict(view, bank, "refseg", devices="all")
    python benchmarks/benchmark_scaling.py --device cuda --workers 1,2,4,8 --images 256 \\
        --sam2 sam2.1_hiera_large --dinov2 dinov2_vitl14 --points-per-side 32 --batch-size 8
On many machines sharing one database (database_uri), one delegated worker per GPU:
    for i in $(seq 0 $((N - 1))); do
        CUDA_VISIBLE_DEVICES=$i fiftyone delegated launch &
    done
then queue the run in shards: refseg.predict(view, bank, "refseg", shards=8, delegate=True)
"""


def main() -> int:
    args = parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    workdir = tempfile.mkdtemp(prefix="refseg-scaling-")
    models = Models.of(
        sam2=args.sam2,
        dinov2=args.dinov2,
        pretrained=None if args.sam2_checkpoint or args.dinov2_checkpoint else False,
        sam2_checkpoint=args.sam2_checkpoint,
        dinov2_checkpoint=args.dinov2_checkpoint,
    )
    bank, targets = setup(workdir, args, models, device)
    config = PredictConfig(points_per_side=args.points_per_side, points_batch_size=64)
    results = {
        "machine": machine(torch.device("cuda:0" if device == "cuda" else "cpu")),
        "load_average_1m_at_start": os.getloadavg()[0],
        "models": {**models.to_dict(), "random_weights": models.random},
        "points_per_side": args.points_per_side,
        "images": len(targets),
        "image_size": [args.width, args.height],
        "batch_size": args.batch_size,
        "torch_threads_per_worker": {},
        "runs": {},
    }
    for workers in args.workers:
        devices = ["cpu"] * workers if device == "cpu" else [f"cuda:{i}" for i in range(workers)]
        run = time_run(targets, bank, f"scaling_{workers}", devices, config, args)
        results["runs"][str(workers)] = run
        results["torch_threads_per_worker"][str(workers)] = max(1, (os.cpu_count() or 1) // workers)
        print(
            f"{workers} worker(s) on {devices}: {run['images_per_s']:.3f} images/s "
            f"({run['wall_s']:.1f} s; steady {run['steady_images_per_s']:.3f} images/s)"
        )
    first = results["runs"][str(args.workers[0])]["images_per_s"]
    for run in results["runs"].values():
        run["speedup_vs_first"] = run["images_per_s"] / first
    results["load_average_1m_at_end"] = os.getloadavg()[0]
    path = args.out or results_path(args, prefix="scaling-")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {path}\n{GPU_COMMANDS}")
    fo.core.odm.database.get_db_client().drop_database(os.environ["FIFTYONE_DATABASE_NAME"])
    return 0


def setup(workdir: str, args, models: Models, device: str):
    """A bank of one synthetic reference per class, and ``--images`` target images."""
    references = make_shapes_dataset(
        f"scaling-refs-{uuid.uuid4().hex[:6]}", os.path.join(workdir, "refs"), num_positive=6,
        num_negative=0,
    )  # fmt: skip
    tagged = refseg.sample_references(references, "ground_truth", shots=1, seed=0, classes=CLASSES)
    bank = refseg.build_memory_bank(
        tagged, "ground_truth", tag=refseg.DEFAULT_TAG, models=models, progress=False,
        device="cuda:0" if device == "cuda" else "cpu",
    )  # fmt: skip
    dataset = fo.Dataset(f"scaling-{uuid.uuid4().hex[:6]}")
    paths = target_images(workdir, args.images, args.width, args.height, seed=1)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    return bank, dataset


def time_run(view, bank, field: str, devices: list[str], config, args) -> dict:
    """One multi-process predict; wall time, and the time until the first image was done."""
    moments = []
    start = time.perf_counter()
    result = refseg.predict(
        view, bank, field, devices=devices, config=config, batch_size=args.batch_size,
        num_workers=args.num_workers, write_every=16,
        progress=lambda done, total: moments.append((done, time.perf_counter() - start)),
    )  # fmt: skip
    wall = time.perf_counter() - start
    first_done, first_at = moments[0]
    steady = (len(view) - first_done) / max(wall - first_at, 1e-9)
    return {
        "devices": devices,
        "images": result.num_samples,
        "wall_s": wall,
        "images_per_s": result.num_samples / wall,
        "first_image_after_s": first_at,
        "steady_images_per_s": steady,
        "failures": len(result.failures),
    }


def parse_args():
    parser = benchmark_arguments(__doc__.split("\n\n")[0])
    parser.set_defaults(images=6, points_per_side=4, batch_size=1, num_workers=0)
    parser.add_argument(
        "--workers",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[1, 2],
        help="worker counts to time, comma-separated (default 1,2)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
