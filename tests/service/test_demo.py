"""The main job behind ``make run``, small: service, virtual dataset, worker, histogram."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


def test_demo_runs_the_whole_service_and_writes_only_under_its_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = runner.invoke(app, ["demo", "--data-dir", str(data), "--events", "60000", "--range-events", "20000", "--no-dashboard"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "60,000 events in 3 ranges" in out and "events/s" in out
    peak = float(out.split("dimuon mass peak at ")[1].split(" GeV")[0])
    assert abs(peak - 91.19) < 1.0
    png = data / "dimuon_mass.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert (data / "vdata.db").exists() and (data / ".vdata-demo").is_file()


def test_demo_runs_again_on_its_own_folder_and_keeps_what_it_did_not_write(tmp_path: Path) -> None:
    """``make run`` twice: the second run replaces the first one's outputs, nothing else."""
    data = tmp_path / "demo"
    args = ["demo", "--data-dir", str(data), "--events", "20000", "--range-events", "20000", "--no-dashboard"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert (data / ".vdata-demo").is_file()
    (data / "notes.txt").write_text("mine")
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "20,000 events in 1 ranges" in again.output
    assert (data / "notes.txt").read_text() == "mine"


def test_demo_with_force_uses_a_service_folder_as_it_is(tmp_path: Path) -> None:
    """--force on a real service's folder: its database (and admin token) and cache stay; the
    demo's own token is revoked at the end; the histogram replaces no file."""
    from service.core.db import Database
    from service.core.tokens import TokenStore

    data = tmp_path / "served"
    (data / "cache").mkdir(parents=True)
    (data / "cache" / "kept.arrow").write_bytes(b"a cached range")
    (data / "dimuon_mass.png").write_bytes(b"the user's own plot")
    with Database(f"sqlite:///{data / 'vdata.db'}") as db:
        admin = TokenStore(db).ensure_admin()
        assert admin is not None
    refused = runner.invoke(app, ["demo", "--data-dir", str(data), "--no-dashboard"])
    assert refused.exit_code == 2 and "--force" in refused.output
    result = runner.invoke(app, ["demo", "--data-dir", str(data), "--force", "--events", "20000", "--range-events",
                                 "20000", "--no-dashboard"])
    assert result.exit_code == 0, result.output
    assert (data / "cache" / "kept.arrow").read_bytes() == b"a cached range"
    assert (data / "dimuon_mass.png").read_bytes() == b"the user's own plot"
    assert (data / "dimuon_mass-2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (data / ".vdata-demo").exists() and not (data / "ray").exists()
    with Database(f"sqlite:///{data / 'vdata.db'}") as db:
        tokens = TokenStore(db)
        assert tokens.role_of(admin) == "admin" and tokens.count() == 1
