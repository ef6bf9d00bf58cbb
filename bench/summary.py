"""One table of every benchmark's headline figures against its target, from bench/results/*.json.

Run after the benchmarks (``make bench`` does): ``.venv/bin/python bench/summary.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def verdict(ok: bool) -> str:
    return "[green]met[/]" if ok else "[bold red]missed[/]"


def rows() -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    if read := load("read"):
        for comp, r in read["results"].items():
            out.append(("read", f"SourceDataset.read / uproot ({comp})", f"{r['ratio_events_per_s']:.2f}x", f">= 0.9 {verdict(r['ratio_events_per_s'] >= 0.9)}"))
    if virtual := load("virtual"):
        z = virtual["zmumu"]
        out.append(("virtual", "zmumu events/s, one core", f"{z['one_core_events_per_s'] / 1e6:.2f} M", f">= 4 M {verdict(z['one_core_events_per_s'] >= 4e6)}"))
        for e in virtual["expressions"]:
            s = e["kernel_speedup"]
            out.append(("virtual", f"{e['label']}: vs awkward / Python lists", f"{s['awkward']:.1f}x / {s['python_lists']:.1f}x",
                        f">= 2x {verdict(s['awkward'] >= 2)}, >= 50x {verdict(s['python_lists'] >= 50)}"))
    if latency := load("latency"):
        for mode in ("stream", "file", "stream+stage", "file+stage"):
            vd = [r for r in latency["summary"] if r["mode"] == mode]
            if not vd:
                continue
            worst = min(vd, key=lambda r: r["eff"])
            met = sum(bool(r.get("meets_target")) for r in vd)
            ratios = [r["direct_over_vdata_wall"] for r in vd if r.get("direct_over_vdata_wall")]
            out.append(("latency", f"{mode}: worst efficiency; cells meeting the target; wall direct / vdata",
                        f"{worst['eff']:.2f}; {met}/{len(vd)}; {min(ratios):.2f}-{max(ratios):.2f}",
                        f">= 0.97 {verdict(met == len(vd))}"))
    if tp := load("throughput"):
        res = tp["results"]
        if w := res.get("warm"):
            out.append(("warm", "gateway / nginx bytes/s", f"{w['ratio']:.2f}x", f">= 0.8 {verdict(w['ratio'] >= 0.8)}"))
        if c := res.get("cold"):
            out.append(("cold", "engine 1 worker / uproot; 2/1 scaling", f"{c['ratio_1w_uproot']:.2f}x; {c['scaling']:.2f}x",
                        f">= 0.9 {verdict(c['ratio_1w_uproot'] >= 0.9)}, >= 1.7 {verdict(c['scaling'] >= 1.7)}"))
        if d := res.get("dispatch"):
            out.append(("dispatch", "lease+finish cycles/s; lease p99", f"{d['cycles_per_s']:.0f}; {d['lease_p99_ms']:.0f} ms",
                        f">= 2000 {verdict(d['cycles_per_s'] >= 2000)}, < 50 ms {verdict(d['lease_p99_ms'] < 50)}"))
        if m := res.get("memory"):
            out.append(("memory", "peak RSS growth 1M -> 10M events (client / gateway)", f"{m['client_growth']:.2f}x / {m['gateway_growth']:.2f}x",
                        f"<= 1.10 {verdict(max(m['client_growth'], m['gateway_growth']) <= 1.10)}"))
        if g := res.get("generation"):
            out.append(("generation", "engine / generate() alone (1 and 2 workers)", f"{g['ratio_1w_generate']:.2f}x / {g['ratio_2w_generate']:.2f}x", "reported"))
    return out


def main() -> None:
    table = Table("bench", "figure", "value", "target", title="vdata benchmarks (bench/results/*.json)")
    for row in rows():
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()
