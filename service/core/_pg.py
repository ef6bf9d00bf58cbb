"""The PostgreSQL side of :mod:`service.core.db`: psycopg 3 connections that speak the
sqlite3 dialect the other modules are written in.

The modules write portable SQL (``ON CONFLICT``, ``COALESCE``) with sqlite3's ``?``
placeholders and read rows by index or by column name, as ``sqlite3.Row`` allows. So a
:class:`PgConnection` changes only the placeholders (``?`` -> ``%s``, and a literal ``%`` ->
``%%``; the SQL of this project has no ``?`` inside a string literal) and gives rows of
:class:`Row`; ``SUM`` of a ``BIGINT`` (a ``numeric`` in PostgreSQL) comes back as an int.
Connections are in autocommit mode: :class:`~service.core.db.Database` writes ``BEGIN`` and
``COMMIT`` itself, the same statements for both databases.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import Loader
from psycopg_pool import ConnectionPool, PoolTimeout

from service.errors import DatabaseUnavailable

__all__ = ["PgConnection", "PoolTimeout", "PooledReads", "Row", "connect", "open_pool", "pg_schema"]

POOL_MAX = 12  # connections per process: one writer at a time (the write lock) plus readers


def pg_schema(schema: str) -> str:
    """PostgreSQL's form of the SQLite schema: 64-bit integers (sizes, adler32, event numbers
    pass 2**31) and double precision floats; everything else is the same text."""
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", re.sub(r"\bINTEGER\b", "BIGINT", schema))


@functools.lru_cache(maxsize=1024)
def _translate(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class Row(Sequence[Any]):
    """A result row readable by position and by column name, like ``sqlite3.Row``."""

    __slots__ = ("_names", "_values")

    def __init__(self, values: Sequence[Any], names: dict[str, int]) -> None:
        self._values = tuple(values)
        self._names = names

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._values[self._names[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (Row, tuple)) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def keys(self) -> list[str]:
        return list(self._names)

    def __repr__(self) -> str:
        return f"Row{self._values!r}"


def _row_factory(cursor: Any) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, names)


class _NumericLoader(Loader):
    """``numeric`` as int when it is whole (``SUM`` of integers), else float: what SQLite gives."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        return int(text) if text.lstrip("-").isdigit() else float(text)


class PgConnection:
    """A psycopg connection with sqlite3's calls: ``execute``, ``executemany``, ``in_transaction``."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.raw.execute(_translate(sql), params)

    def executemany(self, sql: str, seq_of_params: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        cursor.executemany(_translate(sql), seq_of_params)
        return cursor

    def executescript(self, script: str) -> None:
        self.raw.execute(script)  # no parameters: several statements in one go

    @property
    def in_transaction(self) -> bool:
        """In a transaction that can still be rolled back (not on a lost connection)."""
        status = self.raw.info.transaction_status
        return status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR, pq.TransactionStatus.ACTIVE)


class _Result:
    """The rows of one statement, fetched while the connection was borrowed."""

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self._rows, self.rowcount = rows, rowcount

    def fetchone(self) -> Row | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[Row]:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


class PooledReads:
    """What ``Database.read()`` gives on PostgreSQL: each statement borrows a pooled connection,
    fetches its rows and gives the connection back (autocommit: each sees committed data)."""

    def __init__(self, pool: ConnectionPool[Any], timeout: float, where: str) -> None:
        self._pool, self._timeout, self._where = pool, timeout, where

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Result:
        try:
            with self._pool.connection(timeout=self._timeout) as raw:
                try:
                    cursor = PgConnection(raw).execute(sql, params)
                    return _Result(cursor.fetchall() if cursor.description else [], cursor.rowcount)
                except psycopg.OperationalError as exc:
                    if raw.broken:
                        raise DatabaseUnavailable(f"lost the connection to the database {self._where}: {exc}") from exc
                    raise
        except PoolTimeout as exc:
            raise DatabaseUnavailable(f"no connection to the database {self._where} within "
                                      f"{self._timeout:g} s: {exc}") from exc


def _configure(raw: psycopg.Connection[Any]) -> None:
    raw.adapters.register_loader("numeric", _NumericLoader)


def connect(url: str) -> PgConnection:
    """One connection outside the pool (the schema step); psycopg.OperationalError if refused."""
    raw = psycopg.connect(url, autocommit=True, row_factory=_row_factory, connect_timeout=10)
    _configure(raw)
    return PgConnection(raw)


def open_pool(url: str, timeout: float) -> ConnectionPool[Any]:
    """An open pool of autocommit connections with :class:`Row` rows; PoolTimeout if none comes."""
    pool: ConnectionPool[Any] = ConnectionPool(
        url, min_size=1, max_size=POOL_MAX, open=False, timeout=timeout, name="vdata",
        kwargs={"autocommit": True, "row_factory": _row_factory, "connect_timeout": 10}, configure=_configure,
    )
    pool.open(wait=True, timeout=timeout)
    return pool

