"""Recipes: how a virtual dataset is made, and the id that names it.

A recipe is a source (a catalog dataset, or a generator with events, seed and parameters),
steps (``filter``, ``define``, ``transform``) and output columns::

    source: {dataset: "opendata:hzz"}     # or {generator: zmumu, events: 1000000, seed: 7, params: {...}}
    steps:
      - filter: "NMuon >= 2"
      - define: {sumPt2: "sum(Muon_Px**2 + Muon_Py**2)"}
      - transform: {name: leading_pair_mass,
                    inputs: {px: Muon_Px, py: Muon_Py, pz: Muon_Pz, e: Muon_E},
                    outputs: {mass: mMuMu}}
    columns: [mMuMu, sumPt2]
    range_events: 100000                    # optional

The canonical form has sorted keys, expressions re-printed by ``ast`` (so spacing does not
matter), integral numbers as integers, every default filled in, and what the output depends on
but the text does not say: the generator's version, the content hash of each transform's code
and the fingerprint of the dataset's files. ``recipe.id`` is ``"vds-"`` and the first 24 hex
digits of the sha256 of that canonical JSON. Parsing reports every structural problem at
once; :func:`vdata.data.plans.plan` checks the recipe against the catalog. Derived columns
follow NanoAOD naming (per-event ``mMuMu``, per-object ``Muon_px``; the rule is in
:mod:`vdata.data.naming`), and the plan warns where coffea would misread a name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from transforms.errors import ExpressionError, GeneratorParamError, UnknownName
from transforms.expressions import normalise_expression as _normalise
from transforms.generators import get_generator

from vdata.errors import DatasetNotFound, RecipeError

if TYPE_CHECKING:
    from vdata.data.catalog import Catalog

__all__ = ["DEFAULT_RANGE_EVENTS", "RECIPE_FORMAT", "Recipe", "Step"]

RECIPE_FORMAT = 1
DEFAULT_RANGE_EVENTS = 100_000
STEP_KINDS = ("filter", "define", "transform")


@dataclass(frozen=True, slots=True)
class Step:
    """One step: ``kind`` is filter, define or transform.

    filter: ``expressions = {"": text}``; define: ``expressions = {new column: text}``;
    transform: ``name``, ``inputs`` (kernel parameter -> column), ``outputs`` (kernel output ->
    new column) and ``code`` (the transform's content hash, once resolved).
    """

    kind: str
    expressions: dict[str, str] = field(default_factory=dict)
    name: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "filter":
            return {"filter": self.expressions[""]}
        if self.kind == "define":
            return {"define": dict(sorted(self.expressions.items()))}
        body: dict[str, Any] = {"name": self.name, "inputs": dict(sorted(self.inputs.items()))}
        body["outputs"] = dict(sorted(self.outputs.items()))
        if self.code is not None:
            body["code"] = self.code
        return {"transform": body}


@dataclass(frozen=True, slots=True)
class Recipe:
    """A parsed recipe. Build it with :meth:`from_dict`, :meth:`from_json` or :meth:`from_yaml`."""

    source: dict[str, Any]
    steps: tuple[Step, ...]
    columns: tuple[str, ...] | None
    range_events: int

    @property
    def is_generated(self) -> bool:
        return "generator" in self.source

    def to_dict(self) -> dict[str, Any]:
        """The canonical form (what the id is the hash of)."""
        out: dict[str, Any] = {
            "format": RECIPE_FORMAT,
            "source": self.source,
            "steps": [s.to_dict() for s in self.steps],
            "range_events": self.range_events,
        }
        if self.columns is not None:
            out["columns"] = list(self.columns)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def id(self) -> str:
        return "vds-" + hashlib.sha256(self.to_json().encode()).hexdigest()[:24]

    # -- parsing ----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], catalog: Catalog | None = None) -> Recipe:
        """Parse and normalise; with a catalog, bind dataset fingerprints and user transforms."""
        return _Parser(catalog).recipe(data)

    @classmethod
    def from_json(cls, text: str | bytes, catalog: Catalog | None = None) -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError([f"not valid JSON: {exc}"]) from exc
        return cls.from_dict(data, catalog)

    @classmethod
    def from_yaml(cls, text_or_path: str | os.PathLike[str], catalog: Catalog | None = None) -> Recipe:
        """From YAML text, or from a ``.yaml``/``.yml`` file."""
        text = str(text_or_path)
        if isinstance(text_or_path, os.PathLike) or (
            text.endswith((".yaml", ".yml")) and "\n" not in text and Path(text).is_file()
        ):
            text = Path(text_or_path).read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError([f"not valid YAML: {exc}"]) from exc
        return cls.from_dict(data, catalog)


def normalise_expression(text: str) -> str:
    """The expression as ``ast`` prints it: same meaning, same text. ExpressionError if it is
    not one Python expression or is over the expression language's size limits (10,000
    characters, 50 levels): a huge expression must not overflow the parser's stack."""
    return _normalise(text)


