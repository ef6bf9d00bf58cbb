"""The database: durable state (catalog, cache index, jobs and their ranges, tokens).

Two databases behind one URL:

- ``sqlite:///PATH`` (the embedded default): one file, WAL mode, one connection per thread;
  ``transaction()`` opens ``BEGIN IMMEDIATE``, which makes every transaction atomic against
  every other thread and process.
- ``postgresql://USER@HOST:PORT/NAME`` (several gateways on one database): psycopg 3 with a
  connection pool (:mod:`service.core._pg`); ``transaction()`` opens ``BEGIN`` (READ
  COMMITTED). What ``BEGIN IMMEDIATE`` gave for free, the modules ask for explicitly: they
  lock the rows they read-modify-write with :attr:`Database.row_lock` (``FOR UPDATE``) or
  :attr:`Database.skip_locked` (``FOR UPDATE SKIP LOCKED``: two gateways leasing at once
  take different ranges), and :meth:`Database.serialize` for a check-then-insert over a whole
  table. Both are empty on SQLite, whose write lock already serialises everything.

The other modules write one SQL for both: sqlite3's ``?`` placeholders, portable statements
(``INSERT ... ON CONFLICT``, never ``INSERT OR IGNORE``), rows read by index or column name.
:data:`SCHEMA` is written once in SQLite's words; PostgreSQL's form is derived from it
(:func:`service.core._pg.pg_schema`). :data:`SCHEMA_VERSION` and :data:`MIGRATIONS` are the one
migration step both run at start (under a lock, so gateways starting together do it once).
Only this module (and ``_pg``) knows connection details.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.errors import DatabaseError, DatabaseUnavailable

__all__ = ["DATABASE_ERRORS", "INTEGRITY_ERRORS", "MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "Database",
           "redact_url"]

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
-- how each cached range was made (service/core/provenance_store.py): written and dropped with its entry
CREATE TABLE IF NOT EXISTS range_provenance (
    recipe_id   TEXT NOT NULL,
    range_index INTEGER NOT NULL,
    format      TEXT NOT NULL,
    id          TEXT NOT NULL,          -- the provenance id (vdata/provenance.py)
    body        TEXT NOT NULL,          -- JSON
    made        REAL NOT NULL,
    PRIMARY KEY (recipe_id, range_index, format)
);
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
-- each worker of a job (service/core/jobs.py): ranges leased, attempts it spent (failures and
-- expired leases), its first and last lease; the job's progress (rate, ETA) starts at its first lease
CREATE TABLE IF NOT EXISTS job_workers (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    worker      TEXT NOT NULL,
    leases      INTEGER NOT NULL DEFAULT 0,
    failures    INTEGER NOT NULL DEFAULT 0,
    first_lease REAL,
    last_lease  REAL,
    PRIMARY KEY (job_id, worker)
);
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
-- job outputs (service/core/outputs.py): a job's output option and where its merge stands
CREATE TABLE IF NOT EXISTS job_merges (
    job_id   TEXT PRIMARY KEY REFERENCES jobs (id),
    outputs  TEXT NOT NULL,             -- required, optional, none
    format   TEXT NOT NULL,             -- of the merged files
    state    TEXT NOT NULL,             -- open, merging, merged, merge_failed
    owner    TEXT NOT NULL DEFAULT '',  -- the gateway merging it now ('' when none)
    expires  REAL NOT NULL DEFAULT 0,   -- its claim lives until then unless renewed
    message  TEXT,                      -- why the merge failed
    merged   REAL,                      -- when it was merged
    released INTEGER NOT NULL DEFAULT 0 -- 1 once its range outputs were deleted (retention)
);
CREATE INDEX IF NOT EXISTS job_merges_state ON job_merges (state);
-- the stored output of each range (the latest upload of a lease holder; fixed once finished)
CREATE TABLE IF NOT EXISTS range_outputs (
    job_id        TEXT NOT NULL REFERENCES jobs (id),
    range_index   INTEGER NOT NULL,
    path          TEXT NOT NULL,        -- relative to the outputs folder, named by content
    format        TEXT NOT NULL,
    size          INTEGER NOT NULL,
    adler32       INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    events        INTEGER NOT NULL,
    worker        TEXT NOT NULL,
    created       REAL NOT NULL,
    provenance_id TEXT,                 -- the range's provenance record, once there is one
    PRIMARY KEY (job_id, range_index)
);
-- the merged files of a job, in range order
CREATE TABLE IF NOT EXISTS merged_outputs (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    part        INTEGER NOT NULL,
    name        TEXT NOT NULL,          -- in <outputs folder>/<job id>/merged/
    format      TEXT NOT NULL,
    first_range INTEGER NOT NULL,
    last_range  INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    adler32     INTEGER NOT NULL,
    created     REAL NOT NULL,
    PRIMARY KEY (job_id, part)
);
"""

SCHEMA_VERSION = 1
# version -> the SQL (SQLite's words, as SCHEMA) that brings a database of the version before to
# it. A new table needs no entry: SCHEMA's CREATE ... IF NOT EXISTS adds it (job_workers came so,
# without a new version: a vdata that does not know it still works on a database that has it;
# so did job_merges, range_outputs and merged_outputs: a job without a job_merges row has no outputs);
# a changed one does.
MIGRATIONS: dict[int, str] = {}

POOL_TIMEOUT = 30.0  # seconds to wait for a PostgreSQL connection before DatabaseError
_SCHEMA_LOCK = 0x76646174  # PostgreSQL advisory lock held while one process creates/migrates


def _database_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg comes with the server extra
        return (sqlite3.Error,), (sqlite3.IntegrityError,)
    return (sqlite3.Error, psycopg.Error), (sqlite3.IntegrityError, psycopg.IntegrityError)


