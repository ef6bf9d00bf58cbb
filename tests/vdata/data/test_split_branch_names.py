"""uproot's names of split branches (``evt/Beg``, ``evt/P3/P3.Px``, ``FileMetaDataAux./FileMetaDataAux.x``,
as ``tree.keys()`` lists them) read the column they denote and keep the name asked for.

The trees are discovered: every TTree of every file in ../shared/data whose keys hold a ``/``,
so a file added there is covered too."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import uproot

import vdata
from vdata.data import _uproot
from vdata.errors import ColumnNotFound, RecipeError, UninterpretableColumn

NESTED = "uproot-nesteddirs.root"
WIDE = 500  # more keys than this: opening a dataset surveys every column, minutes (PHYSLITE MetaData)
SAMPLE = 24  # full paths read per wide tree
ENTRIES = 20


def split_trees(shared_data: Path) -> list[tuple[Path, str, list[str]]]:
    """(file, tree, keys) of every TTree in ../shared/data with split branches."""
    found = []
    for path in sorted(shared_data.glob("*.root")):
        with uproot.open(path) as file:
            for name in _uproot.tree_names(file):
                tree = file[name]
                if _uproot.is_rntuple(tree):
                    continue
                keys = tree.keys()
                if any("/" in k for k in keys):
                    found.append((path, name, keys))
    return found


def kind(path: str, tree: Any) -> tuple[int, bool, bool, bool]:
    """What makes a full path different: levels, dots in the leaf name, '::', a parent branch."""
    return path.count("/"), "." in path.rsplit("/", 1)[-1], "::" in path, bool(tree[path].branches)


def sample(paths: dict[str, str], tree: Any, n: int) -> list[str]:
    """At most ``n`` full paths, every kind among them, spread evenly over the rest."""
    by_kind: dict[tuple[int, bool, bool, bool], list[str]] = defaultdict(list)
    for p in paths:
        by_kind[kind(p, tree)].append(p)
    chosen = [group[i] for group in by_kind.values() for i in sorted({0, len(group) // 2, len(group) - 1})]
    rest = [p for p in paths if p not in chosen]
    step = max(1, len(rest) // max(1, n - len(chosen)))
    return chosen + rest[::step][: max(0, n - len(chosen))]


def test_discovery_finds_the_known_split_trees(shared_data: Path) -> None:
    found = {(p.name, t) for p, t, _ in split_trees(shared_data)}
    assert (NESTED, "three/tree") in found
    assert ("uproot-physlite-rntuple_v1-0-0-0.root", "MetaData") in found


def test_every_full_path_reads_its_column(shared_data: Path) -> None:
    for path, name, keys in split_trees(shared_data):
        if len(keys) <= WIDE:
            _check_dataset(str(path), name, keys)
        else:
            _check_wide_tree(str(path), name)


def _check_dataset(path: str, tree: str, keys: list[str]) -> None:
    """Through SourceDataset: every key of the tree, alias against the leaf name."""
    with vdata.open_dataset(path, tree) as ds:
        full = [k for k in keys if "/" in k]
        assert set(full) <= set(ds.aliases), f"{path}:{tree}: {set(full) - set(ds.aliases)}"
        first = ds.ranges(ds.num_events)[0]
        readable = [a for a in full if ds.aliases[a] in ds.columns]
        assert ds.resolve(readable) == readable
        by_alias = ds.read(first, readable)
        by_leaf = ds.read(first, [ds.aliases[a] for a in readable])
        assert by_alias.column_names == readable
        for alias in readable:
            assert by_alias[alias].equals(by_leaf[ds.aliases[alias]]), f"{path}:{tree}: {alias}"
            assert by_alias.schema.field(alias).type == ds.schema.field(ds.aliases[alias]).type


def _check_wide_tree(path: str, tree_name: str) -> None:
    """The same functions SourceDataset.read composes (resolve, read_window), on a sample of
    every kind of full path: open_dataset's survey of thousands of columns takes minutes."""
    with uproot.open(path) as file:
        tree = _uproot.open_tree(file, path, tree_name)
        paths = _uproot.aliases(tree)
        stop = min(ENTRIES, tree.num_entries)
        for alias in sample(paths, tree, SAMPLE):
            leaf = paths[alias]
            assert _uproot.resolve_columns([alias], [leaf], set(), tree_name, paths) == [alias]
            try:
                expected = _uproot.read_window(tree, path, [leaf], 0, stop)
            except UninterpretableColumn:
                with pytest.raises(UninterpretableColumn, match=alias.replace(".", r"\.")):
                    _uproot.read_window(tree, path, [alias], 0, stop, paths)
                continue
            got = _uproot.read_window(tree, path, [alias], 0, stop, paths)
            assert got.column_names == [alias]
            assert got[alias].equals(expected[leaf]), f"{path}:{tree_name}: {alias}"


