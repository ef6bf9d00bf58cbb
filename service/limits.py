"""Limits on what a recipe may ask for: output columns and events per range.

Checked on the raw body before any work (cheap, when the body says it), and on the plan (what
the recipe really yields: a recipe without ``columns`` outputs every column; one without
``range_events`` gets the default), also when a stored recipe is used again after the limits
were lowered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.errors import LimitExceeded
from service.settings import Settings
from vdata.materialize import Plan

__all__ = ["check_plan", "check_recipe_body"]


def _columns(n: int, settings: Settings, what: str) -> None:
    if n > settings.max_columns:
        raise LimitExceeded(f"{what} has {n} output columns; the limit is {settings.max_columns} "
                            f"(setting max_columns): list fewer in 'columns'")


def _range_events(n: int, settings: Settings, what: str) -> None:
    if n > settings.max_range_events:
        raise LimitExceeded(f"{what} has range_events {n}; the limit is {settings.max_range_events} "
                            f"(setting max_range_events): set a smaller 'range_events'")


def check_recipe_body(body: Mapping[str, Any], settings: Settings) -> None:
    """What the body says outright; the rest is for :func:`check_plan`."""
    columns = body.get("columns")
    if isinstance(columns, list):
        _columns(len(columns), settings, "the recipe")
    events = body.get("range_events")
    if isinstance(events, (int, float)) and not isinstance(events, bool) and events > settings.max_range_events:
        _range_events(int(events) if events < 2**63 else 2**63, settings, "the recipe")


def check_plan(plan: Plan, settings: Settings) -> None:
    """The plan's output columns and range size against the limits."""
    _columns(len(plan.schema), settings, f"recipe {plan.id}")
    _range_events(plan.recipe.range_events, settings, f"recipe {plan.id}")
