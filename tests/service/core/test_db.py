"""The database layer on both backends: rows, transactions and savepoints, the schema version,
and the errors a user meets (an unsupported URL, a server that is not there)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from service.core import db as db_module
from service.core.db import DATABASE_ERRORS, INTEGRITY_ERRORS, Database, redact_url
from service.errors import DatabaseError, DatabaseUnavailable
from vdata.ranges import EventRange


def test_rows_read_by_index_and_by_name(db: Database) -> None:
    with db.transaction() as conn:
        conn.executemany("INSERT INTO tokens (hash, role, note, created) VALUES (?, ?, ?, ?)",
                         [("h1", "reader", "50% of it", 1.5), ("h2", "admin", "", 2**40)])
    rows = db.read().execute("SELECT hash, role, note, created FROM tokens ORDER BY hash").fetchall()
    assert [tuple(r) for r in rows] == [("h1", "reader", "50% of it", 1.5), ("h2", "admin", "", 2**40)]
    assert rows[0]["role"] == rows[0][1] == "reader" and rows[1]["created"] == 2**40
    count, total = db.read().execute("SELECT COUNT(*), COALESCE(SUM(created), 0) FROM tokens").fetchone()
    assert (count, total) == (2, 1.5 + 2**40)
    assert db.read().execute("SELECT role FROM tokens WHERE hash = ?", ("none",)).fetchone() is None


def test_big_integers_fit(db: Database) -> None:
    """Sizes, adler32 values and event numbers pass 2**31 (a 32-bit INTEGER would refuse them)."""
    with db.transaction() as conn:
        conn.execute("INSERT INTO cache_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     ("vds-" + "0" * 24, 0, "arrow", "p", 5 * 2**32, 0xFFFFFFF1, 3 * 2**31, 1.0, 1.0))
    row = db.read().execute("SELECT size, adler32, events FROM cache_entries").fetchone()
    assert tuple(row) == (5 * 2**32, 0xFFFFFFF1, 3 * 2**31)
    assert db.read().execute("SELECT COALESCE(SUM(size), 0) FROM cache_entries").fetchone()[0] == 5 * 2**32


def test_a_failing_savepoint_undoes_only_its_own_writes(db: Database) -> None:
    with db.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
        with pytest.raises(INTEGRITY_ERRORS), db.transaction() as inner:
            inner.execute("INSERT INTO meta (key, value) VALUES ('b', '2')")
            inner.execute("INSERT INTO meta (key, value) VALUES ('a', 'again')")  # primary key taken
        with db.transaction() as inner:
            inner.execute("INSERT INTO meta (key, value) VALUES ('c', '3')")
        assert db.read().execute("SELECT value FROM meta WHERE key = 'a'").fetchone()[0] == "1"  # own writes
    with pytest.raises(ValueError), db.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('d', '4')")
        raise ValueError("undo it all")
    keys = {r[0] for r in db.read().execute("SELECT key FROM meta")}
    assert keys == {"schema_version", "a", "c"}


def test_a_transaction_is_atomic_against_another_connection(db: Database) -> None:
    """Read-modify-write of a counter from two Database objects (two gateways) at once: on
    PostgreSQL the row lock, on SQLite BEGIN IMMEDIATE, keeps every increment."""
    with db.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('n', '0')")
    errors: list[BaseException] = []

    def bump(database: Database) -> None:
        try:
            for _ in range(50):
                with database.transaction() as conn:
                    value = conn.execute("SELECT value FROM meta WHERE key = 'n'" + database.row_lock).fetchone()[0]
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'n'", (str(int(value) + 1),))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with Database(db.url) as other:
        threads = [threading.Thread(target=bump, args=(d,)) for d in (db, other, db, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert db.read().execute("SELECT value FROM meta WHERE key = 'n'").fetchone()[0] == "200"


def test_schema_version_recorded_and_a_newer_one_refused(db: Database) -> None:
    assert db.read().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == \
        str(db_module.SCHEMA_VERSION)
    with db.transaction() as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(db_module.SCHEMA_VERSION + 1),))
    with pytest.raises(DatabaseError, match="newer than this vdata"):
        Database(db.url)


def test_a_migration_runs_once(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    new = db_module.SCHEMA_VERSION + 1
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", new)
    monkeypatch.setattr(db_module, "MIGRATIONS", {new: "ALTER TABLE tokens ADD COLUMN expires REAL"})
    with Database(db.url) as again, Database(db.url):  # the second one finds it done
        again.read().execute("SELECT expires FROM tokens").fetchall()
    assert db.read().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(new)


def test_an_unsupported_url_is_refused() -> None:
    with pytest.raises(DatabaseError, match=r"unsupported database URL 'mysql://u:\*\*\*@h/d'"):
        Database("mysql://u:secret@h/d")


def test_a_server_that_is_not_there_names_the_url_without_the_password() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://vdata:s3cret@127.0.0.1:{port}/vdata"
    with pytest.raises(DatabaseError) as info:
        Database(url)
    message = str(info.value)
    assert f"postgresql://vdata:***@127.0.0.1:{port}/vdata" in message and "s3cret" not in message
    assert isinstance(info.value.__cause__, DATABASE_ERRORS)


def test_redact_url() -> None:
    assert redact_url("postgresql://u:p@h:1/d?sslmode=require") == "postgresql://u:***@h:1/d?sslmode=require"
    assert redact_url("postgresql://h/d?password=p&x=1") == "postgresql://h/d?password=***&x=1"
    assert redact_url("sqlite:///a/b.db") == "sqlite:///a/b.db"


def test_a_server_that_goes_away_is_a_503_naming_the_url(postgres: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway whose PostgreSQL server stops: its next call raises DatabaseUnavailable (503
    at the gateway), naming the URL, instead of an unexplained 500."""
    from service.core.jobs import JobStore
    from service.core.pg_server import TemporaryPostgres
    from service.http.error_map import status_of

    monkeypatch.setattr(db_module, "POOL_TIMEOUT", 2.0)  # the wait for a pooled connection (30 s in service)
    with TemporaryPostgres(durable=False) as server, Database(server.create_database("gone")) as db:
        store = JobStore(db)
        job = store.create_job("r", [EventRange(0, 0, 10)])
        server.close()
        for call in (lambda: store.lease(job, "w", 1), lambda: store.recipe_id("job-other")):
            with pytest.raises(DatabaseUnavailable, match=r"postgresql://postgres@127\.0\.0\.1:\d+/gone") as info:
                call()
            assert status_of(info.value) == (503, "database_unavailable")