def _integer(value: Any) -> int | None:
    """An int for ints and integral floats (``1e6``); None for anything else (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


class _Parser:
    """Collects every problem, then raises one RecipeError listing them."""

    def __init__(self, catalog: Catalog | None) -> None:
        self.catalog = catalog
        self.problems: list[str] = []

    def recipe(self, data: Any) -> Recipe:
        if not isinstance(data, Mapping):
            raise RecipeError([f"a recipe is a mapping with source, steps and columns, got {type(data).__name__}"])
        unknown = sorted(set(data) - {"source", "steps", "columns", "range_events", "format"})
        if unknown:
            self.problems.append(f"unknown recipe field(s) {unknown}; known: source, steps, columns, range_events")
        if data.get("format", RECIPE_FORMAT) != RECIPE_FORMAT:
            self.problems.append(f"format: this service reads recipe format {RECIPE_FORMAT}, got {data.get('format')!r}")
        source = self.source(data.get("source"))
        steps = self.steps(data.get("steps", []))
        columns = self.columns(data.get("columns"))
        range_events = self.range_events(data.get("range_events", DEFAULT_RANGE_EVENTS))
        if self.problems:
            raise RecipeError(self.problems)
        return Recipe(source, tuple(steps), columns, range_events)

    def source(self, src: Any) -> dict[str, Any]:
        if not isinstance(src, Mapping) or ("dataset" in src) == ("generator" in src):
            self.problems.append("source: give either {dataset: NAME} or {generator: NAME, events: N, seed: S, params: {...}}")
            return {}
        if "dataset" in src:
            extra = sorted(set(src) - {"dataset", "fingerprint"})
            if extra:
                self.problems.append(f"source: unknown field(s) {extra} for a dataset source")
            name = src["dataset"]
            if not isinstance(name, str) or not name:
                self.problems.append(f"source.dataset: a dataset name, got {name!r}")
                return {}
            out: dict[str, Any] = {"dataset": name}
            if self.catalog is not None:
                try:
                    out["fingerprint"] = self.catalog.fingerprint(name)
                except DatasetNotFound as exc:
                    self.problems.append(f"source.dataset: {exc}")
            elif "fingerprint" in src:
                out["fingerprint"] = str(src["fingerprint"])
            return out
        return self.generator_source(src)

    def generator_source(self, src: Mapping[str, Any]) -> dict[str, Any]:
        extra = sorted(set(src) - {"generator", "events", "seed", "params", "version"})
        if extra:
            self.problems.append(f"source: unknown field(s) {extra} for a generator source")
        out: dict[str, Any] = {"generator": src["generator"]}
        for key in ("events", "seed"):
            value = _integer(src.get(key))
            low = 1 if key == "events" else 0
            if value is None or value < low or value >= 2**63:
                self.problems.append(f"source.{key}: an integer >= {low}, got {src.get(key)!r}")
            out[key] = value
        params = src.get("params", {}) or {}
        if not isinstance(params, Mapping):
            self.problems.append(f"source.params: a mapping, got {params!r}")
            params = {}
        try:
            generator = get_generator(str(src["generator"]))
        except UnknownName as exc:
            self.problems.append(f"source.generator: {exc}")
            return out
        try:
            out["params"] = dict(sorted(generator.validate(dict(params)).items()))
        except GeneratorParamError as exc:
            self.problems.extend(f"source.params: {p}" for p in exc.problems)
        else:
            if out["events"] is not None:  # e.g. too many events for a uint32 luminosityBlock
                self.problems.extend(f"source.params: {p}" for p in generator.event_problems(out["events"], out["params"]))
        out["version"] = generator.version
        return out

    def steps(self, steps: Any) -> list[Step]:
        if not isinstance(steps, list):
            self.problems.append(f"steps: a list of steps, got {type(steps).__name__}")
            return []
        out = []
        for i, step in enumerate(steps):
            if not isinstance(step, Mapping) or len(step) != 1 or next(iter(step)) not in STEP_KINDS:
                self.problems.append(f"steps[{i}]: one of {{filter: EXPR}}, {{define: {{NAME: EXPR}}}}, {{transform: {{...}}}}")
                continue
            kind, body = next(iter(step.items()))
            parsed = getattr(self, kind)(i, body)
            if parsed is not None:
                out.append(parsed)
        return out

    def _expression(self, where: str, text: Any) -> str | None:
        if not isinstance(text, str) or not text.strip():
            self.problems.append(f"{where}: an expression string, got {text!r}")
            return None
        try:
            return normalise_expression(text)
        except ExpressionError as exc:
            self.problems.append(f"{where}: {exc}")
            return None

    def filter(self, i: int, body: Any) -> Step | None:
        text = self._expression(f"steps[{i}].filter", body)
        return None if text is None else Step("filter", {"": text})

    def define(self, i: int, body: Any) -> Step | None:
        if not isinstance(body, Mapping) or not body:
            self.problems.append(f"steps[{i}].define: a mapping of new column -> expression")
            return None
        expressions = {}
        for name, text in body.items():
            if not isinstance(name, str) or not name.isidentifier():
                self.problems.append(f"steps[{i}].define: column name {name!r} is not an identifier")
                continue
            parsed = self._expression(f"steps[{i}].define.{name}", text)
            if parsed is not None:
                expressions[name] = parsed
        return Step("define", expressions)

    def transform(self, i: int, body: Any) -> Step | None:
        where = f"steps[{i}].transform"
        if not isinstance(body, Mapping) or not isinstance(body.get("name"), str):
            self.problems.append(f"{where}: a mapping with name, inputs and outputs")
            return None
        extra = sorted(set(body) - {"name", "inputs", "outputs", "code"})
        if extra:
            self.problems.append(f"{where}: unknown field(s) {extra}")
        maps = {}
        for key in ("inputs", "outputs"):
            value = body.get(key, {})
            if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                self.problems.append(f"{where}.{key}: a mapping of names to column names")
                value = {}
            maps[key] = dict(value)
        code = body.get("code")
        known = self.catalog.find_transform(body["name"]) if self.catalog is not None else None
        if known is None and self.catalog is None:
            try:
                from transforms.registry import get_transform

                known = get_transform(body["name"])
            except UnknownName:
                known = None
        if known is not None:
            if code is not None and code != known.code_hash:
                self.problems.append(
                    f"{where}: code {code!r} does not match transform {body['name']!r} ({known.code_hash})"
                )
            code = known.code_hash
        return Step("transform", name=body["name"], inputs=maps["inputs"], outputs=maps["outputs"], code=code)

    def columns(self, columns: Any) -> tuple[str, ...] | None:
        if columns is None:
            return None
        if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns) or not columns:
            self.problems.append(f"columns: a non-empty list of column names, got {columns!r}")
            return None
        if len(set(columns)) != len(columns):
            self.problems.append(f"columns: {sorted({c for c in columns if columns.count(c) > 1})} listed twice")
        return tuple(columns)

    def range_events(self, value: Any) -> int:
        n = _integer(value)
        if n is None or n < 1:
            self.problems.append(f"range_events: a positive integer, got {value!r}")
            return DEFAULT_RANGE_EVENTS
        return n
