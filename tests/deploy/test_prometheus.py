"""deploy/prometheus.yml and deploy/grafana/vdata.json against real processes: ``vdata serve``
(with Ray's dashboard) and a real Prometheus (Debian's package; ``make prometheus``) started
with a configuration made from the shipped one (targets rewritten to this test's ports, a 1 s
scrape interval, storage in a temporary folder). Known work is done through the gateway; PromQL
through Prometheus's HTTP API must then show the values that work implies, Ray's exporters must
be found through the service-discovery file Ray writes, Ray's dashboard must reach this
Prometheus through RAY_PROMETHEUS_HOST, and every query of the Grafana dashboard must name
metrics that exist and return data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml
from serve_process import Serve, short_dir

from vdata.testing import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "vdata.json"
RECIPE = {  # four ranges of 1000 generated events
    "source": {"generator": "zmumu", "events": 4000, "seed": 11},
    "columns": ["Muon_pt", "Muon_eta"],
    "range_events": 1000,
}
RANGE_ROUTE = "/v1/recipes/{recipe_id}/ranges/{index}"
PROMQL_WORDS = {  # functions, aggregations and keywords of PromQL that look like metric names
    "sum", "rate", "irate", "increase", "histogram_quantile", "by", "without", "on", "ignoring",
    "group_left", "group_right", "clamp_min", "clamp_max", "max", "min", "avg", "count", "topk",
    "label_replace", "or", "and", "unless", "vector", "scalar", "offset", "bool", "le", "abs",
}


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    assert found, "Prometheus is not installed: run `make prometheus` (Debian's package)"
    return found


def config_for_test(gateway: str, discovery_file: Path) -> dict[str, Any]:
    """The shipped configuration with this test's addresses: the same jobs, the same paths
    and file-discovery mechanism, only the gateway's address, the file's folder and the
    scrape interval changed."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"vdata", "ray"}, jobs
    assert jobs["vdata"]["metrics_path"] == "/metrics"
    jobs["vdata"]["static_configs"] = [{"targets": [gateway]}]
    [ray_sd] = jobs["ray"]["file_sd_configs"]
    [shipped] = ray_sd["files"]
    assert Path(shipped).name == discovery_file.name == "prom_metrics_service_discovery.json"
    assert Path(shipped).parent.name == discovery_file.parent.name == "ray"  # <data dir>/ray
    ray_sd["files"] = [str(discovery_file)]
    ray_sd["refresh_interval"] = "1s"
    return config


@dataclass
class Prometheus:
    """A Prometheus server in a temporary folder on a loopback port; ``stop`` ends it."""

    folder: Path
    config: dict[str, Any]
    port: int = field(default_factory=free_port)
    child: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None  # its output, read back by ``output`` when something fails

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(self.config))
        self.log = (self.folder / "prometheus.log").open("wb")  # closed in stop
        self.child = subprocess.Popen(
            [prometheus_binary(), f"--config.file={self.folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.folder / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            assert self.child is not None and self.child.poll() is None, self.output
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=60, interval=0.2, message="Prometheus to be ready")

    @property
    def output(self) -> str:
        path = self.folder / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; its result vector (an error of Prometheus fails the test)."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=30)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{promql}: {r.text}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, promql: str, by: str) -> dict[str, float]:
        """``{label value: sample}`` of an instant query."""
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in self.query(promql)}

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        assert len(result) <= 1, f"{promql}: one series expected, got {result}"
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
        if self.log is not None:
            self.log.close()


@dataclass
class Work:
    """What the test did, and so what the metrics must say."""

    recipe_id: str
    job_id: str
    sizes: dict[int, int]  # range index -> bytes of its Arrow body
    served_bytes: int


@dataclass
class Stack:
    serve: Serve
    prometheus: Prometheus
    dashboard_port: int
    work: Work


