"""tools/validation_curve.py: the mean curve over seeds, its peak, the fall after it and the seed spread."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.helpers import load_tool

tool = load_tool("validation_curve")


def write_run(folder: Path, values: list[float], metric: str = "val/id/selection") -> Path:
    """A run folder whose metrics.csv has ``metric`` at epochs 0.. and a training row between (no value)."""
    path = folder / "lightning" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "train/loss", metric])
        writer.writeheader()
        for epoch, value in enumerate(values):
            writer.writerow({"epoch": epoch, "step": epoch * 10, "train/loss": 1.0, metric: ""})
            writer.writerow({"epoch": epoch, "step": epoch * 10 + 9, metric: value})
    return folder


def test_a_curve_that_falls_after_its_peak_by_more_than_the_seed_spread(tmp_path):
    runs = [write_run(tmp_path / "a", [0.5, 0.7, 0.6, 0.6]), write_run(tmp_path / "b", [0.5, 0.72, 0.61, 0.62])]
    s = tool.summarize([tool.read_curve(r, "val/id/selection") for r in runs])
    assert s["peak_epoch"] == 1 and s["peak"] == pytest.approx(0.71)
    assert s["last"] == pytest.approx(0.61) and s["fall"] == pytest.approx(0.10)
    assert s["spread"] == pytest.approx((0.02 + 0.01 + 0.02) / 3)
    assert not s["holds"]


def test_a_level_curve_holds_and_the_tool_writes_its_table_and_figure(tmp_path, capsys):
    for name, shift in (("a", 0.0), ("b", 0.02)):
        write_run(tmp_path / "runs" / name, [0.5 + shift, 0.7 + shift, 0.69 + shift, 0.7 + shift])
    out = tmp_path / "curve.png"
    assert tool.main(["--group", f"level={tmp_path}/runs/*", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "holds" in printed and "epoch   3  0.7100  [0.7000, 0.7200]" in printed
    assert out.stat().st_size > 0


def test_a_group_without_runs_or_without_the_metric_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="expected NAME=GLOB"):
        tool.main(["--group", f"none={tmp_path}/missing/*"])
    write_run(tmp_path / "run", [0.5, 0.6])
    with pytest.raises(SystemExit, match="no values of 'val/id/aiq'"):
        tool.main(["--group", f"x={tmp_path}/run", "--metric", "val/id/aiq"])
