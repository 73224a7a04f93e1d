"""Times refseg's engine alone, without FiftyOne or a database: fast path against reference path.

    python benchmarks/benchmark_engine.py                        # CPU, random weights, small models
    python benchmarks/benchmark_engine.py --device cuda --sam2 sam2_hiera_large \\
        --dinov2 dinov2_vitl14 --points-per-side 32 --images 32 --batch-size 8

For machines that have torch, timm and sam2 but no FiftyOne and no MongoDB (a bare GPU box):
image files are decoded and resized, segmented by ``refseg.Segmenter`` (both encoders, prompt
decoding, matching, NMS, soft merge, mask upsampling) and kept as ``Predictions``. What
``refseg.predict`` adds around the engine, building FiftyOne labels and writing them to the
database, is not timed here; ``benchmark_predict.py`` times it (see README.md).

The two paths, on the same models and images in one process:
- reference: the paper's settings, one image at a time, the ``sam2`` package's own decoder,
  images decoded in the loop;
- fast: the defaults, ``refseg.PredictConfig()`` (``--precision`` to choose its precision),
  ``--batch-size`` images a batch, the decoder's image work shared and only the kept masks
  upscaled, images decoded by ``--num-workers`` DataLoader processes while a batch runs.
Both go through ``refseg.segment_stream``, the loop ``refseg.predict`` and every worker use.
The bank holds one synthetic reference per class, encoded with the encoder under test. Results
go to a JSON file (``--out``, default ``benchmarks/results/engine-<device>.json``) and a table.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time

import numpy as np
import torch
from bench_common import (
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

from refseg.config import PredictConfig, ReferenceConfig
from refseg.encoding import crop_reference, encode_crops
from refseg.memory import MemoryBank, ReferenceRecord
from refseg.models import Dinov2Encoder, Sam2Proposer
from refseg.predictions import Predictions
from refseg.segmenter import Segmenter
from refseg.stream import segment_stream
from refseg.synthetic import CLASSES, random_shapes, render
from refseg.timing import StageTimer


def synthetic_bank(encoder, proposer, seed: int = 0) -> MemoryBank:
    """One reference per class of ``refseg.synthetic``: a drawn shape with its exact mask."""
    rng = np.random.default_rng(seed)
    config = ReferenceConfig()
    crops, records = [], []
    for index, label in enumerate(CLASSES):
        (shape,) = random_shapes([label], 200, 240, rng)
        image = torch.from_numpy(render([shape], 200, 240, rng)).permute(2, 0, 1) / 255.0
        rows, cols = np.nonzero(shape.mask)
        box = (
            float(cols.min()),
            float(rows.min()),
            float(cols.max() + 1 - cols.min()),
            float(rows.max() + 1 - rows.min()),
        )
        mask = torch.from_numpy(shape.mask)
        crops.append(crop_reference(image, mask, box, encoder.input_size, config))
        records.append(ReferenceRecord("", f"synthetic-{index}", f"ref-{index}", label, "", box))
    prototypes, _ = encode_crops(encoder, crops, config)
    return MemoryBank(
        class_names=CLASSES,
        prototypes=prototypes.numpy().astype(np.float32),
        labels=np.arange(len(CLASSES), dtype=np.int64),
        references=tuple(records),
        encoder=dict(encoder.identity),
        proposer=dict(proposer.identity),
        settings=config,
    )


def run_path(
    models: tuple[Sam2Proposer, Dinov2Encoder],
    bank: MemoryBank,
    config: PredictConfig,
    paths: list[str],
    batch_size: int,
    workers: int,
    device: torch.device,
) -> tuple[dict, list[Predictions]]:
    """Segments every image with one path's settings; returns its figures and predictions."""
    timer = StageTimer(device)
    segmenter = Segmenter(*models, bank, config, timer=timer)
    predictions: list[Predictions] = []
    with PeakMemory(device) as memory:
        start, cpu_start = time.perf_counter(), time.process_time()
        stream = segment_stream(
            segmenter, paths, paths, batch_size=batch_size, num_workers=workers, timer=timer
        )
        for result in stream:
            if not result.ok:
                raise RuntimeError(f"{result.filepath}: {result.error}")
            predictions.append(result.predictions)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return summarise(len(paths), wall, timer, memory, cpu), predictions


def main() -> int:
    args = benchmark_arguments(__doc__.split("\n\n")[0]).parse_args()
    proposer, encoder, header = build_models(args)
    device = proposer.device
    bank = synthetic_bank(encoder, proposer)
    reference_config, fast_config = path_configs(args.points_per_side, device, args.precision)
    reference_models = (proposer.with_decoder("library"), encoder)

    results = {
        **header,
        "settings": path_settings(reference_config, fast_config, device),
        "excluded": "FiftyOne label building and database writes (see benchmark_predict.py)",
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="refseg-engine-") as workdir:
        paths = target_images(workdir, args.images, args.width, args.height, seed=1)
        # one small pass of each path first: CUDA context, kernel selection, allocator pools
        for models, config in (
            (reference_models, reference_config),
            ((proposer, encoder), fast_config),
        ):
            warmup = dataclasses.replace(config, points_per_side=4, points_batch_size=16)
            run_path(models, bank, warmup, paths[:1], 1, 0, device)
        reference_run, reference_predictions = run_path(
            reference_models, bank, reference_config, paths, 1, 0, device
        )
        fast_run, fast_predictions = run_path(
            (proposer, encoder),
            bank,
            fast_config,
            paths,
            min(args.batch_size, len(paths)),
            args.num_workers,
            device,
        )
    key = f"{args.width}x{args.height}"
    results["runs"][key] = {
        "reference": reference_run,
        "fast": fast_run,
        "speedup": fast_run["images_per_s"] / reference_run["images_per_s"],
        "agreement": agreement_summary(
            list(zip(reference_predictions, fast_predictions, strict=True))
        ),
    }
    report(key, results["runs"][key])
    write_results(results, results_path(args, prefix="engine-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
