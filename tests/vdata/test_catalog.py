"""The catalog as a Ray worker sees it: a pickled copy per revision that keeps the files of
datasets that did not change."""

from __future__ import annotations

import pickle
from pathlib import Path

from vdata.catalog import Catalog
from vdata.ranges import EventRange


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
