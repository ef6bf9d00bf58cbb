"""Event generators: partition invariance, determinism, physics sanity, parameter checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.columns import Column
from transforms.errors import GeneratorParamError, UnknownName
from transforms.generators import GENERATORS, Generator, get_generator

JETS_ON = {"zmumu": {"extra_jets": 2.5}, "multijet": {}}
OPEN = {"muon_pt_min": 0.0, "muon_eta_max": 1000.0}  # no acceptance: both muons of every Z
Z_MASS = 91.1876


def concat(pieces: list[dict[str, Column]]) -> dict[str, Column]:
    """Columns of consecutive ranges joined, offsets re-based: what one call should return."""
    out = {}
    for name, first in pieces[0].items():
        values = np.concatenate([p[name].values for p in pieces])
        if first.offsets is None:
            out[name] = Column(values)
            continue
        offsets, total = [np.zeros(1, dtype=np.int64)], 0
        for p in pieces:
            offsets.append(p[name].offsets[1:] + total)
            total += int(p[name].offsets[-1])
        out[name] = Column(values, np.concatenate(offsets))
    return out


def assert_same_bytes(a: dict[str, Column], b: dict[str, Column]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].values.dtype == b[name].values.dtype, name
        assert a[name].values.tobytes() == b[name].values.tobytes(), name
        if a[name].offsets is None:
            assert b[name].offsets is None, name
        else:
            assert b[name].offsets is not None, name
            assert a[name].offsets.tobytes() == b[name].offsets.tobytes(), name


def dimuon(columns: dict[str, Column]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent NumPy reference: (mass, pT, rapidity) of the two muons of each event."""
    pt, eta, phi, mass = (columns[f"Muon_{v}"].values.astype(np.float64) for v in ("pt", "eta", "phi", "mass"))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    e, px, py, pz = (x[0::2] + x[1::2] for x in (e, px, py, pz))
    return np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0)), np.hypot(px, py), 0.5 * np.log((e + pz) / (e - pz))


