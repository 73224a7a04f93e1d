"""The ``refseg`` command (also ``python -m refseg``): the main job on a FiftyOne dataset, an
offline demo, and the paper's benchmarks.

    refseg run --dataset my-dataset --gt-field ground_truth --shots 5
    refseg demo            # synthetic shapes, real weights (says which files to fetch)
    refseg demo --smoke    # random weights: checks an installation offline
    refseg reproduce coco|voc|custom ...   # the paper's benchmarks (refseg/reproduce/cli.py)

``run`` samples K references per class (or reuses the ones already tagged), builds and stores a
memory bank, predicts on every other sample, and prints the COCO tables. Building the parser
imports neither FiftyOne nor torch, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from refseg.console import command_output

if TYPE_CHECKING:  # refseg.models imports torch
    from refseg.models import WeightsNotFoundError

logger = logging.getLogger("refseg.cli")

DEMO_DATASET = "refseg-demo"
SMOKE_MODELS = {"sam2": "sam2.1_hiera_tiny", "dinov2": "dinov2_vits14", "points_per_side": 4}
SMOKE_DATASET = {"name": "refseg-demo-smoke", "num_positive": 5, "num_negative": 1}
RANDOM_WEIGHTS_NOTICE = (
    "Random weights: SAM2 and DINOv2 get seeded random weights, so the results check the "
    "installation, not the method."
)

DESCRIPTION = """\
Training-free reference-based instance segmentation on FiftyOne datasets ("No Time To Train!",
arXiv 2507.02798): a few reference instances per class, a DINOv2 memory bank, SAM2 proposals.

examples:
  %(prog)s demo --smoke    offline check of an installation (random weights, 6 images)
  %(prog)s demo            the main job on a synthetic demo dataset with the paper's models
  %(prog)s run --dataset my-dataset --gt-field ground_truth --shots 5
  %(prog)s reproduce coco --coco-root data/coco --shots 30

Run '%(prog)s COMMAND --help' for the options of a command."""

RUN_DESCRIPTION = """\
The main job on an existing FiftyOne dataset: samples K references per class (or reuses the labels
already tagged with --tag), builds the memory bank and stores it with the dataset, predicts every
other sample into --pred-field, evaluates it (COCO bbox and segm AP) as the evaluation
'<pred-field>_eval', and prints the tables."""

DEMO_DESCRIPTION = """\
The main job of 'run' on a synthetic shapes dataset that it creates (once) in FiftyOne's default
dataset directory. With the paper's models it needs two weight files and says which ones to fetch
when they are missing; --smoke needs none."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions, and appends each option's default to its help.

    Defaults of None or False are not shown; the help of such options says what happens.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or not action.option_strings
            or default is None
            or default is False
            or default == argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


def main(argv: Sequence[str] | None = None, prog: str = "refseg") -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    return args.handler(args)


def build_parser(prog: str = "refseg") -> argparse.ArgumentParser:
    """The whole command line: ``demo``, ``run`` and ``reproduce`` with their options."""
    from refseg.reproduce import cli as reproduce_cli

    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.set_defaults(prog=prog)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    output = output_options()
    demo = commands.add_parser(
        "demo",
        help="the main job on a synthetic demo dataset (--smoke: offline, random weights)",
        description=DEMO_DESCRIPTION,
        parents=[output],
        formatter_class=HelpFormatter,
    )
    demo.add_argument(
        "--dataset", default=DEMO_DATASET, metavar="NAME", help="name of the demo dataset"
    )
    run = commands.add_parser(
        "run",
        help="references -> memory bank -> predictions -> COCO AP on your dataset",
        description=RUN_DESCRIPTION,
        parents=[output],
        formatter_class=HelpFormatter,
    )
    run.add_argument(
        "--dataset", required=True, metavar="NAME", help="name of an existing FiftyOne dataset"
    )
    for command in (demo, run):
        _add_job_options(command)
        command.set_defaults(handler=_job)
    reproduce_cli.add_parser(commands, output, HelpFormatter)
    return parser


