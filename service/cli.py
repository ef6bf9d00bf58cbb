"""The ``vdata`` command line (typer + rich).

``serve`` and ``token create`` work on a data folder (``token create`` on an existing one);
the other commands talk to a gateway (``--url``/``VDATA_URL``, ``--token``/``VDATA_TOKEN``)
through :class:`vdata.Client`, except ``inspect``, which opens ROOT files directly, and
``demo``, the main job behind ``make run``, on a folder of its own. Errors print one line
naming what was wrong and exit with status 2; a taken port is such an error, found before
anything is created or started.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from inspect import Parameter, signature
from pathlib import Path
from typing import Annotated, Any

import httpx
import pyarrow as pa
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service._extras import require_server
from vdata.client import Client
from vdata.errors import VdataError
from vdata.formats import COMPRESSIONS, FORMATS
from vdata.data.sources import open_dataset

app = typer.Typer(help="vdata: event ranges of ROOT datasets and virtual data, on demand.", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens (work on the data folder).", no_args_is_help=True)
datasets_app = typer.Typer(help="Source datasets (ROOT files) in the catalog.", no_args_is_help=True)
transforms_app = typer.Typer(help="Scientists' transforms.", no_args_is_help=True)
recipes_app = typer.Typer(help="Virtual datasets by recipe.", no_args_is_help=True)
jobs_app = typer.Typer(help="Event-service jobs.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(datasets_app, name="datasets")
app.add_typer(transforms_app, name="transforms")
app.add_typer(recipes_app, name="recipes")
app.add_typer(jobs_app, name="jobs")

console = Console()
err = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="VDATA_URL", help="Gateway URL.")]
Token = Annotated[str, typer.Option("--token", envvar="VDATA_TOKEN", help="Bearer token.")]
DataDir = Annotated[Path, typer.Option("--data-dir", envvar="VDATA_DATA_DIR", help="The service's data folder.")]
Format = Annotated[str, typer.Option("--format", "-f", help=f"One of {', '.join(FORMATS)}.")]
FileFormat = Annotated[str | None, typer.Option(
    "--format", "-f", help=f"One of {', '.join(FORMATS)} (default: what the output file's extension says).")]
Compression = Annotated[str, typer.Option(
    "--compression", help=f"Arrow's IPC buffer compression: {', '.join(COMPRESSIONS)} (arrow only).")]
DEFAULT_URL = "http://127.0.0.1:8000"


@contextmanager
def _errors() -> Iterator[None]:
    """Library and HTTP errors become one red line and exit status 2."""
    try:
        yield
    except VdataError as exc:
        _error_line(str(exc))
        raise typer.Exit(code=2) from exc
    except httpx.HTTPError as exc:
        _error_line(f"cannot reach the gateway: {exc}")
        raise typer.Exit(code=2) from exc
    except (OSError, ValueError) as exc:
        _error_line(str(exc))
        raise typer.Exit(code=2) from exc


def _error_line(message: str) -> None:
    """One red line on stderr, never wrapped at the terminal's width (scripts grep it)."""
    err.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)


def _client(url: str, token: str) -> Client:
    if not token:
        err.print("[bold red]error:[/] no token: pass --token or set VDATA_TOKEN")
        raise typer.Exit(code=2)
    return Client(url, token)


def _with_client(command: Callable[..., None]) -> Callable[..., None]:
    """The ``--url``/``--token`` options, declared once for every command that talks to a
    gateway. ``command`` takes a ``client`` parameter instead; the command typer sees has the
    two options last (after the subcommand's name: ``vdata datasets list --url X --token T``,
    or ``VDATA_URL``/``VDATA_TOKEN``), opens the :class:`Client`, runs ``command`` with it and
    turns its errors into one line."""
    own = signature(command, eval_str=True)
    kind = Parameter.POSITIONAL_OR_KEYWORD
    params = [p for p in own.parameters.values() if p.name != "client"] + [
        Parameter("url", kind, default=DEFAULT_URL, annotation=Url),
        Parameter("token", kind, default="", annotation=Token),
    ]

    @functools.wraps(command)
    def with_client(*args: Any, url: str, token: str, **kwargs: Any) -> None:
        with _errors(), _client(url, token) as client:
            command(*args, client=client, **kwargs)

    # typer reads the options from the signature and the type hints (wraps copied the command's)
    with_client.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
    with_client.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    return with_client