def do_work(url: str, token: str) -> Work:
    """Ranges 0 and 1 asked twice (2 made, 2 from the cache); then a job over all four ranges,
    leased by one worker: 0 and 1 come from the cache, 2 and 3 are made; one heartbeat; 0-2
    finished, 3 failed as fatal."""
    sizes: dict[int, int] = {}
    served = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
        r = http.post("/v1/recipes", json=RECIPE)
        assert r.status_code == 201, r.text
        recipe_id = r.json()["id"]
        for index in (0, 1, 0, 1):
            r = http.get(f"/v1/recipes/{recipe_id}/ranges/{index}")
            assert r.status_code == 200, r.text
            assert sizes.setdefault(index, len(r.content)) == len(r.content)
            served += len(r.content)
        r = http.post("/v1/jobs", json={"recipe_id": recipe_id, "lease_seconds": 120})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        leases = http.post(f"/v1/jobs/{job_id}/lease", json={"worker": "w1", "n": 4}).json()
        assert [lease["index"] for lease in leases] == [0, 1, 2, 3], leases
        for lease in leases:
            r = http.get(lease["url"])
            assert r.status_code == 200, r.text
            assert sizes.setdefault(lease["index"], len(r.content)) == len(r.content)
            served += len(r.content)
        assert http.post(f"/v1/jobs/{job_id}/ranges/3/heartbeat", json={"worker": "w1"}).status_code == 200
        for index in (0, 1, 2):
            r = http.post(f"/v1/jobs/{job_id}/ranges/{index}/finish", json={"worker": "w1"})
            assert r.status_code == 200, r.text
        r = http.post(f"/v1/jobs/{job_id}/ranges/3/fail", json={"worker": "w1", "message": "bad", "fatal": True})
        assert r.status_code == 200, r.text
    return Work(recipe_id, job_id, sizes, served)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    data_dir = short_dir("vdp-")  # Ray's folder <data dir>/ray: short enough for its sockets
    prom_dir = short_dir("vdprom-")
    dashboard_port = free_port()
    prom_port = free_port()
    serve = Serve(data_dir, extra_env={
        "VDATA_INCLUDE_DASHBOARD": "true", "VDATA_DASHBOARD_PORT": str(dashboard_port),
        "VDATA_LOOKAHEAD": "0", "VDATA_READAHEAD": "0",  # only the work below makes ranges
        "RAY_PROMETHEUS_HOST": f"http://127.0.0.1:{prom_port}",
    })
    prometheus = Prometheus(prom_dir, config_for_test(f"127.0.0.1:{serve.port}",
                                                  data_dir / "ray" / "prom_metrics_service_discovery.json"),
                            port=prom_port)
    try:
        serve.wait_healthy()
        prometheus.start()
        work = do_work(serve.url, serve.admin_token)
        yield Stack(serve, prometheus, dashboard_port, work)
    finally:
        prometheus.stop()
        serve.stop()
        shutil.rmtree(prom_dir, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def scraped_until(prometheus: Prometheus, promql: str, expected: float, what: str) -> None:
    """Wait for Prometheus to have scraped the value the work implies (the scrape after it)."""
    wait_until(lambda: prometheus.value(promql) == expected, timeout=60, interval=0.5,
               message=f"{what}: {promql} == {expected} (last: {prometheus.value(promql)})")


@pytest.mark.slow
def test_prometheus_scrapes_the_values_the_work_implies(stack: Stack) -> None:
    prom, work = stack.prometheus, stack.work
    scraped_until(prom, 'sum(vdata_lease_events_total{event="fatal"})', 1, "the last report")
    up = prom.values("up", by="job")
    assert up["vdata"] == 1, up
    # ranges: 4 made (each once), 8 served (2 + 2 from the cache, then 4 of the job)
    assert prom.value("sum(vdata_ranges_materialized_total)") == 4
    assert prom.value("sum(vdata_ranges_served_total)") == 8
    assert prom.values("vdata_ranges_served_total", by="format") == {"arrow": 8}
    assert prom.value("sum(vdata_bytes_served_total)") == work.served_bytes
    assert prom.value("sum(vdata_bytes_materialized_total)") == sum(work.sizes.values())
    # the cache: its files fit in the default budget, none corrupt
    assert prom.value("vdata_cache_corrupt_total") == 0
    assert prom.value("vdata_cache_bytes") >= sum(work.sizes.values())
    assert prom.value("vdata_cache_budget_bytes") == 2 * 1024**3
    assert prom.value("vdata_tasks_in_flight") == 0
    assert prom.value("vdata_range_requests_waiting") == 0
    # leases: one call for four ranges, one heartbeat, three finished, one fatal
    assert prom.values("vdata_lease_events_total", by="event") == {"lease": 4, "heartbeat": 1, "finish": 3, "fatal": 1}
    # job progress: events by state
    job = prom.values(f'vdata_job_events{{job_id="{work.job_id}"}}', by="state")
    assert job == {"ready": 0, "running": 0, "finished": 3000, "failed": 0, "fatal": 1000}
    # requests: 8 range requests answered 200, their latency in the histogram
    assert prom.value(f'sum(vdata_http_requests_total{{route="{RANGE_ROUTE}",status="200"}})') == 8
    assert prom.value(f'sum(vdata_http_request_seconds_count{{route="{RANGE_ROUTE}"}})') == 8
    p99 = prom.value(f'histogram_quantile(0.99, sum by (le) (vdata_http_request_seconds_bucket{{route="{RANGE_ROUTE}"}}))')
    assert p99 is not None and 0 < p99 <= 120
    # one definition of a cache hit (issue 13): 4 misses (each range's first request), 4 hits
    # (the second stream request of ranges 0 and 1, the job's leases of 0 and 1)
    assert prom.values("vdata_cache_lookups_total", by="result") == {"hit": 4, "miss": 4}


@pytest.mark.slow
def test_ray_metrics_arrive_through_rays_service_discovery(stack: Stack) -> None:
    prom = stack.prometheus

    def ray_targets_up() -> list[dict[str, Any]]:
        return [s for s in prom.query('up{job="ray"}') if s["value"][1] == "1"]

    targets = wait_until(ray_targets_up, timeout=90, interval=1, message="a Ray exporter scraped (up == 1)")
    assert all(s["metric"]["instance"].startswith("127.0.0.1:") for s in targets), targets  # loopback only
    # vdata's own Ray metrics come through Ray's exporter with Ray's prefix
    wait_until(lambda: prom.value("sum(ray_vdata_ranges_materialized_total)") == 4, timeout=90, interval=1,
               message="ray_vdata_ranges_materialized_total == 4")
    assert prom.query("ray_tasks")  # Ray's own task states


@pytest.mark.slow
def test_rays_dashboard_finds_this_prometheus(stack: Stack) -> None:
    """RAY_PROMETHEUS_HOST in the gateway's environment reaches Ray's dashboard."""
    token = (stack.serve.data_dir / "ray_auth_token").read_text().strip()
    r = httpx.get(f"http://127.0.0.1:{stack.dashboard_port}/api/prometheus_health",
                  headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["result"] is True, r.text
    # the Grafana set-up Ray writes (where deploy/grafana/vdata.json is dropped) queries it too
    grafana = stack.serve.data_dir / "ray" / "session_latest" / "metrics" / "grafana"
    sources = yaml.safe_load((grafana / "provisioning" / "datasources" / "default.yml").read_text())
    assert [s["url"] for s in sources["datasources"]] == [stack.prometheus.url]
    assert (grafana / "dashboards").is_dir()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the Grafana dashboard."""
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "vdata"
    found = [(panel["title"], grafana_to_promql(target["expr"])) for panel in board["panels"]
             if panel.get("type") != "row" for target in panel.get("targets", [])]
    assert found, "no queries in the dashboard"
    return found


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables replaced by what it would put there (1 s scrapes here)."""
    promql = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
    assert "$" not in promql, f"a Grafana variable the test does not know in {expr!r}"
    return promql


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression uses: identifiers not followed by '(' that are
    not PromQL words, label names (before '=' or in by/without lists) or quoted strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)  # label values
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    names = {name for name, call in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text) if not call}
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*|[eE]\d*", n)}


