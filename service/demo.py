"""The main job behind ``make run``: the whole service on a fresh data folder.

It starts the gateway with an embedded Ray, submits a zmumu virtual dataset with a derived
dimuon mass, runs a worker over a job (ranges materialized ahead of the leases and prefetched
by the client), writes a PNG histogram of the dimuon mass, reports events/s and the Ray
dashboard address, and stops cleanly. Everything it writes goes under the data folder.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from service.server import BackgroundServer
from service.settings import Settings
from vdata.client import Client

__all__ = ["DemoResult", "demo_recipe", "run_demo"]

RAY_DIR_MAX = 44  # + "/session_<date>_<time>_<pid>/sockets/plasma_store" stays within 107 bytes


def demo_recipe(events: int, range_events: int, seed: int = 2026) -> dict[str, object]:
    return {
        "source": {"generator": "zmumu", "events": events, "seed": seed},
        "steps": [
            {
                "transform": {
                    "name": "leading_pair_mass_ptetaphim",
                    "inputs": {"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "m": "Muon_mass"},
                    "outputs": {"mass": "m_mumu"},
                }
            },
            {"define": {"pt_ll": "sum(Muon_pt)"}},
        ],
        "columns": ["m_mumu", "pt_ll"],
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
) -> DemoResult:
    """Run the service on a fresh ``data_dir`` (what a previous demo left there is removed)."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    for leftover in ("vdata.db", "vdata.db-wal", "vdata.db-shm", "cache", "ray", "dimuon_mass.png"):
        path = data_dir / leftover
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    # Ray's session folder holds Unix sockets, whose paths may not exceed 107 bytes: under the
    # data folder when its path is short enough, else in a temporary folder removed at the end.
    ray_dir = data_dir / "ray"
    own_tmp = len(str(ray_dir)) > RAY_DIR_MAX
    if own_tmp:
        ray_dir = Path(tempfile.mkdtemp(prefix="vdata-ray-"))
    settings = Settings(
        data_dir=data_dir,
        port=0,
        include_dashboard=dashboard,
        ray_temp_dir=ray_dir,
        log_level="warning",
    )
    try:
        return _run(settings, events, range_events, dashboard, say)
    finally:
        if own_tmp:
            shutil.rmtree(ray_dir, ignore_errors=True)


def _run(settings: Settings, events: int, range_events: int, dashboard: bool, say: Callable[[str], None]) -> DemoResult:
    data_dir = settings.data_dir
    say(f"starting the gateway and an embedded Ray (data folder {data_dir}) ...")
    with BackgroundServer(settings) as server:
        token = server.admin_token
        if token is None:  # pragma: no cover - a fresh folder always makes one
            raise RuntimeError("no admin token on a fresh data folder")
        say(f"gateway on {server.url} (docs at {server.url}/docs, metrics at {server.url}/metrics)")
        dash = f"http://127.0.0.1:{settings.dashboard_port}" if dashboard else None
        if dash:
            say(f"Ray dashboard on {dash}")
        with Client(server.url, token) as client:
            info = client.submit(demo_recipe(events, range_events))
            say(f"virtual dataset {info.id}: {info.num_events:,} zmumu events in {info.num_ranges} ranges")
            job = client.create_job(info.id, max_attempts=3, lease_seconds=60)
            masses: list[np.ndarray] = []

            def payload(table: pa.Table) -> None:
                masses.append(table.column("m_mumu").to_numpy())

            start = time.perf_counter()
            summary = client.run_worker(job, payload, n=1)
            seconds = time.perf_counter() - start
            status = client.job(job)
    mass = np.concatenate(masses) if masses else np.zeros(0)
    peak = _histogram(mass, data_dir / "dimuon_mass.png")
    done = int(status["events_finished"])
    if done != events or not status["done"]:
        raise RuntimeError(f"the job finished {done} of {events} events: {status}")
    return DemoResult(server.url, info.id, job, done, summary.finished, seconds, peak, data_dir / "dimuon_mass.png", dash)


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
    ax.set_title(f"vdata zmumu virtual dataset: {len(mass):,} events")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return float(centres[np.argmax(counts)]) if len(mass) else float("nan")
