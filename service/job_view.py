"""A job's progress for people: what ``vdata jobs status`` prints and ``vdata jobs watch`` shows
live (rich), from the gateway's ``GET /v1/jobs/{id}`` answer (a dict; see
:class:`service.http.schemas.JobStatusOut`). Rate and ETA are the service's (over the job's life
from its first lease), so the live view and the one-off status say the same numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

__all__ = ["details", "duration", "summary", "watch"]

Status = Mapping[str, Any]


def duration(seconds: float | None) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``12.3 s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _ranges(s: Status) -> str:
    counts = s["counts"]
    return ", ".join(f"{counts.get(state, 0)} {state}" for state in ("finished", "running", "ready", "failed", "fatal"))


def _rate(s: Status) -> str:
    return f"{s['events_per_second']:,.1f} events/s"


def _eta(s: Status) -> str:
    if s["done"]:
        return "done"
    if s["started"] is None:
        return "ETA - (not started: no range leased yet)"
    return f"ETA {duration(s['eta_seconds'])}"


def _failures(s: Status) -> RenderableType:
    failures: Mapping[str, int] = s["failures_per_worker"]
    if not failures:
        return Text("workers: none has leased a range yet")
    table = Table("worker", "failed attempts", title="failures per worker", title_justify="left")
    for worker, count in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(worker, str(count), style="red" if count else None)
    return table


def details(s: Status) -> RenderableType:
    """Everything ``vdata jobs status`` prints for a job."""
    total = s["events_total"]
    percent = 100.0 * s["events_finished"] / total if total else 100.0
    head = Text.assemble((s["id"], "bold"), f" (recipe {s['recipe_id']}): ",
                         (f"{s['events_finished']:,} of {total:,} events done ({percent:.1f}%)", "bold"))
    lines = [
        head,
        Text(f"ranges: {_ranges(s)} (of {s['ranges_total']}); events failed: {s['events_failed']:,}"),
        Text(f"rate: {_rate(s)} over {duration(s['elapsed_seconds'])} since the first lease; {_eta(s)}"),
        _failures(s),
    ]
    if s.get("outputs", "none") != "none":  # a job with outputs: where their merge stands
        lines.append(Text(f"outputs: {s['outputs']}, merged as {s['output_format']}; job {s['state']}"))
    return Group(*lines)


def summary(s: Status) -> str:
    """The one line ``vdata jobs watch`` ends with."""
    failed = sum(s["failures_per_worker"].values())
    bad = s["counts"].get("failed", 0) + s["counts"].get("fatal", 0)
    return (f"{s['id']} done: {s['events_finished']:,} of {s['events_total']:,} events in "
            f"{duration(s['elapsed_seconds'])} ({_rate(s)}); {bad} ranges failed for good; "
            f"{failed} failed attempts" + (f" ({_per_worker(s)})" if failed else ""))


def _per_worker(s: Status) -> str:
    return ", ".join(f"{w}: {n}" for w, n in sorted(s["failures_per_worker"].items()) if n)


def watch(poll: Callable[[], Status], interval: float, console: Console,
          stop: threading.Event | None = None) -> Status:
    """Show the job live (a progress bar of events, the rate, the ETA, ranges per state, failures
    per worker), polling every ``interval`` seconds, until it is done; returns the last status.
    ``stop`` (for callers that end it early) is waited on between polls instead of sleeping."""
    stop = stop or threading.Event()
    status = poll()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[eta]}"),
                        console=console, auto_refresh=False)
    task = progress.add_task(str(status["id"]), total=status["events_total"], completed=status["events_finished"],
                             rate=_rate(status), eta=_eta(status))

    def view(s: Status) -> RenderableType:
        progress.update(task, completed=s["events_finished"], rate=_rate(s), eta=_eta(s))
        return Group(progress, Text(f"ranges: {_ranges(s)}"), _failures(s))

    with Live(view(status), console=console, refresh_per_second=4) as live:
        while not status["done"] and not stop.wait(interval):
            status = poll()
            live.update(view(status))
    if not console.is_terminal:  # rich ends the last frame with a newline only on a terminal
        console.line()
    return status
