"""Single flight across gateways: one claim row per range being made, in the shared database.

Several gateways (``vdata serve`` processes, on one machine or several) share the database and
the cache folder. Each engine keeps single flight among its own askers
(:class:`~service.core._engine_state.EngineState`); this module makes it hold between engines:
before an engine submits a Ray task for a cache key it *claims* the key. The outcomes:

- ``OURS``: no claim row, or one that expired (its owner died and stopped renewing) or that
  was released: the row now names this gateway, and it runs the task. While it works it
  renews its claims (every third of ``seconds``); when the range is committed to the cache or
  failed, it releases the claim.
- ``CACHED``: the cache already has a row for the key (another gateway committed it between
  our cache look-up and now): nothing to make.
- ``HELD``: another gateway holds a live claim. This one *watches* the key: it polls with
  back-off (reads only) until the cache row appears (then it serves that entry), or the claim
  is free again (released after a failure, or expired: then it claims and makes the range
  itself). The HTTP request that waits is bounded by ``range_timeout_seconds`` as before.

The claim transaction looks at the cache row and takes the claim atomically: the owner commits
the cache row before it releases the claim, so whoever claims after the release sees the row.
The statements are portable (``INSERT ... ON CONFLICT DO NOTHING``, a conditional ``UPDATE``
whose row count says who won), so they hold under SQLite's single writer and under
PostgreSQL's row locks alike.

Released rows stay (owner ``''``): ``takes`` counts how often a gateway took the key to make
it, the figure the multi-gateway test checks ("no range made twice"). A gateway that starts
frees the claims of dead processes of its own machine (a SIGKILLed gateway restarted), so the
others need not wait for them to expire. Decisions are pure functions (:func:`decide`,
:func:`next_delay`), tested without a database.
"""

from __future__ import annotations

import enum
import heapq
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from service.core._cache_keys import _KEY_WHERE, _pid_alive, CacheKey, host_tag
from service.core.db import Database

__all__ = ["Claims", "ClaimRow", "Verdict", "decide", "next_delay", "new_owner"]

log = logging.getLogger(__name__)

FIRST_DELAY = 0.05  # seconds before the first poll of a watched key
MAX_DELAY = 1.0  # ... growing by half each time up to this
_OWNER = re.compile(r"(?P<host>[A-Za-z0-9_-]+)-(?P<pid>[0-9]+)-[0-9a-f]+")


class Verdict(enum.Enum):
    OURS = "ours"  # this gateway holds the claim: it makes the range
    CACHED = "cached"  # the cache has the range
    HELD = "held"  # another gateway holds a live claim: wait for it
    FREE = "free"  # (peek only) nobody holds it and it is not cached: claim it


@dataclass(frozen=True, slots=True)
class ClaimRow:
    owner: str  # '' once released
    expires: float


def decide(row: ClaimRow | None, cached: bool, me: str, now: float) -> Verdict:
    """What a gateway ``me`` may do about a key at ``now``: CACHED, HELD (another's live claim)
    or FREE (no claim, a released or expired one, or its own)."""
    if cached:
        return Verdict.CACHED
    if row is None or not row.owner or row.owner == me or row.expires <= now:
        return Verdict.FREE
    return Verdict.HELD


def next_delay(delay: float | None, first: float = FIRST_DELAY, most: float = MAX_DELAY) -> float:
    """The wait before the next poll of a watched key: ``first``, then half as long again each
    time, at most ``most`` (a range takes from milliseconds to minutes)."""
    return first if delay is None else min(delay * 1.5, most)


def new_owner() -> str:
    """A claim owner: this machine, this process and a random part (a pid may come back)."""
    return f"{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def dead_here(owner: str, host: str) -> bool:
    """Whether ``owner`` was a process of machine ``host`` that no longer runs."""
    found = _OWNER.fullmatch(owner)
    return found is not None and found["host"] == host and not _pid_alive(int(found["pid"]))


def _args(key: CacheKey) -> tuple[str, int, str]:
    return key.recipe_id, key.range_index, key.format


