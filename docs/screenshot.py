"""Screenshot Ray's dashboard while the main job (``make run``'s ``vdata demo``) runs.

    .venv/bin/python docs/screenshot.py            # writes docs/dashboard.png

Starts ``vdata demo`` in a temporary folder with the dashboard on a free loopback port, reads
the dashboard's address and token file from what the demo prints, waits until vdata's named
tasks are listed, and has headless Chromium (Debian's ``chromium``, driven over its DevTools
protocol) send the token as the dashboard's API clients do and capture the driver job's page
with its task table. Everything it starts is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from vdata.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
VDATA = Path(sys.executable).with_name("vdata")


def wait_for(what: str, probe: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not within {seconds:g} s")


def start_demo(folder: Path, port: int, events: int) -> tuple[subprocess.Popen[str], list[str]]:
    env = dict(os.environ, VDATA_KERNEL_CACHE=str(folder / "kernels"), NUMBA_CACHE_DIR=str(folder / "numba"),
               MPLCONFIGDIR=str(folder / "mpl"), PYTHONUNBUFFERED="1", COLUMNS="200")
    demo = subprocess.Popen([str(VDATA), "demo", "--data-dir", str(folder / "demo"), "--events", str(events),
                             "--range-events", "50000", "--dashboard-port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line.rstrip())

    import threading

    threading.Thread(target=pump, daemon=True).start()
    return demo, lines


async def capture(chromium: str, url: str, token: str, out: Path, wait_s: float) -> None:
    port = free_port()
    profile = tempfile.mkdtemp(prefix="vdata-chromium-")
    browser = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                                f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
                                f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        pages = wait_for("chromium's DevTools", lambda: _pages(port), 60)
        ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            ids = iter(range(1, 1_000_000))

            async def call(method: str, **params: Any) -> dict[str, Any]:
                n = next(ids)
                await ws.send_json({"id": n, "method": method, "params": params})
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data.get("id") == n:
                        if "error" in data:
                            raise RuntimeError(f"{method}: {data['error']}")
                        return data.get("result", {})
                raise RuntimeError("chromium closed the connection")

            await call("Network.enable")
            await call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Bearer {token}"})
            await call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1,
                       mobile=False)
            await call("Page.enable")
            await call("Page.navigate", url=url)
            await asyncio.sleep(wait_s)  # the dashboard's own polling fills the tables
            # open the task progress by name (the row under "Ray Core Overview")
            found = await call("Runtime.evaluate", returnByValue=True, expression=EXPAND)
            print("expanded:", found.get("result", {}).get("value"))
            await asyncio.sleep(3)
            shot = await call("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(shot["data"]))
    finally:
        os.killpg(browser.pid, signal.SIGTERM)
        browser.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


EXPAND = """(() => {
  const icons = [...document.querySelectorAll('svg')].filter(svg => {
      const r = svg.getBoundingClientRect(); return r.width > 0 && r.top > 440 && r.top < 520 && r.left < 140; });
  icons.forEach(i => (i.closest('button') || i.parentElement).dispatchEvent(new MouseEvent('click', {bubbles: true})));
  return icons.length;
})()"""


def _pages(port: int) -> list[dict[str, Any]] | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
    except httpx.HTTPError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard.png")
    p.add_argument("--events", type=int, default=16_000_000, help="events of the demo's dataset (runs while the shot is taken)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds the page polls before the shot")
    args = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        p.error("chromium is not installed (apt-get install chromium)")
    folder = Path(tempfile.mkdtemp(prefix="vdata-shot-"))
    demo, lines = start_demo(folder, free_port(), args.events)
    try:
        said = wait_for("the demo's dashboard lines", lambda: _said(lines), 300)
        url, token_file = said
        token = Path(token_file).read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}

        def vdata_tasks() -> list[dict[str, Any]] | None:
            assert demo.poll() is None, "\n".join(lines[-30:])
            try:
                r = httpx.get(f"{url}/api/v0/tasks", params={"limit": 1000, "detail": "false"}, headers=auth,
                              timeout=10)
            except httpx.HTTPError:
                return None
            rows = r.json().get("data", {}).get("result", {}).get("result", []) if r.status_code == 200 else []
            named = [t for t in rows if str(t.get("name", "")).startswith("vdata:")]
            return named if len(named) >= 4 else None

        tasks = wait_for("vdata's named tasks in Ray's state API", vdata_tasks, 300)
        job = tasks[0]["job_id"]
        asyncio.run(capture(chromium, f"{url}/#/jobs/{job}", token, args.output, args.settle))
        print(f"{args.output}: the dashboard's job {job} with {len(tasks)} vdata tasks listed, e.g. {tasks[0]['name']}")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _said(lines: list[str]) -> tuple[str, str] | None:
    text = "\n".join(lines)
    url = re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", text)
    token = re.search(r"cat (\S*ray_auth_token)", text)
    return (url[1], token[1]) if url and token else None


if __name__ == "__main__":
    raise SystemExit(main())