# What a database may raise, on either backend: ``except DATABASE_ERRORS`` (a tuple).
DATABASE_ERRORS, INTEGRITY_ERRORS = _database_errors()


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    url = re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


class Database:
    """Connections to one database, by URL; see the module docstring.

    ``transaction()`` yields a connection inside a transaction (a savepoint when the thread is
    already in one), commits on success and rolls back on any exception. ``read()`` gives a
    connection for reads outside a transaction. Connections have sqlite3's ``execute``,
    ``executemany``; their rows read by index and by column name.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._lock = threading.Lock()
        # Writers of this process queue here, in order, instead of in SQLite's busy handler,
        # which sleeps with back-off and gives long tails under many threads. The outermost
        # lock of the service: held for a whole transaction, during which only leaf locks (the
        # cache's, see service/core/cache.py) may be taken; never taken while holding another lock.
        # On PostgreSQL too: in one process transactions keep SQLite's order; across processes
        # the row locks order them.
        self._write_lock = threading.Lock()
        if url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            self.row_lock = self.skip_locked = ""
            self._open_sqlite(Path(url.removeprefix("sqlite:///")))
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            self.row_lock, self.skip_locked = " FOR UPDATE", " FOR UPDATE SKIP LOCKED"
            self._open_postgres()
        else:
            raise DatabaseError(f"unsupported database URL {redact_url(url)!r}: use sqlite:///PATH or "
                                "postgresql://USER@HOST:PORT/NAME")

    # -- opening ---------------------------------------------------------------------------

    def _open_sqlite(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connections: list[sqlite3.Connection] = []
        self._begin = "BEGIN IMMEDIATE"
        self._pool: Any = None
        self._connection().executescript(SCHEMA)  # idempotent: CREATE ... IF NOT EXISTS
        with self.transaction() as conn:
            self._migrate(conn)

    def _open_postgres(self) -> None:
        import psycopg

        from service.core import _pg

        self._begin = "BEGIN"
        try:
            conn = _pg.connect(self.url)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"cannot connect to the database {redact_url(self.url)}: {exc}") from exc
        try:
            conn.execute("BEGIN")
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            conn.executescript(_pg.pg_schema(SCHEMA))
            self._migrate(conn)
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot set up the schema in {redact_url(self.url)}: {exc}") from exc
        finally:
            conn.raw.close()
        try:
            self._pool = _pg.open_pool(self.url, POOL_TIMEOUT)
        except (psycopg.Error, _pg.PoolTimeout) as exc:
            raise DatabaseUnavailable(f"cannot connect to the database {redact_url(self.url)}: {exc}") from exc
        self._reads = _pg.PooledReads(self._pool, POOL_TIMEOUT, redact_url(self.url))

    def _migrate(self, conn: Any) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION` (inside the caller's transaction)."""
        found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if found is None:  # a new database: SCHEMA made the current tables
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        version = int(found[0])
        if version > SCHEMA_VERSION:
            raise DatabaseError(f"the database {redact_url(self.url)} has schema version {version}, newer "
                                f"than this vdata's {SCHEMA_VERSION}: upgrade vdata")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS.get(step, "")
            if self.dialect == "postgresql":
                from service.core._pg import pg_schema

                script = pg_schema(script)
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    # -- connections -----------------------------------------------------------------------

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

    def _acquire(self) -> Any:
        if self._pool is None:
            return self._connection()
        from service.core import _pg

        try:
            return _pg.PgConnection(self._pool.getconn(timeout=POOL_TIMEOUT))
        except _pg.PoolTimeout as exc:
            raise DatabaseUnavailable(f"no connection to the database {redact_url(self.url)} within "
                                f"{POOL_TIMEOUT:g} s: {exc}") from exc

    def _release(self, conn: Any) -> None:
        if self._pool is not None:
            self._pool.putconn(conn.raw)  # a broken connection is discarded by the pool

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """``BEGIN IMMEDIATE`` (SQLite) or ``BEGIN`` (PostgreSQL) ... ``COMMIT``; inside another
        transaction of the same thread, a savepoint instead, so that several calls can share one
        commit (group commit) while a failing call still undoes only its own writes."""
        depth: int = getattr(self._local, "depth", 0)
        if depth:
            conn = self._local.tx
            with self._savepoint(conn, depth):
                yield conn
            return
        with self._write_lock:
            conn = self._acquire()
            try:
                conn.execute(self._begin)
                self._local.depth, self._local.tx = 1, conn
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:  # not when the connection itself broke
                        conn.execute("ROLLBACK")
                    raise
                finally:
                    self._local.depth, self._local.tx = 0, None
                try:
                    conn.execute("COMMIT")
                except BaseException:  # a failed COMMIT (a deferred constraint) leaves it open
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except Exception as exc:
                if self._pool is not None and conn.raw.broken:  # the server went away, not the SQL
                    raise DatabaseUnavailable(f"lost the connection to the database {redact_url(self.url)}: "
                                              f"{exc}") from exc
                raise
            finally:
                self._release(conn)

    @contextmanager
    def _savepoint(self, conn: Any, depth: int) -> Iterator[None]:
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

    def serialize(self, conn: Any, name: str) -> None:
        """Inside a transaction: wait until no other transaction holds ``name``, then hold it to
        the commit. For a check-then-insert that row locks cannot cover (no row exists yet).
        A no-op on SQLite, where every write transaction already excludes the others."""
        if self.dialect == "postgresql":
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (name,))

    def read(self) -> Any:
        """A connection for reads outside a transaction (each statement sees committed data);
        inside one, the transaction's own connection (which sees its own writes)."""
        if getattr(self._local, "depth", 0):
            return self._local.tx
        if self._pool is None:
            return self._connection()
        return self._reads

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            return
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
