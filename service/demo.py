"""The main job behind ``make run``: the whole service on a folder of its own.

It starts the gateway with an embedded Ray, submits a zmumu virtual dataset with a derived
dimuon mass, runs a worker over a job (ranges materialized ahead of the leases and prefetched
by the client), writes a PNG histogram of the dimuon mass, reports events/s and the Ray
dashboard address, and stops cleanly. Everything it writes goes under the data folder.

The demo never deletes what it did not make. Its folder is one it created (or found empty)
and marked with a ``.vdata-demo`` file; on a marked folder each run starts afresh by removing
what an earlier run wrote there (database, cache, Ray's folder, the histogram) and nothing
else. A non-empty folder without the mark, such as the data folder of a real service, is
refused (:class:`DemoFolderRefused`) unless ``force``: then the demo uses it as it is — its
database and cache stay, the demo adds its recipe and job with a temporary token it revokes
at the end, Ray's session goes to a temporary folder, and the histogram never replaces a
file. Ports are checked before the folder is touched (:class:`service.ports.PortInUse`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from service.errors import DemoFolderRefused
from service.http.app import core_config
from service.ports import check_free
from service.http.server import BackgroundServer
from service.settings import Settings
from vdata.client import Client
from service.core.db import Database
from service.core.ray_local import dashboard_help, token_file
from service.core.tokens import TokenStore

__all__ = ["MARKER", "DemoFolderRefused", "DemoResult", "demo_recipe", "run_demo"]

MARKER = ".vdata-demo"  # in a folder the demo made: its own outputs there may be replaced
MARKER_TEXT = ("This folder belongs to `vdata demo` (make run). Each run of the demo replaces its\n"
               "vdata.db, cache, ray and dimuon_mass.png; nothing else here is touched.\n")
OUTPUTS = ("vdata.db", "vdata.db-wal", "vdata.db-shm", "cache", "ray", "dimuon_mass.png")  # what a run writes
HISTOGRAM = "dimuon_mass.png"


def demo_recipe(events: int, range_events: int, seed: int = 2026) -> dict[str, object]:
    return {
        "source": {"generator": "zmumu", "events": events, "seed": seed},
        "steps": [
            {"filter": "nMuon == 2"},  # both muons inside the detector's acceptance
            {
                "transform": {
                    "name": "leading_pair_mass_ptetaphim",
                    "inputs": {"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "m": "Muon_mass"},
                    "outputs": {"mass": "mMuMu"},
                }
            },
            {"define": {"sumMuonPt": "sum(Muon_pt)"}},
        ],
        "columns": ["mMuMu", "sumMuonPt"],
        "range_events": range_events,
    }


@dataclass
class DemoResult:
    url: str
    recipe_id: str
    job_id: str
    events: int
    ranges: int
    seconds: float
    peak_gev: float
    histogram: Path
    dashboard: str | None

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds


def run_demo(
    data_dir: Path,
    events: int = 2_000_000,
    range_events: int = 100_000,
    dashboard: bool = True,
    say: Callable[[str], None] = print,
    dashboard_port: int = 8265,
    force: bool = False,
) -> DemoResult:
    """Run the service on ``data_dir``: a folder the demo makes (or made before: its earlier
    outputs are replaced), an empty one, or with ``force`` any folder, used as it is.

    Raises DemoFolderRefused (a non-empty folder the demo did not make, without ``force``) or
    PortInUse (the dashboard's port is taken) before anything is written."""
    data_dir = Path(data_dir).resolve()
    own = _own_folder(data_dir, force)
    if dashboard:
        check_free("127.0.0.1", dashboard_port, "Ray's dashboard",
                   "pass --dashboard-port PORT, or --no-dashboard")
    if own:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / MARKER).write_text(MARKER_TEXT)
        for leftover in OUTPUTS:
            path = data_dir / leftover
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    # In its own folder, Ray's folder is the engine's default (service.core.ray_local: <data>/ray, or a
    # short private folder if that path is too long for Ray's sockets). In someone else's folder
    # (--force), Ray's session goes to a temporary folder, so that folder's own Ray logs stay.
    ray_dir = None if own else Path(tempfile.mkdtemp(prefix="vdata-ray-", dir="/tmp"))
    settings = Settings(
        data_dir=data_dir,
        port=0,
        include_dashboard=dashboard,
        dashboard_port=dashboard_port,
        ray_temp_dir=ray_dir,
        log_level="warning",
    )
    histogram = data_dir / HISTOGRAM if own else _free_name(data_dir / HISTOGRAM)
    try:
        return _run(settings, events, range_events, dashboard, say, histogram)
    finally:
        if ray_dir is not None:
            shutil.rmtree(ray_dir, ignore_errors=True)


