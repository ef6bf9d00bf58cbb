"""Synthetic NanoAOD-like ROOT files, for the demo, benchmarks and tests.

A TTree ``Events`` with flat event columns (``run``, ``luminosityBlock``, ``event``, ``MET_*``,
``HLT_*``) and jagged collections ``Muon_*`` (counter ``nMuon``), ``Jet_*`` (``nJet``) and
``Electron_*`` (``nElectron``): 23 branches, drawn with NumPy from a fixed seed, written with
uproot's ``mktree`` + ``extend`` (one cluster per ``chunk_events``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot
from transforms.atomic import atomic_path

__all__ = ["write_nanoaod_like"]

TREE = "Events"
COMPRESSIONS = {"zlib": uproot.ZLIB, "lz4": uproot.LZ4, "zstd": uproot.ZSTD}


def _collection(rng: np.random.Generator, counts: np.ndarray, fields: dict[str, str]) -> ak.Array:
    """A record of jagged fields; ``fields`` maps a field name to the kind of values to draw."""
    total = int(counts.sum())
    draw = {
        "pt": lambda: (rng.exponential(25.0, total) + 5.0).astype(np.float32),
        "eta": lambda: rng.normal(0.0, 1.4, total).clip(-4.7, 4.7).astype(np.float32),
        "phi": lambda: rng.uniform(-np.pi, np.pi, total).astype(np.float32),
        "mass": lambda: rng.gamma(2.0, 4.0, total).astype(np.float32),
        "charge": lambda: (rng.integers(0, 2, total, dtype=np.int32) * 2 - 1).astype(np.int32),
        "btag": lambda: rng.beta(0.5, 2.0, total).astype(np.float32),
        "muon_mass": lambda: np.full(total, 0.10566, dtype=np.float32),
    }
    return ak.zip({name: ak.unflatten(draw[kind](), counts) for name, kind in fields.items()})


def _chunk(rng: np.random.Generator, start: int, n: int) -> dict[str, Any]:
    """``n`` NanoAOD-like events whose event numbers start at ``start + 1``."""
    n_muon = rng.poisson(1.3, n).astype(np.int64)
    n_jet = rng.poisson(4.5, n).astype(np.int64)
    n_ele = rng.poisson(0.8, n).astype(np.int64)
    event = np.arange(start, start + n, dtype=np.uint64) + 1
    return {
        "run": np.full(n, 362_000, dtype=np.uint32) + (event // 500_000).astype(np.uint32),
        "luminosityBlock": (1 + (event // 1_000) % 2_000).astype(np.uint32),
        "event": event,
        "MET_pt": rng.exponential(30.0, n).astype(np.float32),
        "MET_phi": rng.uniform(-np.pi, np.pi, n).astype(np.float32),
        "HLT_IsoMu24": rng.random(n) < 0.3,
        "HLT_Ele32_WPTight_Gsf": rng.random(n) < 0.2,
        "HLT_PFJet500": rng.random(n) < 0.05,
        "Muon": _collection(rng, n_muon, {"pt": "pt", "eta": "eta", "phi": "phi", "mass": "muon_mass", "charge": "charge"}),
        "Jet": _collection(rng, n_jet, {"pt": "pt", "eta": "eta", "phi": "phi", "mass": "mass", "btag": "btag"}),
        "Electron": _collection(rng, n_ele, {"pt": "pt", "eta": "eta"}),
    }


def write_nanoaod_like(
    path: str | os.PathLike[str],
    events: int,
    *,
    seed: int = 20261125,
    compression: str = "zlib",
    level: int = 1,
    chunk_events: int = 100_000,
) -> Path:
    """Write ``events`` NanoAOD-like events to ``path`` (atomically: a temporary name, then rename)."""
    if events < 1 or chunk_events < 1:
        raise ValueError(f"events and chunk_events must be >= 1, got {events} and {chunk_events}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
    path = Path(path)
    rng = np.random.default_rng(seed)
    with atomic_path(path) as tmp:
        with uproot.recreate(tmp, compression=COMPRESSIONS[compression](level)) as f:
            tree = None
            for start in range(0, events, chunk_events):
                data = _chunk(rng, start, min(chunk_events, events - start))
                if tree is None:
                    types = {k: v.type.content if isinstance(v, ak.Array) else v.dtype for k, v in data.items()}
                    tree = f.mktree(TREE, types)
                tree.extend(data)
    return path