def output_options() -> argparse.ArgumentParser:
    """The options every command has: ``--quiet`` and ``--verbose`` (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", help="print only results, warnings and errors"
    )
    group.add_argument("-v", "--verbose", action="store_true", help="print debug messages too")
    return parent


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--gt-field",
        default="ground_truth",
        metavar="FIELD",
        help="Detections field with the annotations",
    )
    add("--shots", type=int, default=1, metavar="K", help="reference instances per class (K)")
    add("--seed", type=int, default=33, metavar="N", help="seed of the K-shot sampling")
    add(
        "--classes",
        default=None,
        metavar="A,B,...",
        help="comma-separated classes (default: all in --gt-field)",
    )
    add("--tag", default="refseg:reference", help="label tag marking the references")
    add("--pred-field", default="refseg", metavar="FIELD", help="field to write the predictions to")
    add(
        "--bank-name",
        default="refseg_bank",
        metavar="NAME",
        help="memory bank name, stored with the dataset",
    )
    add(
        "--sam2",
        default=None,
        metavar="NAME",
        help="SAM2 model: sam2[.1]_hiera_{tiny,small,base_plus,large} (default: "
        "sam2.1_hiera_large; with --paper the paper's sam2_hiera_large)",
    )
    add(
        "--dinov2",
        default=None,
        metavar="NAME",
        help="DINOv2 model: dinov2_vit{s,b,l,g}14 (default: dinov2_vitl14)",
    )
    add(
        "--sam2-checkpoint",
        default=None,
        metavar="FILE",
        help="SAM2 weights file (default: the official file in FiftyOne's model zoo directory)",
    )
    add(
        "--dinov2-checkpoint",
        default=None,
        metavar="FILE",
        help="DINOv2 weights file (default: the official file in FiftyOne's model zoo directory)",
    )
    add(
        "--points-per-side",
        type=int,
        default=None,
        metavar="N",
        help="prompt grid density (default: 32; 4 with --smoke)",
    )
    add("--batch-size", type=int, default=1, metavar="N", help="images per batch")
    add(
        "--device",
        default=None,
        metavar="DEVICE",
        help="torch device (default: cuda if available, else cpu)",
    )
    add(
        "--paper",
        action="store_true",
        help="paper mode (refseg.PAPER): SAM 2.0 Hiera-L + DINOv2 ViT-L/14 and the published "
        "settings exactly, evaluated with the research code's COCO boxes",
    )
    add("--overwrite", action="store_true", help="replace an existing bank, field and evaluation")
    add(
        "--random-weights",
        action="store_true",
        help="random weights instead of the weight files (testing only; meaningless results)",
    )
    add(
        "--smoke",
        action="store_true",
        help=(
            "offline installation check: --random-weights, SAM2.1 Hiera-T, DINOv2 ViT-S/14, a 4x4 "
            "prompt grid and a 6-image demo dataset; the numbers it prints mean nothing"
        ),
    )


def _job(args: argparse.Namespace) -> int:
    """``demo`` and ``run``: references, memory bank, predictions, evaluation."""
    if args.smoke:
        args.random_weights = True
        args.sam2, args.dinov2 = SMOKE_MODELS["sam2"], SMOKE_MODELS["dinov2"]
        args.points_per_side = args.points_per_side or SMOKE_MODELS["points_per_side"]
        if args.command == "demo" and args.dataset == DEMO_DATASET:
            args.dataset = SMOKE_DATASET["name"]
    from refseg.models import RandomWeightsWarning, WeightsNotFoundError

    silenced = (RandomWeightsWarning,) if args.random_weights else ()
    with command_output(quiet=args.quiet, verbose=args.verbose, silenced=silenced):
        try:
            check_model_flags(args, *model_names(args))
            preset = preset_of(args)
            dataset = _existing_dataset(args) if args.command == "run" else None
            if args.random_weights:
                logger.warning(RANDOM_WEIGHTS_NOTICE)
            else:
                _check_weights(preset.models)
            if dataset is None:
                dataset = _demo_dataset(args)
            _check_outputs_are_new(dataset, args)
            _run(dataset, args, preset)
        except WeightsNotFoundError as error:
            sam2, dinov2 = model_names(args)
            return fail(
                args,
                weights_message(
                    error,
                    {sam2: "--sam2-checkpoint", dinov2: "--dinov2-checkpoint"},
                    hint="For an offline check of the installation, add --smoke (random weights).",
                ),
            )
        except ValueError as error:
            return fail(args, str(error))
    return 0


def fail(args: argparse.Namespace, message: str) -> int:
    """Prints ``refseg COMMAND: error: message`` to stderr; returns the exit status 2."""
    words = (args.prog, args.command, getattr(args, "protocol", None))
    print(f"{' '.join(word for word in words if word)}: error: {message}", file=sys.stderr)
    return 2


def model_names(args: argparse.Namespace) -> tuple[str, str]:
    """The SAM2 and DINOv2 names in use: the flags, else those of the preset (``--paper``)."""
    from refseg.presets import DEFAULT, PAPER

    base = (PAPER if args.paper else DEFAULT).models
    return args.sam2 or base.proposer, args.dinov2 or base.encoder


def preset_of(args: argparse.Namespace):
    """The ``refseg.Preset`` the flags ask for: ``refseg.PAPER`` with ``--paper``, else
    ``refseg.DEFAULT``, with the model, weights and grid flags over it; the one place where the
    command line meets the engine's models and settings."""
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
    """Resolves every weights file up front (downloading where possible); raises for every
    missing file at once, before any work is done."""
    from refseg.models import require_weights

    require_weights(models)


