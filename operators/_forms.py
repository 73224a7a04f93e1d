"""Form helpers shared by the refseg operators: inputs that validate live and show counts.

Like ``_common``, nothing here imports ``refseg`` (and so torch) at module import.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import fiftyone as fo
import fiftyone.operators.types as types
from fiftyone import ViewField as F

RANDOM_WEIGHTS_LABEL = "Random weights (testing only)"


def engine_default(function: Callable, name: str) -> Any:
    """The default of argument ``name`` of an engine function, so forms repeat no default."""
    return inspect.signature(function).parameters[name].default


def param(ctx, name: str, default: Any) -> Any:
    """``ctx.params[name]``, or ``default`` when it is missing or None (Python callers and
    delegated runs send only the parameters that were set)."""
    value = ctx.params.get(name)
    return default if value is None else value


def form(inputs: types.Object, label: str, description: str | None = None) -> types.Property:
    """The operator's form."""
    return types.Property(inputs, view=types.View(label=label, description=description))


def error(inputs: types.Object, name: str, message: str) -> None:
    """Shows ``message`` in the form and blocks execution with it (also from Python)."""
    prop = inputs.view(name, types.Error(label=message))
    prop.invalid = True
    prop.error_message = message


def notice(inputs: types.Object, name: str, message: str) -> None:
    inputs.view(name, types.Notice(label=message))


def target_view(
    ctx,
    inputs: types.Object,
    action: str,
    *,
    allow_selected_labels: bool = False,
) -> fo.core.collections.SampleCollection | None:
    """The view-target choice (dataset / current view / selection), with its sample count.

    Returns:
        The chosen samples, or None (and an error in the form) when there are none.
    """
    inputs.view_target(ctx, action_description=action, allow_selected_labels=allow_selected_labels)
    view = ctx.target_view()
    if len(view) == 0:
        error(inputs, "empty_view", "There are no samples to process: the chosen view is empty")
        return None
    return view


def detections_fields(collection: fo.core.collections.SampleCollection) -> list[str]:
    """The ``fo.Detections`` fields of a dataset or view, sorted."""
    return sorted(collection.get_field_schema(embedded_doc_type=fo.Detections))


def detections_field(
    ctx,
    inputs: types.Object,
    name: str,
    label: str,
    description: str,
    *,
    default: str | None = None,
    exclude: tuple[str, ...] = (),
) -> str | None:
    """A required choice among the dataset's Detections fields; None if there is none yet."""
    fields = [f for f in detections_fields(ctx.dataset) if f not in exclude]
    if not fields:
        error(inputs, f"{name}_missing", f"This dataset has no Detections field for '{label}'")
        return None
    given = ctx.params.get(name)
    if given is not None and given not in fields:
        error(inputs, f"{name}_type", f"'{label}': {_not_detections(ctx.dataset, given)}")
    choices = types.DropdownView()
    for field in fields:
        choices.add_choice(field, label=field)
    default = default if default in fields else fields[0]
    inputs.enum(
        name,
        choices.values(),
        default=default,
        required=True,
        label=label,
        description=description,
        view=choices,
    )
    value = ctx.params.get(name, default)
    return value if value in fields else None


def _not_detections(dataset: fo.Dataset, field: str) -> str:
    """Why ``field`` cannot be used where a Detections field is needed."""
    schema = dataset.get_field_schema()
    if field not in schema:
        return f"the dataset has no field '{field}'"
    kind = getattr(schema[field], "document_type", None) or type(schema[field])
    return f"field '{field}' holds {kind.__name__}, not Detections"


def new_field_name(
    ctx,
    inputs: types.Object,
    name: str,
    label: str,
    description: str,
    default: str,
) -> str | None:
    """A required name for a field to create; None (with an error) if it is not a valid name."""
    inputs.str(name, default=default, required=True, label=label, description=description)
    value = ctx.params.get(name, default) or ""
    if not value.isidentifier():
        error(
            inputs, f"{name}_invalid", f"'{value}' is not a valid field name (letters, digits, _)"
        )
        return None
    return value


def field_problem(inputs: types.Object, name: str, problem: str | None) -> bool:
    """Shows a ``refseg.field_safety`` problem in the form (blocking the run); True if any."""
    if problem:
        error(inputs, name, problem)
    return bool(problem)


def failures_output(outputs: types.Object) -> None:
    """The skipped samples of a run (``results["failures"]``: a FailureReport summary)."""
    outputs.str("failures", label="Skipped samples", view=types.MarkdownView())


def failure_results(report) -> dict:
    """The results entries that show a ``FailureReport`` in the operator's output."""
    return {"num_failures": len(report), "failures": report.summary(limit=20)}


def tag_input(
    ctx,
    inputs: types.Object,
    *,
    default: str,
    label: str = "Label tag",
    description: str = "The label tag that marks the references",
) -> str | None:
    """A label tag to write or to filter by; None (with an error in the form) when empty."""
    inputs.str("tag", default=default, label=label, description=description)
    tag = param(ctx, "tag", default)
    if not tag.strip():
        error(inputs, "tag_empty", "The label tag is empty: enter one")
        return None
    return tag


