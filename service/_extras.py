"""The packages only the server needs (``pip install 'vdata[server]'``), checked before the
server's code imports them.

``pip install vdata`` is what a worker or an analysis installs: the data library, the client
and the ``vdata`` CLI's client commands. The service's core and gateway need the ``server``
extra. Without it, the failure would be an import deep inside (``No module named 'ray'`` from
the engine, three modules below ``vdata serve``) that does not say what to do. As uproot's
``uproot.extras`` does for its optional packages, :func:`require_server` raises a
:class:`ModuleNotFoundError` naming the missing packages and the command that installs them.

It checks at the doors rather than at each import (``fastapi`` alone is imported by a dozen
modules): the subpackages ``service.core`` and ``service.http`` check what they need when they
are imported, and the CLI's server commands and ``python -m service`` check the whole extra
before importing anything, to print one line instead of a traceback. The check finds the
packages without importing them (Ray takes seconds to import).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

INSTALL = "pip install 'vdata[server]'"

# Import name -> distribution name in pyproject.toml's [server] extra
# (tests/service/test_extras.py keeps the two equal).
SERVER_PACKAGES = {
    "ray": "ray",
    "filelock": "filelock",
    "diskcache": "diskcache",  # the remote byte cache of the Ray workers (vdata/data/_remote_cache.py)
    "psutil": "psutil",
    "psycopg": "psycopg",
    "psycopg_pool": "psycopg-pool",
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "pydantic": "pydantic",
    "pydantic_settings": "pydantic-settings",
    "prometheus_client": "prometheus-client",
    "matplotlib": "matplotlib",
    "XRootD": "xrootd",  # root:// sources, read in the Ray workers (also ``vdata[xrootd]``)
    "fsspec_xrootd": "fsspec-xrootd",
}
# What each subpackage imports of it (a Ray worker node runs service.core, not the gateway).
CORE = ("ray", "filelock", "diskcache", "psutil", "psycopg", "psycopg_pool")
HTTP = ("fastapi", "uvicorn", "pydantic", "pydantic_settings", "prometheus_client")

__all__ = ["CORE", "HTTP", "INSTALL", "SERVER_PACKAGES", "missing", "require_server"]


def missing(names: Iterable[str] = SERVER_PACKAGES) -> list[str]:
    """The import names among ``names`` that cannot be imported here (found, not imported)."""
    return [name for name in names if not _findable(name)]


def _findable(name: str) -> bool:
    """A real package of that name; not a namespace package, which any folder of that name on
    the path makes (Ray's own temporary folder ``/tmp/ray`` when started in ``/tmp``)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None, i.e. blocked
        return False
    return spec is not None and spec.origin not in (None, "namespace")


def require_server(what: str, names: Iterable[str] = SERVER_PACKAGES) -> None:
    """Nothing if ``names`` (default: the whole server extra) can be imported, else a
    :class:`ModuleNotFoundError` saying that ``what`` needs the server extra and how to install it."""
    absent = missing(names)
    if absent:
        packages = ", ".join(SERVER_PACKAGES.get(name, name) for name in absent)
        raise ModuleNotFoundError(f"{what} needs the server extra (missing here: {packages}): {INSTALL}",
                                  name=absent[0])