def _need_server(command: str) -> None:
    """The server's commands check the server extra before importing any of it: without it, one
    line naming the extra to install (exit status 2), not a traceback from deep inside."""
    try:
        require_server(command)
    except ModuleNotFoundError as exc:
        _error_line(str(exc))
        raise typer.Exit(code=2) from exc


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


# -- the service -------------------------------------------------------------------------------


@app.command()
def serve(
    data_dir: Annotated[Path | None, typer.Option(help="The data folder [default: data].")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8000].")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Join this Ray cluster instead of starting one.")] = None,
    config: Annotated[Path | None, typer.Option(help="Settings file (.env, .json, .yaml, .toml).")] = None,
    dashboard: Annotated[bool | None, typer.Option(
        help="Start Ray's dashboard on 127.0.0.1 with the embedded Ray (default: on, unless "
             "VDATA_INCLUDE_DASHBOARD or the settings file say otherwise).", show_default=False)] = None,
    dashboard_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Port of Ray's dashboard (default: 8265, or VDATA_DASHBOARD_PORT).", show_default=False)] = None,
) -> None:
    """Start the gateway and the engine. The first start prints an admin token once, and where
    Ray's dashboard is and how to get the token it asks for.

    Flags win over ``VDATA_*`` environment variables, which win over the settings file."""
    _need_server("vdata serve")
    from service.http.server import run
    from service.settings import Settings

    given = {"data_dir": data_dir, "host": host, "port": port, "ray_address": ray_address, "config": config,
             "include_dashboard": dashboard, "dashboard_port": dashboard_port}
    with _errors():
        settings = _dashboard_by_default(Settings(**{k: v for k, v in given.items() if v is not None}))
        _check_serve_ports(settings)
        run(settings, announce=lambda line: console.print(f"[bold yellow]{escape(line)}[/]", highlight=False,
                                                          soft_wrap=True))  # commands printed whole, to copy


def _dashboard_by_default(settings: Any) -> Any:
    """``vdata serve`` starts Ray's dashboard unless a flag, ``VDATA_INCLUDE_DASHBOARD`` or the
    settings file said otherwise. Only here: the library's default (EngineConfig, used by tests
    and scripts that start many engines) stays off, so they do not all contend for one port."""
    engine = settings.engine
    if "include_dashboard" in engine.model_fields_set or engine.address:
        return settings
    return settings.model_copy(update={"engine": engine.model_copy(update={"include_dashboard": True})})


def _check_serve_ports(settings: Any) -> None:
    """Before anything is created or started: the gateway's port, and the dashboard's when an
    embedded Ray starts one (one line naming the port and how to change it, else)."""
    from service.ports import check_free

    check_free(settings.host, settings.port, "the gateway", "pass --port PORT (0: any free port)")
    if settings.engine.include_dashboard and not settings.engine.address:
        check_free("127.0.0.1", settings.engine.dashboard_port, "Ray's dashboard",
                   "pass --dashboard-port PORT (or VDATA_DASHBOARD_PORT), or --no-dashboard")


