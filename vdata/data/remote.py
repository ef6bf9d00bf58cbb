"""How remote (http, https, root) source files are opened, and what their failures become.

uproot reads http(s) files through fsspec's ``HTTPFileSystem`` over aiohttp
(``uproot.source.fsspec.FSSpecSource``); :meth:`RemoteOptions.uproot_options` are the
``uproot.open`` options that make every request of such a file:

- **follow no redirect.** Every request is sent with ``allow_redirects=False`` and any 3xx
  answer is an error naming its ``Location``. A URL under ``allowed_url_prefixes`` therefore
  cannot send the service to another host or port (SSRF). We chose "never" over "only inside
  the prefixes": one rule that needs no prefix list in every Ray worker and no check per hop,
  and a source that redirects is simply registered by its final URL.
- **refuse a server that ignores ``Range``.** A ``200`` to a range request would hand uproot
  the whole file where it expects a few bytes.
- **give up within the timeouts**: ``connect_timeout`` to establish a connection, and
  ``read_timeout`` for the answer and between any two reads of its body (aiohttp's
  ``sock_connect`` and ``sock_read``; no limit on the total, so big reads at a steady pace
  pass). Without them a stalled source held a request for aiohttp's 300 s default.

XRootD (``root://host//path``) files are read the way uproot documents it: its fsspec source
over ``fsspec-xrootd`` and the ``xrootd`` bindings (the ``xrootd`` extra; :func:`require_xrootd`
says how to install it). An XRootD request (open, stat, a vector read) is bounded as a whole,
not per phase: it gets ``connect_timeout + read_timeout`` seconds, rounded up (XRootD's timeouts
are whole seconds). Three settings of the XRootD client are process-wide (its environment,
fixed, the same for every file; set by :func:`require_xrootd`): timeouts are checked every second (the
default, 15 s, would stretch a 3 s timeout to 15 s); a refused connection fails at once
rather than being retried for up to two minutes (as an HTTP connection is not retried either);
and a server that failed is tried again by the next request, not refused by the client for 30
minutes (``StreamErrorWindow``): a source that restarts is readable again at once.
The XRootD client follows an XRootD redirect (federations and redirectors rely on them); the
``allowed_url_prefixes`` check is on the URL registered.

With ``cache_dir`` set (the service sets it: ``remote_cache_dir``), every byte range uproot
reads of an http(s) or root:// file goes through the node's cache of remote bytes
(:mod:`vdata.data._remote_cache`): sibling ranges of one ROOT cluster, registration, the recipe
check's dry run and every worker's open read each range from the server once per node.

Every network failure (connection refused, DNS, HTTP 4xx/5xx, XRootD errors, truncated bodies,
timeouts, the refusals above) becomes a :class:`~vdata.errors.RemoteReadError` naming the URL, through
:func:`network_error` — the service answers it with 502. The options travel with each
:class:`~vdata.data.sources.SourceDataset` (and the catalog), so Ray workers that reopen a file use
the same ones; nothing here is a process global but those three fixed XRootD client settings.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Any

import aiohttp
import fsspec.asyn
import fsspec.implementations.cached
import uproot.source.fsspec

from vdata.data._remote_cache import CachedSource
from vdata.errors import RemoteReadError

__all__ = ["NETWORK_ERRORS", "RemoteOptions", "is_not_found", "network_error", "require_xrootd"]

HTTP_SCHEMES = ("http://", "https://")
XROOTD_SCHEME = "root://"
XROOTD_INSTALL = "pip install 'vdata[xrootd]'"
# XRootD protocol error codes (XProtocol.hh), as fsspec-xrootd's OSError messages quote them
_XROOTD_NOT_FOUND = "[3011]"  # kXR_NotFound
_XROOTD_TIMED_OUT = ("Operation expired", "Socket timeout")

# What a remote read may raise when the network or the server fails (TimeoutError and
# ConnectionError are OSErrors; aiohttp's response, payload and timeout errors are not all).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError, aiohttp.ClientError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """Timeouts (seconds) for reading remote files, and the node's cache of their bytes: a folder
    (``None``: no cache; caching needs the ``remote-cache`` extra), its budget in bytes, and how
    long a file's header read on the node is trusted without asking the server; see the module
    docstring."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    cache_dir: str | None = None
    cache_bytes: int = 4 * 1024**3
    cache_fresh_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"RemoteOptions.{name} must be a positive number of seconds, got {value!r}")
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        if not isinstance(self.cache_bytes, int) or self.cache_bytes < 0:
            raise ValueError(f"RemoteOptions.cache_bytes must be a number of bytes >= 0, got {self.cache_bytes!r}")
        if not isinstance(self.cache_fresh_seconds, (int, float)) or not self.cache_fresh_seconds >= 0:
            raise ValueError(f"RemoteOptions.cache_fresh_seconds must be >= 0 seconds, got {self.cache_fresh_seconds!r}")

    @property
    def cached(self) -> bool:
        """Remote reads go through the node's byte cache (:mod:`vdata.data._remote_cache`)."""
        return self.cache_dir is not None and self.cache_bytes > 0

    def _cache_option(self) -> dict[str, Any]:
        # a reader waits for another's fetch at most as long as that fetch may take
        spec = (self.cache_dir, self.cache_bytes, self.connect_timeout + self.read_timeout, self.cache_fresh_seconds)
        return {"vdata_cache": spec} if self.cached else {}

    @property
    def xrootd_timeout(self) -> int:
        """Seconds an XRootD request may take in all: connecting and the answer."""
        return math.ceil(self.connect_timeout + self.read_timeout)

    def uproot_options(self, path: str) -> dict[str, Any]:
        """Options of ``uproot.open(path, ...)``: none for local files."""
        if path.startswith(XROOTD_SCHEME):
            require_xrootd()
            # timeout: passed by fsspec to XRootDFileSystem, which gives it to every request
            handler = _CachedXRootDSource if self.cached else _XRootDSource
            return {"handler": handler, "timeout": self.xrootd_timeout, **self._cache_option()}
        if not path.startswith(HTTP_SCHEMES):
            return {}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout)
        return {
            "handler": _CachedHTTPSource if self.cached else _HTTPSource,
            **self._cache_option(),
            # passed by fsspec to every request of the file
            "allow_redirects": False,
            # passed by fsspec to its aiohttp.ClientSession
            "client_kwargs": {"timeout": timeout, "raise_for_status": _check_response},
        }