def check_model_flags(args: argparse.Namespace, sam2: str = "", dinov2: str = "") -> None:
    """Raises ValueError naming the flags of contradicting weights options or of an unknown
    model name (``sam2``, ``dinov2``: the names in use, default ``args.sam2``, ``args.dinov2``)."""
    from refseg.models import model_entry

    if args.random_weights and (args.sam2_checkpoint or args.dinov2_checkpoint):
        raise ValueError(
            "--random-weights (or --smoke) and --sam2-checkpoint / --dinov2-checkpoint contradict "
            "each other: drop the checkpoints for random weights, or drop --random-weights"
        )
    names = (
        ("--sam2", sam2 or args.sam2, "proposer"),
        ("--dinov2", dinov2 or args.dinov2, "encoder"),
    )
    for flag, name, kind in names:
        try:
            model_entry(kind, name)
        except ValueError as error:
            raise ValueError(f"{flag}: {error}") from None


def weights_message(error: WeightsNotFoundError, flags: Mapping[str, str], hint: str = "") -> str:
    """The command line's words for a ``WeightsNotFoundError``: each missing file with its size,
    where it belongs, the command that fetches it on a machine with a network, and the flag that
    takes an explicit path (``flags`` maps a model name to that flag)."""
    if not error.missing:
        return str(error)
    lines = ["model weights are missing, so nothing was done."]
    for item in error.missing:
        size = _size_text(item.size_bytes)
        flag = flags.get(item.model, "")
        if item.explicit:
            lines.append(f"  {flag} {item.path}: no such file ({item.filename}, {size}).")
        else:
            lines.append(
                f"  {item.filename} ({size}, the weights of {item.model}) is not in "
                f"{item.path.parent}, and downloading it failed ({item.reason})."
            )
        lines.append(
            "    With a network, this puts it where refseg looks (copy it over from another machine"
            " otherwise):"
        )
        lines.append(f"      curl -L -o {item.path} {item.url}")
        if not item.explicit and flag:
            lines.append(f"    or pass the file you have with {flag} /path/to/{item.filename}")
    if hint:
        lines.append(hint)
    return "\n".join(lines)


def _size_text(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "size unknown"
    if size_bytes >= 1e9:
        return f"{size_bytes / 1e9:.1f} GB"
    return f"{size_bytes / 1e6:.0f} MB"


def _existing_dataset(args: argparse.Namespace):
    import fiftyone as fo

    if not fo.dataset_exists(args.dataset):
        raise ValueError(
            f"No FiftyOne dataset named {args.dataset!r} (--dataset); see 'fiftyone datasets list'"
        )
    return fo.load_dataset(args.dataset)


def _demo_dataset(args: argparse.Namespace):
    import fiftyone as fo

    from refseg.synthetic import CLASSES, make_shapes_dataset

    if fo.dataset_exists(args.dataset):
        logger.info("Using the existing demo dataset %r", args.dataset)
        return fo.load_dataset(args.dataset)
    image_dir = os.path.join(fo.config.default_dataset_dir, args.dataset)
    logger.info("Creating the demo dataset %r in %s", args.dataset, image_dir)
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


def _check_outputs_are_new(dataset, args: argparse.Namespace) -> None:
    """Refuses, before any work, to replace a stored bank, field or evaluation without
    --overwrite."""
    if args.overwrite:
        return
    taken = []
    if dataset.has_run(args.bank_name):
        taken.append(f"the memory bank {args.bank_name!r} (--bank-name)")
    if args.pred_field in dataset.get_field_schema():
        taken.append(f"the field {args.pred_field!r} (--pred-field)")
    if dataset.has_evaluation(f"{args.pred_field}_eval"):
        taken.append(f"the evaluation '{args.pred_field}_eval' (named after --pred-field)")
    if taken:
        raise ValueError(
            f"dataset {dataset.name!r} already has {', '.join(taken)}; add --overwrite to replace "
            "them, or choose other names with --bank-name and --pred-field"
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
        progress=not args.quiet,
    )
    logger.info("Memory bank %r: %s", args.bank_name, bank.shots())
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
        progress=not args.quiet,
    )
    if result.failures:
        logger.warning("%s", result.failures.summary())
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
        logger.info(
            "Reusing the %d references tagged %r",
            tagged.count_label_tags(args.gt_field)[args.tag],
            args.tag,
        )
        return tagged
    return refseg.sample_references(
        dataset, args.gt_field, shots=args.shots, seed=args.seed, classes=classes, tag=args.tag
    )
