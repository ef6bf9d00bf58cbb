"""What each Ray task is called on Ray's dashboard: names that say what the task makes and why.

Ray 2.60 shows a task's ``name`` (``.options(name=...)``) in the dashboard's task table and
in its state API (``ray.util.state.list_tasks``, filterable by name); without one every task
is ``_materialize_task``. Ray also accepts ``_labels`` for a task, but 2.60 shows them nowhere
(not in the state API's ``TaskState``, not on the dashboard), so the name carries it all.

A range's task is ``vdata:<why>:<recipe id[:12]>:r<index>:<format>:<source>``: ``why`` first
(``wait``: a client waits for it; ``lookahead``, ``stage``, ``readahead``, ``submit``: made ahead of
need), so a sort by name groups them, and the source last, as a dataset's name may hold
colons. A recipe check's dry run is ``vdata:check:<recipe id[:12]>:<source>``. No Ray here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from service.core.cache import CacheKey

__all__ = ["check_task_name", "range_task_name", "source_label"]

PREFIX = "vdata"
MAX_SOURCE = 80  # characters of a source's name kept in a task name


def source_label(source: Mapping[str, Any]) -> str:
    """A recipe's source in a few characters: ``dataset=<name>`` or ``generator=<name>``."""
    for kind in ("dataset", "generator"):
        if kind in source:
            return f"{kind}={str(source[kind])[:MAX_SOURCE]}"
    return "source=?"


def _source_of(recipe_json: str) -> str:
    try:
        source = json.loads(recipe_json).get("source", {})
    except (ValueError, AttributeError):
        return "source=?"
    return source_label(source) if isinstance(source, Mapping) else "source=?"


def range_task_name(key: CacheKey, recipe_json: str, why: str) -> str:
    """The name of the task that makes ``key``; ``why`` as :meth:`EngineState.ask` takes it."""
    return f"{PREFIX}:{why}:{key.recipe_id[:12]}:r{key.range_index}:{key.format}:{_source_of(recipe_json)}"


def check_task_name(recipe_id: str, recipe_json: str) -> str:
    """The name of a recipe check's dry run."""
    return f"{PREFIX}:check:{recipe_id[:12]}:{_source_of(recipe_json)}"
