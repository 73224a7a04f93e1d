"""Operator: seeded K-shot choice of reference instances, tagged on their labels."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common, _forms

SHOTS = 5
"""The form's default K (the paper reports 1, 2, 5, 10 and 30 shots)."""

SEED = 33
"""The form's default seed: the paper's COCO runs used 33."""


class SampleReferences(foo.Operator):
    @property
    def config(self):
        return _common.operator_config(
            "sample_references",
            "refseg: sample references",
            "Choose K reference instances per class (seeded) and tag them",
            delegation="allowed",
            generator=False,
        )

    def __call__(
        self,
        sample_collection,
        gt_field,
        *,
        shots=SHOTS,
        seed=SEED,
        classes=None,
        tag=None,
        replace=False,
        delegate=False,
        delegation_target=None,
    ):
        """Tags ``shots`` reference labels per class of ``gt_field`` (see
        ``refseg.sample_references``).

        Example::

            import fiftyone.operators as foo

            sample_references = foo.get_operator("@refseg/refseg/sample_references")
            sample_references(dataset, "ground_truth", shots=5, seed=33)
        """
        params = dict(
            gt_field=gt_field, shots=shots, seed=seed, classes=classes, tag=tag, replace=replace
        )
        return _common.call_operator(
            self, sample_collection, params, delegate=delegate, delegation_target=delegation_target
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _inputs(ctx, inputs)
        return _forms.form(inputs, "Sample references")

    def execute(self, ctx):
        import refseg

        tag = _forms.param(ctx, "tag", refseg.DEFAULT_TAG)
        gt_field = ctx.params["gt_field"]
        chosen = refseg.sample_references(
            ctx.target_view(),
            gt_field,
            shots=int(_forms.param(ctx, "shots", SHOTS)),
            seed=int(_forms.param(ctx, "seed", SEED)),
            classes=ctx.params.get("classes") or None,
            tag=tag,
            replace=bool(ctx.params.get("replace", False)),
        )
        tagged = chosen.filter_labels(gt_field, _forms.has_tag(tag))
        per_class = tagged.count_values(f"{gt_field}.detections.label")
        if not ctx.delegated:
            ctx.ops.reload_dataset()
            ctx.ops.set_view(view=tagged)
        return {
            "num_references": sum(per_class.values()),
            "num_samples": len(chosen),
            "tag": tag,
            "summary": _summary(per_class, tag),
        }

    def resolve_output(self, ctx):
        if not ctx.results:
            return None
        outputs = types.Object()
        outputs.int("num_references", label="References tagged")
        outputs.int("num_samples", label="Samples holding them")
        _forms.summary(outputs)
        return _forms.output_form(outputs, "References")


def _inputs(ctx, inputs) -> None:
    import refseg

    view = _forms.target_view(ctx, inputs, "Sample references from")
    gt_field = _forms.detections_field(
        ctx,
        inputs,
        "gt_field",
        "Ground truth field",
        "The Detections field whose instances can become references",
        default="ground_truth",
    )
    if view is None or gt_field is None:
        return
    counts = view.count_values(f"{gt_field}.detections.label")
    counts.pop(None, None)
    if not counts:
        _forms.error(inputs, "no_labels", f"The view has no labelled instances in '{gt_field}'")
        return
    inputs.list(
        "classes",
        types.String(),
        label="Classes",
        description="Classes to sample (empty = every class of the field)",
        view=types.AutocompleteView(choices=[types.Choice(c, label=c) for c in sorted(counts)]),
    )
    inputs.int("shots", default=SHOTS, min=1, label="Shots (K)", description="References per class")
    inputs.int(
        "seed",
        default=SEED,
        label="Seed",
        description="The seed of the choice; the same seed gives the same references",
    )
    tag = _forms.tag_input(ctx, inputs, default=refseg.DEFAULT_TAG)
    in_use = ctx.dataset.count_label_tags(label_fields=gt_field).get(tag, 0) if tag else 0
    if in_use:
        inputs.bool(
            "replace",
            default=False,
            label=f"Replace the {in_use} label(s) tagged '{tag}'",
            description="Move the tag from the current references to the new choice",
            view=types.CheckboxView(),
        )
        if not ctx.params.get("replace", False):
            _forms.error(
                inputs,
                "tag_in_use",
                f"{in_use} label(s) of '{gt_field}' already carry the tag '{tag}': tick "
                "'Replace' or choose another tag",
            )
    classes = ctx.params.get("classes") or sorted(counts)
    _forms.notice(
        inputs,
        "counts",
        "Instances per class: " + ", ".join(f"{c} {counts.get(c, 0)}" for c in classes),
    )


def _summary(per_class: dict, tag: str) -> str:
    rows = "\n".join(f"| {name} | {count} |" for name, count in sorted(per_class.items()))
    return f"Labels tagged `{tag}`:\n\n| class | references |\n|---|---|\n{rows}"
