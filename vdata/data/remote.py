"""How remote (http, https) source files are opened, and what their failures become.

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

Every network failure (connection refused, DNS, HTTP 4xx/5xx, truncated bodies, timeouts, the
refusals above) becomes a :class:`~vdata.errors.RemoteReadError` naming the URL, through
:func:`network_error` — the service answers it with 502. The options travel with each
:class:`~vdata.data.sources.SourceDataset` (and the catalog), so Ray workers that reopen a file use
the same ones; nothing here is a process global.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import fsspec.implementations.cached
import uproot.source.fsspec

from vdata.errors import RemoteReadError

__all__ = ["NETWORK_ERRORS", "RemoteOptions", "network_error"]

HTTP_SCHEMES = ("http://", "https://")

# What a remote read may raise when the network or the server fails (TimeoutError and
# ConnectionError are OSErrors; aiohttp's response, payload and timeout errors are not all).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError, aiohttp.ClientError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """Timeouts (seconds) for reading remote files; see the module docstring."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"RemoteOptions.{name} must be a positive number of seconds, got {value!r}")

    def uproot_options(self, path: str) -> dict[str, Any]:
        """Options of ``uproot.open(path, ...)``: none for local files (and root:// URLs)."""
        if not path.startswith(HTTP_SCHEMES):
            return {}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout)
        return {
            "handler": _HTTPSource,
            # passed by fsspec to every request of the file
            "allow_redirects": False,
            # passed by fsspec to its aiohttp.ClientSession
            "client_kwargs": {"timeout": timeout, "raise_for_status": _check_response},
        }


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
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return f"timed out: no connection or no data within the connect/read timeout ({str(exc) or type(exc).__name__})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def network_error(path: str, exc: BaseException, doing: str = "") -> RemoteReadError | None:
    """A RemoteReadError naming ``path`` for a network failure anywhere in ``exc``'s chain
    (fsspec re-raises some as ``FileNotFoundError``), or None if there is none.

    A 404 (``FileNotFoundError``) is not a network failure: the caller decides."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        not_found = isinstance(current, FileNotFoundError) or (
            isinstance(current, aiohttp.ClientResponseError) and current.status == 404)
        if isinstance(current, NETWORK_ERRORS) and not not_found:
            where = f"{path}: {doing}" if doing else path
            return RemoteReadError(f"{where}: {_describe(current)}")
        current = current.__cause__ or current.__context__
    return None
