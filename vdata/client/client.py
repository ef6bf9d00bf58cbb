"""Client SDK for a vdata service: submit recipes, stream ranges, fetch range files, run workers.

The ATLAS Event Streaming Service idea on the client side: the next ranges are fetched in
the background while the payload works on the current one, so it rarely waits on the
network::

    with vdata.Client("https://vdata.example.org", token) as client:
        for batch in client.stream("recipe.yaml", format="arrow", prefetch=4):
            analyse(batch)                              # ranges k+1..k+4 load meanwhile
        client.fetch(recipe_id, "input/", format="root")  # one small file per range
        client.get(recipe_id, 3, "range3.parquet")         # the format follows the extension
        client.run_worker(job_id, process)                # event-service mode

Every range body is checked against its ``X-Vdata-Adler32`` header. Arrow travels as an IPC
stream and is written to files in the IPC file format (Feather v2), which every Arrow reader
opens; ``compression="lz4"``/``"zstd"`` compresses Arrow's buffers on the wire and in the file. Connection errors,
``429`` and ``5xx`` are retried with exponential backoff; other ``4xx`` raise
:class:`ServiceError` at once, with the gateway's ``error`` and ``detail``.

Errors (all :class:`~vdata.errors.VdataError`)::

    VdataError
     ├── ServiceError          the service answered 4xx/5xx: .status, .error, .detail
     ├── ChecksumMismatch      (OSError) a range's bytes did not match their adler32, every attempt
     └── ServiceUnreachable    (ConnectionError) no answer after every attempt

Layout: the HTTP layer is :mod:`vdata.client._http`, the prefetch pipeline and decoding
:mod:`vdata.client._pipeline`, the worker loop :mod:`vdata.client._worker`.
"""

from __future__ import annotations

import os
import socket
import threading
from concurrent.futures import Future
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias

import httpx
import pyarrow as pa
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vdata.client._early import EarlyRange
from vdata.client._http import (
    EVENTS_HEADER,
    ChecksumMismatch,
    ServiceError,
    ServiceUnreachable,
    Transport,
    checked_body,
)
from vdata.client._pipeline import EXTENSIONS, Manifest, adler32_hex, decode_table, ordered_prefetch, write_file
from vdata.client._outputs import fetch_outputs, upload_output
from vdata.client._worker import LeasedRange, WorkerSummary, run_worker
from vdata.data.recipes import Recipe
from vdata.errors import RecipeError
from vdata.formats import arrow_file_bytes, check_compression, check_format, format_for_path
from vdata.ranges import EventRange

RANGES_PAGE = 10_000  # ranges per request of Client.ranges (the service's largest page)

__all__ = [
    "ChecksumMismatch",
    "Client",
    "LeasedRange",
    "RecipeInfo",
    "ServiceError",
    "ServiceUnreachable",
    "WorkerSummary",
]

RecipeLike: TypeAlias = Recipe | Mapping[str, Any] | str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class RecipeInfo:
    """A submitted recipe: its id, events, ranges and output schema (as the service describes it),
    and the service's warnings about it (derived column names coffea would misread)."""

    id: str
    num_events: int
    num_ranges: int
    schema: Any
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecipeInfo:
        return cls(str(data["id"]), int(data["num_events"]), int(data["num_ranges"]), data.get("schema"),
                   tuple(str(w) for w in data.get("warnings") or ()))


def _load_recipe(recipe: RecipeLike) -> dict[str, Any]:
    """The JSON body to post: a Recipe's canonical form, a mapping as it is, or a YAML/JSON file."""
    if isinstance(recipe, Recipe):
        return recipe.to_dict()
    if isinstance(recipe, Mapping):
        return dict(recipe)
    if isinstance(recipe, (str, os.PathLike)):
        path = Path(recipe)
        try:
            data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        except yaml.YAMLError as exc:
            raise RecipeError([f"{path}: not valid YAML or JSON: {exc}"]) from exc
        if not isinstance(data, dict):
            raise RecipeError([f"{path}: a recipe is a mapping, got {type(data).__name__}"])
        return data
    raise TypeError(f"a recipe is a Recipe, a mapping or a path to a YAML/JSON file, got {type(recipe).__name__}")


