"""Operator: inspect, delete, or add / remove references (positive or negative) of the stored
memory banks."""

from __future__ import annotations

from urllib.parse import quote

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms

ACTIONS = {
    "inspect": "Inspect: classes, shots, negatives, thresholds, models and references",
    "add": "Add references, positive or negative (encoded with the bank's models)",
    "remove": "Remove references",
    "delete": "Delete the bank",
}


class ManageBanks(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "manage_banks",
            "refseg: manage memory banks",
            "List, inspect and delete memory banks; add or remove references",
            delegation="allowed",
        )

    def __call__(
        self,
        sample_collection,
        bank,
        action="inspect",
        *,
        gt_field=None,
        tag=None,
        all_labels=False,
        negative=False,
        label_ids=None,
        random_weights=None,
        device=None,
        delegate=False,
        delegation_target=None,
    ):
        """Runs ``action`` on the stored memory bank ``bank``.

        ``"inspect"`` returns its summary (positive and negative references and threshold per
        class) and references; ``"delete"`` deletes it; ``"add"`` encodes the labels of
        ``gt_field`` in ``sample_collection`` (tagged ``tag``, or all with
        ``all_labels=True``) with the bank's models and adds them, as negative references
        ("not <their class>") with ``negative=True``; ``"remove"`` removes the references
        whose label ids are ``label_ids``. For the App's selected labels, see the
        ``add_references`` operator.

        Example::

            manage = foo.get_operator("@refseg/refseg/manage_banks")
            manage(dataset, "my_bank", "remove", label_ids=["64f..."])
        """
        params = dict(
            bank=bank,
            action=action,
            gt_field=gt_field,
            tag=tag,
            source="all" if all_labels else "tagged",
            negative=negative,
            label_ids=label_ids,
            random_weights=random_weights,
            device=device,
        )
        return _common.call_operator(
            self, sample_collection, params, delegate=delegate, delegation_target=delegation_target
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _inputs(ctx, inputs)
        return _forms.form(inputs, "Manage memory banks")

    def execute(self, ctx):
        effects = (
            None if ctx.params["action"] == "inspect" else lambda r: [ctx.ops.reload_dataset()]
        )
        return _common.run_job(ctx, self, lambda progress: _run(ctx, progress), effects)

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        outputs.str("message", label="Result")
        _forms.summary(outputs)
        return _forms.output_form(outputs, "Memory bank")


def _inputs(ctx, inputs) -> None:
    from refseg import list_banks

    banks = list_banks(ctx.dataset)
    if banks:
        _forms.notice(inputs, "banks", f"Memory banks of this dataset: {', '.join(banks)}")
    key = _forms.bank_choice(ctx, inputs)
    if key is None:
        return
    choices = types.RadioGroup()
    for action, label in ACTIONS.items():
        choices.add_choice(action, label=label)
    inputs.enum(
        "action", choices.values(), default="inspect", required=True, label="Action", view=choices
    )
    action = ctx.params.get("action", "inspect")
    if action == "add":
        _add_inputs(ctx, inputs, key)
    elif action == "remove":
        _remove_inputs(ctx, inputs, key)
    elif action == "delete":
        inputs.view("delete_warning", types.Warning(label=f"This deletes the memory bank '{key}'"))


def _add_inputs(ctx, inputs, key) -> None:
    view = _forms.target_view(ctx, inputs, "Take references from", allow_selected_labels=True)
    gt_field = _forms.detections_field(
        ctx,
        inputs,
        "gt_field",
        "Reference field",
        "The Detections field of the new references",
        default="ground_truth",
    )
    if view is None or gt_field is None:
        return
    if _forms.bank_models(ctx, inputs, key) is None:
        return
    polarity_input(inputs)
    _forms.reference_inputs(ctx, inputs, view, gt_field, default_tag=_tag_default(ctx))


def _tag_default(ctx) -> str:
    """The tag offered: the negative tag when adding negatives, else the reference tag."""
    import refseg

    return refseg.NEGATIVE_TAG if ctx.params.get("negative") else refseg.DEFAULT_TAG


def polarity_input(inputs) -> None:
    """Whether added labels are positive references or negative ones ("not <class>")."""
    inputs.bool(
        "negative",
        default=False,
        label="As negative references",
        description="Examples of what their class is not (e.g. false positives): predictions "
        "that look more like them than like the class score lower",
        view=types.CheckboxView(),
    )


def _remove_inputs(ctx, inputs, key) -> None:
    from refseg import load_bank
    from refseg.memory import BankFileError

    try:
        references = load_bank(ctx.dataset, key).references
    except BankFileError as problem:
        _forms.error(inputs, "bank_damaged", str(problem))
        return
    in_bank = {r.label_id for r in references}
    selected = [s["label_id"] for s in ctx.selected_labels if s["label_id"] in in_bank]
    choices = types.AutocompleteView()
    for r in references:
        choices.add_choice(
            r.label_id, label=f"{r.label}: {r.filepath.rsplit('/', 1)[-1]} ({r.label_id})"
        )
    inputs.list(
        "label_ids",
        types.String(),
        default=selected or None,
        required=True,
        label="References to remove",
        view=choices,
        description="Defaults to the references selected in the App",
    )
    chosen = ctx.params.get("label_ids") or selected
    unknown = sorted(set(chosen) - in_bank)
    if unknown:
        _forms.error(inputs, "unknown_ids", f"Not references of '{key}': {unknown}")
    elif set(chosen) == in_bank:
        _forms.error(
            inputs, "remove_all", "Removing every reference would empty the bank: delete it"
        )


def _run(ctx, progress) -> dict:
    import refseg

    key, action = ctx.params["bank"], ctx.params["action"]
    if action == "delete":
        ctx.dataset.delete_run(key)
        return {"message": f"Deleted the memory bank '{key}'", "summary": ""}
    bank = refseg.load_bank(ctx.dataset, key)
    if action == "add":
        bank = _add(ctx, bank, progress)
    elif action == "remove":
        bank = bank.without_references(ctx.params["label_ids"])
    if action != "inspect":
        refseg.save_bank(ctx.dataset, key, bank, overwrite=True)
    negatives = int(bank.negatives.sum())
    message = (
        f"'{key}': {len(bank.references) - negatives} positive and {negatives} negative "
        f"references of {len(bank.class_names)} classes"
    )
    return {"message": message, "summary": _describe(ctx.dataset.name, bank)}


def _add(ctx, bank, progress):
    """The bank with the chosen labels encoded by its own models and settings added."""
    import refseg

    gt_field = ctx.params["gt_field"]
    view = ctx.target_view().exclude_labels(
        ids=[r.label_id for r in bank.references], fields=gt_field
    )
    progress(0.0, "Encoding the new references")
    new = refseg.build_memory_bank(
        view,
        gt_field,
        tag=_forms.reference_tag(ctx, _tag_default(ctx)),
        negative=bool(ctx.params.get("negative", False)),
        models=_forms.models_of(ctx, bank),
        device=_forms.device_of(ctx),
        config=bank.settings,
        cache=_common.MODEL_CACHE.get(),
        progress=False,
    )
    progress(1.0, f"Encoded {len(new.references)} references")
    return bank.with_references(new)


def _describe(dataset_name: str, bank) -> str:
    """Markdown: shots and models, then one row per reference linking to its sample."""
    from .build_memory_bank import bank_summary

    url = f"/datasets/{quote(dataset_name)}"
    rows = "\n".join(
        f"| {r.label} | {'negative' if r.negative else 'positive'} | "
        f"[{r.filepath.rsplit('/', 1)[-1]}]({url}?id={r.sample_id}) | {r.field} | "
        f"{r.label_id} | {r.mask_source} | {'-' if r.score is None else f'{r.score:.3f}'} |"
        for r in bank.references
    )
    return (
        f"{bank_summary(bank)}\n\n| class | polarity | sample | field | label id | mask | score |"
        f"\n|---|---|---|---|---|---|---|\n{rows}"
    )