def _own_folder(data_dir: Path, force: bool) -> bool:
    """True: the folder is the demo's (missing, empty or marked), its outputs may be replaced.
    False: ``force`` on a folder with other things in it; it is used as it is."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DemoFolderRefused(f"{data_dir} is not a folder: pass --data-dir FOLDER")
    if not data_dir.exists() or (data_dir / MARKER).is_file():
        return True
    entries = sorted(p.name for p in data_dir.iterdir())
    if not entries:
        return True
    if force:
        return False
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise DemoFolderRefused(
        f"{data_dir} is not empty ({shown}) and was not made by the demo (which replaces vdata.db and "
        f"cache in a folder of its own): pass another --data-dir (a new folder), or --force to run in it "
        f"and keep everything there"
    )


def _free_name(path: Path) -> Path:
    """``path``, or ``stem-2.suffix``, ``stem-3.suffix``, ...: the first that does not exist."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _run(settings: Settings, events: int, range_events: int, dashboard: bool, say: Callable[[str], None],
         histogram: Path) -> DemoResult:
    data_dir = settings.data_dir
    say(f"starting the gateway and an embedded Ray (data folder {data_dir}) ...")
    with BackgroundServer(settings) as server, _token(server) as token:
        say(f"gateway on {server.url} (docs at {server.url}/docs, metrics at {server.url}/metrics)")
        dash = f"http://127.0.0.1:{settings.engine.dashboard_port}" if dashboard else None
        for line in dashboard_help(dash, token_file(data_dir)) if dash else []:
            say(line)
        with Client(server.url, token) as client:
            info = client.submit(demo_recipe(events, range_events))
            say(f"virtual dataset {info.id}: {info.num_events:,} zmumu events in {info.num_ranges} ranges")
            job = client.create_job(info.id, max_attempts=3, lease_seconds=60)
            masses: list[np.ndarray] = []

            def payload(table: pa.Table) -> None:
                masses.append(table.column("mMuMu").to_numpy())

            start = time.perf_counter()
            summary = client.run_worker(job, payload, n=1)
            seconds = time.perf_counter() - start
            status = client.job(job)
    mass = np.concatenate(masses) if masses else np.zeros(0)
    peak = _histogram(mass, histogram)
    done = int(status["events_finished"])
    if done != events or not status["done"]:
        raise RuntimeError(f"the job finished {done} of {events} events: {status}")
    return DemoResult(server.url, info.id, job, done, summary.finished, seconds, peak, histogram, dash)


@contextmanager
def _token(server: BackgroundServer) -> Iterator[str]:
    """The demo's token: the admin token of a fresh folder, else (a folder used with ``force``,
    whose database already has an admin) a scientist token made for the run and revoked after."""
    if server.admin_token is not None:
        yield server.admin_token
        return
    with Database(core_config(server.settings).db_url) as db:
        tokens = TokenStore(db)
        token = tokens.create("scientist", note="vdata demo (revoked when the demo ends)")
        try:
            yield token
        finally:
            tokens.revoke(token)


def _histogram(mass: np.ndarray, out: Path) -> float:
    """Write the dimuon mass histogram; return the peak position (GeV)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts, edges = np.histogram(mass, bins=240, range=(60.0, 120.0))
    centres = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.stairs(counts, edges, fill=True, alpha=0.6)
    ax.set_xlabel(r"$m_{\mu\mu}$ [GeV]")
    ax.set_ylabel("events / 0.25 GeV")
    ax.set_title(f"vdata zmumu virtual dataset: {len(mass):,} events with two muons")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return float(centres[np.argmax(counts)]) if len(mass) else float("nan")
