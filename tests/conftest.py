"""Fixtures shared by the whole suite: the real ROOT files in ../shared/data, a loopback HTTP
file server with range support, a real XRootD server serving them, and the one way a test gets
Ray (:func:`embedded_ray`)."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from realdata import SHARED_DATA, XROOTD_BIG, require

from vdata.testing import XROOTD_BINARY, RangeFileServer, XRootDServer


# The longest test files, started first: with two xdist workers (make test), a long file left
# for the end would run alone while the other worker idles.
LONGEST_FIRST = ("tests/security/test_schemathesis.py", "tests/service/test_gateways.py",
                 "tests/vdata/data/test_sources.py", "tests/reliability/test_ray_private.py",
                 "tests/service/http/test_ray_head_restart.py", "tests/transforms/test_expressions.py",
                 "tests/security/test_user_code_isolation.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each file and among the others is kept


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; under CI=true its absence fails the test instead of skipping it."""
    require(SHARED_DATA / "uproot-HZZ.root")
    return SHARED_DATA


@pytest.fixture(scope="session")
def file_server(shared_data: Path) -> Iterator[RangeFileServer]:
    """../shared/data served over HTTP with range requests on a loopback port."""
    with RangeFileServer(shared_data) as server:
        yield server


def require_xrootd_server() -> None:
    """Debian's xrootd-server, or fail under CI=true (make test installs it), else skip."""
    if not Path(XROOTD_BINARY).exists():
        message = f"XRootD's server is not installed ({XROOTD_BINARY}; apt-get install xrootd-server; make test does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def xrootd_server(shared_data: Path) -> Iterator[XRootDServer]:
    """../shared/data served read-only by a real XRootD server on a loopback port (root://)."""
    require_xrootd_server()
    with XRootDServer(shared_data) as server:
        yield server


@pytest.fixture(scope="module")
def xrootd_root(shared_data: Path) -> Iterator[Path]:
    """A folder for a test's own XRootD server: ``locked.root``, a file nobody may read (mode
    000), and a link to :data:`XROOTD_BIG` of ../shared/data. Made with tempfile, not tmp_path:
    xrootd runs as ``nobody`` under root and must be able to enter it."""
    root = Path(tempfile.mkdtemp(prefix="vdata-xrd-test-"))
    try:
        root.chmod(0o755)
        shutil.copyfile(shared_data / "uproot-HZZ.root", root / "locked.root")
        (root / "locked.root").chmod(0o000)
        (root / XROOTD_BIG).symlink_to(shared_data / XROOTD_BIG)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def xrootd_own_server(xrootd_root: Path) -> Iterator[XRootDServer]:
    """An XRootD server of one test alone, serving :func:`xrootd_root` (the test may stop it)."""
    require_xrootd_server()
    with XRootDServer(xrootd_root) as server:
        yield server


class PostgresDatabases:
    """A test session's PostgreSQL server and a fresh database per call of :meth:`new`, each a
    copy of a template that already holds the schema (``CREATE DATABASE ... TEMPLATE``: ~50 ms)."""

    TEMPLATE = "vdata_template"

    def __init__(self, server: object) -> None:
        from service.core.db import Database
        from service.core.pg_server import TemporaryPostgres

        assert isinstance(server, TemporaryPostgres)
        self.server = server
        self._names = itertools.count()
        Database(server.create_database(self.TEMPLATE)).close()  # the schema, made once

    def new(self) -> str:
        """The URL of a new, empty database with the schema."""
        return self.server.create_database(f"test_{next(self._names)}", self.TEMPLATE)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    """A PostgreSQL server of this test process (each xdist worker has its own: own folder, own
    free port), started on first use and stopped at the end of the session, also after failures.
    Without the server binaries: fails under CI=true (make test installs them), else skips."""
    from service.core.pg_server import TemporaryPostgres, find_bindir

    if find_bindir() is None:
        message = "PostgreSQL's server is not installed (apt-get install postgresql; make test does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from service.core.ray_local import OWNER_ENV

    # Started while a module's Ray runs (a test asking for it first), the server would inherit
    # Ray's owner mark from this process's environment and be stopped with that Ray (ray_local.reap).
    mark = os.environ.pop(OWNER_ENV, None)
    try:
        server = TemporaryPostgres(durable=False)
    finally:
        if mark is not None:
            os.environ[OWNER_ENV] = mark  # last in the block again, as ray_local sets it
    with server:
        yield PostgresDatabases(server)


@pytest.fixture(scope="module")
def embedded_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Ray for the test module, started the way the service starts it (an engine's private
    instance on loopback, service.core.ray_local) and small: 2 CPUs, an 80 MB object store.

    Every Engine or Core the module starts joins it (an engine stops only a Ray it started
    itself), so their EngineConfig says how the engine works (in flight, look-ahead, limits),
    not how big Ray is; a module pays Ray's start-up once however many cores it builds, and no
    test stops Ray under another. Stopped in teardown, also when a test or the start failed.
    (Tests of ``vdata serve`` and ``run`` start a whole service in a child process instead, Ray
    included: that start is what they test.)"""
    import ray  # here, not at the top: most tests never import the service or Ray

    from service.core.core import Core, CoreConfig
    from service.core.engine import EngineConfig

    engine = EngineConfig(num_cpus=2, object_store_bytes=80 * 1024**2)
    owner = Core(CoreConfig(data_dir=tmp_path_factory.mktemp("ray") / "data", engine=engine))
    try:
        owner.start()
        yield
    finally:
        try:
            owner.close()  # the engine that started Ray stops it, and its private folder and token
        finally:
            ray.shutdown()  # in case the start failed half-way