def reference_inputs(ctx, inputs: types.Object, view, gt_field: str, default_tag=None):
    """Which labels are references: the tagged ones (default when there are some) or every
    label of the chosen samples / labels. Shows their count, refuses none.

    Args:
        default_tag: the tag offered; default ``refseg.DEFAULT_TAG``.

    Returns:
        The view holding only the reference labels, or None.
    """
    import refseg

    default_tag = default_tag or refseg.DEFAULT_TAG
    tagged_count = view.count_label_tags(label_fields=gt_field).get(default_tag, 0)
    choices = types.RadioGroup()
    choices.add_choice(
        "tagged", label="Tagged references", description="Labels carrying the reference tag"
    )
    choices.add_choice(
        "all",
        label="Every label",
        description="Every label of the field in the chosen samples / labels",
    )
    default = "tagged" if tagged_count else "all"
    inputs.enum("source", choices.values(), default=default, label="References", view=choices)
    tag = None
    if param(ctx, "source", default) == "tagged":
        tag = tag_input(ctx, inputs, default=default_tag)
        if tag is None:
            return None
        view = view.filter_labels(gt_field, has_tag(tag))
    count = view.count(f"{gt_field}.detections")
    if count == 0:
        where = f"tagged '{tag}' " if tag else ""
        error(
            inputs,
            "no_references",
            f"No labels {where}in '{gt_field}' of the chosen samples: run 'Sample "
            "references' or choose other labels",
        )
        return None
    boxes_only = view.filter_labels(gt_field, no_mask()).count(f"{gt_field}.detections")
    per_class = view.count_values(f"{gt_field}.detections.label")
    message = f"{count} references: " + ", ".join(f"{c} {n}" for c, n in sorted(per_class.items()))
    if boxes_only:
        message += f". {boxes_only} have only a box: SAM2 will make their masks"
    notice(inputs, "reference_count", message)
    return view


def reference_tag(ctx, default_tag=None) -> str | None:
    """The tag that marks the references at execution (default ``default_tag``, else
    ``refseg.DEFAULT_TAG``); None for every label."""
    import refseg

    if param(ctx, "source", "tagged") != "tagged":
        return None
    return param(ctx, "tag", default_tag or refseg.DEFAULT_TAG)


def bank_choice(ctx, inputs: types.Object, name: str = "bank") -> str | None:
    """A required choice among the memory banks stored with the dataset."""
    from refseg import list_banks

    banks = list_banks(ctx.dataset)
    if not banks:
        error(
            inputs,
            f"{name}_missing",
            "This dataset has no memory bank yet: run 'Build memory bank' first",
        )
        return None
    choices = types.DropdownView()
    for key in banks:
        choices.add_choice(key, label=key)
    inputs.enum(
        name,
        choices.values(),
        default=banks[-1],
        required=True,
        label="Memory bank",
        description="A memory bank stored with this dataset",
        view=choices,
    )
    value = ctx.params.get(name, banks[-1])
    return value if value in banks else None


def bank_models(ctx, inputs: types.Object, key: str):
    """Loads the bank ``key``, shows what it holds, and offers the models to apply it with:
    a SAM2 choice (default the bank's), the random-weights switch (default the bank's) and the
    device. Errors in the form when the bank's models cannot be used here.

    Returns:
        The ``MemoryBank``, or None when it cannot be applied.
    """
    from refseg import load_bank
    from refseg.memory import BankFileError
    from refseg.models import RANDOM_WEIGHTS, model_names

    try:
        bank = load_bank(ctx.dataset, key)
    except BankFileError as problem:
        error(inputs, "bank_damaged", str(problem))
        return None
    shots = ", ".join(f"{c} {n}" for c, n in bank.shots().items())
    encoder, weights = bank.encoder.get("name"), bank.encoder.get("weights")
    notice(inputs, f"{key}_info", f"Bank '{key}': {shots}; DINOv2 {encoder} ({weights})")
    if encoder not in model_names("encoder"):
        error(
            inputs,
            "bank_models",
            f"Bank '{key}' was built with the encoder {encoder!r}, which this plugin cannot "
            f"load (it loads {', '.join(model_names('encoder'))}); rebuild it with one of them",
        )
        return None
    choices = types.DropdownView()
    for model in model_names("proposer"):
        choices.add_choice(model, label=model)
    default_sam2 = bank.proposer.get("name")
    default_sam2 = default_sam2 if default_sam2 in model_names("proposer") else None
    inputs.enum(
        "sam2",
        choices.values(),
        default=default_sam2,
        label="SAM2 model",
        description="Proposes the masks (default: the bank's)",
        view=choices,
    )
    weights_inputs(ctx, inputs, default_random=weights == RANDOM_WEIGHTS)
    if (weights == RANDOM_WEIGHTS) != param(ctx, "random_weights", weights == RANDOM_WEIGHTS):
        built = "random weights" if weights == RANDOM_WEIGHTS else f"the weights {weights}"
        error(
            inputs,
            "bank_weights",
            f"Bank '{key}' was built with {built}: the encoder must be the same, so "
            f"{'tick' if weights == RANDOM_WEIGHTS else 'untick'} '{RANDOM_WEIGHTS_LABEL}'",
        )
        return None
    return bank


