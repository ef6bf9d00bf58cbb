"""The named transforms: the built-ins of :mod:`transforms.physics` and any registered since.

A name maps to one code hash for the life of the process (registering it again with other code
is refused). The table is built from :data:`transforms.physics.BUILTINS`; nothing this module
imports imports it back. Scientists' transforms are not kept here: a catalog keeps its own.

``Transform``, the ``transform`` decorator and the signature helpers live in
:mod:`transforms.transform` and are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import difflib
import threading

from transforms import physics
from transforms._drivers import exec_source, kernel_dir
from transforms.errors import TransformSignatureError, UnknownName
from transforms.transform import (
    INPUT_KINDS,
    KERNEL_OPTIONS,
    KINDS,
    MAX_SIZES,
    Transform,
    check_signature,
    code_hash,
    kernel_parameters,
    normalise_source,
    summarise_numba_error,
    transform,
)

__all__ = [
    "INPUT_KINDS", "KERNEL_OPTIONS", "KINDS", "MAX_SIZES", "Transform", "check_signature", "code_hash",
    "exec_source", "get_transform", "kernel_dir", "kernel_parameters", "list_transforms", "normalise_source",
    "register", "summarise_numba_error", "transform",
]  # fmt: skip

_LOCK = threading.Lock()  # guards _REGISTRY; taken alone, never while waiting on anything else
_REGISTRY: dict[str, Transform] = {t.name: t for t in physics.BUILTINS}


def register(t: Transform) -> Transform:
    """Add ``t``; a name may be registered again only with the same code hash."""
    with _LOCK:
        old = _REGISTRY.get(t.name)
        if old is not None and old.code_hash != t.code_hash:
            raise TransformSignatureError(f"transform {t.name!r} is registered already with other code")
        _REGISTRY[t.name] = t
    return t


def get_transform(name: str) -> Transform:
    """The registered transform ``name`` (built-ins always included)."""
    with _LOCK:
        found = _REGISTRY.get(name)
        known = list(_REGISTRY)
    if found is not None:
        return found
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(known))}"
    raise UnknownName(f"no transform named {name!r}; {hint}")


def list_transforms() -> list[Transform]:
    """Every registered transform, sorted by name."""
    with _LOCK:
        return [_REGISTRY[n] for n in sorted(_REGISTRY)]