def _existing_database(settings: Any) -> str:
    """The database URL of the service's data folder; a DatabaseError naming the folder when
    its SQLite file does not exist (a token there would be one no server knows)."""
    from service.http.server import core_config
    from service.errors import DatabaseError

    url: str = core_config(settings).db_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise DatabaseError(
            f"no database in {settings.data_dir} ({url.removeprefix('sqlite:///')} does not exist): pass the "
            f"--data-dir of your service, or start it once with 'vdata serve --data-dir {settings.data_dir}'"
        )
    return url


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="reader, worker, scientist or admin.")],
    data_dir: DataDir = Path("data"),
    note: Annotated[str, typer.Option(help="What the token is for.")] = "",
) -> None:
    """Make a token (printed once; only its hash is stored). The data folder must hold the
    service's database: ``vdata serve`` creates it on its first start."""
    _need_server("vdata token create")
    from service.settings import Settings
    from service.core.db import Database
    from service.core.tokens import TokenStore

    with _errors():
        with Database(_existing_database(Settings(data_dir=data_dir))) as db:
            secret = TokenStore(db).create(role, note)
    console.print(secret, highlight=False)


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="The demo's own folder (made and marked by it).")] = Path("data/demo"),
    events: Annotated[int, typer.Option(min=1, help="Events in the virtual dataset.")] = 2_000_000,
    range_events: Annotated[int, typer.Option(min=1, help="Events per range.")] = 100_000,
    dashboard: Annotated[bool, typer.Option(help="Start Ray's dashboard.")] = True,
    dashboard_port: Annotated[int, typer.Option(min=1, max=65535, help="Port of Ray's dashboard.")] = 8265,
    force: Annotated[bool, typer.Option(help="Run in a non-empty folder it did not make; keep all there.")] = False,
) -> None:
    """The main job (make run): service, virtual dataset, worker, histogram.

    The demo works in a folder of its own: one it creates and marks (re-runs replace what it
    wrote there). A non-empty folder it did not make is refused unless --force, which keeps
    everything in it. Nothing is deleted that the demo did not write."""
    _need_server("vdata demo")
    from service.demo import run_demo

    with _errors():
        result = run_demo(data_dir, events, range_events, dashboard,
                          say=lambda line: console.print(line, highlight=False, soft_wrap=True),
                          dashboard_port=dashboard_port, force=force)
    console.print(
        f"[bold green]done[/]: {result.events:,} events in {result.ranges} ranges, "
        f"{result.seconds:.1f} s, [bold]{result.events_per_second:,.0f} events/s[/] through the worker",
        highlight=False,
    )
    console.print(f"dimuon mass peak at {result.peak_gev:.2f} GeV; histogram: {result.histogram}", highlight=False)
    if result.dashboard:
        console.print(f"the Ray dashboard was on {result.dashboard} (stopped with the service)", highlight=False)


@app.command()
def inspect(
    paths: Annotated[list[str], typer.Argument(help="ROOT files or http(s) URLs, in order.")],
    tree: Annotated[str, typer.Option("--tree", "-t", help="TTree or RNTuple name (a path for sub-directories).")],
    range_events: Annotated[int, typer.Option(min=1, help="Target events per range.")] = 100_000,
) -> None:
    """Show a dataset's files, columns and ranges (reads the files directly)."""
    with _errors():
        ds = open_dataset(paths, tree)
    files = Table("file", "entries", "clusters", "bytes", "adler32")
    for f in ds.files:
        adler = f"{f.adler32:08x}" if f.adler32 is not None else "-"
        files.add_row(f.path, f"{f.entries:,}", str(len(f.clusters) - 1), f"{f.size or '-'}", adler)
    console.print(files)
    console.print(f"{ds.num_events:,} events, {len(ds.columns)} columns, {len(ds.ranges(range_events))} ranges of <= {range_events:,}")
    for field in ds.schema:
        console.print(f"  {field.name}: {field.type}", highlight=False)
    for name, root_type in ds.unreadable.items():
        console.print(f"  [yellow]{name}: {root_type} (uproot cannot read it)[/]", highlight=False)


# -- catalog -----------------------------------------------------------------------------------


@datasets_app.command("add")
@_with_client
def datasets_add(
    client: Client,
    name: Annotated[str, typer.Argument(help='Catalog name, e.g. "opendata:hzz".')],
    paths: Annotated[list[str], typer.Argument(help="ROOT files (under the allowed roots) or URLs.")],
    tree: Annotated[str, typer.Option("--tree", "-t")],
) -> None:
    """Register a dataset (admin)."""
    _print_json(client.add_dataset(name, paths, tree))


@datasets_app.command("list")
@_with_client
def datasets_list(client: Client) -> None:
    """List the datasets."""
    table = Table("name", "events", "columns", "files")
    for d in client.datasets():
        table.add_row(d["name"], f"{d['num_events']:,}", str(len(d["columns"])), str(len(d["files"])))
    console.print(table)