def require_xrootd() -> None:
    """Make sure root:// URLs can be read here, and set the XRootD client's process-wide settings
    (module docstring); a :class:`ModuleNotFoundError` saying how to install it if they cannot."""
    absent = [name for name in ("XRootD", "fsspec_xrootd") if not _installed(name)]
    if absent:
        raise ModuleNotFoundError(f"root:// sources need the XRootD client (missing here: "
                                  f"{', '.join(absent)}): {XROOTD_INSTALL}", name=absent[0])
    import XRootD.client  # here: only root:// reads need it

    XRootD.client.EnvPutInt("TimeoutResolution", 1)
    XRootD.client.EnvPutInt("ConnectionRetry", 1)
    XRootD.client.EnvPutInt("StreamErrorWindow", 0)
    # No fork handler: XRootD's locks each of its objects before a fork() of this process, and a
    # client thread that holds one while its Python callback waits for the GIL (held by the thread
    # that forks) deadlocks the fork (seen: a subprocess started while a read was in flight). A
    # forked child here execs at once or does not read root:// (Ray starts workers afresh).
    XRootD.client.EnvPutInt("RunForkHandler", 0)


def _installed(name: str) -> bool:
    """Found without importing it (ValueError: ``sys.modules[name]`` is None, i.e. blocked)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class _RangesRaise:
    """A filesystem whose ``_cat_ranges`` raises the first failed range's error.

    fsspec returns a failed range's exception *as its data* (``on_error="return"``), and uproot
    then slices the exception object: a ``TypeError`` that hides the network error and would
    read as an uninterpretable column."""

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    async def _cat_ranges(self, *args: Any, **kwargs: Any) -> list[bytes]:
        out = await self._fs._cat_ranges(*args, **kwargs)
        for item in out:
            if isinstance(item, BaseException):
                raise item
        return list(out)

    def cat_ranges(self, *args: Any, **kwargs: Any) -> list[bytes]:
        out = self._fs.cat_ranges(*args, **kwargs)
        for item in out:
            if isinstance(item, BaseException):
                raise item
        return list(out)


class _HTTPSource(uproot.source.fsspec.FSSpecSource):
    """uproot's fsspec source, with failed ranged reads raised (:class:`_RangesRaise`)."""

    def _open(self) -> None:
        super()._open()
        # uproot reads a caching filesystem (its WebDAV work-around) through another path
        if not isinstance(self._fs, fsspec.implementations.cached.CachingFileSystem):
            self._fs = _RangesRaise(self._fs)