def peak(masses: np.ndarray, bin_width: float = 0.05, half_window: float = 1.0) -> float:
    """The mode of a distribution: a parabola fitted to a fine histogram in a window that is
    re-centred on the fitted vertex until it settles (symmetric window, so no pull to one side)."""
    counts, edges = np.histogram(masses, bins=np.arange(60.0, 120.0 + bin_width / 2, bin_width))
    centres = 0.5 * (edges[1:] + edges[:-1])
    smooth = np.convolve(counts, np.ones(9) / 9, mode="same")
    centre = float(centres[np.argmax(smooth)])
    for _ in range(5):
        sel = np.abs(centres - centre) <= half_window
        a, b, _c = np.polyfit(centres[sel] - centre, counts[sel], 2)
        assert a < 0, "no maximum in the window"
        centre += -b / (2 * a)
    return centre


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", sorted(GENERATORS))
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    first=st.one_of(st.integers(0, 1000), st.integers(0, 2**62)),
    n=st.integers(0, 600),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=5),
)
def test_any_split_gives_the_same_bytes(name: str, seed: int, first: int, n: int, cuts: list[float]) -> None:
    gen = get_generator(name)
    # luminosity blocks of 7 events where the ids fit in a uint32 (block boundaries inside ranges)
    params = JETS_ON[name] | {"events_per_lumi": max(7, (first + n) // 2**31 + 1)}
    whole = gen.generate(seed, first, first + n, params)
    points = sorted({first, first + n, *(first + int(c * n) for c in cuts)})
    pieces = [gen.generate(seed, a, b, params) for a, b in zip(points[:-1], points[1:], strict=True)]
    assert_same_bytes(concat(pieces) if pieces else whole, whole)
    assert (whole["event"].values == np.arange(first, first + n, dtype=np.uint64)).all()
    if name == "zmumu" and n >= 20:
        assert set(whole["Jet_pt"].counts()) != {0}, "extra jets were not exercised"


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_same_bytes_other_seed_other_data(name: str) -> None:
    gen = get_generator(name)
    params = JETS_ON[name]
    a = gen.generate(7, 100, 2100, params)
    assert_same_bytes(a, gen.generate(7, 100, 2100, params))
    b = gen.generate(8, 100, 2100, params)
    for column in ("Jet_pt", "Muon_pt") if name == "zmumu" else ("Jet_pt",):
        assert not np.array_equal(a[column].values[:100], b[column].values[:100]), column
    shifted = gen.generate(7, 101, 2101, params)  # event i is not a copy of event i + 1
    assert events(a, "Jet_pt")[1:] == events(shifted, "Jet_pt")[:-1]
    assert events(a, "Jet_pt")[:-1] != events(shifted, "Jet_pt")[:-1]


def events(columns: dict[str, Column], name: str) -> list[list[float]]:
    column = columns[name]
    assert column.offsets is not None
    return [v.tolist() for v in np.split(column.values, column.offsets[1:-1])]


def test_generators_use_different_streams() -> None:
    z = get_generator("zmumu").generate(3, 0, 1000, {"extra_jets": 4.0, "jet_pt_min": 20.0})
    j = get_generator("multijet").generate(3, 0, 1000, {"jets_mean": 4.0})
    assert not np.array_equal(z["nJet"].values, j["nJet"].values)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_schema_matches_the_columns(name: str) -> None:
    gen = get_generator(name)
    columns = gen.generate(1, 0, 50, JETS_ON[name])
    schema = gen.schema(JETS_ON[name])
    assert list(schema) == list(columns)
    assert {k: c.type for k, c in columns.items()} == schema
    assert gen.schema() == schema
    empty = gen.generate(1, 5, 5, JETS_ON[name])
    assert list(empty) == list(schema) and all(len(c) == 0 for c in empty.values())


def test_zmumu_column_order_and_types_are_nanoaod() -> None:
    schema = get_generator("zmumu").schema()
    assert list(schema) == [
        "run", "luminosityBlock", "event",
        "nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge",
        "nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass",
    ]  # fmt: skip
    flat = {name: str(t) for name, t in schema.items() if not t.jagged}
    assert flat == {"run": "uint32", "luminosityBlock": "uint32", "event": "uint64", "nMuon": "uint32", "nJet": "uint32"}
    assert {str(t) for name, t in schema.items() if t.jagged and name != "Muon_charge"} == {"var * float32"}
    assert str(schema["Muon_charge"]) == "var * int32"
    assert list(get_generator("multijet").schema())[:4] == ["run", "luminosityBlock", "event", "nJet"]


# ---------------------------------------------------------------- event ids


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_event_ids(name: str) -> None:
    gen = get_generator(name)
    ids = gen.generate(5, 995, 1012, {"run": 362_104, "events_per_lumi": 10})
    assert (ids["event"].values == np.arange(995, 1012)).all()
    assert ids["luminosityBlock"].values.tolist() == [100] * 5 + [101] * 10 + [102] * 2  # 1 + event // 10
    assert (ids["run"].values == 362_104).all()
    default = gen.generate(5, 998, 1001)  # 1,000 events per block, run 1
    assert default["luminosityBlock"].values.tolist() == [1, 1, 2] and (default["run"].values == 1).all()
    other = get_generator("zmumu" if name == "multijet" else "multijet").generate(6, 995, 1012)
    assert (other["event"].values == ids["event"].values).all()  # the index, not a random number


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_luminosity_blocks_beyond_uint32_are_refused(name: str) -> None:
    gen = get_generator(name)
    last_fitting = (2**32 - 1) * 1000  # event 2**32 - 2 blocks of 1,000 events, then block 2**32 - 1
    assert gen.event_problems(last_fitting, gen.validate()) == []
    assert gen.generate(1, last_fitting - 1, last_fitting)["luminosityBlock"].values[0] == 2**32 - 1
    with pytest.raises(GeneratorParamError) as info:
        gen.generate(1, last_fitting, last_fitting + 1)
    assert "events_per_lumi=1000" in str(info.value) and "use events_per_lumi >= 1001" in str(info.value)
    assert gen.generate(1, last_fitting, last_fitting + 1, {"events_per_lumi": 1001})["luminosityBlock"].values[0] > 0


# ---------------------------------------------------------------- physics


@pytest.fixture(scope="module")
def zmumu_events() -> dict[str, Column]:
    return get_generator("zmumu").generate(2024, 0, 1_000_000, OPEN)


def test_dimuon_mass_peaks_at_the_z_mass(zmumu_events: dict[str, Column]) -> None:
    mass, pt, rapidity = dimuon(zmumu_events)
    assert abs(peak(mass) - Z_MASS) < 0.1
    assert 55.0 < mass.min() and mass.max() < 125.0  # Breit-Wigner window, plus smearing
    assert np.mean((mass < 59.0) | (mass > 121.0)) < 1e-4
    assert abs(pt.mean() - 10.0) < 0.1  # pt_mean
    assert abs(np.median(pt) - 8.39) < 0.1  # Gamma(2, 5): median 5 * 1.678
    assert abs(rapidity.std() - 2.0) < 0.02  # rapidity_sigma


def test_dimuon_mass_peak_follows_the_mass_parameter() -> None:
    masses = dimuon(get_generator("zmumu").generate(2024, 0, 1_000_000, OPEN | {"mass": 91.5}))[0]
    assert abs(peak(masses) - 91.5) < 0.1
    assert abs(peak(masses) - Z_MASS) > 0.2  # so the test above can fail


def test_zmumu_muons(zmumu_events: dict[str, Column]) -> None:
    n = len(zmumu_events["nMuon"])
    assert (zmumu_events["nMuon"].values == 2).all() and zmumu_events["nMuon"].values.dtype == np.uint32
    assert (zmumu_events["Muon_pt"].offsets == np.arange(0, 2 * n + 1, 2)).all()
    charge = zmumu_events["Muon_charge"].values.reshape(-1, 2)
    assert (charge.sum(axis=1) == 0).all() and set(np.unique(charge)) == {-1, 1}
    assert abs((charge[:, 0] == 1).mean() - 0.5) < 0.005
    for v in ("pt", "eta", "phi"):
        assert np.isfinite(zmumu_events[f"Muon_{v}"].values).all(), v
    pt = zmumu_events["Muon_pt"].values.reshape(-1, 2)
    assert (pt[:, 0] >= pt[:, 1]).all() and (pt > 0).all()
    phi = zmumu_events["Muon_phi"].values
    assert phi.min() >= -np.float32(math.pi) and phi.max() <= np.float32(math.pi)
    assert (zmumu_events["Muon_mass"].values == np.float32(0.10566)).all()
    assert (zmumu_events["nJet"].values == 0).all() and len(zmumu_events["Jet_pt"].values) == 0


@pytest.fixture(scope="module")
def accepted_events() -> dict[str, Column]:
    return get_generator("zmumu").generate(2024, 0, 1_000_000, {})


def test_zmumu_acceptance_drops_muons_outside_it(zmumu_events: dict[str, Column], accepted_events: dict[str, Column]) -> None:
    """The default acceptance keeps exactly the muons of the same events (same seed, all
    muons kept) with pT > 3 GeV and |eta| < 2.4, in the same order; event ids are untouched."""
    pt, eta = (zmumu_events[f"Muon_{v}"].values.reshape(-1, 2) for v in ("pt", "eta"))
    inside = (pt > 3.0) & (np.abs(eta) < 2.4)
    assert 0.3 < inside.mean() < 0.9  # the cuts matter, and keep most muons
    counts = accepted_events["nMuon"].values
    assert (counts == inside.sum(axis=1)).all() and (accepted_events["Muon_pt"].counts() == counts).all()
    assert {int(c) for c in np.unique(counts)} == {0, 1, 2}
    for v in ("pt", "eta", "phi", "mass", "charge"):
        kept = zmumu_events[f"Muon_{v}"].values[inside.ravel()]
        assert accepted_events[f"Muon_{v}"].values.tobytes() == kept.tobytes(), v
    assert accepted_events["event"].values.tobytes() == zmumu_events["event"].values.tobytes()
    assert np.abs(accepted_events["Muon_eta"].values).max() < 2.4 and accepted_events["Muon_pt"].values.min() > 3.0


def test_zmumu_acceptance_parameters() -> None:
    events = get_generator("zmumu").generate(9, 0, 100_000, {"muon_pt_min": 20.0, "muon_eta_max": 1.0})
    pt, eta = events["Muon_pt"].values, events["Muon_eta"].values
    assert pt.min() > 20.0 and np.abs(eta).max() < 1.0
    assert pt.min() < 20.2 and np.abs(eta).max() > 0.99  # the cuts, not something tighter


def float32_dimuon_mass(columns: dict[str, Column]) -> tuple[np.ndarray, np.ndarray]:
    """(float32, float64) masses of the events with two muons, computed as coffea's vector does."""
    two = np.repeat(columns["nMuon"].values == 2, columns["nMuon"].values.astype(np.int64))
    masses = []
    for dtype in (np.float32, np.float64):
        pt, eta, phi, m = (columns[f"Muon_{v}"].values[two].astype(dtype) for v in ("pt", "eta", "phi", "mass"))
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        e = np.sqrt(px * px + py * py + pz * pz + m * m)
        e, px, py, pz = (x[0::2] + x[1::2] for x in (e, px, py, pz))
        masses.append(np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, dtype(0))))
    return masses[0], masses[1]


