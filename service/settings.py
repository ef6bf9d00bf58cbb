"""The gateway's settings (pydantic-settings).

Sources, highest priority first: keyword arguments, ``VDATA_*`` environment variables, a
config file, the defaults. The config file is named by the ``config`` argument or the
``VDATA_CONFIG`` variable; its kind follows its suffix: ``.env`` (``VDATA_*`` lines),
``.json``, ``.yaml``/``.yml`` or ``.toml`` (field names as keys). Lists in the environment
are JSON: ``VDATA_ALLOWED_ROOTS='["/data", "/scratch"]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    InitSettingsSource,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from service.core.engine_config import EngineConfig

__all__ = ["FLAT_ENGINE", "Settings"]

MiB = 1024**2

# Flat setting names of the engine's fields (what ``vdata serve --num-cpus`` and VDATA_NUM_CPUS say).
FLAT_ENGINE = {
    "ray_address": "address",
    "num_cpus": "num_cpus",
    "object_store_bytes": "object_store_bytes",
    "max_in_flight": "max_in_flight",
    "lookahead": "lookahead",
    "include_dashboard": "include_dashboard",
    "dashboard_port": "dashboard_port",
    "ray_temp_dir": "temp_dir",
    "task_seconds_limit": "task_seconds",
    "dry_run_seconds_limit": "dry_run_seconds",
    "task_memory_bytes_limit": "task_memory_bytes",
    "node_failure_seconds": "node_failure_seconds",
    "ray_retry_seconds": "ray_retry_seconds",
}


class Settings(BaseSettings):
    """Everything the gateway and its core are configured by."""

    model_config = SettingsConfigDict(env_prefix="VDATA_", env_nested_delimiter="__", extra="forbid", validate_default=True)

    config: Path | None = Field(default=None, description="The config file these settings were read from (VDATA_CONFIG).")

    # where and how to serve
    data_dir: Path = Field(default=Path("data"), description="Database, cache and everything else the service writes.")
    host: str = Field(default="127.0.0.1", description="Address to listen on; loopback unless you mean it.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on (0: any free port).")
    database_url: str | None = Field(default=None, description="Default: sqlite:///<data_dir>/vdata.db.")
    log_level: str = Field(default="info", description="Python and uvicorn log level.")

    # the Ray engine: its fields, defaults and bounds are EngineConfig's (service/core/engine_config.py)
    engine: EngineConfig = Field(default_factory=EngineConfig, description="How to run Ray (see EngineConfig).")

    # cache
    cache_budget_bytes: int = Field(default=2 * 1024**3, ge=0, description="Bytes of materialized ranges kept on disk.")
    accel_redirect_prefix: str | None = Field(
        default=None, pattern=r"^/[A-Za-z0-9._~/-]*[^/]$",
        description="Behind nginx: answer a cached range with an empty body and 'X-Accel-Redirect: <prefix>/<file>', "
                    "for an nginx 'internal' location of that prefix aliasing <data_dir>/cache, which sends the file "
                    "itself (sendfile). None: the gateway sends the bytes.")

    # what datasets may be
    allowed_roots: list[Path] | None = Field(default=None, description="Local dataset files must lie under one of these (default: [data_dir]).")
    allowed_url_prefixes: list[str] = Field(default_factory=list, description="Remote dataset URLs (http, https, root) must start with one of these. HTTP redirects are never followed (502), so no http(s) URL leads outside them; XRootD redirects (EOS, redirectors) are followed.")
    remote_connect_timeout_seconds: float = Field(default=10.0, gt=0, description="Connecting to a remote source's server (502 naming the URL after). XRootD: a request may take connect + read timeout in all, rounded up to whole seconds.")
    remote_read_timeout_seconds: float = Field(default=30.0, gt=0, description="Longest wait for a remote source's answer or its next bytes (502 naming the URL after).")
    remote_cache_dir: Path | None = Field(
        default=None, description="Each node's cache of remote sources' byte ranges (file header, metadata, baskets), so "
                                  "sibling ranges of a ROOT cluster, registration and the recipe check read each once per "
                                  "node (default <data_dir>/remote-cache; a path every Ray node can write, on its own disk).")
    remote_cache_bytes: int = Field(default=4 * 1024**3, ge=0, description="Budget of the remote byte cache, least recently used out first (0: no cache).")
    remote_cache_fresh_seconds: float = Field(
        default=60.0, ge=0, description="A remote file's header (its identity: a rewritten file has another) read by a "
                                        "node this recently is trusted without asking the server again, so a worker's "
                                        "open right after registration costs no round trip; older, it is read again at "
                                        "the next open (0: at every open).")
    max_dataset_paths: int = Field(default=1000, ge=1, description="Most paths (files) of one dataset (400 above); a path may appear once.")

    # limits
    max_body_bytes: int = Field(default=1 * MiB, ge=1, description="Largest request body (413 above).")
    max_columns: int = Field(default=2000, ge=1, description="Most output columns of a recipe (400 above).")
    max_range_events: int = Field(default=1_000_000, ge=1, description="Most events per range of a recipe (400 above).")
    min_range_events: int = Field(default=100, ge=1, description="Fewest events per range of a recipe (400 below; a dataset's last range may be shorter).")
    max_ranges: int = Field(default=100_000, ge=1, description="Most ranges of one recipe (400 above): bounds a plan's and a job's size.")
    max_inflight_per_token: int = Field(default=8, ge=1, description="Materializations one token may wait on at once (429 above).")
    readahead: int = Field(default=4, ge=0, description="Ranges after a requested one that the gateway materializes ahead when the access looks sequential (0: off).")
    max_stage_ranges: int = Field(default=64, ge=1, description="Most ranges one stage request may start (400 above).")
    range_timeout_seconds: float = Field(default=600.0, gt=0, description="How long a range request waits for materialization (503 after).")

    # several gateways on one database (issue 12): they share the cache folder and claim ranges
    cache_dir: Path | None = Field(
        default=None, description="The cache folder (default <data_dir>/cache). Gateways that share a database share "
                                  "it too: one directory every gateway mounts (a shared file system across machines).")
    cache_debris_seconds: float = Field(
        default=3600.0, gt=0, description="Leftovers in the cache folder (files without an index row, temporary files of "
                                          "writers on other machines) older than this are removed at start; longer than "
                                          "any task runs.")
    claim_seconds: float = Field(
        default=30.0, gt=0, description="A gateway's claim on a range it makes lives this long unless renewed (every "
                                        "third of it): a dead gateway's ranges are taken over after at most this.")

    # job outputs (issue 16): uploaded per range, merged when the job is done
    max_output_bytes: int = Field(default=1024 * MiB, ge=1, description="Largest output upload of one range "
                                  "(PUT /v1/jobs/{id}/ranges/{index}/output; 413 above). Streamed to disk, not held in memory.")
    outputs_merge_bytes: int = Field(default=256 * MiB, ge=1, description="Target size of a merged output file: the "
                                     "range outputs of a job are merged in range order into files of about this many "
                                     "input bytes (a larger single output is a file of its own).")
    outputs_retention_seconds: float = Field(default=86400.0, ge=0, description="Range outputs are deleted this long "
                                             "after their job's merge (0: at once); the merged files stay.")

    @model_validator(mode="after")
    def _default_roots(self) -> Settings:
        if self.allowed_roots is None:
            self.allowed_roots = [self.data_dir]
        return self

    @property
    def roots(self) -> list[Path]:
        return list(self.allowed_roots or [])

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        kwargs: dict[str, Any] = init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
        config = kwargs.get("config") or os.environ.get("VDATA_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, _FlatEngineEnv(settings_cls)]
        if config:
            sources.append(_file_source(settings_cls, Path(config)))
        return tuple(_Nested(source) for source in sources)


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    """The engine's fields given by their flat names (``num_cpus=2``, a file's ``num_cpus:``)
    moved into ``engine``; a nested value of the same source wins."""
    names = {flat: flat for flat in FLAT_ENGINE} | {f"vdata_{flat}": flat for flat in FLAT_ENGINE}  # .env: prefixed
    if not names.keys() & values.keys():
        return values
    values = dict(values)
    engine = values.get("engine") or {}
    engine = engine.model_dump(exclude_unset=True) if isinstance(engine, EngineConfig) else dict(engine)
    for name, flat in names.items():
        if name in values:
            engine.setdefault(FLAT_ENGINE[flat], values.pop(name))
    values["engine"] = engine
    return values


class _Nested(PydanticBaseSettingsSource):
    """A source whose flat engine names are nested before the sources are merged, so each
    source's priority holds for them too."""

    def __init__(self, source: PydanticBaseSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self.source = source

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _nest(self.source())


class _FlatEngineEnv(PydanticBaseSettingsSource):
    """``VDATA_<FLAT NAME>`` variables of the engine's fields (below ``VDATA_ENGINE__*``)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {flat: os.environ[f"VDATA_{flat.upper()}"] for flat in FLAT_ENGINE if f"VDATA_{flat.upper()}" in os.environ}
        return {"engine": {FLAT_ENGINE[k]: _none(v) for k, v in found.items()}} if found else {}


def _none(value: str) -> str | None:
    return None if value.strip().lower() in ("", "none", "null") else value


def _file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} (VDATA_CONFIG) does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return YamlConfigSettingsSource(settings_cls, yaml_file=path)
    if suffix == ".json":
        return JsonConfigSettingsSource(settings_cls, json_file=path)
    if suffix == ".toml":
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    if suffix == ".env" or path.name.startswith(".env"):
        return DotEnvSettingsSource(settings_cls, env_file=path, env_prefix="VDATA_")
    raise ValueError(f"config file {str(path)!r}: use .env, .json, .yaml, .yml or .toml")
