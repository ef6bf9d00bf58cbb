"""Where generated kernels live: one ``expr_<sha256>.py`` per kernel source in the kernel
cache folder, imported from there so that ``@njit(cache=True)`` can keep its machine code
beside it (``__pycache__``, or ``NUMBA_CACHE_DIR`` when set) for the next process.

The folder is ``$VDATA_KERNEL_CACHE`` if set, else ``~/.cache/vdata/kernels``, read at every
call (not at import). Files are written atomically (temporary name, then ``os.replace``) and
only when missing or different, so that a file other processes use keeps its modification
time (Numba's cache checks it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from transforms.atomic import write_atomic

__all__ = ["kernel_cache_dir", "load_kernel"]

_lock = threading.Lock()
_loaded: dict[str, tuple[Path, Callable[..., Any]]] = {}


def kernel_cache_dir() -> Path:
    """The kernel cache folder (created if missing)."""
    configured = os.environ.get("VDATA_KERNEL_CACHE")
    path = Path(configured).expanduser() if configured else Path.home() / ".cache" / "vdata" / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_kernel(source: str) -> tuple[Path, Callable[..., Any]]:
    """The ``kernel`` function of ``source``, written to (or found in) the cache folder."""
    sha = hashlib.sha256(source.encode()).hexdigest()
    folder = kernel_cache_dir()
    with _lock:
        known = _loaded.get(sha)
        if known is not None and known[0].parent == folder:
            return known
        path = folder / f"expr_{sha}.py"
        if not path.is_file() or path.read_text() != source:
            write_atomic(path, source)
        spec = importlib.util.spec_from_file_location(f"_vdata_expr_{sha}", path)
        if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has a loader
            raise ImportError(f"cannot import generated kernel {path}")
        module = importlib.util.module_from_spec(spec)
        # Numba finds a function's globals through its module's name, also when it loads
        # machine code from its cache: the module must be in sys.modules.
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _loaded[sha] = (path, module.kernel)
        return _loaded[sha]