def test_float32_dimuon_mass_is_exact_to_1e_4_inside_the_acceptance(
    zmumu_events: dict[str, Column], accepted_events: dict[str, Column],
) -> None:
    single, double = float32_dimuon_mass(accepted_events)
    assert np.max(np.abs(single - double) / double) < 1e-4
    single, double = float32_dimuon_mass(zmumu_events)  # the forward muons of an open acceptance
    assert np.max(np.abs(single - double) / double) > 1e-2


def test_smearing_widens_the_peak() -> None:
    zmumu = get_generator("zmumu")
    sharp = dimuon(zmumu.generate(5, 0, 200_000, OPEN | {"smearing": 0.0}))[0]
    blurred = dimuon(zmumu.generate(5, 0, 200_000, OPEN | {"smearing": 0.05}))[0]

    def core(m: np.ndarray) -> float:
        return float(np.mean(np.abs(m - Z_MASS) < 1.0))

    assert core(blurred) < 0.8 * core(sharp)


def test_multijet_counts_and_spectrum() -> None:
    events = get_generator("multijet").generate(11, 0, 200_000, {"jets_mean": 4.0, "pt_min": 20.0, "pt_power": 4.0})
    counts = events["nJet"].values
    assert (events["Jet_pt"].counts() == counts).all()
    assert abs(counts.mean() - 4.0) < 5 * 2.0 / math.sqrt(len(counts))
    assert abs(counts.var() - 4.0) < 0.08  # Poisson: variance = mean
    assert abs((counts == 0).mean() - math.exp(-4.0)) < 0.002
    pt = events["Jet_pt"].values
    assert pt.min() >= 20.0
    per_bin = np.histogram(pt, bins=np.arange(20.0, 120.0, 10.0))[0]
    assert (np.diff(per_bin) < 0).all(), per_bin  # falls with pT
    assert abs((pt > 40.0).mean() - 2.0**-3) < 0.005  # dN/dpT ~ pT**-4 above 20 GeV
    eta = events["Jet_eta"].values
    assert np.abs(eta).max() <= 2.5 and abs(eta.mean()) < 0.01
    offsets = events["Jet_pt"].offsets
    ordered = np.diff(pt) <= 0
    starts = offsets[1:-1]
    ordered[starts[(starts > 0) & (starts < len(pt))] - 1] = True  # event boundaries
    assert ordered.all(), "jets are not pT-ordered within events"
    mass = events["Jet_mass"].values
    assert (mass >= 0.049 * pt).all() and (mass <= 0.201 * pt).all()