class Claims:
    """This gateway's claims in ``db``, renewed while held, and the keys it watches.

    ``seconds``: how long a claim lives without renewal (a dead owner's claim is taken over
    after at most that). :meth:`start` runs one thread that renews and polls the watched keys,
    calling ``on_cached(key)`` when a watched key's cache row appears and ``on_free(key)``
    when its claim is free again; :meth:`stop` releases everything this gateway holds.
    """

    def __init__(self, db: Database, seconds: float = 30.0, owner: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not seconds > 0:
            raise ValueError(f"claim seconds must be > 0, got {seconds!r}")
        self.db = db
        self.seconds = seconds
        self.owner = owner or new_owner()
        self._clock = clock
        self._lock = threading.Lock()  # a leaf: guards the watch list only
        self._watched: dict[CacheKey, float] = {}  # key -> current delay
        self._due: list[tuple[float, int, CacheKey]] = []  # (monotonic time, tie-break, key)
        self._tie = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_cached: Callable[[CacheKey], None] = lambda key: None
        self._on_free: Callable[[CacheKey], None] = lambda key: None

    # -- the database ------------------------------------------------------------------------

    def claim(self, key: CacheKey) -> Verdict:
        """Take the claim of ``key`` if nobody else holds it: OURS, CACHED or HELD."""
        now = self._clock()
        expires = now + self.seconds
        with self.db.transaction() as conn:
            if conn.execute(f"SELECT 1 FROM cache_entries WHERE {_KEY_WHERE}", _args(key)).fetchone():
                return Verdict.CACHED
            inserted = conn.execute(
                "INSERT INTO claims (recipe_id, range_index, format, owner, expires, takes) VALUES (?, ?, ?, ?, ?, 1) "
                "ON CONFLICT (recipe_id, range_index, format) DO NOTHING",
                (*_args(key), self.owner, expires),
            )
            if inserted.rowcount == 1:
                return Verdict.OURS
            taken = conn.execute(
                "UPDATE claims SET takes = takes + CASE WHEN owner = ? THEN 0 ELSE 1 END, owner = ?, expires = ? "
                f"WHERE {_KEY_WHERE} AND (owner = '' OR owner = ? OR expires <= ?)",
                (self.owner, self.owner, expires, *_args(key), self.owner, now),
            )
            return Verdict.OURS if taken.rowcount == 1 else Verdict.HELD

    def peek(self, key: CacheKey) -> Verdict:
        """CACHED, HELD or FREE, from two reads (no write lock): what a watcher polls."""
        conn = self.db.read()
        cached = conn.execute(f"SELECT 1 FROM cache_entries WHERE {_KEY_WHERE}", _args(key)).fetchone() is not None
        row = conn.execute(f"SELECT owner, expires FROM claims WHERE {_KEY_WHERE}", _args(key)).fetchone()
        return decide(None if row is None else ClaimRow(row["owner"], row["expires"]), cached, self.owner,
                      self._clock())

    def release(self, key: CacheKey) -> None:
        """Give up the claim of ``key`` (made or failed); a claim another took over is left alone."""
        with self.db.transaction() as conn:
            conn.execute(f"UPDATE claims SET owner = '', expires = 0 WHERE {_KEY_WHERE} AND owner = ?",
                         (*_args(key), self.owner))

    def renew(self) -> int:
        """Push back the expiry of every claim this gateway holds; how many it holds."""
        with self.db.transaction() as conn:
            return conn.execute("UPDATE claims SET expires = ? WHERE owner = ?",
                                (self._clock() + self.seconds, self.owner)).rowcount

    def release_all(self) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE claims SET owner = '', expires = 0 WHERE owner = ?", (self.owner,))

    def free_dead_here(self) -> int:
        """Release the live claims of dead processes of this machine; how many owners."""
        host = host_tag()
        owners = [row["owner"] for row in self.db.read().execute(
            "SELECT DISTINCT owner FROM claims WHERE owner <> '' AND expires > ?", (self._clock(),))]
        dead = [owner for owner in owners if owner != self.owner and dead_here(owner, host)]
        for owner in dead:
            with self.db.transaction() as conn:
                conn.execute("UPDATE claims SET owner = '', expires = 0 WHERE owner = ?", (owner,))
        if dead:
            log.info("released the claims of %d gateways of this machine that are gone", len(dead))
        return len(dead)

    def takes(self, key: CacheKey) -> int:
        """How often a gateway took ``key`` to make it (0: never)."""
        row = self.db.read().execute(f"SELECT takes FROM claims WHERE {_KEY_WHERE}", _args(key)).fetchone()
        return 0 if row is None else int(row["takes"])

    # -- the thread --------------------------------------------------------------------------

    def start(self, on_cached: Callable[[CacheKey], None], on_free: Callable[[CacheKey], None]) -> Claims:
        self._on_cached, self._on_free = on_cached, on_free
        self.free_dead_here()
        self._thread = threading.Thread(target=self._run, name="vdata-claims", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            self._watched.clear()
            self._due.clear()
        self.release_all()

    def watch(self, key: CacheKey) -> None:
        """Poll ``key`` until its cache row appears or its claim is free (then call back once)."""
        with self._lock:
            if key in self._watched:
                return
            self._watched[key] = next_delay(None)
            self._schedule(key, self._watched[key])
        self._wake.set()

    def watching(self) -> int:
        with self._lock:
            return len(self._watched)

    def _schedule(self, key: CacheKey, delay: float) -> None:
        self._tie += 1
        heapq.heappush(self._due, (time.monotonic() + delay, self._tie, key))

    def _run(self) -> None:
        renew_every = self.seconds / 3
        next_renew = time.monotonic() + renew_every
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_renew:
                self._guard(self.renew)
                next_renew = now + renew_every
            with self._lock:
                due = []
                while self._due and self._due[0][0] <= now:
                    due.append(heapq.heappop(self._due)[2])
                wait = min(next_renew, self._due[0][0] if self._due else next_renew) - now
            for key in due:
                self._poll(key)
            if not due:
                self._wake.wait(timeout=max(wait, 0.0))
                self._wake.clear()

    def _poll(self, key: CacheKey) -> None:
        verdict = self._guard(self.peek, key)
        if verdict is Verdict.CACHED or verdict is Verdict.FREE:
            with self._lock:
                self._watched.pop(key, None)
            callback = self._on_cached if verdict is Verdict.CACHED else self._on_free
            if self._guard(callback, key) is not False:
                return
            # the callback failed: poll again
        with self._lock:
            delay = next_delay(self._watched.get(key, FIRST_DELAY))
            self._watched[key] = delay
            self._schedule(key, delay)

    def _guard(self, fn: Callable[..., object], *args: object) -> object:
        """Run ``fn``; a database hiccup is logged and answered False (tried again later)."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - the thread must outlive a busy or restarting database
            log.warning("claims: %s failed: %s", getattr(fn, "__name__", fn), exc)
            return False
