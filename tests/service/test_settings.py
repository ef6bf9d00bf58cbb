"""Settings: defaults, VDATA_* variables, a config file (VDATA_CONFIG), keyword arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.http.app import core_config
from service.core.engine_config import EngineConfig
from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("VDATA_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()
    assert s.data_dir == Path("data") and s.host == "127.0.0.1" and s.port == 8000
    assert s.engine.address is None and s.engine.num_cpus == 2 and s.allowed_roots == [Path("data")]
    assert s.allowed_url_prefixes == [] and s.engine.lookahead == 4 and not s.engine.include_dashboard
    assert s.max_body_bytes > 0 and s.max_columns > 0 and s.max_range_events > 0 and s.max_inflight_per_token > 0


def test_roots_default_to_the_data_dir(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).roots == [tmp_path]
    assert Settings(data_dir=tmp_path, allowed_roots=[Path("/a"), Path("/b")]).roots == [Path("/a"), Path("/b")]


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDATA_PORT", "9100")
    monkeypatch.setenv("VDATA_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("VDATA_ALLOWED_URL_PREFIXES", '["https://opendata.cern.ch/"]')
    monkeypatch.setenv("VDATA_MAX_COLUMNS", "12")
    s = Settings()
    assert s.port == 9100 and s.engine.address == "ray://head:10001" and s.max_columns == 12
    assert s.allowed_url_prefixes == ["https://opendata.cern.ch/"]
    assert Settings(port=1).port == 1  # keyword arguments win


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".env", ".toml"])
def test_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    path = tmp_path / f"vdata{suffix}"
    values = {"port": 9200, "num_cpus": 3, "allowed_roots": ["/srv/data"]}
    if suffix == ".env":
        path.write_text('VDATA_PORT=9200\nVDATA_NUM_CPUS=3\nVDATA_ALLOWED_ROOTS=["/srv/data"]\n')
    elif suffix == ".toml":
        path.write_text('port = 9200\nnum_cpus = 3\nallowed_roots = ["/srv/data"]\n')
    else:
        path.write_text(json.dumps(values))  # JSON is YAML too
    s = Settings(config=path)
    assert (s.port, s.engine.num_cpus, s.allowed_roots) == (9200, 3, [Path("/srv/data")])
    monkeypatch.setenv("VDATA_CONFIG", str(path))
    monkeypatch.setenv("VDATA_NUM_CPUS", "4")  # the environment wins over the file
    s = Settings()
    assert (s.port, s.engine.num_cpus, s.config) == (9200, 4, path)


def test_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Settings(config=tmp_path / "nope.yaml")
    (tmp_path / "x.ini").write_text("")
    with pytest.raises(ValueError, match=r"\.yaml"):
        Settings(config=tmp_path / "x.ini")
    with pytest.raises(ValidationError, match="port"):
        Settings(port=70000)
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings(no_such_setting=1)  # type: ignore[call-arg]


def test_core_config(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, num_cpus=3, lookahead=0, cache_budget_bytes=1000, ray_address="auto",
                 ray_temp_dir=tmp_path / "ray")
    config = core_config(s)
    assert config.engine.temp_dir == str(tmp_path / "ray")
    assert config.data_dir == tmp_path and config.cache_budget_bytes == 1000
    assert (config.engine.num_cpus, config.engine.lookahead, config.engine.address) == (3, 0, "auto")


def test_engine_settings_are_engine_config_nested_and_flat(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The engine's defaults live in EngineConfig only; nested and flat names both set them, each
    source keeping its priority (keyword > VDATA_ENGINE__X > VDATA_X > file)."""
    assert Settings().engine == EngineConfig()
    path = tmp_path / "s.yaml"
    path.write_text("num_cpus: 3\nengine:\n  lookahead: 1\n")
    monkeypatch.setenv("VDATA_CONFIG", str(path))
    s = Settings()
    assert (s.engine.num_cpus, s.engine.lookahead) == (3, 1)
    monkeypatch.setenv("VDATA_NUM_CPUS", "4")
    assert Settings().engine.num_cpus == 4
    monkeypatch.setenv("VDATA_ENGINE__NUM_CPUS", "5")
    assert Settings().engine.num_cpus == 5
    assert Settings(num_cpus=6).engine.num_cpus == 6
    monkeypatch.setenv("VDATA_TASK_SECONDS_LIMIT", "none")
    assert Settings().engine.task_seconds is None
    with pytest.raises(ValidationError, match="engine.max_in_flight"):
        Settings(max_in_flight=0)
