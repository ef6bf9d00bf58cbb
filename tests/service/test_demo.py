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
    assert (data / "vdata.db").exists()