@pytest.fixture(scope="module")
def nested(shared_data: Path) -> vdata.SourceDataset:
    return vdata.open_dataset(shared_data / NESTED, "three/tree")


def test_both_names_give_two_columns(nested: vdata.SourceDataset) -> None:
    table = nested.read(nested.ranges(1000)[0], ["evt/I32", "I32", "evt/P3/P3.Px"])
    assert table.column_names == ["evt/I32", "I32", "evt/P3/P3.Px"]
    assert table["evt/I32"].equals(table["I32"]) and table.num_rows == nested.num_events


def test_pattern_with_a_slash_matches_full_paths(nested: vdata.SourceDataset) -> None:
    assert nested.resolve("evt/Array*") == [f"evt/Array{t}[10]" for t in
                                             ("I16", "I32", "I64", "U16", "U32", "U64", "F32", "F64")]
    assert nested.resolve("Array*") == [f"Array{t}[10]" for t in
                                         ("I16", "I32", "I64", "U16", "U32", "U64", "F32", "F64")]


def test_misspelt_full_path_names_close_matches(nested: vdata.SourceDataset) -> None:
    with pytest.raises(ColumnNotFound, match=r"'evt/I3'.*close matches: .*'evt/I32'"):
        nested.resolve(["evt/I3"])


# -- recipes -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(shared_data: Path) -> vdata.Catalog:
    catalog = vdata.Catalog()
    catalog.add_dataset("nested", [str(shared_data / NESTED)], "three/tree")
    return catalog


def test_recipe_columns_and_inputs_take_full_paths(catalog: vdata.Catalog, tmp_path: Path) -> None:
    recipe = vdata.Recipe.from_dict({
        "source": {"dataset": "nested"},
        "steps": [{"filter": "I32 % 2 == 0"},
                  {"transform": {"name": "leading_pair_mass", "outputs": {"mass": "m"},
                                 "inputs": {"px": "evt/StlVecF64", "py": "evt/StlVecF64",
                                            "pz": "evt/StlVecF64", "e": "evt/StlVecF64"}}}],
        "columns": ["evt/I32", "I32", "m", "evt/StlVecF64"],
    }, catalog)
    plan = vdata.plan(recipe, catalog)
    assert plan.schema.names == ["evt/I32", "I32", "m", "evt/StlVecF64"]
    table = vdata.materialize(plan, 0, catalog)
    source = catalog.dataset("nested").read(plan.range(0), ["I32", "StlVecF64"])
    keep = pc.equal(pc.bit_wise_and(source["I32"], 1), 0)
    assert table["evt/I32"].equals(source["I32"].filter(keep)) and table["evt/I32"].equals(table["I32"])
    assert table["evt/StlVecF64"].equals(source["StlVecF64"].filter(keep))
    # ROOT output: uproot writes and reads back a branch named with a '/'
    back = vdata.read_table(vdata.write_table(table, tmp_path / "out.root", "root"), "root")
    names = ["evt/I32", "I32", "evt/StlVecF64"]  # m is NaN where a list is short: NaN != NaN
    assert back.column_names == table.column_names and back.select(names).equals(table.select(names))
    with uproot.open(tmp_path / "out.root") as f:
        assert f["Events"]["evt/I32"].array(library="np").tolist() == table["evt/I32"].to_pylist()


def test_recipe_default_columns_do_not_repeat_full_paths(catalog: vdata.Catalog) -> None:
    recipe = vdata.Recipe.from_dict({
        "source": {"dataset": "nested"},
        "steps": [{"transform": {"name": "leading_pair_mass", "outputs": {"mass": "m"},
                                 "inputs": {"px": "evt/StlVecF64", "py": "StlVecF64",
                                            "pz": "StlVecF64", "e": "StlVecF64"}}}],
    }, catalog)
    assert vdata.plan(recipe, catalog, dry_run=False).schema.names == [*catalog.dataset("nested").columns, "m"]


def test_recipe_errors_name_full_paths(catalog: vdata.Catalog) -> None:
    recipe = vdata.Recipe.from_dict({
        "source": {"dataset": "nested"},
        "steps": [{"transform": {"name": "leading_pair_mass", "outputs": {"mass": "evt/Beg"},
                                 "inputs": {"px": "F64", "py": "F64", "pz": "F64", "e": "F64"}}}],
        "columns": ["evt/I3"],
    }, catalog)
    with pytest.raises(RecipeError) as info:
        vdata.plan(recipe, catalog, dry_run=False)
    text = str(info.value)
    assert "'evt/Beg' is uproot's name of column 'Beg'" in text
    assert "no column 'evt/I3'" in text and "'evt/I32'" in text