@transforms_app.command("submit")
@_with_client
def transforms_submit(
    client: Client,
    name: Annotated[str, typer.Argument(help="Transform name (the function's name in the file).")],
    source: Annotated[Path, typer.Argument(help="Python file with the kernel function.", exists=True, dir_okay=False)],
    input: Annotated[list[str], typer.Option("--input", "-i", help="PARAM=flat|jagged, once per parameter.")],
    output: Annotated[list[str], typer.Option("--output", "-o", help="NAME=DTYPE, e.g. mass=float64.")],
    kind: Annotated[str, typer.Option(help="element, event or event_list.")] = "event",
) -> None:
    """Submit a transform (scientist): checked, compiled and stored by content hash."""
    inputs, outputs = _pairs(input, "--input"), _pairs(output, "--output")
    _print_json(client.add_transform(name, source.read_text(), inputs, outputs, kind=kind))


@transforms_app.command("list")
@_with_client
def transforms_list(client: Client) -> None:
    """List the transforms (built-in and submitted)."""
    _print_json(client.transforms())


def _pairs(items: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{option} {item!r}: write NAME=VALUE")
        out[key] = value
    return out


# -- recipes and ranges ------------------------------------------------------------------------


@recipes_app.command("submit")
@_with_client
def recipes_submit(
    client: Client,
    recipe: Annotated[Path, typer.Argument(help="Recipe file (YAML or JSON).", exists=True, dir_okay=False)],
) -> None:
    """Submit a recipe; prints its id, size and schema, and the service's warnings (on stderr)."""
    info = client.submit(recipe)
    console.print(f"[bold]{info.id}[/]: {info.num_events:,} events in {info.num_ranges} ranges", highlight=False)
    _print_json(info.schema)
    for warning in info.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


@recipes_app.command("show")
@_with_client
def recipes_show(
    client: Client,
    recipe_id: str,
    range_index: Annotated[int | None, typer.Option("--range", help="Show how this range was made instead.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With --range: the JSON answer, for scripts.")] = False,
) -> None:
    """Show a recipe's size, schema and ranges; with --range N, the provenance of range N."""
    if range_index is not None:
        from vdata.provenance import text

        record = client.provenance(recipe_id, range_index)
        if as_json:
            _print_json(record)
        else:
            console.print(text(record), highlight=False, soft_wrap=True, markup=False)
        return
    info = client.info(recipe_id)
    ranges = client.ranges(recipe_id)
    console.print(f"[bold]{info.id}[/]: {info.num_events:,} events in {info.num_ranges} ranges", highlight=False)
    _print_json(info.schema)
    console.print(", ".join(f"{r.index}: [{r.first}, {r.stop})" for r in ranges[:20]) + (" ..." if len(ranges) > 20 else ""))


@recipes_app.command("stage")
@_with_client
def recipes_stage(
    client: Client,
    recipe_id: str,
    count: Annotated[int, typer.Option("--count", "-n", help="How many ranges.")] = 4,
    first: Annotated[int, typer.Option("--first", help="The first range.")] = 0,
    format: Format = "arrow",
    compression: Compression = "none",
) -> None:
    """Pre-stage ranges: the service materializes them now, ahead of the payload."""
    staged = client.stage(recipe_id, count, first=first, format=format, compression=compression)
    what = f"ranges {staged[0]}..{staged[-1]}" if len(staged) > 1 else f"range {staged[0]}"
    console.print(f"staging {what} of {recipe_id} as {format}", highlight=False)


@app.command()
@_with_client
def get(
    client: Client,
    recipe_id: str,
    index: Annotated[int, typer.Argument(help="Range index.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (.arrow, .feather, .parquet, .root, ...).")],
    format: FileFormat = None,
    compression: Compression = "none",
) -> None:
    """Write one range of a virtual dataset to a file, in the format its extension names
    (Arrow as an IPC file, Feather v2)."""
    events = client.get(recipe_id, index, out, format=format, compression=compression)
    console.print(f"range {index} ({events:,} events) -> {out}", highlight=False)


@app.command()
@_with_client
def fetch(
    client: Client,
    recipe_id: str,
    out_dir: Annotated[Path, typer.Argument(help="Folder for one file per range.")],
    format: Format = "root",
    compression: Compression = "none",
    prefetch: Annotated[int, typer.Option(min=1, help="Ranges fetched ahead.")] = 4,
) -> None:
    """Write every range to its own file (ESS file mode), with a progress bar."""
    paths = client.fetch(recipe_id, out_dir, format=format, compression=compression, prefetch=prefetch)
    console.print(f"{len(paths)} files in {out_dir}", highlight=False)


# -- jobs --------------------------------------------------------------------------------------


@jobs_app.command("create")
@_with_client
def jobs_create(
    client: Client,
    recipe_id: str,
    max_attempts: Annotated[int, typer.Option(min=1)] = 3,
    lease_seconds: Annotated[float, typer.Option(min=0.1)] = 60.0,
    outputs: Annotated[str, typer.Option(help="required: finishing a range needs its uploaded output; optional; "
                                              "none: the job takes no outputs.")] = "none",
    output_format: Annotated[str, typer.Option(help="Format of the merged output files (arrow, parquet, root).")]
    = "parquet",
) -> None:
    """Create an event-service job over a recipe's ranges; prints the job id."""
    console.print(client.create_job(recipe_id, max_attempts=max_attempts, lease_seconds=lease_seconds,
                                    outputs=outputs, output_format=output_format), highlight=False)


@jobs_app.command("outputs")
@_with_client
def jobs_outputs(
    client: Client,
    job_id: str,
    out_dir: Annotated[Path, typer.Argument(help="Folder for the files.")],
    ranges: Annotated[bool, typer.Option("--ranges", help="The range outputs still kept, not the merged files.")]
    = False,
) -> None:
    """Download a job's merged output files (once the job is merged), each checked against its adler32."""
    paths = client.fetch_outputs(job_id, out_dir, ranges=ranges)
    console.print(f"{len(paths)} files in {out_dir}", highlight=False)


@jobs_app.command("status")
@_with_client
def jobs_status(
    client: Client,
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="The service's JSON answer, for scripts.")] = False,
) -> None:
    """Events done of the total, ranges per state, rate, ETA and failures per worker."""
    from service.job_view import details

    status = client.job(job_id)
    if as_json:
        _print_json(status)
    else:
        console.print(details(status), highlight=False, soft_wrap=True)  # lines stay whole, whatever the width


