"""The database: durable state (catalog, cache index, jobs and their ranges).

SQLite by default (WAL mode, one transaction per call); the layer takes a URL
(``sqlite:///path/to/vdata.db``) so that PostgreSQL can replace it later. Only this module
knows SQL connection details; the other modules write plain SQL against :data:`SCHEMA`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.errors import DatabaseError

__all__ = ["SCHEMA", "Database"]

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    name        TEXT PRIMARY KEY,
    tree        TEXT NOT NULL,
    paths       TEXT NOT NULL,          -- JSON list
    fingerprint TEXT NOT NULL,
    created     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS transforms (
    name      TEXT PRIMARY KEY,
    code_hash TEXT NOT NULL,
    source    TEXT NOT NULL,
    inputs    TEXT NOT NULL,            -- JSON
    outputs   TEXT NOT NULL,            -- JSON
    kind      TEXT NOT NULL,
    max_size  TEXT,                     -- JSON: "pairs", an int, or null
    created   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS recipes (
    id      TEXT PRIMARY KEY,
    body    TEXT NOT NULL,              -- canonical JSON
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cache_entries (
    recipe_id   TEXT NOT NULL,
    range_index INTEGER NOT NULL,
    format      TEXT NOT NULL,
    path        TEXT NOT NULL,          -- relative to the cache folder
    size        INTEGER NOT NULL,
    adler32     INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    created     REAL NOT NULL,
    last_used   REAL NOT NULL,
    PRIMARY KEY (recipe_id, range_index, format)
);
CREATE INDEX IF NOT EXISTS cache_lru ON cache_entries (last_used);
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    recipe_id     TEXT NOT NULL,
    max_attempts  INTEGER NOT NULL,
    lease_seconds REAL NOT NULL,
    created       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_ranges (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    range_index INTEGER NOT NULL,
    first       INTEGER NOT NULL,
    stop        INTEGER NOT NULL,
    state       TEXT NOT NULL,          -- ready, running, finished, failed, fatal
    attempts    INTEGER NOT NULL DEFAULT 0,
    worker      TEXT,
    deadline    REAL,
    message     TEXT,
    updated     REAL NOT NULL,
    PRIMARY KEY (job_id, range_index)
);
CREATE INDEX IF NOT EXISTS job_ranges_state ON job_ranges (job_id, state, range_index);
-- finds overdue leases without reading every running row (each lease call reclaims first)
CREATE INDEX IF NOT EXISTS job_ranges_deadline ON job_ranges (job_id, state, deadline);
CREATE TABLE IF NOT EXISTS tokens (
    hash    TEXT PRIMARY KEY,           -- sha256 hex of the secret; the secret is never stored
    role    TEXT NOT NULL,              -- reader, worker, scientist, admin
    note    TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tokens_role ON tokens (role);
-- single flight across gateways (service/core/claims.py): who makes a range now; kept once released
CREATE TABLE IF NOT EXISTS claims (
    recipe_id   TEXT NOT NULL,
    range_index INTEGER NOT NULL,
    format      TEXT NOT NULL,
    owner       TEXT NOT NULL,          -- <host>-<pid>-<random> of the gateway; '' when released
    expires     REAL NOT NULL,          -- the owner renews while it works; 0 when released
    takes       INTEGER NOT NULL,       -- how often a gateway took it to make the range
    PRIMARY KEY (recipe_id, range_index, format)
);
CREATE INDEX IF NOT EXISTS claims_owner ON claims (owner);
"""


class Database:
    """A connection pool of one connection per thread, over one SQLite file.

    ``transaction()`` opens ``BEGIN IMMEDIATE`` so a read-modify-write is atomic against other
    threads and processes; it commits on success and rolls back on any exception.
    """

    def __init__(self, url: str) -> None:
        if not url.startswith("sqlite:///"):
            raise DatabaseError(f"unsupported database URL {url!r}: use sqlite:///PATH")
        self.url = url
        self.path = Path(url.removeprefix("sqlite:///"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Writers of this process queue here, in order, instead of in SQLite's busy handler,
        # which sleeps with back-off and gives long tails under many threads. The outermost
        # lock of the service: held for a whole transaction, during which only leaf locks (the
        # cache's, see service/core/cache.py) may be taken; never taken while holding another lock.
        self._write_lock = threading.Lock()
        self._connection().executescript(SCHEMA)  # idempotent: CREATE ... IF NOT EXISTS
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; inside another transaction of the same thread, a
        savepoint instead, so that several calls can share one commit (group commit) while a
        failing call still undoes only its own writes."""
        conn = self._connection()
        depth: int = getattr(self._local, "depth", 0)
        if depth:
            with self._savepoint(conn, depth):
                yield conn
            return
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            self._local.depth = 1
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                self._local.depth = 0
            try:
                conn.execute("COMMIT")
            except BaseException:  # a failed COMMIT (a deferred constraint) leaves it open
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _savepoint(self, conn: sqlite3.Connection, depth: int) -> Iterator[None]:
        name = f"vdata_sp{depth}"
        conn.execute(f"SAVEPOINT {name}")
        self._local.depth = depth + 1
        try:
            yield
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        finally:
            self._local.depth = depth
        conn.execute(f"RELEASE {name}")

    def read(self) -> sqlite3.Connection:
        """A connection for reads outside a transaction (each statement sees committed data)."""
        return self._connection()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
