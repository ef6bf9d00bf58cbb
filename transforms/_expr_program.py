"""What the checker builds and the code generator turns into a kernel (private to
:mod:`transforms.expressions`): the columns used, the per-event statements, the error sites.

Names inside the kernel: ``i`` event, ``j``/``q`` element (plain/lane loop), ``a<k>``/``o<k>``
values/offsets of input column ``k``, ``f<k>`` a flat input's value this event, ``s<k>``/``c<k>``
start/count of a jagged input's list this event, ``l<k>`` its last valid index, ``m<k>`` its
lane width (:mod:`transforms._expr_loops`), ``v<k>`` the validity of a nullable input (``g<k>``
a flat one's this event), ``t<n>`` per-event temporaries (``t<n>_ok`` the validity of ``x[k]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._expr_ir import Site, Val
from ._expr_loops import reduced_kind, reduction
from .columns import ColumnType

__all__ = ["Program"]

_CASTS = {"i": "np.int64", "f": "np.float64"}
_NULL_VALUE = {"b": "False", "i": "np.int64(0)", "f": "np.nan"}  # what a null holds in the buffers


@dataclass
class Program:
    columns: dict[str, ColumnType]  # the columns used, in argument order (sorted by name)
    prelude: list[str] = field(default_factory=list)  # statements of the event body
    sites: list[Site] = field(default_factory=list)
    _temps: dict[str, str] = field(default_factory=dict)

    def index(self, name: str) -> int:
        return list(self.columns).index(name)

    def load(self, name: str, jagged: bool) -> str:
        """Code reading one value of column ``name`` (per event, or per element ``j``)."""
        k = self.index(name)
        if not jagged:
            return f"f{k}"  # read once per event by the kernel (see _expr_codegen)
        kind = np.dtype(self.columns[name].dtype).kind
        raw = f"a{k}[s{k} + j]"
        return raw if kind == "b" else f"{_CASTS['f' if kind == 'f' else 'i']}({raw})"

    def load_valid(self, name: str, jagged: bool) -> str:
        """Code reading the validity of one value of nullable column ``name``."""
        k = self.index(name)
        return f"v{k}[s{k} + j]" if jagged else f"g{k}"  # g<k>: read once per event

    def site(self, site: Site) -> int:
        if site not in self.sites:
            self.sites.append(site)
        return self.sites.index(site)

    def loop_start(self, val: Val) -> tuple[list[str], str, str]:
        """Statements checking that ``val``'s columns have equal counts in this event, the
        name of that count and of the lane width."""
        ks = [self.index(name) for name in val.group]
        lines: list[str] = []
        if len(ks) > 1:
            site = self.site(Site("counts", val.group, val.at))
            cond = " or ".join(f"c{k} != c{ks[0]}" for k in ks[1:])
            lines += [f"if {cond}:", "    err[0] = i", f"    err[1] = {site}", "    return -1"]
        return lines, f"c{ks[0]}", f"m{ks[0]}"

    def _temp(self, key: str, build: list[str], name: str) -> str:
        """Emit ``build`` (statements defining ``name``) once per distinct ``key``."""
        if key not in self._temps:
            self.prelude.extend(build)
            self._temps[key] = name
        return self._temps[key]

    def _fresh(self) -> str:
        return f"t{len(self._temps)}"

    def reduce(self, fn: str, val: Val) -> Val:
        """A per-event reduction over ``val``'s (selected) elements; null elements are skipped
        (as SQL's aggregates and awkward's reducers do), except by ``len``, which counts entries."""
        if val.valid is not None and fn != "len":
            mask = val.valid if val.mask is None else f"({val.mask} and {val.valid})"
            val = Val(val.kind, val.code, val.group, mask, val.at)
        key = f"{fn}|{val.code}|{val.group}|{val.mask}"
        t = self._temps.get(key) or self._fresh()
        checks, count, width = self.loop_start(val)
        lines = [*checks, *reduction(fn, val, t, count, width)]
        return Val(reduced_kind(fn, val.kind), self._temp(key, lines, t))

    def index_at(self, val: Val, position: int) -> Val:
        """``val[position]``, of ``val``'s own kind: null where the (selected) list is too short
        (the value is then 0, False or NaN), or where that element is null."""
        key = f"index{position}|{val.code}|{val.group}|{val.mask}|{val.valid}"
        t = self._temps.get(key) or self._fresh()
        checks, count, _ = self.loop_start(val)
        value, ok = val.code, val.valid or "True"
        lines = [*checks, f"{t} = {_NULL_VALUE[val.kind]}", f"{t}_ok = False"]
        if val.mask is None:
            first = str(position) if position >= 0 else f"{count} - {-position}"
            cond = f"{position} < {count}" if position >= 0 else f"{-position} <= {count}"
            lines += [f"if {cond}:", f"    j = {first}", f"    {t} = {value}", f"    {t}_ok = {ok}"]
        else:
            wanted = position if position >= 0 else -position - 1
            loop = f"range({count})" if position >= 0 else f"range({count} - 1, -1, -1)"
            lines += [
                f"{t}_q = 0",
                f"for j in {loop}:",
                f"    if {val.mask}:",
                f"        if {t}_q == {wanted}:",
                f"            {t} = {value}",
                f"            {t}_ok = {ok}",
                "            break",
                f"        {t}_q += 1",
            ]
        name = self._temp(key, lines, t)
        return Val(val.kind, name, valid=f"{name}_ok")