class _FreshHandles:
    """fsspec-xrootd's filesystem, made to drop a file's handle when a read of it failed.

    fsspec-xrootd keeps one open XRootD handle per file (its ``ReadonlyFileHandleCache``) and
    hands it out again after a failure: once the server had gone away and come back, every
    later read raised ``ValueError: I/O operation on closed file``, which read as an
    uninterpretable column. Dropping the handle makes the next read open the file afresh. (The
    cache has no public way to drop one entry from inside its event loop.)"""

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    async def _forget(self, path: str) -> None:
        try:
            await self._fs._readonly_filehandle_cache._close(self._fs.unstrip_protocol(path), 1)
        except OSError:
            pass  # the server is gone: the handle is out of the cache all the same

    async def _cat_ranges(self, paths: list[str], *args: Any, **kwargs: Any) -> list[bytes]:
        try:
            return list(await self._fs._cat_ranges(paths, *args, **kwargs))
        except (OSError, ValueError):
            for path in set(paths):
                await self._forget(path)
            raise

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> bytes:
        try:
            return bytes(self._fs.cat_file(path, *args, **kwargs))
        except (OSError, ValueError):
            fsspec.asyn.sync(self._fs.loop, self._forget, path)
            raise


class _XRootDSource(uproot.source.fsspec.FSSpecSource):
    """uproot's fsspec source over fsspec-xrootd, with a failed file's handle dropped (:class:`_FreshHandles`)."""

    def _open(self) -> None:
        super()._open()
        self._fs = _FreshHandles(self._fs)


class _CachedHTTPSource(CachedSource, _HTTPSource):
    """:class:`_HTTPSource` through the node's byte cache."""


class _CachedXRootDSource(CachedSource, _XRootDSource):
    """:class:`_XRootDSource` through the node's byte cache."""


async def _check_response(response: aiohttp.ClientResponse) -> None:
    """Refuse redirects and ignored ranges (aiohttp calls this for every response of the
    session); fsspec itself raises for 4xx/5xx (404: FileNotFoundError)."""
    refused = 300 <= response.status < 400 or (response.status == 200 and "Range" in response.request_info.headers)
    if refused:
        response.release()  # the body is not read: give the connection back
    if 300 <= response.status < 400:
        location = response.headers.get("Location", "(no Location)")
        raise aiohttp.ClientResponseError(
            response.request_info, response.history, status=response.status, headers=response.headers,
            message=f"redirect to {location} refused: redirects are not followed; register the final URL",
        )
    if response.status == 200 and "Range" in response.request_info.headers:
        raise aiohttp.ClientResponseError(
            response.request_info, response.history, status=response.status, headers=response.headers,
            message="the server ignored the Range header (200 to a range request); "
                    "remote sources must support HTTP range requests",
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RemoteReadError):
        return exc.message
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}: {exc.message}"
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)) or _xrootd_timed_out(exc):
        return f"timed out: no connection or no data within the connect/read timeout ({str(exc) or type(exc).__name__})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _xrootd_timed_out(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and any(f"] {words}" in str(exc) for words in _XROOTD_TIMED_OUT)


def is_not_found(exc: BaseException) -> bool:
    """The server says the file does not exist: HTTP 404 (fsspec's ``FileNotFoundError``) or
    XRootD's ``kXR_NotFound`` (an ``OSError`` from fsspec-xrootd that quotes the code)."""
    return (isinstance(exc, FileNotFoundError)
            or (isinstance(exc, aiohttp.ClientResponseError) and exc.status == 404)
            or (isinstance(exc, OSError) and _XROOTD_NOT_FOUND in str(exc)))


def network_error(path: str, exc: BaseException, doing: str = "") -> RemoteReadError | None:
    """A RemoteReadError naming ``path`` for a network failure anywhere in ``exc``'s chain
    (fsspec re-raises some as ``FileNotFoundError``), or None if there is none.

    A missing file (:func:`is_not_found`) is not a network failure: the caller decides."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NETWORK_ERRORS) and not is_not_found(current):
            where = f"{path}: {doing}" if doing else path
            return RemoteReadError(f"{where}: {_describe(current)}")
        current = current.__cause__ or current.__context__
    return None
