"""Does ``torch.compile`` of SAM2's prompt decoder pay? Its cold start against its gain.

The decoder's two-way transformer (``refseg.models.sam2_decoding.run_transformer``) is the
largest part of prompt decoding. This script times it eagerly and compiled
(``torch.compile``, default inductor backend, static shapes) on one image's state and a batch of
point prompts, in float32 and under bf16 autocast, and reports:
- ``cold_start_s``: the first compiled call (tracing and code generation included);
- ``eager_ms`` / ``compiled_ms``: the median of the following calls;
- ``break_even_calls``: how many decoder batches a run needs before the compile has paid
  (a 32 x 32 grid in batches of 256 is 4 batches per image).

Random weights (real architecture); only speed is measured, plus the largest difference of the
compiled outputs from the eager ones. Writes ``benchmarks/results/compile-<device>.json``.

    python benchmarks/benchmark_compile.py --sam2 sam2.1_hiera_tiny --prompts 64 --device cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from refseg.geometry import point_grid
from refseg.models import build_proposer
from refseg.models.sam2_decoding import run_transformer


def timed(function, repeats: int) -> tuple[float, list[float], object]:
    """(first call s, later calls s, last output) of ``function()``."""
    start = time.perf_counter()
    output = function()
    first = time.perf_counter() - start
    later = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = function()
        later.append(time.perf_counter() - start)
    return first, later, output


def measure(proposer, prompts: int, precision: str, repeats: int) -> dict:
    """Eager and compiled transformer times on ``prompts`` point prompts of one image."""
    device = proposer.device
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else nullcontext()
    )
    side = max(1, round(prompts**0.5))
    points = point_grid(side, proposer.image_size)[:prompts].to(device)
    image = torch.rand(
        1, 3, proposer.image_size, proposer.image_size, generator=torch.manual_seed(0)
    )
    model = proposer.model
    compiled = torch.compile(run_transformer, dynamic=False)
    with torch.inference_mode(), autocast:
        embedding = proposer.select_image(proposer.encode_images(image), 0)
        coords = points[:, None, :].float()
        labels = torch.ones((len(points), 1), dtype=torch.int, device=device)
        sparse, _ = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        state = embedding.decoder_state
        _, eager_times, eager = timed(lambda: run_transformer(model, state, sparse), repeats)
        cold, compiled_times, fast = timed(lambda: compiled(model, state, sparse), repeats)
    eager_s, compiled_s = statistics.median(eager_times), statistics.median(compiled_times)
    gain = eager_s - compiled_s
    return {
        "precision": precision,
        "prompts": len(points),
        "eager_ms": round(eager_s * 1000, 1),
        "compiled_ms": round(compiled_s * 1000, 1),
        "speed_up": round(eager_s / compiled_s, 3),
        "cold_start_s": round(cold, 2),
        "break_even_calls": round((cold - compiled_s) / gain, 1) if gain > 0 else None,
        "max_abs_difference": max(
            float((a.float() - b.float()).abs().max())
            for a, b in (
                (eager.prompt_tokens, fast.prompt_tokens),
                (eager.image_tokens, fast.image_tokens),
            )
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam2", default="sam2.1_hiera_tiny")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    proposer = build_proposer(args.sam2, pretrained=False, device=device)
    results = {
        "device": str(device),
        "torch": torch.__version__,
        "sam2": args.sam2,
        "threads": torch.get_num_threads(),
        "runs": [measure(proposer, args.prompts, p, args.repeats) for p in args.precisions],
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"compile-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for run in results["runs"]:
        print(json.dumps(run))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
