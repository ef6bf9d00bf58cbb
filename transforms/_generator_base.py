"""What every event generator shares: parameters, validation, and NanoAOD's event ids.

A :class:`Generator` wraps one kernel (the physics, in :mod:`transforms.generators`) and puts
the event-id columns ``run``, ``luminosityBlock``, ``event`` in front of its columns, as
NanoAOD does: ``event`` is the global event index, ``luminosityBlock`` is
``1 + event // events_per_lumi`` and ``run`` a parameter, so every split of a range gives the
same ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, cast

import numpy as np

from .columns import Column, ColumnType
from .errors import GeneratorParamError

__all__ = ["ID_COLUMNS", "ID_PARAMS", "MAX_EVENT_INDEX", "Generator", "Param"]

ParamValue = float | int | bool
MAX_EVENT_INDEX = 2**63 - 1
UINT32_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Param:
    """One generator parameter: its default fixes the type (bool, int or float), and an
    optional range ``low``/``high`` (inclusive, or exclusive where ``low_open``/``high_open``)."""

    name: str
    default: ParamValue
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, value: Any) -> tuple[ParamValue | None, str | None]:
        """(normalised value, None) or (None, a message naming the parameter)."""
        kind = type(self.default)
        is_bool = isinstance(value, bool | np.bool_)
        if kind is bool:
            return (bool(value), None) if is_bool else (None, self._wrong("true or false", value))
        if is_bool or not isinstance(value, Real):
            return None, self._wrong("an integer" if kind is int else "a number", value)
        if kind is int:
            if not isinstance(value, Integral):
                return None, self._wrong("an integer", value)
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                return None, f"{self.name} must be finite (got {value})"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return None, f"{self.name} must be {'>' if self.low_open else '>='} {self.low} (got {value})"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return None, f"{self.name} must be {'<' if self.high_open else '<='} {self.high} (got {value})"
        return value, None

    def _wrong(self, expected: str, value: Any) -> str:
        return f"{self.name} must be {expected} (got {type(value).__name__} {value!r})"


ID_PARAMS = (
    Param("run", 1, "run number of every event (NanoAOD's uint32 run)", 1, UINT32_MAX),
    Param("events_per_lumi", 1000, "events per luminosity block: luminosityBlock = 1 + event // events_per_lumi",
          1, MAX_EVENT_INDEX),  # fmt: skip
)
ID_COLUMNS = (
    ("run", ColumnType("uint32")),
    ("luminosityBlock", ColumnType("uint32")),
    ("event", ColumnType("uint64")),
)

Kernel = Callable[[int, int, int, dict[str, Any]], dict[str, Column]]


@dataclass(frozen=True, slots=True)
class Generator:
    """A named, versioned event generator. ``version`` is part of recipe ids: it changes
    whenever the output for the same (seed, parameters) changes. ``params`` and ``columns``
    include the event ids (:data:`ID_PARAMS`, :data:`ID_COLUMNS`); ``kernel`` makes the rest."""

    name: str
    version: str
    doc: str
    params: tuple[Param, ...]
    columns: tuple[tuple[str, ColumnType], ...]
    kernel: Kernel = field(repr=False, compare=False)
    cross_check: Callable[[dict[str, Any]], list[str]] = field(repr=False, compare=False)

    @property
    def defaults(self) -> dict[str, ParamValue]:
        return {p.name: p.default for p in self.params}

    def validate(self, params: Mapping[str, Any] | None = None) -> dict[str, ParamValue]:
        """All parameters, defaults filled in, in declaration order; every problem is
        reported at once in a :class:`GeneratorParamError`."""
        given = dict(params or {})
        known = {p.name for p in self.params}
        problems = [
            f"unknown parameter {key!r} (known: {', '.join(sorted(known))})"
            for key in given
            if key not in known
        ]
        out: dict[str, ParamValue] = {}
        for p in self.params:
            value, problem = p.check(given[p.name]) if p.name in given else (p.default, None)
            if problem is not None:
                problems.append(problem)
            else:
                out[p.name] = cast(ParamValue, value)
        if len(out) == len(self.params):
            problems += self.cross_check(out)
        if problems:
            raise GeneratorParamError(self.name, problems)
        return out

    def schema(self, params: Mapping[str, Any] | None = None) -> dict[str, ColumnType]:
        """Output column names (NanoAOD order) and types; the parameters are validated."""
        self.validate(params)
        return dict(self.columns)

    def event_problems(self, stop: int, params: Mapping[str, Any]) -> list[str]:
        """Why events [0, ``stop``) cannot be numbered with validated ``params`` (NanoAOD's
        ``luminosityBlock`` is a uint32), or no problem."""
        per_lumi = int(params["events_per_lumi"])
        if stop <= 0 or (stop - 1) // per_lumi < UINT32_MAX:
            return []
        least = (stop - 1) // UINT32_MAX + 1
        return [
            f"events_per_lumi={per_lumi} numbers event {stop - 1} in luminosityBlock {1 + (stop - 1) // per_lumi}, "
            f"over NanoAOD's uint32 limit {UINT32_MAX}: use events_per_lumi >= {least}"
        ]

    def generate(self, seed: int, first: int, stop: int, params: Mapping[str, Any] | None = None) -> dict[str, Column]:
        """Events [first, stop) for ``seed`` (an integer in [0, 2**64))."""
        problems = []
        if not _is_int(seed) or not 0 <= seed < 2**64:
            problems.append(f"seed must be an integer in [0, 2**64) (got {seed!r})")
        if not (_is_int(first) and _is_int(stop) and 0 <= first <= stop <= MAX_EVENT_INDEX):
            problems.append(f"event range must satisfy 0 <= first <= stop < 2**63 (got first={first!r}, stop={stop!r})")
        if problems:
            raise GeneratorParamError(self.name, problems)
        p = self.validate(params)
        problems = self.event_problems(int(stop), p)
        if problems:
            raise GeneratorParamError(self.name, problems)
        first, n = int(first), int(stop) - int(first)
        return _event_ids(first, n, p) | self.kernel(int(seed), first, n, p)


def _event_ids(first: int, n: int, p: Mapping[str, Any]) -> dict[str, Column]:
    event = np.arange(first, first + n, dtype=np.uint64)
    lumi = (event // np.uint64(p["events_per_lumi"]) + np.uint64(1)).astype(np.uint32)
    return {
        "run": Column(np.full(n, p["run"], dtype=np.uint32)),
        "luminosityBlock": Column(lumi),
        "event": Column(event),
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool | np.bool_)