def model_inputs(ctx, inputs: types.Object, *, sam2: bool = True, dinov2: bool = True) -> None:
    """Proposer / encoder choices from the engine's registry (defaults: ``refseg.Models()``),
    random weights, and device."""
    from refseg.models import Models, model_names

    defaults = Models()
    for key, kind, default, label, description in (
        ("sam2", "proposer", defaults.proposer, "SAM2 model", "Makes masks from prompts"),
        (
            "dinov2",
            "encoder",
            defaults.encoder,
            "DINOv2 model",
            "Encodes references and masks as features",
        ),
    ):
        if (key == "sam2" and not sam2) or (key == "dinov2" and not dinov2):
            continue
        choices = types.DropdownView()
        for model in model_names(kind):
            choices.add_choice(model, label=model)
        inputs.enum(
            key,
            choices.values(),
            default=default,
            label=label,
            description=description,
            view=choices,
        )
    weights_inputs(ctx, inputs)


def weights_inputs(ctx, inputs: types.Object, *, default_random: bool = False) -> None:
    """The random-weights switch and the device choice."""
    inputs.bool(
        "random_weights",
        default=default_random,
        label=RANDOM_WEIGHTS_LABEL,
        description="Build the models with seeded random weights instead of loading the "
        "official checkpoints: results are meaningless; for trying the plugin without weights",
        view=types.CheckboxView(),
    )
    choices = types.DropdownView()
    for device in devices():
        choices.add_choice(device, label=device)
    inputs.enum(
        "device",
        choices.values(),
        default="auto",
        label="Device",
        description="Where the models run; auto = CUDA when available, else CPU",
        view=choices,
    )


def devices() -> list[str]:
    import torch

    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def device_of(ctx) -> str | None:
    """The chosen torch device, None for the engine's default."""
    device = param(ctx, "device", "auto")
    return None if device == "auto" else device


def models_of(ctx, bank=None):
    """The ``refseg.Models`` the form asks for: its model choices and the random-weights switch
    over the bank's models (when applying a bank) or over ``refseg.Models()`` (when building)."""
    from refseg.models import RANDOM, Models

    base = Models.from_bank(bank) if bank is not None else Models()
    random = param(ctx, "random_weights", base.encoder_weights == RANDOM)
    return Models.of(
        sam2=ctx.params.get("sam2"),
        dinov2=ctx.params.get("dinov2"),
        pretrained=not random,
        base=base,
    )


def delegation_notice(ctx, inputs: types.Object) -> None:
    """Says how to run a queued operation when the user picks delegated execution."""
    if ctx.requesting_delegated_execution:
        notice(
            inputs,
            "delegation_notice",
            "This run will be queued; start a worker with `fiftyone delegated launch`",
        )


def shards_input(inputs: types.Object, unit: str) -> None:
    """The "Shards" input: split the run into delegated shard operations (``refseg.runs``)."""
    inputs.int(
        "shards",
        default=1,
        min=1,
        label="Shards",
        description=f"Split the {unit} into this many delegated operations, run in parallel by "
        "`fiftyone delegated launch` workers (one per GPU or machine); 1: one run",
    )


def shards_of(ctx) -> int:
    """The number of shards asked for (1 when none)."""
    return int(param(ctx, "shards", 1) or 1)


def queued_run_results(status) -> dict:
    """The results of an operator that queued a sharded run (``refseg.run_record.RunStatus``)."""
    how = (
        "\n\nStart one `fiftyone delegated launch` worker per GPU or machine (same database "
        "and plugins); follow the run with `refseg.run_status(dataset, run_id)` or the "
        "'refseg: sharded runs' operator."
    )
    return {
        "run_id": status.run_id,
        "num_shards": len(status.shards),
        "summary": f"```\n{status.summary()}\n```{how}",
    }


def queued_run_output(ctx) -> types.Property | None:
    """The output form of a queued sharded run, when the results are one."""
    if not ctx.results.get("run_id"):
        return None
    outputs = types.Object()
    outputs.str("run_id", label="Sharded run")
    outputs.int("num_shards", label="Shard operations queued")
    summary(outputs)
    return output_form(outputs, "Shards queued")


def has_tag(tag: str):
    """Label filter: the label carries ``tag``."""
    return F("tags").contains(tag)


def no_mask():
    """Label filter: a detection with neither ``mask`` nor ``mask_path`` (box only)."""
    return (F("mask") == None) & (F("mask_path") == None)  # noqa: E711 (a query, not a test)


def summary(outputs: types.Object, text: str = "summary") -> None:
    """A markdown block of the results."""
    outputs.str(text, label="Summary", view=types.MarkdownView())


def output_form(outputs: types.Object, label: str) -> types.Property:
    return types.Property(outputs, view=types.View(label=label))
