"""``refseg reproduce``: the paper's protocols end to end on local data, resumable.

Its parser is a subcommand of the one ``refseg`` command line (:mod:`refseg.cli`), which also
runs as ``python -m refseg reproduce``. Building it imports neither FiftyOne nor torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Sequence

logger = logging.getLogger(__name__)

DESCRIPTION = """\
The paper's protocols end to end on local data, resumable:

  %(prog)s coco --coco-root data/coco --shots 30 --seeds 33 \\
      --sam2-checkpoint checkpoints/sam2_hiera_large.pt \\
      --dinov2-checkpoint checkpoints/dinov2/dinov2_vitl14_pretrain.pth
  %(prog)s voc --voc-root data/pascal_voc --split 1 --shots 1,5,10
  %(prog)s custom --references refs.json --targets targets.json --images dir/

Each command loads the COCO-format files into a persistent FiftyOne dataset (once), then runs
one job per (shots, seed): sample references, build the memory bank, predict, evaluate. It
prints the paper's numbers next to the obtained ones and writes a summary JSON next to the
data. Run the same command again after an interruption: finished steps are skipped.

Expected files:
  coco:   <coco-root>/annotations/instances_train2017.json   references (sampled, 20 novel classes)
          <coco-root>/annotations/instances_val2017.json     targets (all images)
          <coco-root>/train2017/  <coco-root>/val2017/       the images
  voc:    <voc-root>/annotations/voc0712_trainval.json       references (boxes; SAM2 makes masks)
          <voc-root>/annotations/voc07_test.json             targets (boxes)
          <voc-root>/VOCdevkit/allimages/                    the images (or --images DIR)
  custom: --references JSON (masks, or boxes only: SAM2 makes masks), --targets JSON,
          --images DIR (and --reference-images DIR when the references live elsewhere)

