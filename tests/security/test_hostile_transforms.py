"""Hostile transforms submitted by a scientist through a real gateway (``POST /v1/transforms``):
every one is refused with a 4xx naming the transform and the reason, none is a 5xx, and none
runs any of its code in the gateway (a file it would write stays absent).

Endless loops and huge allocations are legal code: at submission they are only compiled (never
run), so they must not 5xx here; running them is bounded by the engine's limits, tested with
the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from security_helpers import Gateway

PWNED = "/tmp/vdata-hostile-transform-pwned"  # a file some of the sources try to create


def body(code: str) -> str:
    """A transform ``evil(x)`` whose body is ``code`` (indented)."""
    lines = "\n".join("    " + line for line in code.splitlines())
    return f"def evil(x):\n{lines}\n"


# name -> (source, words of which one must appear in the refusal)
REFUSED: dict[str, tuple[str, tuple[str, ...]]] = {
    "import": ("import os\n" + body("return x"), ("import",)),
    "from import": ("from os import system\n" + body("return x"), ("import",)),
    "import inside": (body("import os\nreturn x"), ("import",)),
    "__import__": (body("os = __import__('os')\nreturn x"), ("'_'", "__import__")),
    "fullwidth __import__": (body("m = ＿＿import＿＿('os')\nreturn x"), ("'_'", "__import__", "syntax")),
    "__class__": (body("return x.__class__"), ("'_'", "__class__")),
    "subclasses": (body("c = x.__class__.__mro__[1].__subclasses__()\nreturn x"), ("'_'", "__class__")),
    "__globals__": (body("g = evil.__globals__\nreturn x"), ("'_'", "__globals__")),
    "__builtins__": (body("b = __builtins__\nreturn x"), ("'_'", "__builtins__")),
    "__dict__ of math": (body("s = math.__dict__\nreturn x"), ("'_'", "__dict__")),
    "getattr": (body("return getattr(x, 'real')"), ("getattr",)),
    "setattr": (body("setattr(np, 'pi', 3)\nreturn x"), ("setattr",)),
    "attribute store": (body("np.pi = 3.0\nreturn x"), ("attribute",)),
    "ctypes import": ("import ctypes\n" + body("return x"), ("import",)),
    "ctypes name": (body("ctypes.CDLL(None)\nreturn x"), ("ctypes",)),
    "np.ctypeslib": (body("l = np.ctypeslib.load_library('libc', '/lib')\nreturn x"), ("ctypeslib",)),
    "np.fromfile": (body("a = np.fromfile('/etc/passwd')\nreturn x"), ("fromfile", "strings")),
    "np.lib": (body("a = np.lib.format\nreturn x"), ("lib",)),
    "x.ctypes": (body("p = x.ctypes\nreturn x"), ("ctypes", "attribute")),
    "open": (body(f"f = open({PWNED!r}, 'w')\nreturn x"), ("open",)),
    "fullwidth open": (body("f = ｏｐｅｎ(1)\nreturn x"), ("open",)),
    "exec": (body("exec('import os')\nreturn x"), ("exec",)),
    "eval": (body("return eval('x')"), ("eval",)),
    "compile": (body("c = compile('1', 'f', 'eval')\nreturn x"), ("compile",)),
    "globals()": (body("g = globals()\nreturn x"), ("globals",)),
    "vars()": (body("v = vars()\nreturn x"), ("vars",)),
    "type()": (body("t = type(x)\nreturn x"), ("type",)),
    "breakpoint": (body("breakpoint()\nreturn x"), ("breakpoint",)),
    "print": (body("print(x)\nreturn x"), ("print",)),
    "lambda": (body("f = lambda v: v\nreturn f(x)"), ("lambda",)),
    "lambda code": (body("c = (lambda: 0).__code__\nreturn x"), ("lambda", "'_'")),
    "lambda default": (body("f = lambda v=open('/etc/passwd'): v\nreturn x"), ("lambda",)),
    "recursion": (body("return evil(x)"), ("evil",)),
    "recursion by name": (body("f = evil\nreturn f(x)"), ("evil",)),
    "global": (body("global np\nreturn x"), ("global",)),
    "nonlocal": (body("nonlocal x\nreturn x"), ("nonlocal", "syntax")),
    "nested def": (body("def inner(v):\n    return v\nreturn inner(x)"), ("nested function",)),
    "class": (body("class A:\n    pass\nreturn x"), ("class",)),
    "decorator": ("@print\n" + body("return x"), ("decorator",)),
    "default value": (f"def evil(x=open({PWNED!r}, 'w')):\n    return x\n", ("default",)),
    "annotation": (f"def evil(x: open({PWNED!r}, 'w')):\n    return x\n", ("annotation",)),
    "return annotation": (f"def evil(x) -> open({PWNED!r}, 'w'):\n    return x\n", ("annotation",)),
    "top-level code after": (body("return x") + f"open({PWNED!r}, 'w')\n", ("open", "top level")),
    "top-level assignment": (f"f = 1\n" + body("return x"), ("top level",)),
    "two functions": (body("return x") + "def other(y):\n    return y\n", ("only one function",)),
    "try": (body("try:\n    y = x\nexcept Exception:\n    y = 0\nreturn y"), ("try",)),
    "with": (body(f"with open({PWNED!r}) as f:\n    pass\nreturn x"), ("with", "open")),
    "yield": (body("yield x"), ("yield",)),
    "walrus": (body("return (y := x)"), ("':='",)),
    "f-string": (body("s = f'{x}'\nreturn x"), ("f-string",)),
    "string": (body("s = 'abc'\nreturn x"), ("strings",)),
    "raise SystemExit": (body("raise SystemExit(1)"), ("raise",)),
    "del": (body("del x\nreturn 0.0"), ("del",)),
    "assert": (body("assert x\nreturn x"), ("assert",)),
    "comprehension": (body("s = [v for v in range(3)]\nreturn x"), ("comprehension",)),
    "starred": (body("return max(*x)"), ("unpacking",)),
    "async": ("async def evil(x):\n    return x\n", ("async", "no function")),
    "keyword argument": (body("return round(x, ndigits=open)"), ("keyword", "open")),
    "numba": (body("n = numba\nreturn x"), ("numba",)),
    "null byte": (body("return x") + "\x00", ("null", "parsed", "syntax")),
    "deep sum": (body("return " + "+".join(["x"] * 900)), ("nested too deeply",)),
    "5,000 unary minus": (body("return " + "-" * 5000 + "x"), ("nested too deeply",)),
    "deep parentheses": (body("return " + "(" * 300 + "x" + ")" * 300), ("nested", "parenthes")),
    "too long": (body("y = x\n" * 3000 + "return y"), ("longer than",)),
    "syntax error": (body("return x +"), ("syntax",)),
    "wrong name": ("def good(x):\n    return x\n", ("named 'evil'",)),
}

# Legal code whose danger is at run time (bounded by the engine): submission compiles, never runs.
RUNTIME_ONLY: dict[str, str] = {
    "endless while": body("y = x\nwhile y == y:\n    y = y + 1.0\nreturn y"),
    "endless after a threshold": body("y = x\nif x > 94.0:\n    while y == y:\n        y = y + 1.0\nreturn y"),
    "huge allocation": body("a = np.empty(10**11)\nreturn x + a[0]"),
    "huge ones": body("a = np.ones(400000000)\nreturn x + a.sum()"),
    "deep loop nest": body("y = x\n" + "".join("    " * i + f"for i{i} in range(1000000):\n" for i in range(6))
                           + "    " * 6 + "y = y + 1.0\nreturn y"),
}


@pytest.fixture(scope="module")
def scientist(planning_gateway: Gateway) -> Iterator[httpx.Client]:
    with planning_gateway.client("scientist") as client:
        yield client


def _submit(client: httpx.Client, source: str) -> httpx.Response:
    return client.post("/v1/transforms", json={"name": "evil", "source": source, "inputs": {"x": "flat"},
                                               "outputs": {"y": "float64"}, "kind": "element"})


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_transform_is_refused_naming_it_and_the_reason(scientist: httpx.Client, case: str) -> None:
    source, words = REFUSED[case]
    r = _submit(scientist, source)
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text[:500])
    detail = r.json()["detail"]
    assert "'evil'" in detail, detail[:500]
    assert any(w.lower() in detail.lower() for w in words), (case, detail[:500])
    assert len(detail) < 2000, detail[:300]
    assert not Path(PWNED).exists(), f"{case}: the transform's code ran in the gateway"


@pytest.mark.parametrize("case", sorted(RUNTIME_ONLY))
def test_runtime_hazards_do_not_5xx_at_submission(scientist: httpx.Client, case: str) -> None:
    r = _submit(scientist, RUNTIME_ONLY[case])
    assert r.status_code in (201, 400, 422), (case, r.status_code, r.text[:500])
    if r.status_code != 201:
        assert "'evil'" in r.json()["detail"], r.text[:500]


def test_refusals_leave_the_gateway_serving(planning_gateway: Gateway, scientist: httpx.Client) -> None:
    """After the whole list, the gateway still answers and still takes a good transform."""
    r = scientist.post("/v1/transforms", json={"name": "fine", "source": "def fine(x):\n    return 2.0 * x\n",
                                               "inputs": {"x": "flat"}, "outputs": {"y": "float64"},
                                               "kind": "element"})
    assert r.status_code == 201, r.text
    with planning_gateway.client(None) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
