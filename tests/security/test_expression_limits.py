"""Huge or deeply nested filter/define expressions are refused with a 400 naming the step and
the limit, never a 500 (a 900-term sum or 5,000 unary minuses used to overflow Python's
recursion limit in ``ast.parse``/``ast.unparse``: a plain-text 500)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from security_helpers import Gateway, gateway

from transforms.columns import ColumnType
from transforms.errors import ExpressionError
from transforms.expressions import compile_expression

HOSTILE = {
    "900 terms": "+".join(["MET_px"] * 900),
    "5,000 terms": "+".join(["MET_px"] * 1600),  # 9,599 characters: under the length limit
    "5,000 unary minus": "-" * 5000 + "MET_px",
    "nested calls": "sqrt(" * 300 + "MET_px" + ")" * 300,
    "nested parentheses": "(" * 3000 + "MET_px" + ")" * 3000,
    "nested conditionals": " if MET_px > 0 else ".join(["MET_px"] * 800),
    "nested masks": "sum(Muon_Px" + "[Muon_Px > 0]" * 600 + ")",
    "too long": "MET_px + " * 1200 + "1",
    "too many nodes": " and ".join(f"MET_px > {i}" for i in range(300)),
    "too many arguments": "max(" + ", ".join(["MET_px"] * 100) + ")",
}
LIMIT_WORDS = ("nested too deeply", "longer than 10000 characters", "too many nested parentheses",
               "more than 1000 syntax-tree nodes", "at most 64 arguments")


@pytest.fixture(scope="module")
def scientist(planning_gateway: Gateway) -> Iterator[httpx.Client]:
    with planning_gateway.client("scientist") as client:
        yield client


def _recipe(step: dict[str, Any]) -> dict[str, Any]:
    return {"source": {"dataset": "opendata:hzz"}, "steps": [step], "range_events": 1000}


@pytest.mark.parametrize("kind", ["filter", "define"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_huge_expressions_are_400_naming_step_and_limit(scientist: httpx.Client, kind: str, name: str) -> None:
    text = HOSTILE[name]
    step = {"filter": text} if kind == "filter" else {"define": {"big": text}}
    r = scientist.post("/v1/recipes", json=_recipe(step))
    assert r.status_code == 400, (name, r.status_code, r.text[:300])
    body = r.json()
    assert body["error"] == "bad_recipe", body
    where = "steps[0].filter" if kind == "filter" else "steps[0].define.big"
    assert where in body["detail"], body["detail"][:300]
    assert any(w in body["detail"] for w in LIMIT_WORDS), body["detail"][:300]
    assert len(body["detail"]) < 2000, "the error repeats the whole expression"


@pytest.fixture(scope="module")
def ray_scientist(embedded_ray: None, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[httpx.Client]:
    """A scientist's client of a gateway with Ray: an accepted recipe's dry run runs in a worker."""
    with gateway(tmp_path_factory.mktemp("allowed"), shared_data, start=True) as gw, gw.client("scientist") as c:
        yield c


def test_allowed_sizes_still_work(ray_scientist: httpx.Client) -> None:
    """Near the limits (levels, nodes, arguments) a recipe is accepted (and compiles in seconds)."""
    scientist = ray_scientist
    defines = {
        "deep": "-" * 48 + "MET_px",  # 49 levels
        "chain": "+".join(["MET_px"] * 49),
        "wide": "max(" + ", ".join(["MET_px"] * 64) + ")",
        "many": " and ".join(f"MET_px > {i}" for i in range(190)),  # 953 nodes, 3,115 characters
    }
    r = scientist.post("/v1/recipes", json=_recipe({"define": defines}))
    assert r.status_code == 201, r.text[:500]
    assert {c["name"] for c in r.json()["schema"]} >= set(defines)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_compile_expression_refuses_with_expression_error(name: str) -> None:
    types = {"MET_px": ColumnType("float32", False), "Muon_Px": ColumnType("float32", True)}
    with pytest.raises(ExpressionError) as info:
        compile_expression(HOSTILE[name], types)
    assert any(w in str(info.value) for w in LIMIT_WORDS), str(info.value)[:300]
