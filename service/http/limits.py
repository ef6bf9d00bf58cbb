"""Limits on what a recipe may ask for: output columns, events per range (at most and at least)
and the number of ranges, so that no request costs more than a bounded amount of memory and time.

Checked on the raw body before any work (cheap, when the body says it), and on the plan (what
the recipe really yields: a recipe without ``columns`` outputs every column; one without
``range_events`` gets the default), also when a stored recipe is used again after the limits
were lowered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from service.errors import LimitExceeded
from service.settings import Settings
from vdata.data.plans import Plan

__all__ = ["check_plan", "check_recipe_body"]


# setting -> (what the recipe has, what to do), for the four limits a recipe can break
_ADVICE = {
    "max_columns": ("{n} output columns", "list fewer in 'columns'"),
    "max_range_events": ("range_events {n}", "set a smaller 'range_events'"),
    "min_range_events": ("range_events {n}", "set a larger 'range_events'"),
    "max_ranges": ("{n} ranges", "set a larger 'range_events' or ask for fewer events"),
}


def _limit(setting: str, n: int, settings: Settings, what: str) -> None:
    """LimitExceeded naming the recipe, its value, the limit and the setting, when ``n`` breaks it."""
    bound = getattr(settings, setting)
    if n < bound if setting.startswith("min_") else n > bound:
        has, advice = _ADVICE[setting]
        kind = "the least allowed" if setting.startswith("min_") else "the limit"
        raise LimitExceeded(f"{what} has {has.format(n=n)}; {kind} is {bound} (setting {setting}): {advice}")


def _int(value: Any) -> int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(min(max(value, -(2**63)), 2**63))
    return None


def check_recipe_body(body: Mapping[str, Any], settings: Settings) -> None:
    """What the body says outright; the rest is for :func:`check_plan`."""
    columns = body.get("columns")
    if isinstance(columns, list):
        _limit("max_columns", len(columns), settings, "the recipe")
    events = _int(body.get("range_events"))
    if events is not None:
        _limit("max_range_events", events, settings, "the recipe")
        if events > 0:  # 0 and below: the recipe's own check says what range_events must be
            _limit("min_range_events", events, settings, "the recipe")
    source = body.get("source")
    total = _int(source.get("events")) if isinstance(source, Mapping) else None
    if total is not None and events is not None and total > 0 and events > 0:
        _limit("max_ranges", -(-total // events), settings, "the recipe")


def check_plan(plan: Plan, settings: Settings) -> None:
    """The plan's output columns, range size and number of ranges against the limits."""
    _limit("max_columns", len(plan.schema), settings, f"recipe {plan.id}")
    _limit("max_range_events", plan.recipe.range_events, settings, f"recipe {plan.id}")
    _limit("min_range_events", plan.recipe.range_events, settings, f"recipe {plan.id}")
    _limit("max_ranges", len(plan.ranges), settings, f"recipe {plan.id}")
