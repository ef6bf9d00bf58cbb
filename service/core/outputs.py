"""Job outputs in the event-service sense: each range's output uploaded by its worker, stored
at once, and merged in range order when the job is done.

Storage: a file per range output in the outputs folder (``<cache folder>/outputs``, which every
gateway of a database shares, see :mod:`service.core._output_files`), named by its content
(sha256), written to a temporary file, checked (its adler32 against the request's header, its
bytes read as the declared format), fsynced and renamed into place; then a row of
``range_outputs`` says which file is the range's output. Rows are written in the transaction
that checks the uploader still holds the range (:func:`~service.core._output_rows.upload_verdict`).

Which output counts (nothing lost, nothing twice): a range has at most one stored output, the
latest upload of a lease holder. A worker killed after its upload and before ``finish`` leaves
its output stored; the range is leased again when the lease expires, and the next holder's
upload replaces it (the old file is deleted); once the range is finished its output is fixed
(the same bytes again: idempotent; other bytes: 409). So the merge reads exactly one output
per finished range, and every event once.

Merge (:class:`~service.core.merge.Merger`): the table ``job_merges`` holds per job its
``outputs`` option, the merged files' format, and the merge state: ``open`` until the job is
done (no range ready or running; failed ranges are left out), then a gateway claims it
(``owner``, ``expires``, renewed while it works), records each merged file in
``merged_outputs`` as it is made, and marks it ``merged``. A gateway killed mid-merge leaves its
claim to expire; the next one plans the same parts and makes only those not recorded. The range
outputs of a merged job are released (rows and files) ``retention_seconds`` after the merge.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from service.core._output_files import MERGED, commit_file, inspect_output, output_name, temp_path
from service.core._output_rows import (
    MERGE_FAILED,
    MERGED as MERGED_STATE,
    MERGING,
    NONE,
    OPEN,
    SAME,
    STORE,
    MergedRow,
    OutputRow,
    upload_verdict,
)
from service.core.db import Database
from service.core.jobs import FINISHED, READY, RUNNING, JobStore
from service.errors import OutputError
from vdata.checksum import adler32_hex
from vdata.formats import check_format

__all__ = ["OutputStore", "Upload"]

_OUT_COLUMNS = "job_id, range_index, path, format, size, adler32, sha256, events, worker, created, provenance_id"
_MERGED_COLUMNS = "job_id, part, name, format, first_range, last_range, events, size, adler32, created"


class Upload:
    """An upload being received: a temporary file with the size, adler32 and sha256 of what was
    written so far (fed piece by piece, so the body never sits in memory whole)."""

    def __init__(self, path: Path) -> None:
        from vdata.checksum import adler32

        self._adler32 = adler32
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115 - closed by finish() or discard()
        self.size = 0
        self.adler32 = 1
        self.sha = hashlib.sha256()

    def write(self, piece: bytes) -> None:
        self.file.write(piece)
        self.size += len(piece)
        self.adler32 = self._adler32(piece, self.adler32)
        self.sha.update(piece)

    def close(self) -> None:
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class OutputStore:
    """Range outputs and merged files: their rows and their files under ``root``."""

    def __init__(self, db: Database, jobs: JobStore, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.jobs = jobs
        self.root = Path(root)
        self.clock = clock

    # -- uploads -----------------------------------------------------------------------------

    def begin(self, job_id: str, index: int, worker: str, fmt: str) -> Upload:
        """Check that the job takes outputs and that ``worker`` may upload for the range now
        (the lease holder; or the range is finished: a repeat of its output), then a new
        temporary file to receive the body (a read: the commit checks again)."""
        check_format(fmt)
        outputs, _ = self.jobs.options(job_id)
        if outputs == NONE:
            raise OutputError(f"job {job_id!r} takes no outputs (create it with outputs: required or optional)")
        row = self.jobs.range_row(job_id, index)
        if row.state != FINISHED:
            upload_verdict(row, worker, None, "")  # raises LeaseError for anyone but the holder
        return Upload(temp_path(self.root / job_id, f"upload-{index}"))

    def commit(self, upload: Upload, job_id: str, index: int, worker: str, fmt: str, adler32: int) -> OutputRow:
        """Check the received file (adler32, format), move it to its content address and record
        it (:meth:`record`, which the caller may run on the job thread: see ``record``)."""
        upload.close()
        what = f"the output of range {index} of job {job_id!r} ({upload.size} bytes)"
        try:
            if upload.adler32 != adler32:
                raise OutputError(f"{what} has adler32 {adler32_hex(upload.adler32)}, but X-Vdata-Adler32 says "
                                  f"{adler32_hex(adler32)}: the body was damaged on the way; upload it again")
            events = inspect_output(upload.path, fmt, what)
            name = output_name(job_id, index, upload.sha.hexdigest(), fmt)
            commit_file(upload.path, self.root / name)
        finally:
            upload.path.unlink(missing_ok=True)
        return OutputRow(job_id, index, name, fmt, upload.size, upload.adler32, upload.sha.hexdigest(), events,
                         worker, self.clock())

    def record(self, out: OutputRow) -> tuple[OutputRow, bool]:
        """Make ``out`` the range's output if its uploader still may (one transaction, the range
        row locked); returns the stored output and whether it is new. A replaced output's file
        is deleted after the commit."""
        with self.db.transaction() as conn:
            row = self.jobs.range_row(out.job_id, out.index, lock=True)
            stored = self._range_output(conn, out.job_id, out.index)
            verdict = upload_verdict(row, out.worker, stored, out.sha256)
            if verdict == SAME:
                assert stored is not None
                return stored, False
            assert verdict == STORE
            conn.execute("DELETE FROM range_outputs WHERE job_id = ? AND range_index = ?", (out.job_id, out.index))
            conn.execute(f"INSERT INTO range_outputs ({_OUT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (out.job_id, out.index, out.path, out.format, out.size, out.adler32, out.sha256,
                          out.events, out.worker, out.created, out.provenance_id))
        if stored is not None and stored.path != out.path:
            (self.root / stored.path).unlink(missing_ok=True)
        return out, True

    # -- reads -------------------------------------------------------------------------------

    def range_output(self, job_id: str, index: int) -> OutputRow | None:
        self.jobs.range_row(job_id, index)  # JobNotFound / RangeNotFound first
        return self._range_output(self.db.read(), job_id, index)

    def range_outputs(self, job_id: str, finished_only: bool = False) -> list[OutputRow]:
        """The stored range outputs of a job, by range (only of finished ranges if asked)."""
        self.jobs.options(job_id)  # JobNotFound
        where = (" AND EXISTS (SELECT 1 FROM job_ranges AS r WHERE r.job_id = o.job_id AND "
                 "r.range_index = o.range_index AND r.state = ?)") if finished_only else ""
        rows = self.db.read().execute(
            f"SELECT {', '.join('o.' + c.strip() for c in _OUT_COLUMNS.split(','))} FROM range_outputs AS o "
            f"WHERE o.job_id = ?{where} ORDER BY o.range_index", (job_id, FINISHED) if finished_only else (job_id,))
        return [OutputRow(*r) for r in rows]

    def merged(self, job_id: str) -> list[MergedRow]:
        rows = self.db.read().execute(f"SELECT {_MERGED_COLUMNS} FROM merged_outputs WHERE job_id = ? ORDER BY part",
                                      (job_id,))
        return [MergedRow(*r) for r in rows]

    def merge_state(self, job_id: str) -> tuple[str, str | None, bool]:
        """(state, failure message, whether the range outputs were released) of a job with outputs."""
        found = self.db.read().execute("SELECT state, message, released FROM job_merges WHERE job_id = ?",
                                       (job_id,)).fetchone()
        if found is None:
            self.jobs.options(job_id)  # JobNotFound, else a job without outputs
            raise OutputError(f"job {job_id!r} takes no outputs")
        return found[0], found[1], bool(found[2])

    def merged_path(self, job_id: str, name: str) -> Path:
        return self.root / job_id / MERGED / name

    @staticmethod
    def _range_output(conn: object, job_id: str, index: int) -> OutputRow | None:
        found = conn.execute(f"SELECT {_OUT_COLUMNS} FROM range_outputs WHERE job_id = ? AND range_index = ?",  # type: ignore[attr-defined]
                             (job_id, index)).fetchone()
        return OutputRow(*found) if found is not None else None

    # -- the merge's bookkeeping (service/core/merge.py) ----------------------------------------

    def waiting(self) -> list[str]:
        """Jobs with outputs whose merge is not over (open or merging), oldest first."""
        rows = self.db.read().execute(
            "SELECT job_id FROM job_merges JOIN jobs ON jobs.id = job_merges.job_id WHERE state IN (?, ?) "
            "ORDER BY created, job_id", (OPEN, MERGING))
        return [r[0] for r in rows]

    def claim(self, job_id: str, owner: str, seconds: float) -> bool:
        """Take the job's merge for ``owner`` if the job is done and nobody else holds it now."""
        with self.db.transaction() as conn:
            now = self.clock()
            left = conn.execute("SELECT COUNT(*) FROM job_ranges WHERE job_id = ? AND state IN (?, ?)",
                                (job_id, READY, RUNNING)).fetchone()[0]
            if left:
                return False
            taken = conn.execute(
                "UPDATE job_merges SET state = ?, owner = ?, expires = ? WHERE job_id = ? AND state IN (?, ?) "
                "AND (owner = '' OR owner = ? OR expires < ?)",
                (MERGING, owner, now + seconds, job_id, OPEN, MERGING, owner, now))
            return bool(taken.rowcount)

    def renew(self, job_id: str, owner: str, seconds: float) -> bool:
        with self.db.transaction() as conn:
            renewed = conn.execute("UPDATE job_merges SET expires = ? WHERE job_id = ? AND owner = ? AND state = ?",
                                   (self.clock() + seconds, job_id, owner, MERGING))
            return bool(renewed.rowcount)

    def add_merged(self, row: MergedRow, owner: str) -> None:
        """Record a merged file (already in place) if ``owner`` still holds the merge."""
        with self.db.transaction() as conn:
            if not self._holds(conn, row.job_id, owner):
                return
            conn.execute(f"INSERT INTO merged_outputs ({_MERGED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                         "ON CONFLICT (job_id, part) DO NOTHING",
                         (row.job_id, row.part, row.name, row.format, row.first_range, row.last_range, row.events,
                          row.size, row.adler32, row.created))

    def end_merge(self, job_id: str, owner: str, message: str | None = None) -> None:
        """The merge is over: ``merged``, or ``merge_failed`` with ``message``."""
        with self.db.transaction() as conn:
            if self._holds(conn, job_id, owner):
                conn.execute("UPDATE job_merges SET state = ?, owner = '', expires = 0, message = ?, merged = ? "
                             "WHERE job_id = ?", (MERGE_FAILED if message else MERGED_STATE, message,
                                                  self.clock(), job_id))
        for temp in (self.root / job_id / MERGED).glob(".*.tmp"):  # what a killed merger left
            temp.unlink(missing_ok=True)

    def release_due(self, retention_seconds: float) -> list[str]:
        """Delete the range outputs (rows, then files) of jobs merged more than
        ``retention_seconds`` ago; returns those jobs."""
        with self.db.transaction() as conn:
            due = [r[0] for r in conn.execute(
                "SELECT job_id FROM job_merges WHERE state = ? AND released = 0 AND merged <= ?",
                (MERGED_STATE, self.clock() - retention_seconds)).fetchall()]
            paths = [r[0] for job in due for r in conn.execute(
                "SELECT path FROM range_outputs WHERE job_id = ?", (job,)).fetchall()]
            for job in due:
                conn.execute("DELETE FROM range_outputs WHERE job_id = ?", (job,))
                conn.execute("UPDATE job_merges SET released = 1 WHERE job_id = ?", (job,))
        for path in paths:
            (self.root / path).unlink(missing_ok=True)
        for job in due:  # uploads of ranges that never finished, temporary files
            for leftover in (self.root / job).glob("*"):
                if leftover.is_file():
                    leftover.unlink(missing_ok=True)
        return due

    @staticmethod
    def _holds(conn: object, job_id: str, owner: str) -> bool:
        found = conn.execute("SELECT owner, state FROM job_merges WHERE job_id = ?", (job_id,)).fetchone()  # type: ignore[attr-defined]
        return found is not None and found[0] == owner and found[1] == MERGING