Run '%(prog)s PROTOCOL --help' for the options (docs/reproduce.md has more)."""


def execute(args: argparse.Namespace) -> int:
    """Runs a parsed ``refseg reproduce PROTOCOL ...`` command line; returns the exit status."""
    from refseg.cli import RANDOM_WEIGHTS_NOTICE, check_model_flags, fail, weights_message
    from refseg.console import command_output
    from refseg.models import RandomWeightsWarning, WeightsNotFoundError

    silenced = (RandomWeightsWarning,) if args.random_weights else ()
    with command_output(quiet=args.quiet, verbose=args.verbose, silenced=silenced):
        names = _model_names(args)
        try:
            check_model_flags(args, *names)
            settings = settings_from_args(args)
            if settings.preset.models.random:
                logger.warning(RANDOM_WEIGHTS_NOTICE)
            else:
                _check_weights(settings.preset.models)
            print(run(args, settings))
        except WeightsNotFoundError as error:
            flags = {names[0]: "--sam2-checkpoint", names[1]: "--dinov2-checkpoint"}
            hint = "For a smoke run without weights add --random-weights (meaningless numbers)."
            return fail(args, weights_message(error, flags, hint))
        except ValueError as error:
            return fail(args, str(error))
    return 0


def run(args: argparse.Namespace, settings, components=None) -> str:
    """Loads the data, runs every job and returns the table (``components``: see runner)."""
    from refseg.models import ModelCache
    from refseg.reproduce import data as data_module
    from refseg.reproduce.protocols import custom_protocol
    from refseg.reproduce.runner import Job, all_have_masks, run_job
    from refseg.reproduce.table import format_table

    protocol, sources, dataset_name, out_dir = _setup(args)
    dataset = data_module.load_coco_dataset(dataset_name, sources, progress=not args.quiet)
    if args.protocol == "custom":
        targets = dataset.match_tags(data_module.TARGETS)
        protocol = custom_protocol(protocol.name, masks=all_have_masks(targets))
    summary_path = os.path.join(out_dir, f"{dataset_name}.summary.json")
    shots = _ints(args.shots) if args.shots else list(protocol.shots)
    seeds = _ints(args.seeds) if args.seeds else list(protocol.seeds) or [33]
    jobs = [Job(protocol, k, s) for k in shots for s in seeds] or [Job(protocol)]
    cache = ModelCache()
    results = [
        run_job(dataset, job, settings, summary_path=summary_path, limit=args.limit,
                components=components, cache=cache, progress=not args.quiet)
        for job in jobs
    ]  # fmt: skip
    table = format_table(protocol, results, dataset_name=dataset_name)
    return (
        f"{table}\nSummary: {summary_path}\nInspect in the App: fiftyone app launch {dataset_name}"
    )


def _setup(args: argparse.Namespace):
    """(protocol, sources, dataset name, summary directory) of the subcommand."""
    from refseg.reproduce import protocols
    from refseg.reproduce.data import REFERENCES, TARGETS, CocoSource

    if args.protocol == "coco":
        root = args.coco_root
        ann = os.path.join(root, "annotations")
        train, val = (os.path.join(root, "annotations", f"instances_{s}.json")
                      for s in ("train2017", "val2017"))  # fmt: skip
        sources = [
            CocoSource(train, os.path.join(root, "train2017"), REFERENCES,
                       classes=protocols.COCO_NOVEL_CLASSES),
            CocoSource(val, os.path.join(root, "val2017"), TARGETS),
        ]  # fmt: skip
        name = args.dataset_name or "refseg-coco-fsod"
        return protocols.COCO_FSOD, sources, name, args.out_dir or root
    if args.protocol == "voc":
        root = args.voc_root
        images = args.images or os.path.join(root, "VOCdevkit", "allimages")
        ann = os.path.join(root, "annotations")
        sources = [
            CocoSource(os.path.join(ann, "voc0712_trainval.json"), images, REFERENCES, masks=False),
            CocoSource(os.path.join(ann, "voc07_test.json"), images, TARGETS, masks=False),
        ]
        protocol = protocols.voc_protocol(args.split)
        return protocol, sources, args.dataset_name or "refseg-voc", args.out_dir or root
    sources = [
        CocoSource(args.references, args.reference_images or args.images, REFERENCES),
        CocoSource(args.targets, args.images, TARGETS),
    ]
    digest = hashlib.sha1(repr([s.to_dict() for s in sources]).encode()).hexdigest()[:8]
    name = re.sub(r"\W", "_", args.name)
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.targets))
    dataset_name = args.dataset_name or f"refseg-{name}-{digest}"
    return protocols.custom_protocol(name), sources, dataset_name, out_dir


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parses the words after ``refseg reproduce`` (e.g. ``["custom", "--references", ...]``)."""
    from refseg.cli import build_parser

    return build_parser().parse_args(["reproduce", *argv])


def _preset(args: argparse.Namespace):
    from refseg.presets import DEFAULT, PAPER

    return PAPER if args.settings == "paper" else DEFAULT


def _model_names(args: argparse.Namespace) -> tuple[str, str]:
    """The SAM2 and DINOv2 names in use: the flags, else those of ``--settings``."""
    base = _preset(args).models
    return args.sam2 or base.proposer, args.dinov2 or base.encoder


def settings_from_args(args: argparse.Namespace):
    """The :class:`~refseg.reproduce.runner.RunSettings` the options ask for: the preset of
    ``--settings`` (``refseg.PAPER`` or ``refseg.DEFAULT``) with the model and grid options over
    it."""
    from refseg.models import Models
    from refseg.reproduce.runner import RunSettings

    preset = _preset(args)
    models = Models.of(
        sam2=args.sam2, dinov2=args.dinov2, sam2_checkpoint=args.sam2_checkpoint,
        dinov2_checkpoint=args.dinov2_checkpoint,
        pretrained=False if args.random_weights else None, base=preset.models,
    )  # fmt: skip
    predict = preset.predict
    if args.points_per_side is not None:
        predict = dataclasses.replace(predict, points_per_side=args.points_per_side)
    preset = dataclasses.replace(preset, models=models, predict=predict)
    return RunSettings(
        preset=preset, device=args.device, batch_size=args.batch_size,
        num_workers=args.num_workers,
    )  # fmt: skip