@jobs_app.command("watch")
@_with_client
def jobs_watch(
    client: Client,
    job_id: str,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between refreshes.")] = 2.0,
) -> None:
    """A live view of a job (events, rate, ETA, failures per worker) until it is done, then one
    summary line."""
    from service.job_view import summary, watch

    last = watch(lambda: client.job(job_id), interval, console)
    console.print(summary(last), highlight=False, soft_wrap=True)


@app.command()
@_with_client
def worker(
    client: Client,
    job_id: str,
    n: Annotated[int, typer.Option(min=1, help="Ranges per lease.")] = 1,
    name: Annotated[str | None, typer.Option("--worker", help="Worker name (default host-pid).")] = None,
) -> None:
    """Run the built-in payload over a job: per-column sums of every numeric column."""
    sums: dict[str, float] = {}
    summary = client.run_worker(job_id, _summing_payload(sums), worker=name, n=n)
    console.print(
        f"{summary.finished} ranges finished, {summary.failed} failed, "
        f"{summary.events:,} events in {summary.seconds:.1f} s",
        highlight=False,
    )
    for column, total in sums.items():
        console.print(f"  sum({column}) = {total:.6g}", highlight=False)


def _summing_payload(sums: dict[str, float]) -> Callable[[pa.Table], None]:
    import pyarrow.compute as pc

    def payload(table: pa.Table) -> None:
        for name in table.column_names:
            column = table[name]
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                column = pc.list_flatten(column)
            if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
                sums[name] = sums.get(name, 0.0) + float(pc.sum(column).as_py() or 0.0)

    return payload


def main() -> None:
    app()


if __name__ == "__main__":
    main()
