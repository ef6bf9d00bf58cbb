"""The merge of job outputs: a thread per gateway that finds jobs done, claims their merge,
has a Ray task make each merged file (:func:`~service.core._output_files.merge_part`, through
the engine's :meth:`~service.core.engine.Engine.submit_call`), records each file as it lands,
and releases range outputs past their retention. The bookkeeping and its guarantees (a claim
renewed while the merge runs, a killed gateway's merge resumed by the next) are
:class:`~service.core.outputs.OutputStore`'s; the parts are
:func:`~service.core._output_rows.plan_parts` (the same after a restart).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from service.core._output_files import MERGED, commit_file, merge_part, merged_name, temp_path
from service.core._output_rows import MergedRow, Part, plan_parts
from service.core.outputs import OutputStore

__all__ = ["Merger"]

log = logging.getLogger(__name__)

Submit = Callable[..., "Future[Any]"]  # engine.submit_call(fn, *args, name=...)


class Merger:
    """Merges the outputs of done jobs, on its own thread (``start``/``stop``); ``wake()`` after a
    range finishes or fails makes it look at once instead of at its next poll."""

    def __init__(self, store: OutputStore, submit: Submit, reclaim: Callable[[str], object], *,
                 target_bytes: int, retention_seconds: float, claim_seconds: float, poll_seconds: float = 2.0) -> None:
        self.store = store
        self.submit = submit
        self.reclaim = reclaim  # JobStore.status: expires overdue leases, so a job whose last worker died gets done
        self.target_bytes = target_bytes
        self.retention_seconds = retention_seconds
        self.claim_seconds = claim_seconds
        self.poll_seconds = poll_seconds
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vdata-merger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - logged; the next step tries again (the claim stays ours)
                log.warning("merging job outputs: %s", exc)
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def step(self) -> list[str]:
        """Merge every job that is done and not merged (or whose merger died); release range
        outputs past their retention. Returns the jobs merged now."""
        merged = []
        for job_id in self.store.waiting():
            if self._stop.is_set():
                break
            self.reclaim(job_id)
            if self.store.claim(job_id, self.owner, self.claim_seconds):
                self.merge(job_id)
                merged.append(job_id)
        self.store.release_due(self.retention_seconds)
        return merged

    def merge(self, job_id: str) -> None:
        """Make the merged files not yet recorded (a Ray task each), record each as it lands,
        then end the merge (``merged``, or ``merge_failed`` naming the part that failed)."""
        _, fmt = self.store.jobs.options(job_id)
        parts = plan_parts(self.store.range_outputs(job_id, finished_only=True), self.target_bytes)
        have = {m.part for m in self.store.merged(job_id)}
        folder = self.store.root / job_id / MERGED
        running: dict[Future[Any], tuple[Part, Any]] = {}
        for part in parts:
            if part.index not in have:
                temp = temp_path(folder, f"part-{part.index}")
                future = self.submit(merge_part, str(self.store.root), part.inputs, fmt, str(temp),
                                     name=f"vdata merge {job_id} part {part.index}")
                running[future] = (part, temp)
        failures: list[str] = []
        pending = set(running)
        while pending:
            done, pending = wait(pending, timeout=self.claim_seconds / 3, return_when=FIRST_COMPLETED)
            if not self.store.renew(job_id, self.owner, self.claim_seconds):
                log.warning("lost the merge of job %s to another gateway", job_id)
                return
            for future in done:
                part, temp = running[future]
                failure = self._land(job_id, part, fmt, future, temp)
                if failure is not None:
                    failures.append(failure)
        self.store.end_merge(job_id, self.owner, "; ".join(failures) or None)
        log.info("job %s: %d range outputs merged into %d %s files%s", job_id, sum(len(p.ranges) for p in parts),
                 len(parts), fmt, f" ({len(failures)} failed)" if failures else "")

    def _land(self, job_id: str, part: Part, fmt: str, future: Future[Any], temp: Any) -> str | None:
        """Commit a finished merge task's file and record it; why it failed otherwise."""
        try:
            size, adler32, events = future.result()
            name = merged_name(part.index, fmt)
            commit_file(temp, self.store.root / job_id / MERGED / name)
        except Exception as exc:  # noqa: BLE001 - the task's error (Ray wraps it): recorded as the merge's failure
            temp.unlink(missing_ok=True)
            cause = getattr(exc, "cause", None) or exc
            return f"part {part.index} (ranges {part.ranges[0]}..{part.ranges[-1]}): {type(cause).__name__}: " \
                   f"{str(cause).splitlines()[0][:300] if str(cause) else ''}"
        self.store.add_merged(MergedRow(job_id, part.index, name, fmt, part.ranges[0], part.ranges[-1], events, size,
                                        adler32, self.store.clock()), self.owner)
        return None