def _check_weights(models) -> None:
    """Resolves every weights file up front and reports every missing file at once."""
    from refseg.models import require_weights

    require_weights(models)


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(
    commands: argparse._SubParsersAction,
    output: argparse.ArgumentParser,
    formatter_class: type[argparse.HelpFormatter],
) -> None:
    """Adds ``reproduce`` with its protocols ``coco``, ``voc`` and ``custom`` to ``commands``.

    Args:
        commands: the subcommands of the ``refseg`` parser.
        output: the parent parser with ``--quiet`` and ``--verbose``.
        formatter_class: the help formatter of the ``refseg`` parser.
    """
    reproduce = commands.add_parser(
        "reproduce",
        help="the paper's benchmarks on local data: coco, voc or your own COCO files",
        description=DESCRIPTION,
        formatter_class=formatter_class,
    )
    protocols = reproduce.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")

    def protocol(name: str, help: str) -> argparse.ArgumentParser:
        return protocols.add_parser(
            name, help=help, description=help, parents=[output], formatter_class=formatter_class
        )

    coco = protocol("coco", "COCO-FSOD: 20 novel classes, val2017, nAP")
    coco.add_argument(
        "--coco-root", default="data/coco", help="COCO 2017 root (see reproduce --help)"
    )
    voc = protocol("voc", "PASCAL VOC few-shot: one novel split, nAP50")
    voc.add_argument(
        "--voc-root", default="data/pascal_voc", help="VOC root (see reproduce --help)"
    )
    voc.add_argument("--split", type=int, choices=(1, 2, 3), required=True, help="novel split")
    voc.add_argument(
        "--images", default=None, help="image directory (default: <voc-root>/VOCdevkit/allimages)"
    )
    custom = protocol("custom", "your references json + targets json + images")
    add = custom.add_argument
    add("--references", required=True, help="COCO json of the references; its classes are the set")
    add("--targets", required=True, help="COCO json of the targets (ground truth)")
    add("--images", required=True, help="directory the targets' file_names are relative to")
    add(
        "--reference-images",
        default=None,
        help="the references' image directory (default: --images)",
    )
    add("--name", default="custom", help="names the runs and fields")
    for command, settings in ((coco, "paper"), (voc, "paper"), (custom, "product")):
        _add_job_options(command, settings)
        command.set_defaults(handler=execute)


def _add_job_options(parser: argparse.ArgumentParser, settings: str) -> None:
    add = parser.add_argument
    add(
        "--shots",
        default=None,
        help=(
            "comma-separated K values "
            "(default: the protocol's; custom: every reference of the file)"
        ),
    )
    add("--seeds", default=None, help="comma-separated sampling seeds (default: 33)")
    add(
        "--settings",
        choices=("paper", "product"),
        default=settings,
        help=(
            "paper = refseg.PAPER (SAM 2.0 Hiera-L + DINOv2 ViT-L/14, the published settings, "
            "the research code's COCO boxes); product = refseg.DEFAULT (SAM 2.1 Hiera-L)"
        ),
    )
    add("--sam2", default=None, help="SAM2 model name (default: from --settings)")
    add("--dinov2", default=None, help="DINOv2 model name (default: from --settings)")
    add(
        "--sam2-checkpoint", default=None, help="SAM2 weights, e.g. checkpoints/sam2_hiera_large.pt"
    )
    add(
        "--dinov2-checkpoint",
        default=None,
        help="DINOv2 weights, e.g. checkpoints/dinov2/dinov2_vitl14_pretrain.pth",
    )
    add(
        "--random-weights",
        action="store_true",
        help="random weights instead of the weight files (smoke run; meaningless numbers)",
    )
    add("--points-per-side", type=int, default=None, help="prompt grid density (default: 32)")
    add("--limit", type=int, default=None, help="predict and evaluate only the first N targets")
    add("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add("--batch-size", type=int, default=1, help="target images per batch")
    add("--num-workers", type=int, default=None, help="image-decoding processes")
    add("--dataset-name", default=None, help="FiftyOne dataset to load into / resume from")
    add("--out-dir", default=None, help="where the summary JSON goes (default: next to the data)")