def test_metric_names_parsed_from_promql() -> None:
    assert metric_names('sum by (route, le) (rate(vdata_http_request_seconds_bucket{route="/x"}[5m]))') \
        == {"vdata_http_request_seconds_bucket"}
    assert metric_names('vdata_job_events{state="finished"} / ignoring(state) sum without (state) (vdata_job_events)') \
        == {"vdata_job_events"}
    assert metric_names("sum(rate(a_total[1m])) / clamp_min(sum(rate(b_total[1m])), 1)") == {"a_total", "b_total"}


@pytest.mark.slow
def test_grafana_queries_name_metrics_that_exist_and_return_data(stack: Stack) -> None:
    prom, serve = stack.prometheus, stack.serve
    scrape = httpx.get(f"{serve.url}/metrics", timeout=30).text
    exposed = set(re.findall(r"^# TYPE (\S+) (\S+)", scrape, re.M))
    gateway_names = {name for name, _ in exposed}
    gateway_names |= {f"{name}{suffix}" for name, kind in exposed if kind == "histogram"
                      for suffix in ("_bucket", "_count", "_sum")}
    gateway_names |= {f"{name}_total" for name, kind in exposed if kind == "counter"}
    r = httpx.get(f"{prom.url}/api/v1/label/__name__/values", timeout=30)
    stored = set(r.json()["data"])
    for title, promql in dashboard_queries():
        names = metric_names(promql)
        assert names, f"{title}: no metric in {promql!r}"
        for name in names:
            if name.startswith("vdata_"):
                assert name in gateway_names, f"{title}: {name} is not in the gateway's /metrics ({promql})"
                assert name in stored, f"{title}: Prometheus has no series {name}"
            else:  # Ray's own series, from the exporters found through Ray's discovery file
                assert prom.query(f'{name}{{job="ray"}}'), f"{title}: {name} is not in Ray's export ({promql})"
        # after the work every panel has something to show
        wait_until(lambda q=promql: prom.query(q), timeout=60, interval=1, message=f"{title}: data for {promql}")


def test_shipped_config_passes_promtool() -> None:
    """Prometheus's own checker accepts deploy/prometheus.yml as shipped (the discovery file
    may not exist yet: a warning, resolved relative to the config's folder)."""
    promtool = Path(prometheus_binary()).with_name("promtool")
    done = subprocess.run([str(promtool), "check", "config", str(CONFIG)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_dashboard_has_the_panels_operators_asked_for() -> None:
    board = json.loads(DASHBOARD.read_text())
    titles = [panel["title"] for panel in board["panels"]]
    for wanted in ("Ranges per second", "Bytes per second", "Cache hit ratio", "Cache fill against budget",
                   "Tasks in flight", "Lease events by kind", "Job progress", "Request latency by route"):
        assert any(title.startswith(wanted) for title in titles), f"no panel {wanted!r} in {titles}"
    latency = next(p for p in board["panels"] if p["title"].startswith("Request latency"))
    quantiles = {re.match(r"histogram_quantile\(([\d.]+),", t["expr"]).group(1) for t in latency["targets"]}  # type: ignore[union-attr]
    assert quantiles == {"0.5", "0.95", "0.99"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
