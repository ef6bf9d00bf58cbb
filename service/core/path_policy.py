"""Which dataset paths the service may open: local files under allowed roots, URLs under
allowed prefixes, nothing else.

:func:`check_paths` decides without opening anything (it resolves symlinks, which reads
directory entries, never file contents) and returns the paths to open: local paths fully
resolved, so that what was checked is what gets opened.

Refused: NUL bytes, empty paths, relative paths and a path listed twice (:class:`BadPath`);
``..`` components, local paths whose real location (symlinks resolved) lies outside every
root, URL schemes other than http, https and root (``file://``, ``ftp:``, ...), ``..`` in a
URL's path, and URLs that do not start with an allowed prefix (:class:`PathNotAllowed`).

A relative path is refused rather than resolved: against the server's working directory it
would mean whatever that directory happens to be, and against a root it would depend on the
order of the roots. Two entries that are the same file (the same string, or two names that
resolve to one file) are refused too: a dataset of one file read twice is a mistake, and
thousands of copies of one path would make the service open that file thousands of times.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from service.errors import BadPath, PathNotAllowed

__all__ = ["URL_SCHEMES", "BadPath", "PathNotAllowed", "check_path", "check_paths"]

URL_SCHEMES = ("http", "https", "root")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _under_prefix(url: str, prefix: str) -> bool:
    """``url`` starts with ``prefix`` at a boundary: ``http://a/data`` covers ``http://a/data/x``
    but not ``http://a/database`` nor ``http://a/data@evil``."""
    if not url.startswith(prefix):
        return False
    return prefix.endswith("/") or len(url) == len(prefix) or url[len(prefix)] in "/?#"


def _check_url(path: str, scheme: str, url_prefixes: Sequence[str]) -> str:
    if scheme.lower() not in URL_SCHEMES:
        raise PathNotAllowed(f"{path!r}: scheme {scheme}: is not allowed; use a local path or one of "
                             f"{', '.join(s + '://' for s in URL_SCHEMES)}")
    parts = urlsplit(path)
    if any(unquote(segment) in ("..", ".") for segment in parts.path.split("/")):
        raise PathNotAllowed(f"{path!r}: '..' or '.' segments are not allowed in a URL")
    if not any(_under_prefix(path, prefix) for prefix in url_prefixes):
        allowed = ", ".join(repr(p) for p in url_prefixes) if url_prefixes else "none are configured"
        raise PathNotAllowed(f"{path!r} is not under an allowed URL prefix ({allowed})")
    return path


def check_path(path: object, roots: Iterable[str | os.PathLike[str]], url_prefixes: Sequence[str] = ()) -> str:
    """The path to open for ``path``, or BadPath / PathNotAllowed naming it."""
    if not isinstance(path, str) or not path:
        raise BadPath(f"a dataset path must be a non-empty string, got {path!r:.80}")
    if "\x00" in path:
        raise BadPath(f"dataset path {path!r:.200} contains a NUL byte")
    scheme = _SCHEME.match(path)
    if scheme is not None:
        return _check_url(path, scheme.group(0)[:-1], url_prefixes)
    if ".." in Path(path).parts:
        raise PathNotAllowed(f"{path!r}: '..' is not allowed in a dataset path")
    if not os.path.isabs(path):
        raise BadPath(f"dataset path {path!r:.200} is relative: give an absolute path under an allowed root "
                      f"(relative paths are not resolved against the server's working directory)")
    real = Path(os.path.abspath(path)).resolve()  # follows every symlink
    resolved_roots = [Path(os.path.abspath(root)).resolve() for root in roots]
    if not any(real == root or root in real.parents for root in resolved_roots):
        where = f" (it resolves to {str(real)!r})" if str(real) != os.path.abspath(path) else ""
        allowed = ", ".join(repr(str(r)) for r in resolved_roots) if resolved_roots else "none are configured"
        raise PathNotAllowed(f"{path!r} is outside the allowed roots{where}; allowed: {allowed}")
    return str(real)


def check_paths(
    paths: Sequence[object], roots: Iterable[str | os.PathLike[str]], url_prefixes: Sequence[str] = ()
) -> list[str]:
    """Check every path (see the module docstring); returns the paths to open, in order.

    Duplicates are looked for twice: among the strings as given (before anything is resolved,
    so a list of thousands of copies is refused at once) and among the resolved paths."""
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence):
        raise BadPath(f"paths must be a list of strings, got {type(paths).__name__}")
    _no_duplicates(paths, paths)
    roots = list(roots)
    checked = [check_path(p, roots, url_prefixes) for p in paths]
    _no_duplicates(checked, paths)
    return checked


def _no_duplicates(items: Sequence[object], given: Sequence[object]) -> None:
    """BadPath naming the first entry of ``items`` equal to an earlier one (``given``: the
    paths as the caller wrote them, for the message)."""
    seen: dict[object, int] = {}
    for i, item in enumerate(items):
        try:
            first = seen.setdefault(item, i)
        except TypeError:  # not hashable: check_path says what is wrong with it
            continue
        if first != i:
            if given[first] == given[i]:
                raise BadPath(f"paths: {given[i]!r:.200} is listed twice (entries {first} and {i}); list each file once")
            raise BadPath(f"paths: {given[first]!r:.200} (entry {first}) and {given[i]!r:.200} (entry {i}) are the "
                          f"same file {item!r:.200}; list each file once")
