"""Built-in physics transforms (:data:`BUILTINS`); :mod:`transforms.registry` registers them.

Conventions (float64 inside, float64 outputs):

- Four-vectors are (px, py, pz, e) or (pt, eta, phi, m); phi lies in [-pi, pi].
- A mass squared below zero (rounding on nearly massless objects) gives a *negative* mass
  ``-sqrt(-m2)``, as ROOT's ``TLorentzVector::M`` does; ``ptetaphim_to_pxpypze`` reads a
  negative mass back the same way (e = sqrt(p^2 - m^2)), so the conversions round-trip.
- "Leading" means highest pT, found in the event (not assumed from the order of the
  collection); among equal pT the earlier entry leads. On a pT-ordered collection this is the
  first entries. Kernels that need two objects give NaN for events with fewer.
- ``met`` is minus the vector sum of the objects' (px, py); its phi is 0 where it is 0.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from transforms.transform import Transform, transform

__all__ = [
    "all_pairs_mass",
    "delta_r",
    "delta_r_to",
    "leading",
    "leading_delta_r",
    "leading_pair_mass",
    "leading_pair_mass_ptetaphim",
    "met",
    "ptetaphim_to_pxpypze",
    "pxpypze_to_ptetaphim",
]

_J4 = {"px": "jagged", "py": "jagged", "pz": "jagged", "e": "jagged"}
_F64 = "float64"


@njit(cache=True, error_model="numpy")
def _signed_sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0.0 else -math.sqrt(-x)


@njit(cache=True, error_model="numpy")
def _mass(px: float, py: float, pz: float, e: float) -> float:
    return _signed_sqrt(e * e - (px * px + py * py + pz * pz))


@njit(cache=True, error_model="numpy")
def _to_cartesian(pt: float, eta: float, phi: float, m: float) -> tuple[float, float, float, float]:
    pt, eta, phi, m = np.float64(pt), np.float64(eta), np.float64(phi), np.float64(m)
    px, py, pz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
    p2 = px * px + py * py + pz * pz
    return px, py, pz, math.sqrt(max(p2 + m * abs(m), 0.0))


@njit(cache=True, error_model="numpy")
def _delta_r(eta1: float, phi1: float, eta2: float, phi2: float) -> float:
    dphi = (np.float64(phi1) - np.float64(phi2) + math.pi) % (2.0 * math.pi) - math.pi
    deta = np.float64(eta1) - np.float64(eta2)
    return math.sqrt(deta * deta + dphi * dphi)


@njit(cache=True, error_model="numpy")
def _top_two(key: np.ndarray) -> tuple[int, int]:
    """Indices of the two largest entries (earlier first among equals); -1 where missing."""
    first, second = -1, -1
    for j in range(len(key)):
        if first < 0 or key[j] > key[first]:
            first, second = j, first
        elif second < 0 or key[j] > key[second]:
            second = j
    return first, second


@njit(cache=True, error_model="numpy")
def _pt2(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    out = np.empty(len(px))
    for j in range(len(px)):
        out[j] = np.float64(px[j]) ** 2 + np.float64(py[j]) ** 2
    return out


@njit(cache=True, error_model="numpy")
def _pair_mass(px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray, a: int, b: int) -> float:
    return _mass(
        np.float64(px[a]) + np.float64(px[b]), np.float64(py[a]) + np.float64(py[b]),
        np.float64(pz[a]) + np.float64(pz[b]), np.float64(e[a]) + np.float64(e[b]),
    )


@transform(inputs=_J4, outputs={"pt": _F64, "eta": _F64, "phi": _F64, "m": _F64}, kind="element")
def pxpypze_to_ptetaphim(px: float, py: float, pz: float, e: float) -> tuple[float, float, float, float]:
    """(px, py, pz, e) -> (pt, eta, phi, m); eta is +-inf (or NaN) where pt is 0."""
    px, py, pz, e = np.float64(px), np.float64(py), np.float64(pz), np.float64(e)
    pt = math.hypot(px, py)
    return pt, math.asinh(pz / pt), math.atan2(py, px), _mass(px, py, pz, e)


@transform(
    inputs={"pt": "jagged", "eta": "jagged", "phi": "jagged", "m": "jagged"},
    outputs={"px": _F64, "py": _F64, "pz": _F64, "e": _F64},
    kind="element",
)
def ptetaphim_to_pxpypze(pt: float, eta: float, phi: float, m: float) -> tuple[float, float, float, float]:
    """(pt, eta, phi, m) -> (px, py, pz, e)."""
    return _to_cartesian(pt, eta, phi, m)


@transform(inputs=_J4, outputs={"mass": _F64}, kind="event")
def leading_pair_mass(px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray) -> float:
    """Invariant mass of the two highest-pT objects; NaN with fewer than two."""
    a, b = _top_two(_pt2(px, py))
    if b < 0:
        return np.nan
    return _pair_mass(px, py, pz, e, a, b)


@transform(
    inputs={"pt": "jagged", "eta": "jagged", "phi": "jagged", "m": "jagged"},
    outputs={"mass": _F64},
    kind="event",
)
def leading_pair_mass_ptetaphim(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, m: np.ndarray) -> float:
    """Invariant mass of the two highest-pT objects given as (pt, eta, phi, m); NaN with fewer."""
    a, b = _top_two(pt)
    if b < 0:
        return np.nan
    px1, py1, pz1, e1 = _to_cartesian(pt[a], eta[a], phi[a], m[a])
    px2, py2, pz2, e2 = _to_cartesian(pt[b], eta[b], phi[b], m[b])
    return _mass(px1 + px2, py1 + py2, pz1 + pz2, e1 + e2)


@transform(inputs=_J4, outputs={"mass": _F64}, kind="event_list", max_size="pairs")
def all_pairs_mass(px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray, mass: np.ndarray) -> int:
    """Invariant mass of every pair (i < j, in the order (0,1), (0,2), ..., (1,2), ...)."""
    k = 0
    for a in range(len(px)):
        for b in range(a + 1, len(px)):
            mass[k] = _pair_mass(px, py, pz, e, a, b)
            k += 1
    return k


@transform(
    inputs={"eta1": "jagged", "phi1": "jagged", "eta2": "jagged", "phi2": "jagged"},
    outputs={"dr": _F64},
    kind="element",
)
def delta_r(eta1: float, phi1: float, eta2: float, phi2: float) -> float:
    """sqrt(deta^2 + dphi^2) with dphi wrapped to [-pi, pi]; give flat inputs via ``delta_r_to``."""
    return _delta_r(eta1, phi1, eta2, phi2)


@transform(
    inputs={"eta": "jagged", "phi": "jagged", "eta0": "flat", "phi0": "flat"},
    outputs={"dr": _F64},
    kind="element",
)
def delta_r_to(eta: float, phi: float, eta0: float, phi0: float) -> float:
    """delta-R of each object to one direction per event (e.g. the leading muon's)."""
    return _delta_r(eta, phi, eta0, phi0)


@transform(inputs={"pt": "jagged", "eta": "jagged", "phi": "jagged"}, outputs={"dr": _F64}, kind="event")
def leading_delta_r(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> float:
    """delta-R of the two highest-pT objects; NaN with fewer than two."""
    a, b = _top_two(pt)
    if b < 0:
        return np.nan
    return _delta_r(eta[a], phi[a], eta[b], phi[b])


@transform(inputs={"pt": "jagged", "value": "jagged"}, outputs={"value": _F64}, kind="event")
def leading(pt: np.ndarray, value: np.ndarray) -> float:
    """``value`` of the highest-pT object (pt and value of one collection); NaN if none."""
    if len(pt) != len(value):
        raise ValueError("pt and value have different lengths in an event")
    a, _ = _top_two(pt)
    return np.nan if a < 0 else np.float64(value[a])


@transform(inputs={"px": "jagged", "py": "jagged"}, outputs={"met_pt": _F64, "met_phi": _F64}, kind="event")
def met(px: np.ndarray, py: np.ndarray) -> tuple[float, float]:
    """Missing transverse momentum: minus the vector sum of the objects' (px, py)."""
    sx, sy = 0.0, 0.0
    for j in range(len(px)):
        sx += np.float64(px[j])
        sy += np.float64(py[j])
    pt = math.hypot(sx, sy)
    return pt, (math.atan2(-sy, -sx) if pt > 0.0 else 0.0)


BUILTINS: tuple[Transform, ...] = (
    pxpypze_to_ptetaphim, ptetaphim_to_pxpypze, leading_pair_mass, leading_pair_mass_ptetaphim,
    all_pairs_mass, delta_r, delta_r_to, leading_delta_r, leading, met,
)
