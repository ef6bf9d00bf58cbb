"""The remote side of the latency experiment (see bench/latency.py), in its own process: the
range-request file server (the "site") behind a shaped proxy, the vdata service reading the site,
and a second shaped proxy in front of the gateway (the payload's link); and, for the ``direct-xrootd``
mode, a real XRootD server serving the same file behind a third shaped proxy of the same RTT and rate.

``Remote`` starts this file as a script and talks to it over stdin/stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

__all__ = ["Remote", "serve_main"]


@contextmanager
def unseen(file: Path, tag: str) -> Iterator[Path]:
    """``file`` under a name the site serves it by for one run only (a hard link beside it,
    removed after): a file the service never met, so no cached range, remote byte or open file
    of it is there. The site's servers serve the whole folder."""
    alias = file.with_name(f"{file.stem}-{tag}{file.suffix}")
    alias.unlink(missing_ok=True)
    os.link(file, alias)
    try:
        yield alias
    finally:
        alias.unlink(missing_ok=True)


def serve_main(argv: list[str]) -> None:
    """``_lat_remote.py ...``: run the remote side until stdin says ``quit`` (or closes).

    Protocol on the original stdout: one JSON line when ready (urls, token), then one JSON line
    of counters per ``stats`` line read from stdin. Everything else printed goes to stderr.
    """
    p = argparse.ArgumentParser()
    p.add_argument("--file", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--rtt-ms", type=float, required=True)
    p.add_argument("--rate-mbit", type=float, required=True)
    p.add_argument("--num-cpus", type=int, default=4)
    p.add_argument("--max-in-flight", type=int, default=8)
    p.add_argument("--nice", type=int, default=10)
    p.add_argument("--no-warm-pool", action="store_true", help="the engine's warm pool off (fresh Ray workers)")
    a = p.parse_args(argv)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # Ray, uvicorn & co. must not write into the protocol
    if a.nice:
        os.nice(a.nice)

    from service.http.server import BackgroundServer
    from service.settings import Settings
    from vdata.testing import RangeFileServer, XRootDServer

    from _shaping import ShapedProxy

    file = Path(a.file).resolve()
    rtt, rate = a.rtt_ms / 1000.0, a.rate_mbit * 1e6
    with ExitStack() as stack:
        files = stack.enter_context(RangeFileServer(file.parent))
        fport = int(files.url.rsplit(":", 1)[1])
        site = stack.enter_context(ShapedProxy("127.0.0.1", fport, rtt, rate, "site"))
        file.chmod(file.stat().st_mode | 0o444)  # xrootd runs as nobody under root (written 0600)
        xrootd = stack.enter_context(XRootDServer(file.parent))
        xsite = stack.enter_context(ShapedProxy("127.0.0.1", xrootd.port, rtt, rate, "xrootd-site"))
        settings = Settings(
            data_dir=Path(a.data_dir), port=0, num_cpus=a.num_cpus, object_store_bytes=300 * 1024**2,
            allowed_url_prefixes=[site.url, f"root://127.0.0.1:{xsite.url.rsplit(':', 1)[1]}/"],
            max_in_flight=a.max_in_flight, log_level="warning", ray_temp_dir=Path(a.data_dir) / "ray",
            max_inflight_per_token=16, engine={"warm_workers": not a.no_warm_pool},
        )
        server = stack.enter_context(BackgroundServer(settings))
        warmed = server.app.state.core.engine.warmed.result(timeout=180)  # the warm pool ready (0: off)
        gateway = stack.enter_context(ShapedProxy("127.0.0.1", server.port, rtt, rate, "gateway"))
        xrootd_url = f"root://127.0.0.1:{xsite.url.rsplit(':', 1)[1]}//{file.name}"
        proto.write(json.dumps({"file_url": f"{site.url}/{file.name}", "xrootd_url": xrootd_url, "gateway": gateway.url,
                                "gateway_direct": server.url, "token": server.admin_token, "warmed": warmed}) + "\n")
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "stats":
                proto.write(json.dumps({
                    "site_up": site.bytes_up, "site_down": site.bytes_down, "site_conns": site.connections,
                    "gw_up": gateway.bytes_up, "gw_down": gateway.bytes_down, "gw_conns": gateway.connections,
                    "file_requests": files.requests,
                    "xsite_up": xsite.bytes_up, "xsite_down": xsite.bytes_down, "xsite_conns": xsite.connections,
                }) + "\n")
            elif cmd == "quit":
                break


class Remote:
    """The remote process, seen from the benchmark: started, queried, always stopped."""

    def __init__(self, file: Path, data_dir: Path, rtt_ms: float, rate_mbit: float, num_cpus: int,
                 log: Path, nice: int = 0, cpus: str | None = None, warm_pool: bool = True) -> None:
        """``cpus``: run the remote side (site, service, its Ray and workers) pinned to these CPUs
        (``taskset -c``, e.g. ``"0"``); ``warm_pool``: the engine's warm pool of Ray workers."""
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--file", str(file), "--data-dir",
               str(data_dir), "--rtt-ms", str(rtt_ms), "--rate-mbit", str(rate_mbit), "--num-cpus", str(num_cpus), "--nice", str(nice)]
        cmd += [] if warm_pool else ["--no-warm-pool"]
        if cpus is not None:
            cmd = ["taskset", "-c", cpus, *cmd]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, cwd=ROOT)
        try:
            self.info = self._read(timeout=180)
        except BaseException:
            self.stop()
            raise

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"remote side silent for {timeout} s (see {self.log.name})")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"remote side exited with {self.proc.poll()} (see {self.log.name})")
        return json.loads(line)

    def stats(self) -> dict[str, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return self._read(timeout=30)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                try:
                    self.proc.stdin.write("quit\n")
                    self.proc.stdin.close()
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    self.proc.terminate()
                    try:
                        self.proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
        finally:
            self.log.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    serve_main(sys.argv[1:])
