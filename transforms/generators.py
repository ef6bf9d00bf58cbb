"""Deterministic event generators (Numba kernels) whose output is NanoAOD as coffea reads it.

Event *i* of a generator depends only on (seed, i, parameters): its random numbers come
from the counter-based stream in :mod:`transforms._rng`, so ``generate(seed, 0, n)`` equals
the concatenation of ``generate(seed, a, b)`` over any split of [0, n), byte for byte.

Columns, in NanoAOD's order and types: the event ids ``run`` (uint32, the parameter ``run``,
default 1), ``luminosityBlock`` (uint32, ``1 + event // events_per_lumi``, default 1,000 events
per block) and ``event`` (uint64, the global event index, so every split gives the same ids);
then each collection's counter (``nMuon``, ``nJet``: uint32) and its jagged columns
(``Muon_pt``, ``Jet_eta``, ...: float32; ``Muon_charge``: int32). coffea's ``NanoAODSchema``
opens the output with its default options.

Generators (see ``ZMUMU_PARAMS`` and ``MULTIJET_PARAMS`` for the parameters and defaults):

``zmumu``
    Drell-Yan Z -> mu mu. Mass from a relativistic Breit-Wigner in m**2, truncated to
    [mass_min, mass_max] by inverse-CDF sampling; Z pT from a Gamma(2) spectrum of mean
    ``pt_mean`` (vanishes at pT = 0, exponential tail); Z rapidity Gaussian; isotropic decay in
    the Z rest frame; boost to the lab; Gaussian relative smearing of each muon pT. Then the
    detector acceptance: a muon is kept if its (stored, float32) pT > ``muon_pt_min`` (3 GeV,
    NanoAOD's muon threshold) and |eta| < ``muon_eta_max`` (2.4, the CMS muon system); the
    others are dropped, so ``nMuon`` is 0, 1 or 2 (about 14%, 27%, 59% of events with the defaults).
    Muons are dropped rather than events regenerated because that is what a detector does:
    every generated Z keeps its event id and the Z mass, pT and rapidity follow the
    parameters exactly (regenerating would bias the rapidity towards 0 and make the cost per
    event depend on the parameters); select ``nMuon == 2`` as on real NanoAOD. Kept muons are
    pT-ordered, opposite charges when both are kept. Optional extra jets as in ``multijet``
    with a Poisson mean ``extra_jets`` (default 0: ``nJet`` is all 0 but the Jet columns are
    there). Open the acceptance (``muon_pt_min: 0, muon_eta_max: 1000``) to keep both muons.
``multijet``
    QCD-like jets: Poisson jet count, power-law pT spectrum dN/dpT ~ pT**-pt_power above
    ``pt_min``, eta uniform in [-eta_max, eta_max], phi uniform, m/pT uniform in [0.05, 0.20].
    Jets are pT-ordered. Jets are generated inside their acceptance: ``pt_min`` (20 GeV) and
    ``eta_max`` (2.5, the tracker) are the thresholds (``jet_pt_min``, ``jet_eta_max`` for
    the extra jets of ``zmumu``).

Defaults: Z mass 91.1876 GeV, width 2.4952 GeV, window 60-120 GeV, mean Z pT 10 GeV, Z
rapidity sigma 2, 1% muon pT resolution, no extra jets; multijet 4 jets on average, pT > 20
GeV falling as pT**-4, |eta| < 2.5. Extra jets in ``zmumu`` are independent of the Z. With
the acceptance, the dimuon mass computed in float32 from the stored muons (as coffea does)
agrees with a float64 computation to better than 1e-5 relative; without it, muons at |eta|
up to 9 made the float32 mass wrong by up to 50 GeV.

Jagged columns of one collection (``Muon_*``, ``Jet_*``) share one offsets array; treat
offsets as read-only. Any change of output needs a new generator ``version`` (it is part of
recipe ids, so cached ranges of the old output are never served for the new).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from ._generator_base import ID_COLUMNS, ID_PARAMS, Generator, Param
from ._rng import event_base, normal, poisson, stream_key, uniform
from .columns import Column, ColumnType
from .errors import UnknownName

__all__ = ["GENERATORS", "Generator", "Param", "get_generator"]

MUON_MASS = 0.10566  # GeV, as stored in NanoAOD
MAX_JETS = 1000  # cap of one event's jet count (never reached for means <= 50)
_PI = math.pi
_TWO_PI = 2.0 * math.pi

# Fixed draw numbers per event (changing them changes the output: bump the version).
# zmumu: 0 mass, 1-2 Z pT, 3 Z rapidity, (4 unused), 5 Z phi, 6-7 decay angles, 8-9 pT smearing,
#        10 charge, 11 extra-jet count, 16 + 4 j + (0 pT, 1 eta, 2 phi, 3 mass) jet j.
# multijet: 0 jet count, 16 + 4 j + (...) jet j.
_K_JET_COUNT_ZMUMU = 11
_K_JET_COUNT_MULTIJET = 0
_K_JETS = 16
_STREAM_ZMUMU = 1
_STREAM_MULTIJET = 2


# ---------------------------------------------------------------- kernels


@njit(cache=True, error_model="numpy")
def _zmumu_kernel(key, first, n, mass, width, mass_min, mass_max, pt_mean, rapidity_sigma, smearing,
                  pt_min, eta_max, pt, eta, phi, charge, keep):  # fmt: skip
    """Both muons of each event [first, first + n), pT-ordered, in slots 2i and 2i + 1, and
    whether each is inside the acceptance (pT > pt_min, |eta| < eta_max, judged on the stored
    float32 values). No branch on the data and a fixed slot per event keep the loop
    vectorizable; :func:`_zmumu` drops the muons outside."""
    m2 = mass * mass
    mg = mass * width
    a_lo = math.atan((mass_min * mass_min - m2) / mg)
    a_span = math.atan((mass_max * mass_max - m2) / mg) - a_lo
    for i in range(n):
        base = event_base(key, first + i)
        s = m2 + mg * math.tan(a_lo + a_span * uniform(base, 0))
        m = math.sqrt(s)
        zpt = -0.5 * pt_mean * math.log(uniform(base, 1) * uniform(base, 2))
        y = rapidity_sigma * normal(base, 3)
        zphi = _TWO_PI * uniform(base, 5) - _PI
        cos_t = 2.0 * uniform(base, 6) - 1.0
        sin_t = math.sqrt(max(0.0, 1.0 - cos_t * cos_t))
        ang = _TWO_PI * uniform(base, 7)
        q = 1 if uniform(base, 10) < 0.5 else -1
        # rest frame: muon 1 along +p*, muon 2 along -p*
        e_star = 0.5 * m
        p_star = math.sqrt(max(0.0, e_star * e_star - MUON_MASS * MUON_MASS))
        px = p_star * sin_t * math.cos(ang)
        py = p_star * sin_t * math.sin(ang)
        pz = p_star * cos_t
        # Z four-velocity u = P/m with the Z along phi = 0; rotated by zphi at the end
        mt_over_m = math.sqrt(s + zpt * zpt) / m
        ey = math.exp(y)
        ux = zpt / m
        uz = 0.5 * mt_over_m * (ey - 1.0 / ey)
        gamma = 0.5 * mt_over_m * (ey + 1.0 / ey)
        up = (ux * px + uz * pz) / (gamma + 1.0)
        f1 = up + e_star
        f2 = -up + e_star
        x1, z1 = px + ux * f1, pz + uz * f1
        x2, z2 = -px + ux * f2, -pz + uz * f2
        t1 = math.sqrt(x1 * x1 + py * py)
        t2 = math.sqrt(x2 * x2 + py * py)
        eta1 = _eta(t1, z1)
        eta2 = _eta(t2, z2)
        phi1 = _wrap(math.atan2(py, x1) + zphi)
        phi2 = _wrap(math.atan2(-py, x2) + zphi)
        pt1 = t1 * max(1e-3, 1.0 + smearing * normal(base, 8))
        pt2 = t2 * max(1e-3, 1.0 + smearing * normal(base, 9))
        if pt2 > pt1:
            pt1, pt2, eta1, eta2, phi1, phi2, q = pt2, pt1, eta2, eta1, phi2, phi1, -q
        j = 2 * i
        pt[j], eta[j], phi[j], charge[j] = pt1, eta1, phi1, q
        pt[j + 1], eta[j + 1], phi[j + 1], charge[j + 1] = pt2, eta2, phi2, -q
        keep[j] = (pt[j] > pt_min) & (abs(eta[j]) < eta_max)
        keep[j + 1] = (pt[j + 1] > pt_min) & (abs(eta[j + 1]) < eta_max)


@njit(cache=True)
def _drop_outside(keep, pt, eta, phi, charge):  # fmt: skip
    """Move the kept muons to the front (in place, in order); the offsets of each event's."""
    n = len(keep) // 2
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[0] = 0
    j = 0
    for i in range(2 * n):
        if keep[i]:
            pt[j], eta[j], phi[j], charge[j] = pt[i], eta[i], phi[i], charge[i]
            j += 1
        if i % 2 == 1:
            offsets[i // 2 + 1] = j
    return offsets


@njit(cache=True, inline="always")
def _eta(pt: float, pz: float) -> float:
    """Pseudorapidity asinh(pz / pt), computed as log((p + |pz|) / pt) (cheaper, no cancellation)."""
    return math.copysign(math.log((math.sqrt(pt * pt + pz * pz) + abs(pz)) / pt), pz)


@njit(cache=True, inline="always")
def _wrap(angle: float) -> float:
    if angle >= _PI:
        return angle - _TWO_PI
    if angle < -_PI:
        return angle + _TWO_PI
    return angle


@njit(cache=True, error_model="numpy")
def _jet_offsets(key, first, n, k, mean):  # fmt: skip
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[0] = 0
    for i in range(n):
        offsets[i + 1] = offsets[i] + poisson(event_base(key, first + i), k, mean, MAX_JETS)
    return offsets


@njit(cache=True, error_model="numpy")
def _jet_fill(key, first, offsets, pt_min, pt_power, eta_max, pt, eta, phi, mass):  # fmt: skip
    exponent = -1.0 / (pt_power - 1.0)
    for i in range(len(offsets) - 1):
        base = event_base(key, first + i)
        lo = offsets[i]
        for j in range(offsets[i + 1] - lo):
            k = _K_JETS + 4 * j
            jpt = np.float32(pt_min * uniform(base, k) ** exponent)
            jeta = eta_max * (2.0 * uniform(base, k + 1) - 1.0)
            jphi = _TWO_PI * uniform(base, k + 2) - _PI
            jmass = jpt * (0.05 + 0.15 * uniform(base, k + 3))
            at = lo + j  # insertion sort: keep the event's jets in decreasing pT
            while at > lo and pt[at - 1] < jpt:
                pt[at], eta[at], phi[at], mass[at] = pt[at - 1], eta[at - 1], phi[at - 1], mass[at - 1]
                at -= 1
            pt[at], eta[at], phi[at], mass[at] = jpt, jeta, jphi, jmass


def _jets(key: np.uint64, first: int, n: int, k_count: int, mean: float, pt_min: float,
          pt_power: float, eta_max: float) -> dict[str, Column]:  # fmt: skip
    if mean <= 0.0:
        empty, offsets = np.empty(0, dtype=np.float32), np.zeros(n + 1, dtype=np.int64)
        return {"nJet": Column(np.zeros(n, dtype=np.uint32))} | {
            name: Column(empty, offsets) for name in ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass")
        }
    offsets = _jet_offsets(key, first, n, k_count, mean)
    total = int(offsets[-1])
    pt, eta, phi, mass = (np.empty(total, dtype=np.float32) for _ in range(4))
    if total:
        _jet_fill(key, first, offsets, pt_min, pt_power, eta_max, pt, eta, phi, mass)
    return {
        "nJet": Column(np.diff(offsets).astype(np.uint32)),
        "Jet_pt": Column(pt, offsets),
        "Jet_eta": Column(eta, offsets),
        "Jet_phi": Column(phi, offsets),
        "Jet_mass": Column(mass, offsets),
    }


def _zmumu(seed: int, first: int, n: int, p: dict[str, Any]) -> dict[str, Column]:
    key = np.uint64(stream_key(np.uint64(seed), np.uint64(_STREAM_ZMUMU)))
    pt, eta, phi = (np.empty(2 * n, dtype=np.float32) for _ in range(3))
    charge = np.empty(2 * n, dtype=np.int32)
    keep = np.empty(2 * n, dtype=np.bool_)
    _zmumu_kernel(key, first, n, p["mass"], p["width"], p["mass_min"], p["mass_max"], p["pt_mean"],
                  p["rapidity_sigma"], p["smearing"], p["muon_pt_min"], p["muon_eta_max"],
                  pt, eta, phi, charge, keep)  # fmt: skip
    offsets = _drop_outside(keep, pt, eta, phi, charge)
    total = int(offsets[-1])
    pt, eta, phi, charge = (a[:total].copy() for a in (pt, eta, phi, charge))
    muons = {
        "nMuon": Column(np.diff(offsets).astype(np.uint32)),
        "Muon_pt": Column(pt, offsets),
        "Muon_eta": Column(eta, offsets),
        "Muon_phi": Column(phi, offsets),
        "Muon_mass": Column(np.full(total, MUON_MASS, dtype=np.float32), offsets),
        "Muon_charge": Column(charge, offsets),
    }
    jets = _jets(key, first, n, _K_JET_COUNT_ZMUMU, p["extra_jets"], p["jet_pt_min"], p["jet_pt_power"],
                 p["jet_eta_max"])  # fmt: skip
    return muons | jets


def _multijet(seed: int, first: int, n: int, p: dict[str, Any]) -> dict[str, Column]:
    key = np.uint64(stream_key(np.uint64(seed), np.uint64(_STREAM_MULTIJET)))
    return _jets(key, first, n, _K_JET_COUNT_MULTIJET, p["jets_mean"], p["pt_min"], p["pt_power"], p["eta_max"])


# ---------------------------------------------------------------- registry

_F32J = ColumnType("float32", jagged=True)
_JET_COLUMNS = (
    ("nJet", ColumnType("uint32")),
    ("Jet_pt", _F32J),
    ("Jet_eta", _F32J),
    ("Jet_phi", _F32J),
    ("Jet_mass", _F32J),
)
_MUON_COLUMNS = (
    ("nMuon", ColumnType("uint32")),
    ("Muon_pt", _F32J),
    ("Muon_eta", _F32J),
    ("Muon_phi", _F32J),
    ("Muon_mass", _F32J),
    ("Muon_charge", ColumnType("int32", jagged=True)),
)

ZMUMU_PARAMS = (
    Param("mass", 91.1876, "Z pole mass, GeV (PDG)", 2 * MUON_MASS, 1e4, low_open=True),
    Param("width", 2.4952, "Z total width, GeV (PDG)", 0.0, 1e3, low_open=True),
    Param("mass_min", 60.0, "lower edge of the Breit-Wigner window, GeV", 2 * MUON_MASS, 1e4, low_open=True),
    Param("mass_max", 120.0, "upper edge of the Breit-Wigner window, GeV", 2 * MUON_MASS, 1e4, low_open=True),
    Param("pt_mean", 10.0, "mean Z pT, GeV (Gamma(2) spectrum, peak at pt_mean / 2)", 0.0, 1e4),
    Param("rapidity_sigma", 2.0, "standard deviation of the Gaussian Z rapidity", 0.0, 10.0),
    Param("smearing", 0.01, "relative Gaussian muon pT resolution", 0.0, 0.2),
    Param("muon_pt_min", 3.0, "muons are kept if pT > muon_pt_min, GeV (after smearing; NanoAOD keeps 3 GeV)",
          0.0, 1e4),
    Param("muon_eta_max", 2.4, "muons are kept if |eta| < muon_eta_max (the CMS muon system)", 0.0, 1e3,
          low_open=True),
    Param("extra_jets", 0.0, "Poisson mean number of extra jets per event", 0.0, 50.0),
    Param("jet_pt_min", 20.0, "minimum extra-jet pT, GeV", 0.0, 1e4, low_open=True),
    Param("jet_pt_power", 4.0, "extra-jet spectrum dN/dpT ~ pT**-power", 1.0, 20.0, low_open=True),
    Param("jet_eta_max", 2.5, "extra jets are uniform in |eta| <= jet_eta_max", 0.0, 10.0, low_open=True),
)

MULTIJET_PARAMS = (
    Param("jets_mean", 4.0, "Poisson mean number of jets per event", 0.0, 50.0),
    Param("pt_min", 20.0, "minimum jet pT, GeV", 0.0, 1e4, low_open=True),
    Param("pt_power", 4.0, "jet spectrum dN/dpT ~ pT**-power (mean pT = pt_min (n-1)/(n-2))", 1.0, 20.0, low_open=True),
    Param("eta_max", 2.5, "jets are uniform in |eta| <= eta_max", 0.0, 10.0, low_open=True),
)


def _zmumu_cross_check(p: dict[str, Any]) -> list[str]:
    if p["mass_min"] >= p["mass_max"]:
        return [f"mass_min must be < mass_max (got {p['mass_min']} >= {p['mass_max']})"]
    if not p["mass_min"] <= p["mass"] <= p["mass_max"]:
        return [f"mass must lie in [mass_min, mass_max] = [{p['mass_min']}, {p['mass_max']}] (got {p['mass']})"]
    return []


GENERATORS: dict[str, Generator] = {
    "zmumu": Generator(
        "zmumu", "2", "Z -> mu mu with optional extra jets", ZMUMU_PARAMS + ID_PARAMS,
        ID_COLUMNS + _MUON_COLUMNS + _JET_COLUMNS, _zmumu, _zmumu_cross_check,
    ),  # fmt: skip
    "multijet": Generator(
        "multijet", "2", "QCD-like multi-jet events", MULTIJET_PARAMS + ID_PARAMS, ID_COLUMNS + _JET_COLUMNS,
        _multijet, lambda p: [],
    ),  # fmt: skip
}


def get_generator(name: str) -> Generator:
    """The generator called ``name``; :class:`UnknownName` lists the known ones."""
    try:
        return GENERATORS[name]
    except (KeyError, TypeError):
        raise UnknownName(f"unknown generator {name!r}; known generators: {', '.join(sorted(GENERATORS))}") from None
