"""``python -m refseg``: the main job on a FiftyOne dataset, and an offline demo.

    python -m refseg run --dataset my-dataset --gt-field ground_truth --shots 5
    python -m refseg demo            # synthetic shapes, real weights (says which files to place)
    python -m refseg demo --smoke    # random weights: checks an installation offline
    python -m refseg reproduce coco|voc|custom ...   # the paper's benchmarks (see --help)

``run`` samples K references per class (or reuses the ones already tagged), builds and stores a
memory bank, predicts on every other sample, and prints the COCO tables.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

DEMO_DATASET = "refseg-demo"
SMOKE_MODELS = {"sam2": "sam2.1_hiera_tiny", "dinov2": "dinov2_vits14", "points_per_side": 4}
SMOKE_DATASET = {"name": "refseg-demo-smoke", "num_positive": 5, "num_negative": 1}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reproduce"]:
        from refseg.reproduce.cli import main as reproduce

        return reproduce(argv[1:])
    args = _parser().parse_args(argv)
    if args.smoke:
        args.random_weights = True
        args.sam2, args.dinov2 = SMOKE_MODELS["sam2"], SMOKE_MODELS["dinov2"]
        args.points_per_side = args.points_per_side or SMOKE_MODELS["points_per_side"]
        if args.command == "demo" and args.dataset == DEMO_DATASET:
            args.dataset = SMOKE_DATASET["name"]
    from refseg.models import WeightsNotFoundError

    try:
        preset = _preset(args)
        if not preset.models.random:
            _check_weights(preset.models)
        dataset = _demo_dataset(args) if args.command == "demo" else _existing_dataset(args)
        _run(dataset, args, preset)
    except (WeightsNotFoundError, ValueError) as error:
        print(f"refseg: {error}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m refseg", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="references -> memory bank -> predictions -> COCO AP")
    run.add_argument("--dataset", required=True, help="name of an existing FiftyOne dataset")
    demo = commands.add_parser("demo", help="the main job on a synthetic shapes dataset")
    demo.add_argument("--dataset", default=DEMO_DATASET, help="name of the demo dataset")
    for command in (run, demo):
        _add_job_options(command)
    return parser


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--gt-field", default="ground_truth", help="Detections field with the annotations")
    add("--shots", type=int, default=1, help="reference instances per class (K)")
    add("--seed", type=int, default=33, help="seed of the K-shot sampling")
    add("--classes", default=None, help="comma-separated classes (default: all in --gt-field)")
    add("--tag", default="refseg:reference", help="label tag marking the references")
    add("--pred-field", default="refseg", help="field to write the predictions to")
    add(
        "--bank-name", default="refseg_bank", help="name of the memory bank stored with the dataset"
    )
    add(
        "--sam2",
        default=None,
        help="SAM2 model name (default sam2.1_hiera_large; with --paper sam2_hiera_large)",
    )
    add("--dinov2", default=None, help="DINOv2 model name (default dinov2_vitl14)")
    add("--sam2-checkpoint", default=None, help="explicit SAM2 weights file")
    add("--dinov2-checkpoint", default=None, help="explicit DINOv2 weights file")
    add("--points-per-side", type=int, default=None, help="prompt grid density (default 32)")
    add("--batch-size", type=int, default=1, help="images per batch")
    add("--device", default=None, help="torch device (default: cuda if available)")
    add("--paper", action="store_true", help="paper mode: the published settings exactly")
    add("--overwrite", action="store_true", help="replace an existing prediction field and bank")
    add(
        "--random-weights",
        action="store_true",
        help="random weights (testing only; meaningless results)",
    )
    add(
        "--smoke",
        action="store_true",
        help=(
            "offline installation check: random weights, SAM2.1 Hiera-T, DINOv2 ViT-S/14, a 4x4 "
            "prompt grid, a 6-image demo dataset; the numbers it prints mean nothing"
        ),
    )


def _preset(args: argparse.Namespace):
    """The preset the options ask for: ``refseg.PAPER`` with ``--paper`` (SAM 2.0 Hiera-L and
    DINOv2 ViT-L/14 unless named otherwise), else ``refseg.DEFAULT``, with the model options."""
    import dataclasses

    from refseg.models import Models
    from refseg.presets import DEFAULT, PAPER

    preset = PAPER if args.paper else DEFAULT
    models = Models.of(
        sam2=args.sam2,
        dinov2=args.dinov2,
        sam2_checkpoint=args.sam2_checkpoint,
        dinov2_checkpoint=args.dinov2_checkpoint,
        pretrained=False if args.random_weights else None,
        base=preset.models,
    )
    predict = preset.predict
    if args.points_per_side is not None:
        predict = dataclasses.replace(predict, points_per_side=args.points_per_side)
    return dataclasses.replace(preset, models=models, predict=predict)


def _check_weights(models) -> None:
    """Resolves both checkpoints up front and reports every missing file at once."""
    from refseg.models import require_weights

    require_weights(
        models, hint="For an offline check of the installation, add --smoke (random weights)."
    )


def _existing_dataset(args: argparse.Namespace):
    import fiftyone as fo

    if not fo.dataset_exists(args.dataset):
        raise ValueError(
            f"No FiftyOne dataset named {args.dataset!r}; see fiftyone.list_datasets()"
        )
    return fo.load_dataset(args.dataset)


def _demo_dataset(args: argparse.Namespace):
    import fiftyone as fo

    from refseg.synthetic import CLASSES, make_shapes_dataset

    if fo.dataset_exists(args.dataset):
        print(f"Using the existing demo dataset {args.dataset!r}")
        return fo.load_dataset(args.dataset)
    image_dir = os.path.join(fo.config.default_dataset_dir, args.dataset)
    print(f"Creating the demo dataset {args.dataset!r} in {image_dir}")
    args.classes = args.classes or ",".join(CLASSES)
    sizes = (
        {
            "num_positive": SMOKE_DATASET["num_positive"],
            "num_negative": SMOKE_DATASET["num_negative"],
        }
        if args.smoke
        else {}
    )
    return make_shapes_dataset(
        args.dataset, image_dir, persistent=True, gt_field=args.gt_field, **sizes
    )


def _run(dataset, args: argparse.Namespace, preset) -> None:
    import refseg
    from refseg.models import ModelCache

    classes = args.classes.split(",") if args.classes else None
    references = _references(dataset, args, classes)
    cache = ModelCache()
    bank = refseg.build_memory_bank(
        references,
        args.gt_field,
        tag=args.tag,
        models=preset.models,
        config=preset.reference,
        device=args.device,
        name=args.bank_name,
        overwrite=args.overwrite,
        cache=cache,
    )
    print(f"Memory bank {args.bank_name!r}: {bank.shots()}")
    targets = dataset.exclude(references.values("id"))
    result = refseg.predict(
        targets,
        bank,
        args.pred_field,
        models=preset.models,
        config=preset.predict,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
        cache=cache,
    )
    if result.failures:
        print(result.failures.summary())
    eval_key = f"{args.pred_field}_eval"
    report = refseg.evaluate(
        targets,
        args.pred_field,
        args.gt_field,
        eval_key=eval_key,
        classes=bank.class_names,
        overwrite=args.overwrite,
        legacy_coco_box=preset.evaluate.legacy_coco_box,
    )
    if args.random_weights:
        print("RANDOM WEIGHTS: these numbers check the installation, not the method.")
    print(report.table())
    print(
        f"Predictions in field {args.pred_field!r} of dataset {dataset.name!r}, evaluation "
        f"{eval_key!r}; open the App with: fiftyone app launch {dataset.name}"
    )


def _references(dataset, args: argparse.Namespace, classes):
    import refseg

    tagged = dataset.match_labels(tags=args.tag, fields=args.gt_field)
    if len(tagged):
        print(
            f"Reusing the {tagged.count_label_tags(args.gt_field)[args.tag]} references tagged "
            f"{args.tag!r}"
        )
        return tagged
    return refseg.sample_references(
        dataset, args.gt_field, shots=args.shots, seed=args.seed, classes=classes, tag=args.tag
    )
