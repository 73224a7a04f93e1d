"""The panel's actions: which refseg operator each button opens, prefilled from the panel.

Each action opens the operator's own form (``ctx.prompt``), so it validates and runs exactly as
from the operator browser: predict and evaluate default to delegated execution, the others run
at once. The panel refreshes its counts, thresholds and AP when the operation succeeds.

Accept offers "every prediction of the chosen samples as the view shows them": with the panel's
thresholds moved, the App's view shows exactly the predictions above them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PLUGIN = "@refseg/refseg"


@dataclass(frozen=True)
class Choice:
    """What the panel currently works on (its dropdowns)."""

    bank: str
    pred_field: str | None
    gt_field: str | None


@dataclass(frozen=True)
class Action:
    """A button of the panel.

    Attributes:
        name: the button's name (also the ``action`` parameter of its click).
        label: the button's text.
        operator: the refseg operator it opens (its name in this plugin).
        params: the form's prefilled parameters, from the panel's choice.
        needs_fields: the action needs both a predictions and a ground-truth field.
    """

    name: str
    label: str
    operator: str
    params: Callable[[Choice], dict]
    needs_fields: bool = False

    @property
    def uri(self) -> str:
        return f"{PLUGIN}/{self.operator}"


def _predictions_field(choice: Choice) -> str:
    return choice.pred_field or f"{choice.bank}_predictions"


ACTIONS = (
    Action("preview", "Preview", "preview", lambda c: {"bank": c.bank}),
    Action(
        "predict",
        "Predict",
        "predict",
        lambda c: {"bank": c.bank, "label_field": _predictions_field(c)},
    ),
    Action(
        "evaluate",
        "Evaluate",
        "evaluate",
        lambda c: {
            "pred_field": c.pred_field,
            "gt_field": c.gt_field,
            "eval_key": f"{c.pred_field}_eval",
        },
        needs_fields=True,
    ),
    Action(
        "suggest_thresholds",
        "Thresholds",
        "suggest_thresholds",
        lambda c: {"pred_field": c.pred_field, "gt_field": c.gt_field, "bank": c.bank},
        needs_fields=True,
    ),
    Action(
        "accept",
        "Accept",
        "accept_predictions",
        lambda c: {
            "pred_field": c.pred_field,
            "gt_field": c.gt_field,
            "bank": c.bank,
            "which": "all",
        },
        needs_fields=True,
    ),
    Action(
        "add_positives",
        "Add as positives",
        "add_references",
        lambda c: {"bank": c.bank, "negative": False},
    ),
    Action(
        "add_negatives",
        "Add as negatives",
        "add_references",
        lambda c: {"bank": c.bank, "negative": True},
    ),
)
"""The buttons, in display order."""

BY_NAME = {action.name: action for action in ACTIONS}
