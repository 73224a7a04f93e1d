"""Operator: add the App's selected labels to a memory bank, as positive or negative references.

The one-step correction of the curation loop: select predictions (or ground-truth or hand-drawn
labels) in the App, then "add as positives" ("find more like this") or "add as negatives"
("not this"). Only the added labels are encoded, with the bank's models (``refseg.add_references``).
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms
from .manage_banks import polarity_input


class AddReferences(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "add_references",
            "refseg: add selected labels to a bank",
            "Add the selected labels to a memory bank as positive or negative references",
            delegation="allowed",
        )

    def __call__(
        self,
        sample_collection,
        bank,
        *,
        label_ids=None,
        field=None,
        negative=False,
        selected_labels=None,
        random_weights=None,
        device=None,
        delegate=False,
        delegation_target=None,
    ):
        """Adds labels to the stored bank ``bank`` (saved in place) as references, negative
        ones ("not <their class>") with ``negative=True``: the labels ``label_ids`` of
        ``field``, or the App selection ``selected_labels`` (dicts with ``label_id`` and
        ``field``, as ``ctx.selected_labels``).

        Example::

            add = foo.get_operator("@refseg/refseg/add_references")
            add(dataset, "my_bank", label_ids=[fp_id], field="refseg", negative=True)
        """
        params = dict(
            bank=bank,
            label_ids=label_ids,
            field=field,
            negative=negative,
            random_weights=random_weights,
            device=device,
        )
        return _common.call_operator(
            self,
            sample_collection,
            params,
            delegate=delegate,
            delegation_target=delegation_target,
            selected_labels=selected_labels,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _inputs(ctx, inputs)
        return _forms.form(inputs, "Add selected labels to a memory bank")

    def execute(self, ctx):
        return _common.run_job(
            ctx, self, lambda progress: _add(ctx, progress), lambda r: [ctx.ops.reload_dataset()]
        )

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        outputs.str("message", label="Result")
        _forms.summary(outputs)
        return _forms.output_form(outputs, "Memory bank")


def chosen_labels(ctx) -> dict[str, list[str]]:
    """``{field: [label ids]}``: the ``label_ids`` of ``field`` when given, else the App's
    selected labels."""
    if ctx.params.get("label_ids"):
        return {ctx.params.get("field") or "": list(ctx.params["label_ids"])}
    grouped: dict[str, list[str]] = {}
    for selected in ctx.selected_labels:
        grouped.setdefault(selected["field"], []).append(selected["label_id"])
    return grouped


def _inputs(ctx, inputs) -> None:
    key = _forms.bank_choice(ctx, inputs)
    if key is None:
        return
    bank = _forms.bank_models(ctx, inputs, key)
    if bank is None:
        return
    polarity_input(inputs)
    chosen = chosen_labels(ctx)
    if not chosen:
        _forms.error(
            inputs,
            "no_labels",
            "No labels selected: select labels in the App (or pass label_ids and field)",
        )
        return
    fields = _forms.detections_fields(ctx.dataset)
    wrong = [f for f in chosen if f not in fields]
    if wrong:
        _forms.error(
            inputs, "field", f"Not Detections fields of this dataset: {wrong}; pass field=..."
        )
        return
    in_bank = {r.label_id for r in bank.references}
    present = sorted(i for ids in chosen.values() for i in ids if i in in_bank)
    if present:
        _forms.error(
            inputs,
            "in_bank",
            f"Already references of '{key}': {present}; remove them first (manage banks)",
        )
        return
    counts = ", ".join(f"{len(ids)} of '{field}'" for field, ids in chosen.items())
    kind = "negative" if ctx.params.get("negative") else "positive"
    _forms.notice(inputs, "chosen", f"Adds {counts} as {kind} references of '{key}'")


def _add(ctx, progress) -> dict:
    import refseg

    from .build_memory_bank import bank_summary

    key = ctx.params["bank"]
    bank = refseg.load_bank(ctx.dataset, key)
    models = _forms.models_of(ctx, bank)
    chosen = chosen_labels(ctx)
    total, done = sum(map(len, chosen.values())), 0
    for field, label_ids in chosen.items():
        progress(done / total, f"Encoding {len(label_ids)} labels of '{field}'")
        bank = refseg.add_references(
            bank,
            ctx.dataset,
            field,
            label_ids,
            negative=bool(ctx.params.get("negative", False)),
            models=models,
            device=_forms.device_of(ctx),
            cache=_common.MODEL_CACHE.get(),
        )
        done += len(label_ids)
    refseg.save_bank(ctx.dataset, key, bank, overwrite=True)
    progress(1.0, f"Added {total} references")
    kind = "negative" if ctx.params.get("negative") else "positive"
    return {
        "message": f"Added {total} {kind} references to '{key}'",
        "summary": bank_summary(bank),
        "num_added": total,
    }