def _range_url(rid: str, index: int, format: str, compression: str) -> httpx.URL:
    params = {"format": format} if compression == "none" else {"format": format, "compression": compression}
    return httpx.URL(f"/v1/recipes/{rid}/ranges/{index}", params=params)


def _file_bytes(body: pa.Buffer, format: str, compression: str) -> pa.Buffer:
    """What a range file holds: the body as it came, but Arrow as an IPC file, not a stream."""
    return arrow_file_bytes(body, compression) if format == "arrow" else body


def _in_thread(fn: Callable[[int], pa.Table], index: int, stop: threading.Event,
               threads: list[threading.Thread] | None = None) -> Future[pa.Table]:
    """``fn(index)`` started now in a daemon thread (it stops early once ``stop`` is set);
    the thread is added to ``threads``, for whoever joins them."""
    future: Future[pa.Table] = Future()

    def run() -> None:
        try:
            future.set_result(fn(index))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the result
            future.set_exception(exc)

    thread = threading.Thread(target=run, name=f"vdata-prefetch-range-{index}", daemon=True)
    thread.start()
    if threads is not None:
        threads.append(thread)
    return future


class _Ahead:
    """The ranges after range 0 of a stream, up to ``prefetch`` of them, asked for once range
    0's body is in (its first batches then have the link to themselves) and the listing says
    how many there are; ``futures`` holds them until the pipeline takes them (the window it
    would have opened itself once range 0 was in hand)."""

    def __init__(self, load: Callable[[int], pa.Table], prefetch: int, stop: threading.Event) -> None:
        self.futures: dict[int, Future[pa.Table]] = {}
        self._load = load
        self._prefetch = prefetch
        self._stop = stop
        self._lock = threading.Lock()
        self._in = False
        self._ranges: int | None = None
        self._started = False
        self.threads: list[threading.Thread] = []  # joined by close()

    def close(self) -> None:
        """Join the threads (``stop`` set: each ends after its current request); drop the futures."""
        self._stop.set()
        for thread in self.threads:
            thread.join()
        self.futures.clear()

    def body_in(self) -> None:
        with self._lock:
            self._in = True
            self._start()

    def listed(self, ranges: int) -> None:
        with self._lock:
            self._ranges = ranges
            self._start()

    def _start(self) -> None:
        if self._in and self._ranges is not None and not self._started:
            self._started = True
            for index in range(1, min(self._prefetch + 1, self._ranges)):
                self.futures[index] = _in_thread(self._load, index, self._stop, self.threads)


