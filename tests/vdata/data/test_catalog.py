"""The catalog as a Ray worker sees it: a pickled copy per revision that keeps the files of
datasets that did not change; and the dataset names it takes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from vdata.data.catalog import BadDatasetName, Catalog, check_dataset_name
from vdata.ranges import EventRange
from vdata.testing import RangeFileServer


def test_a_new_revision_adopts_only_unchanged_datasets(shared_data: Path) -> None:
    service = Catalog()
    service.add_dataset("hzz", [str(shared_data / "uproot-HZZ.root")], "events")
    service.add_dataset("zmumu", [str(shared_data / "uproot-Zmumu.root")], "events")
    worker_v1 = pickle.loads(pickle.dumps(service))
    first = worker_v1.dataset("hzz").read(EventRange(0, 0, 10), ["NMuon"])  # opens the file

    service.add_dataset("zmumu", [str(shared_data / "uproot-HZZ-lz4.root")], "events")  # replaced: other files
    service.add_dataset("more", [str(shared_data / "uproot-HZZ-zstd.root")], "events")  # new
    worker_v2 = pickle.loads(pickle.dumps(service))
    assert worker_v2.dataset("hzz") is not worker_v1.dataset("hzz")

    assert worker_v2.adopt_datasets(worker_v1) == ["hzz"]
    assert worker_v2.dataset("hzz") is worker_v1.dataset("hzz")  # with the file it opened
    assert worker_v2.dataset("zmumu") is not worker_v1.dataset("zmumu")
    assert worker_v2.dataset("zmumu").files[0].path.endswith("uproot-HZZ-lz4.root")
    assert worker_v2.dataset("hzz").read(EventRange(0, 0, 10), ["NMuon"]).equals(first)
    assert worker_v2.fingerprint("hzz") == service.fingerprint("hzz")


def test_a_remote_file_registered_again_is_read_through_the_file_a_worker_has_open(shared_data: Path) -> None:
    with RangeFileServer(shared_data) as site:
        url = f"{site.url}/uproot-HZZ.root"
        service = Catalog()
        service.add_dataset("hzz", [url], "events")
        worker_v1 = pickle.loads(pickle.dumps(service))
        first = worker_v1.dataset("hzz").read(EventRange(0, 0, 10), ["NMuon"])  # opens the file
        service.add_dataset("hzz:again", [url], "events")  # the same file under another name
        service.add_dataset("zmumu", [f"{site.url}/uproot-Zmumu.root"], "events")  # another file
        state = pickle.dumps(service)
        fresh = pickle.loads(state)  # a worker that opened nothing
        before = site.requests
        assert fresh.dataset("hzz:again").read(EventRange(0, 0, 10), ["NMuon"]).equals(first)
        opening = site.requests - before

        worker_v2 = pickle.loads(state)
        assert worker_v2.adopt_datasets(worker_v1) == ["hzz"]
        before = site.requests
        assert worker_v2.dataset("hzz:again").read(EventRange(0, 0, 10), ["NMuon"]).equals(first)
        assert site.requests - before < opening  # no second open of the file
        before = site.requests
        worker_v2.dataset("zmumu").read(EventRange(0, 0, 10), ["E1"])  # another file: opened
        assert site.requests - before >= opening


@pytest.mark.parametrize("name", ["", "a/b", "../../etc", "a..b", "a\x00b", " hzz", "hzz\n", "x" * 129, "ñ", 3])
def test_a_bad_dataset_name_is_refused_before_any_file_is_opened(name: object) -> None:
    catalog = Catalog()
    with pytest.raises(BadDatasetName, match="name"):
        catalog.add_dataset(name, ["/no/such/file.root"], "events")  # type: ignore[arg-type]
    assert catalog.datasets() == {} and catalog.revision == 0


@pytest.mark.parametrize("name", ["opendata:hzz", "cms:ttbar", "bench:nanoaod", "latency:12-3:cold:0.05:20:1", "x" * 128])
def test_ordinary_dataset_names_pass(name: str) -> None:
    assert check_dataset_name(name) == name
