"""The ``vdata`` command line (typer + rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vdata.errors import VdataError
from vdata.formats import FORMATS, write_table
from vdata.ranges import EventRange
from vdata.sources import open_dataset

app = typer.Typer(help="vdata: event ranges of ROOT datasets and virtual data, on demand.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _fail(exc: VdataError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=2)


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="Folder for everything the demo writes.")] = Path("data"),
    events: Annotated[int, typer.Option(min=1, help="Events in the generated file.")] = 200_000,
    range_events: Annotated[int, typer.Option(min=1, help="Target events per range.")] = 50_000,
) -> None:
    """Generate a NanoAOD-like file, cut it into ranges, write Arrow/Parquet/ROOT, summarise."""
    from vdata.demo import run_demo

    with console.status("generating, reading and writing ranges..."):
        report = run_demo(data_dir, events, range_events)
    console.print(
        f"[bold]{report.source}[/]: {report.events:,} events, {report.columns} columns, "
        f"{report.ranges} ranges of <= {range_events:,} events"
    )
    table = Table("format", "bytes", "write s", "events/s")
    for fmt in FORMATS:
        seconds = report.seconds_by_format[fmt]
        table.add_row(fmt, f"{report.bytes_by_format[fmt]:,}", f"{seconds:.2f}", f"{report.events / seconds:,.0f}")
    console.print(table)
    console.print(f"read: {report.events / report.read_seconds:,.0f} events/s")
    if not report.all_equal:
        err.print("[bold red]a written range did not read back equal[/]")
        raise typer.Exit(code=1)
    console.print("every range read back equal in every format", style="green")


@app.command()
def inspect(
    paths: Annotated[list[str], typer.Argument(help="ROOT files or http(s) URLs, in order.")],
    tree: Annotated[str, typer.Option("--tree", "-t", help="TTree or RNTuple name (a path for sub-directories).")],
    range_events: Annotated[int, typer.Option(min=1, help="Target events per range.")] = 100_000,
) -> None:
    """Show a dataset's files, columns and ranges."""
    try:
        ds = open_dataset(paths, tree)
    except VdataError as exc:
        raise _fail(exc) from exc
    files = Table("file", "entries", "clusters", "bytes", "adler32")
    for f in ds.files:
        files.add_row(f.path, f"{f.entries:,}", str(len(f.clusters) - 1), f"{f.size or '-'}", f"{f.adler32:08x}" if f.adler32 is not None else "-")
    console.print(files)
    console.print(f"{ds.num_events:,} events, {len(ds.columns)} columns, {len(ds.ranges(range_events))} ranges of <= {range_events:,}")
    for field in ds.schema:
        console.print(f"  {field.name}: {field.type}", highlight=False)
    for name, root_type in ds.unreadable.items():
        console.print(f"  [yellow]{name}: {root_type} (uproot cannot read it)[/]", highlight=False)


@app.command()
def get(
    paths: Annotated[list[str], typer.Argument(help="ROOT files or http(s) URLs, in order.")],
    tree: Annotated[str, typer.Option("--tree", "-t")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file.")],
    index: Annotated[int, typer.Option(help="Range index.")] = 0,
    range_events: Annotated[int, typer.Option(min=1)] = 100_000,
    format: Annotated[str, typer.Option(help=f"One of {', '.join(FORMATS)}.")] = "arrow",
    columns: Annotated[list[str] | None, typer.Option("--column", "-c", help="Columns or glob patterns.")] = None,
) -> None:
    """Write one range of a dataset to a file."""
    try:
        ds = open_dataset(paths, tree)
        ranges = ds.ranges(range_events)
        if not 0 <= index < len(ranges):
            raise _fail(VdataError(f"range {index} does not exist: the dataset has {len(ranges)} ranges"))
        r: EventRange = ranges[index]
        write_table(ds.read(r, columns), out, format)
    except VdataError as exc:
        raise _fail(exc) from exc
    console.print(f"{r} -> {out} ({format})")


if __name__ == "__main__":
    app()
