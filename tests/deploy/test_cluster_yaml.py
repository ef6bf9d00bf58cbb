"""cluster.yaml, the Ray cluster launcher's file: checked by Ray's own code and schema (no cloud
call, no SSH) and for what a working, private deployment of this project needs. Every check here
failed on the first cluster.yaml (``pip install vdata`` installs another project from PyPI)."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from service.core.engine_config import EngineConfig
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"
HOME = "/home/vdata"  # the ssh user's home on every node (cluster.yaml's file_mounts say it)
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` works on: Ray's defaults merged in and checked by Ray itself."""
    config = prepare_config(raw)
    validate_config(config)
    return config


def _commands(config: dict[str, Any], *lists: str) -> list[str]:
    return [command for name in (lists or COMMAND_LISTS) for command in config.get(name, [])]


def _exports(command: str) -> dict[str, str]:
    """The variables a command's ``export A=1 B=2;`` prefix sets (the shell's own word splitting)."""
    found: dict[str, str] = {}
    for part in command.split(";"):
        words = shlex.split(part)
        if words[:1] == ["export"]:
            found.update(word.split("=", 1) for word in words[1:])  # type: ignore[misc]
    return found


def _ray_starts(config: dict[str, Any]) -> list[str]:
    return [c for c in _commands(config, "head_start_ray_commands", "worker_start_ray_commands") if "ray start" in c]


def _serve(config: dict[str, Any]) -> str:
    serves = [c for c in _commands(config, "head_start_ray_commands") if "vdata serve" in c]
    assert len(serves) == 1, f"one head start command must run `vdata serve`, found {serves}"
    return serves[0]


def _mount_source(config: dict[str, Any], remote: str) -> Path:
    """The local path file_mounts copies to ``remote`` (relative to the repository), or a failure."""
    mounts = config["file_mounts"]
    assert remote in mounts, f"{remote} is not a file_mounts destination: {sorted(mounts)}"
    return (ROOT / mounts[remote]).resolve()


def test_the_file_passes_rays_schema_as_written_and_after_prepare_config(raw: dict[str, Any]) -> None:
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)  # as written: the first cluster.yaml failed here ('min_workers' unexpected)
    config = prepare_config(raw)
    validate_config(config)
    assert config["provider"]["type"] == "local" and config["max_workers"] == len(raw["provider"]["worker_ips"])


def test_every_node_installs_this_project_from_the_repositorys_wheel_with_the_server_extra(
        prepared: dict[str, Any]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    setup = _commands(prepared, "setup_commands")
    assert setup == _commands(prepared, "head_setup_commands") == _commands(prepared, "worker_setup_commands")
    wheel = f"vdata-{version}-py3-none-any.whl"
    installs = [c for c in setup if "pip install" in c]
    pattern = re.compile(r'"vdata\[server\] @ file://(/\S+)/' + re.escape(wheel) + '"')
    folders = {m.group(1) for c in installs for m in pattern.finditer(c)}
    assert folders, f"no setup command installs {wheel} with the server extra: {installs}"
    for folder in folders:  # the wheel's folder is copied from ./dist, where `make wheel` writes it
        assert _mount_source(prepared, folder) == ROOT / "dist"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^wheel:", makefile, re.M) and "pip wheel --no-deps -w dist ." in makefile
    # never PyPI's "vdata" (another project): every requirement naming vdata is the wheel
    for command in installs:
        for word in shlex.split(command):
            if re.match(r"vdata\b", word):
                assert pattern.fullmatch(f'"{word}"'), f"{word!r} would install PyPI's vdata: {command}"


def test_ray_and_python_are_pinned_to_what_the_tests_ran_with(prepared: dict[str, Any]) -> None:
    setup = " ".join(_commands(prepared, "setup_commands"))
    assert f'"ray[default]=={ray.__version__}"' in setup
    assert "python3.11 -m venv" in setup
    for command in _ray_starts(prepared):  # the venv's Ray, not whatever `ray` is on the PATH
        assert "~/vdata-venv/bin/ray start" in command, command


def test_the_head_runs_the_gateway_on_the_cluster_with_postgresql(prepared: dict[str, Any], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    serve = _serve(prepared)
    env = _exports(serve)
    words = shlex.split(serve.split(";")[-1])
    config_file = words[words.index("--config") + 1]
    assert config_file.startswith("~/")
    secret = _mount_source(prepared, HOME + config_file[1:])
    assert secret.parent.name == "secrets" and "secrets/" in (ROOT / ".gitignore").read_text().split()
    # The settings the gateway would read there, by the real Settings (a misspelt name fails):
    # the example of the secret file, and the variables the command sets.
    example = ROOT / "deploy" / "gateway.example.env"
    for name in [n for n in os.environ if n.startswith("VDATA_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace("$HOME", HOME))
    settings = Settings(config=example)
    assert settings.database_url and settings.database_url.startswith("postgresql://")
    assert settings.engine.address == "auto"
    assert settings.host == prepared["provider"]["head_ip"] and settings.port == 8000  # the one public port
    assert settings.roots == [Path(HOME) / "datasets"]
    assert _mount_source(prepared, f"{HOME}/datasets") == ROOT / "datasets"  # dataset files reach every node


def test_no_command_binds_every_interface_and_rays_ports_stay_on_the_private_network(prepared: dict[str, Any]) -> None:
    for command in _commands(prepared):
        assert "0.0.0.0" not in command, command
    head = [c for c in _ray_starts(prepared) if "--head" in c]
    assert len(head) == 1
    assert f"--node-ip-address={prepared['provider']['head_ip']}" in head[0]
    assert "--dashboard-host=127.0.0.1" in head[0]
    worker = [c for c in _ray_starts(prepared) if "--head" not in c]
    assert worker and all("--node-ip-address=" in c for c in worker)


def test_token_authentication_is_on_for_every_ray_process_and_the_gateway(prepared: dict[str, Any]) -> None:
    starts = _ray_starts(prepared) + [_serve(prepared)]
    assert len(starts) == 3
    for command in starts:
        env = _exports(command)
        assert env.get("RAY_AUTH_MODE") == "token", command
        path = env.get("RAY_AUTH_TOKEN_PATH", "")
        assert path.startswith("$HOME/"), command
        token = _mount_source(prepared, HOME + path.removeprefix("$HOME"))
        assert token.parent.name == "secrets"  # the operator's file, outside git
    assert any("chmod 600" in c and "ray_auth_token" in c for c in _commands(prepared, "setup_commands"))


def test_the_head_declares_a_dead_node_within_the_engines_bound(prepared: dict[str, Any]) -> None:
    """Ray's health checks are read on the head only: its --system-config carries the settings
    that EngineConfig.node_failure_seconds gives an embedded head (Ray's defaults take far longer)."""
    (head,) = [c for c in _ray_starts(prepared) if "--head" in c]
    (given,) = re.findall(r"--system-config='([^']*)'", head)
    assert json.loads(given) == EngineConfig().ray_system_config
