"""tools/rounds.py: deployment rounds on simulated traffic (slow: it trains BaRP once per round)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import load_tool


def _tool():
    return load_tool("rounds")


@pytest.mark.slow
def test_rounds_log_only_served_outcomes_and_write_their_outputs(tmp_path):
    from barp.data.datamodule import RoutingDataModule
    from barp.data.parts import Synthetic
    from barp.data.sources.logs import read_log

    rows = _tool().rounds(output=str(tmp_path), num_rounds=3, steps=40, data={"synthetic": {"num_prompts": 300}})
    assert {(r["round"], r["method"]) for r in rows} == {(i, m) for i in range(3) for m in ("barp", "linucb",
                                                                                            "linear_ts")}
    for method in ("barp", "linucb", "linear_ts"):
        regret = [r["cumulative_regret"] for r in rows if r["method"] == method]
        assert all(b >= a for a, b in zip(regret, regret[1:]))  # the oracle is never beaten per request
    assert json.loads((tmp_path / "rounds.json").read_text())["rows"] == rows
    assert (tmp_path / "rounds.png").stat().st_size > 0 and (tmp_path / "rounds.csv").is_file()
    dm = RoutingDataModule(synthetic=Synthetic(num_prompts=300))
    log = read_log(tmp_path / "logs" / "round2.parquet", models=dm.table.models)
    assert log.simulated and len(log) == 3 * len(dm.splits.train)
    first = len(dm.splits.train)
    np.testing.assert_allclose(log.propensity[:first], 1 / dm.table.num_models)  # round 0 is uniform
    assert (log.propensity[first:] >= 0.1 / dm.table.num_models - 1e-9).all()  # epsilon-uniform floor
    rows_of: dict[str, list[int]] = {}
    for i, p in enumerate(dm.table.prompts):
        rows_of.setdefault(p, []).append(i)
    for p, a, q in zip(log.prompts, log.actions, log.score):  # every logged outcome is the served model's
        assert any(np.isclose(dm.table.scores[i, a], q) for i in rows_of[p])