class Client:
    """A connection to a vdata service at ``url`` with a bearer ``token`` (default: ``$VDATA_TOKEN``).

    One keep-alive ``httpx.Client`` serves every call, from any thread. ``timeout`` is per
    request (seconds, or an ``httpx.Timeout``); a failed request is tried ``retries`` more
    times, sleeping ``backoff * 2**attempt`` seconds (with jitter) in between. Close it, or
    use it as a context manager. ``transport`` is for tests (an ``httpx`` transport).
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float | httpx.Timeout = 60.0,
                 retries: int = 5, backoff: float = 0.2, transport: httpx.BaseTransport | None = None) -> None:
        token = token if token is not None else os.environ.get("VDATA_TOKEN")
        self._http = Transport(url, token, timeout, retries, backoff, transport)
        self.url = url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- catalog -------------------------------------------------------------------------------

    def add_dataset(self, name: str, paths: list[str], tree: str) -> dict[str, Any]:
        """Register a dataset (admin): ``{name, num_events, columns, files}``."""
        return self._http.json("POST", "/v1/datasets", {"name": name, "paths": list(paths), "tree": tree})  # type: ignore[no-any-return]

    def datasets(self) -> list[dict[str, Any]]:
        return self._http.json("GET", "/v1/datasets")  # type: ignore[no-any-return]

    def add_transform(self, name: str, source: str, inputs: Mapping[str, str], outputs: Mapping[str, str],
                      kind: str = "event") -> dict[str, Any]:
        """Submit a scientist's transform: ``{id, name}`` (id = its content hash)."""
        body = {"name": name, "source": source, "inputs": dict(inputs), "outputs": dict(outputs), "kind": kind}
        return self._http.json("POST", "/v1/transforms", body)  # type: ignore[no-any-return]

    def transforms(self) -> list[dict[str, Any]]:
        return self._http.json("GET", "/v1/transforms")  # type: ignore[no-any-return]

    # -- recipes -------------------------------------------------------------------------------

    def submit(self, recipe: RecipeLike) -> RecipeInfo:
        """Post a recipe (a :class:`~vdata.Recipe`, a mapping, or a path to a YAML/JSON file)."""
        return RecipeInfo.from_json(self._http.json("POST", "/v1/recipes", _load_recipe(recipe)))

    def info(self, recipe_id: str) -> RecipeInfo:
        return RecipeInfo.from_json(self._http.json("GET", f"/v1/recipes/{recipe_id}"))

    def ranges(self, recipe_or_id: RecipeLike) -> list[EventRange]:
        """The event ranges of a recipe (an id ``"vds-..."``, or a recipe to submit first)."""
        rid = self._recipe_id(recipe_or_id)
        ranges: list[EventRange] = []
        while True:  # the list comes in pages; a short page is the last
            page = self._http.json("GET", f"/v1/recipes/{rid}/ranges?offset={len(ranges)}&limit={RANGES_PAGE}")
            ranges += [EventRange(int(r["index"]), int(r["first"]), int(r["stop"])) for r in page]
            if len(page) < RANGES_PAGE:
                return ranges

    def stage(self, recipe_or_id: RecipeLike, count: int = 4, *, first: int = 0, format: str = "arrow",
              compression: str = "none") -> list[int]:
        """Ask the service to materialize ranges ``first .. first+count-1`` now, ahead of need
        (pre-staging: a workload system calls this when it assigns the work, before the payload
        starts), in the format and compression the payload will ask for. Returns at once with the
        indices staged; they are cached when ready."""
        check_compression(compression, check_format(format))
        rid = self._recipe_id(recipe_or_id)
        body = {"first": first, "count": count, "format": format, "compression": compression}
        answer = self._http.json("POST", f"/v1/recipes/{rid}/stage", body)
        return [int(i) for i in answer["ranges"]]

    def provenance(self, recipe_or_id: RecipeLike, index: int, *, format: str | None = None,
                   compression: str = "none") -> dict[str, Any]:
        """How range ``index`` was made (:mod:`vdata.provenance`): ``id``, ``recipe``, ``transforms``,
        ``generator`` or ``inputs``, ``versions``, ``node``, ``started``, ``seconds``, ... Of its
        cache entry in ``format`` (default: the one made last). A range not in the service's cache
        raises the gateway's 404 ``not_materialized``: get the range first."""
        params = {} if format is None else {"format": format, "compression": compression}
        rid = self._recipe_id(recipe_or_id)
        return dict(self._http.json("GET", f"/v1/recipes/{rid}/ranges/{index}/provenance", params=params))

    def _recipe_id(self, recipe_or_id: RecipeLike) -> str:
        if isinstance(recipe_or_id, str) and recipe_or_id.startswith("vds-"):
            return recipe_or_id
        return self.submit(recipe_or_id).id

    # -- range data ----------------------------------------------------------------------------

    def _range_body(self, rid: str, index: int, format: str, compression: str,
                    stop: threading.Event | None) -> pa.Buffer:
        """A range's body, checked against its adler32 (retried as the class says)."""
        what = f"{rid} range {index}"
        return self._http.request(  # type: ignore[no-any-return]
            "GET", _range_url(rid, index, format, compression), stop=stop, check=lambda r: checked_body(r, what))

    def _range_table(self, url: str | httpx.URL, what: str, format: str, stop: threading.Event | None) -> pa.Table:
        """A range decoded; its adler32 and ``X-Vdata-Events`` checked."""
        body, events = self._http.request(
            "GET", url, stop=stop, check=lambda r: (checked_body(r, what), r.headers.get(EVENTS_HEADER)))
        try:
            table = decode_table(body, format)
        except (pa.ArrowException, ValueError, KeyError) as exc:  # pyarrow's and uproot's "not this format"
            raise ServiceError(200, "bad_response", f"{what} does not read as {format}: {exc}", "GET", str(url)) from exc
        if events is not None and events.strip().isdigit() and int(events) != table.num_rows:
            raise ServiceError(200, "bad_response", f"{what} holds {table.num_rows} events but {EVENTS_HEADER} "
                               f"says {events}", "GET", str(url))
        return table

    def _lease_table(self, lease: LeasedRange, format: str, stop: threading.Event) -> pa.Table:
        url = httpx.URL(lease.url).copy_set_param("format", format)
        return self._range_table(url, f"{lease.url.split('?')[0]} (leased range {lease.index})", format, stop)

    def get(self, recipe_or_id: RecipeLike, index: int, out: str | os.PathLike[str], format: str | None = None,
            *, compression: str = "none") -> int:
        """Write one range (its bytes checked against their adler32) to the file ``out``; returns
        its events. The format follows ``out``'s extension unless given (a format the extension
        contradicts is a :class:`~vdata.errors.FormatError`); Arrow is written as an IPC file."""
        format = format_for_path(out, format)
        check_compression(compression, format)
        rid = self._recipe_id(recipe_or_id)
        body = self._range_body(rid, index, format, compression, None)
        write_file(Path(out), _file_bytes(body, format, compression))
        return decode_table(body, format).num_rows

    def stream(self, recipe_or_id: RecipeLike, format: str = "arrow", prefetch: int = 4, *,
               compression: str = "none") -> Generator[pa.RecordBatch, None, None]:
        """The record batches of every range, in range order.

        Up to ``prefetch`` ranges are fetched and decoded in background threads while the
        caller works on the current one (``0``: none, fetch on demand); memory holds at most
        ``prefetch + 1`` ranges. The recipe is submitted (if not an id) and its ranges listed
        now; with ``prefetch`` > 0 the first range is asked for at once, beside the listing (its
        first batch comes a round trip sooner), the rest flows when iterated. In Arrow, the
        first range's record batches are handed out as they arrive (:mod:`vdata.client._early`:
        still checked against the range's adler32, each event once), the following ranges
        whole, once checked. Closing the iterator early (``break`` in a ``for`` loop,
        ``close()``, or dropping it) stops the background threads. ``compression`` (``"lz4"``,
        ``"zstd"``; Arrow only) makes the bodies smaller on the wire.
        """
        check_compression(compression, check_format(format))
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        rid = self._recipe_id(recipe_or_id)
        stop = threading.Event()
        load = self._loader(rid, format, compression, stop)
        ahead = _Ahead(load, prefetch, stop)
        first: EarlyRange | Future[pa.Table] | None = None
        if prefetch and format == "arrow":
            first = EarlyRange(self._http, _range_url(rid, 0, format, compression), f"{rid} range 0", stop,
                               fetch_whole=lambda: load(0), on_complete=ahead.body_in)
        elif prefetch:
            first = _in_thread(load, 0, stop, ahead.threads)
        try:
            ranges = self.ranges(rid)
        except BaseException:
            stop.set()
            raise
        if not ranges:
            stop.set()  # no range 0: its request's answer (an error) is dropped
        ahead.listed(len(ranges))
        return self._stream(ranges, prefetch, stop, load, first, ahead)

    def _loader(self, rid: str, format: str, compression: str, stop: threading.Event) -> Callable[[int], pa.Table]:
        def load(index: int) -> pa.Table:
            return self._range_table(_range_url(rid, index, format, compression), f"{rid} range {index}", format, stop)

        return load

    def _stream(self, ranges: list[EventRange], prefetch: int, stop: threading.Event, load: Callable[[int], pa.Table],
                first: EarlyRange | Future[pa.Table] | None, ahead: _Ahead) -> Generator[pa.RecordBatch, None, None]:
        if isinstance(first, Future):
            ahead.futures[0] = first

        def table(r: EventRange) -> pa.Table:
            taken = ahead.futures.pop(r.index, None)  # held no longer than the pipeline holds it
            return load(r.index) if taken is None else taken.result()

        try:
            rest = ranges
            if isinstance(first, EarlyRange):
                if ranges:
                    yield from first
                rest = ranges[1:]
            tables = ordered_prefetch(table, rest, prefetch, stop)
            try:
                for whole in tables:
                    yield from whole.to_batches()
            finally:
                tables.close()
        finally:
            if isinstance(first, EarlyRange):
                first.close()
            ahead.close()

    def fetch(self, recipe_or_id: RecipeLike, out_dir: str | os.PathLike[str], format: str = "root", *,
              compression: str = "none", prefetch: int = 4, progress: bool | None = None) -> list[Path]:
        """Write each range to ``<out_dir>/range-00000.<format>`` (the ESS "file mode").

        Files appear atomically (a temporary name, then rename) with the user's umask (0644 by
        default), ``prefetch`` downloads at a time, with a progress bar on stderr
        (``progress=None``: only on a terminal). Arrow is written as IPC files (Feather v2),
        their buffers compressed with ``compression``. Resumable: a file a previous fetch of the
        same recipe, format and compression wrote, still intact (the file's adler32 in
        ``.vdata-fetch.jsonl``), is not downloaded again. Returns the paths in range order.
        """
        check_compression(compression, check_format(format))
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        rid = self._recipe_id(recipe_or_id)
        ranges = self.ranges(rid)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(out, rid, format, compression)

        def get(r: EventRange) -> tuple[Path, str | None]:
            path = out / f"range-{r.index:05d}.{EXTENSIONS[format]}"
            if manifest.complete(path):
                return path, None
            data = _file_bytes(self._range_body(rid, r.index, format, compression, stop), format, compression)
            write_file(path, data)
            return path, adler32_hex(data)

        console = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[events]:,} events"), TimeElapsedColumn(), TimeRemainingColumn())
        stop = threading.Event()
        paths: list[Path] = []
        events = 0
        with Progress(*columns, console=console, disable=not (console.is_terminal if progress is None else progress)) as bar:
            task = bar.add_task(f"{rid} -> {out}", total=len(ranges), events=0)
            files = ordered_prefetch(get, ranges, prefetch, stop)
            try:
                for r, (path, adler) in zip(ranges, files):
                    if adler is not None:
                        manifest.add(path, adler, r.num_events)
                    paths.append(path)
                    events += r.num_events
                    bar.update(task, advance=1, events=events)
            finally:
                files.close()
        return paths

    # -- jobs (event-service mode) -------------------------------------------------------------

    def create_job(self, recipe_or_id: RecipeLike, *, max_attempts: int | None = None,
                   lease_seconds: float | None = None, outputs: str | None = None,
                   output_format: str | None = None) -> str:
        """A job over every range of the recipe; returns its id (not retried once sent).
        ``outputs``: ``required`` (finishing a range needs its uploaded output), ``optional`` or
        ``none`` (the default); the outputs are merged into ``output_format`` files (default
        parquet) when the job is done."""
        body: dict[str, Any] = {"recipe_id": self._recipe_id(recipe_or_id)}
        if outputs is not None:
            body["outputs"] = outputs
        if output_format is not None:
            body["output_format"] = check_format(output_format)
        if max_attempts is not None:
            body["max_attempts"] = max_attempts
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        return str(self._http.json("POST", "/v1/jobs", body, idempotent=False)["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's status as the service reports it: ``counts`` per state, ``events_finished``,
        ``events_total``, ``done``, ``events_per_second``, ``eta_seconds``, ``failures_per_worker``, ..."""
        return dict(self._http.json("GET", f"/v1/jobs/{job_id}"))

    def job_provenance(self, job_id: str, index: int) -> dict[str, Any]:
        """A job's range: ``state``, ``worker``, ``attempts``, ``input`` (as :meth:`provenance`; None
        if the range is not cached) and ``output`` (``worker``, ``format``, ``size``, ``adler32``,
        ``sha256``, ``events``, ``uploaded``, ``input_provenance_id``; None without an upload)."""
        return dict(self._http.json("GET", f"/v1/jobs/{job_id}/ranges/{index}/provenance"))

    def lease(self, job_id: str, n: int = 1, *, worker: str) -> list[LeasedRange]:
        """Lease up to ``n`` ready ranges (``[]`` when none is ready). A lease lost to a retried
        request simply expires."""
        return self._lease(job_id, n, worker, None)

    def _lease(self, job_id: str, n: int, worker: str, stop: threading.Event | None) -> list[LeasedRange]:
        answer = self._http.json("POST", f"/v1/jobs/{job_id}/lease", {"worker": worker, "n": n}, stop=stop)
        return [LeasedRange(int(a["index"]), int(a["first"]), int(a["stop"]), float(a["lease_deadline"]), str(a["url"]))
                for a in answer]

    def heartbeat(self, job_id: str, index: int, *, worker: str) -> None:
        """Extend this worker's lease on a range."""
        self._report(job_id, index, "heartbeat", {"worker": worker})

    def finish(self, job_id: str, index: int, *, worker: str) -> None:
        """Report a range done (repeating it is harmless)."""
        self._report(job_id, index, "finish", {"worker": worker})

    def fail(self, job_id: str, index: int, message: str, *, worker: str, fatal: bool = False) -> None:
        """Report a range failed: it is retried later, unless ``fatal`` or out of attempts."""
        self._report(job_id, index, "fail", {"worker": worker, "message": message, "fatal": fatal})

    def upload_output(self, job_id: str, index: int, output: pa.Table | str | os.PathLike[str], *, worker: str,
                      format: str | None = None) -> dict[str, Any]:
        """Upload a range's output (as its lease holder): a ``pyarrow.Table`` (encoded as ``format``,
        default parquet) or a file (``format`` from its extension: .arrow, .parquet, .root),
        with its adler32. Repeating it is harmless. Returns the stored output's description."""
        return upload_output(self._http, job_id, index, output, worker=worker, format=format)

    def outputs(self, job_id: str) -> dict[str, Any]:
        """The job's outputs: ``state`` (open, merging, merged, merge_failed), the merged ``files``
        (name, events, size, adler32, url) and the range outputs still kept (``ranges``)."""
        return dict(self._http.json("GET", f"/v1/jobs/{job_id}/outputs"))

    def fetch_outputs(self, job_id: str, out_dir: str | os.PathLike[str], *, ranges: bool = False) -> list[Path]:
        """Download the job's merged files into ``out_dir`` (``part-00000.parquet``, ...), each
        checked against its adler32 and written atomically; :class:`ServiceError` (409) while
        the job is not merged. ``ranges=True``: the range outputs still kept instead
        (``range-00000.parquet``, ...). Returns the paths in range order."""
        return fetch_outputs(self._http, job_id, out_dir, ranges=ranges)

    def _report(self, job_id: str, index: int, action: str, body: dict[str, Any],
                stop: threading.Event | None = None, retries: int | None = None) -> None:
        self._http.request("POST", f"/v1/jobs/{job_id}/ranges/{index}/{action}", body=body, stop=stop, retries=retries)

    def run_worker(self, job_id: str, process: Callable[..., Any], *, worker: str | None = None, n: int = 1,
                   heartbeat_every: float | None = None, max_ranges: int | None = None,
                   format: str = "arrow") -> WorkerSummary:
        """Work on a job until it is done: lease ``n`` ranges, call ``process`` on each range's
        ``pyarrow.Table``, report ``finish`` (or ``fail`` with the exception's message, not fatal,
        and go on). If the job takes outputs, what ``process`` returns (a ``pyarrow.Table`` or
        the path of a file it wrote) is uploaded as the range's output before the range is
        finished (in the job's ``output_format`` for a table); returning None from a job whose
        outputs are required fails the range.

        ``process(table)``, or ``process(table, lease)`` if it takes two arguments (the
        :class:`LeasedRange`: index, first, stop). While it runs, the next lease is taken and
        its data fetched in the background, and a thread heartbeats every lease held each
        ``heartbeat_every`` seconds (default: a third of the job's ``lease_seconds``). When no
        range is ready but the job is not done (others hold the rest), it waits and asks
        again. Stops after ``max_ranges`` ranges if given. ``worker`` defaults to
        ``hostname-pid``. Leases still held when it stops on an error are reported failed.
        """
        check_format(format)
        name = worker or f"{socket.gethostname()}-{os.getpid()}"
        return run_worker(self, job_id, process, worker=name, n=n, heartbeat_every=heartbeat_every,
                          max_ranges=max_ranges, format=format)