def test_zmumu_extra_jets() -> None:
    events = get_generator("zmumu").generate(3, 0, 100_000, {"extra_jets": 1.5, "jet_pt_min": 30.0})
    assert abs(events["nJet"].values.mean() - 1.5) < 0.02
    assert events["Jet_pt"].values.min() >= 30.0


# ---------------------------------------------------------------- parameters


def test_validate_fills_defaults_and_normalises() -> None:
    zmumu = get_generator("zmumu")
    full = zmumu.validate({"width": 3})
    assert full == {**zmumu.defaults, "width": 3.0} and isinstance(full["width"], float)
    assert list(full) == list(zmumu.defaults)
    assert zmumu.validate(full) == full
    assert zmumu.defaults["mass"] == Z_MASS and zmumu.defaults["extra_jets"] == 0.0
    zmumu.defaults["mass"] = 1.0  # a copy: the generator is not changed
    assert zmumu.defaults["mass"] == Z_MASS


def test_every_problem_is_reported_at_once() -> None:
    bad = {"mass": "91", "width": -1.0, "smearing": True, "pt_mean": float("nan"), "colour": 1}
    with pytest.raises(GeneratorParamError) as info:
        get_generator("zmumu").validate(bad)
    err = info.value
    assert err.generator == "zmumu" and len(err.problems) == 5
    named = sorted(p.split(" ")[0] for p in err.problems)
    assert named == ["mass", "pt_mean", "smearing", "unknown", "width"], err.problems
    assert "unknown parameter 'colour'" in str(err)
    assert "zmumu" in str(err) and "width must be > 0.0" in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("name", "params", "words"),
    [
        ("multijet", {"jets_mean": -1, "pt_power": 1.0, "eta_max": 0}, ["jets_mean", "pt_power", "eta_max"]),
        ("multijet", {"jets_mean": 51.0, "pt_min": None}, ["jets_mean", "pt_min"]),
        ("zmumu", {"mass_min": 100.0, "mass_max": 90.0}, ["mass_min must be < mass_max"]),
        ("zmumu", {"mass": 130.0}, ["mass must lie in"]),
        ("zmumu", {"extra_jets": 1e9, "jet_pt_power": 0.5}, ["extra_jets", "jet_pt_power"]),
        ("zmumu", {"muon_pt_min": -1.0, "muon_eta_max": 0.0}, ["muon_pt_min", "muon_eta_max"]),
        ("multijet", {"run": 0, "events_per_lumi": 0}, ["run must be >= 1", "events_per_lumi must be >= 1"]),
        ("multijet", {"run": 2**32, "events_per_lumi": 2.5}, ["run must be <= 4294967295", "events_per_lumi must be an integer"]),
    ],
)
def test_bad_parameters(name: str, params: dict[str, object], words: list[str]) -> None:
    with pytest.raises(GeneratorParamError) as info:
        get_generator(name).generate(1, 0, 10, params)
    assert len(info.value.problems) == len(words)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("seed", "first", "stop", "words"),
    [
        (-1, 0, 10, ["seed"]),
        (2**64, 0, 10, ["seed"]),
        (1.5, 5, 4, ["seed", "first=5, stop=4"]),
        (True, -1, 4, ["seed", "first=-1"]),
    ],
)
def test_bad_seed_or_range(seed: object, first: int, stop: int, words: list[str]) -> None:
    with pytest.raises(GeneratorParamError) as info:
        get_generator("multijet").generate(seed, first, stop, {})  # type: ignore[arg-type]
    assert len(info.value.problems) == len(words)
    for word in words:
        assert word in str(info.value)


def test_unknown_generator_names_the_known_ones() -> None:
    with pytest.raises(UnknownName) as info:
        get_generator("nope")
    assert isinstance(info.value, KeyError)
    assert "'nope'" in str(info.value) and "multijet" in str(info.value) and "zmumu" in str(info.value)


def test_registry() -> None:
    for name, gen in GENERATORS.items():
        assert isinstance(gen, Generator) and gen.name == name and gen.version
        assert get_generator(name) is gen
