"""Inputs are questioned, never overwritten: absurd costs, impossible or non-finite OPE estimates, repeated log rows,
training prompts in an OPE log, outputs that would replace inputs or earlier results, price tables."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from barp.data.sources import load_table
from barp.data.sources.logs import LoggedFeedback, read_log
from barp.data.table import MAX_COST_USD
from barp.errors import DataValidationError
from barp.ope.cli import OUTPUT_FILE, format_table, run_ope_cli
from barp.ope.estimators import estimate_policy
from tests.helpers import load_tool

MODELS = ["big", "mid", "small"]  # the models of test_checkpoints.write_table


def _tool(name: str):
    return load_tool(name)


def write_log(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def fresh_rows(n_prompts: int = 4, propensity: float = 1 / 3, cost: float = 1e-4) -> list[dict]:
    """A log of prompts no checkpoint here was trained on, each served once by every model (distinct timestamps)."""
    return [{"prompt_id": f"new{i}", "prompt": f"A fresh request {i} about {w} things", "model": m,
             "propensity": propensity, "score": float((i + j) % 2), "cost": cost, "w_c": 0.5,
             "timestamp": f"2025-01-01T00:00:{3 * i + j:02d}"}
            for i, w in zip(range(n_prompts), ("seven", "odd", "blue", "many", "few", "red"))
            for j, m in enumerate(MODELS)]


def last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, "no error printed"
    return lines[-1]


# ---------------------------------------------------------------------- a tiny trained checkpoint
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint fitted for 2 epochs on a 36-prompt wide table with models [big, mid, small]."""
    from barp.cli import main
    from tests.helpers.cli import run_args
    from tests.helpers.tables import write_table

    out = tmp_path_factory.mktemp("trust")
    data = write_table(out / "data.csv")
    cli = main(["fit", *run_args(data, out / "run", "--test_after_fit", "false")])
    dm = cli.datamodule
    train = [(dm.table.prompt_ids[i], dm.table.prompts[i]) for i in dm.splits.train]
    return cli.trainer.checkpoint_callback.best_model_path, train


def ope_args(log: Path, ckpt: str, output: Path, *extra: str) -> list[str]:
    return ["--log", str(log), "--ckpt_path", ckpt, "--output", str(output), "--bootstrap", "20", "--w_c", "[0.5]",
            *extra]


def expect_exit_2(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        run_ope_cli(argv)
    assert exit_.value.code == 2
    line = last_error(capsys)
    assert line.startswith("barp ope: error:")
    return line


# ---------------------------------------------------------------------- A. costs no model costs
def test_log_cost_above_the_cap_is_one_error_naming_file_column_row_value(tmp_path):
    rows = fresh_rows(2)
    rows[4]["cost"] = 1e308
    path = write_log(tmp_path / "log.csv", rows)
    with pytest.raises(DataValidationError) as info:
        read_log(path, models=MODELS)
    message = str(info.value)
    assert "\n" not in message
    for part in (str(path), "column 'cost'", "row 4", "1e+308", f"[0, {MAX_COST_USD:g}]"):
        assert part in message, (part, message)
    rows[4]["cost"] = MAX_COST_USD  # the cap itself is a (large) cost
    assert read_log(write_log(tmp_path / "ok.csv", rows), models=MODELS).cost.max() == MAX_COST_USD


def test_table_cost_above_the_cap_is_refused_in_wide_and_long_files(tmp_path):
    wide = pd.DataFrame({"prompt_id": ["a", "b", "c"], "prompt": ["x y", "y z", "z w"], "task": ["t"] * 3,
                         "m1": [0.5, 0.2, 1.0], "m2": [0.1, 0.3, 0.0],
                         "m1|total_cost": [1e-3, 1e-3, 1e-3], "m2|total_cost": [1e-3, 1e308, 1e-3]})
    wide.to_csv(tmp_path / "wide.csv", index=False)
    with pytest.raises(DataValidationError) as info:
        load_table(str(tmp_path / "wide.csv"))
    for part in (str(tmp_path / "wide.csv"), "column 'm2|total_cost'", "row 1 (id 'b')", "1e+308", "[0, 1000]"):
        assert part in str(info.value)
    long = pd.DataFrame({"prompt_id": ["a", "a", "b", "b"], "prompt": ["x y", "x y", "y z", "y z"],
                         "model": ["m1", "m2", "m1", "m2"], "score": [1, 0, 0, 1], "cost": [0.1, 0.2, 5000.0, 0.1]})
    long.to_csv(tmp_path / "long.csv", index=False)
    with pytest.raises(DataValidationError) as info:
        load_table(str(tmp_path / "long.csv"))
    for part in (str(tmp_path / "long.csv"), "column 'cost'", "row 2 (id 'b')", "5000.0"):
        assert part in str(info.value)


def test_ope_log_with_cost_1e308_is_refused_before_any_output(trained, tmp_path, capsys):
    ckpt, _ = trained
    rows = fresh_rows()
    rows[7]["cost"] = 1e308
    log = write_log(tmp_path / "log.csv", rows)
    line = expect_exit_2(capsys, ope_args(log, ckpt, tmp_path / "out"))
    for part in (str(log), "column 'cost'", "row 7", "1e+308"):
        assert part in line
    assert not (tmp_path / "out").exists()


def test_non_finite_estimates_are_refused_not_written(trained, tmp_path, capsys, monkeypatch):
    """Every importance weight 0 (the target never picks a served model): SNIPS is 0/0."""
    import barp.ope.cli as cli
    from barp.ope.cli import check_finite

    ckpt, _ = trained
    rows = [r for r in fresh_rows() if r["model"] == "big"]
    for r in rows:
        r["propensity"] = 1.0
    log = write_log(tmp_path / "log.csv", rows)
    never_big = lambda module, emb, w_c, temperature=None: np.tile([0.0, 0.0, 1.0], (len(emb), 1))  # noqa: E731
    monkeypatch.setattr(cli, "target_probabilities", never_big)  # router order is [big, mid, small]
    line = expect_exit_2(capsys, ope_args(log, ckpt, tmp_path / "out"))
    for part in (str(log), "snips", "not a finite number", "every importance weight is 0", "nothing was written"):
        assert part in line
    assert not (tmp_path / "out" / OUTPUT_FILE).exists()
    nan = estimate_policy(read_log(log, models=MODELS), lambda w: never_big(None, np.zeros((4, 1)), w), [0.5], 1.0,
                          estimators=["snips"], bootstrap=5)
    with pytest.raises(DataValidationError, match="not a finite number"):
        check_finite(nan, "log.csv")


# ---------------------------------------------------------------------- B. impossible estimates
def _overweighted_log() -> LoggedFeedback:
    """Two prompts, every model logged once each at propensity 0.01: any greedy target's IPS score is 100 / 3."""
    return LoggedFeedback(prompts=["p one", "p one", "p one", "p two", "p two", "p two"], models=MODELS,
                          actions=[0, 1, 2, 0, 1, 2], propensity=[0.01] * 6, score=[1.0] * 6, cost=[1e-4] * 6,
                          prompt_ids=["a"] * 3 + ["b"] * 3, timestamps=[str(t) for t in range(6)], source="tiny.csv")


def test_impossible_estimates_are_warned_about_marked_and_not_clipped():
    log = _overweighted_log()
    target = np.tile([1.0, 0.0, 0.0], (6, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = estimate_policy(log, lambda w: target, [0.5], 1.0, estimators=["ips", "snips"], bootstrap=10)
    ips = {r.quantity: r for r in results if r.estimator == "ips"}
    assert ips["score"].estimate == pytest.approx(100 / 3)  # kept as computed
    assert ips["score"].warning.startswith("IMPOSSIBLE ips score estimate")
    assert "[0, 1]" in ips["score"].warning and "6 rows" in ips["score"].warning
    assert "too few rows or extreme importance weights" in ips["score"].warning
    assert not any(r.warning.startswith("IMPOSSIBLE") for r in results if r.estimator == "snips")
    assert any("IMPOSSIBLE ips score" in str(w.message) for w in caught)
    table = format_table(results)
    ips_line = next(line for line in table.splitlines() if " ips " in line)
    snips_line = next(line for line in table.splitlines() if " snips " in line)
    assert "33.3333!" in ips_line and "IMPOSSIBLE" in ips_line
    assert "!" not in snips_line and "IMPOSSIBLE" not in snips_line


def test_ope_flags_an_impossible_estimate_in_the_warning_table_and_csv(trained, tmp_path, capsys):
    ckpt, _ = trained
    rows = fresh_rows(2, propensity=0.01)
    for r in rows:
        r["score"] = 1.0
    log = write_log(tmp_path / "log.csv", rows)
    run_ope_cli(ope_args(log, ckpt, tmp_path / "out"))
    captured = capsys.readouterr()
    assert "barp ope: warning:" in captured.err and "IMPOSSIBLE ips score estimate 33.33" in captured.err
    assert "33.3333!" in captured.out and "IMPOSSIBLE" in captured.out
    with open(tmp_path / "out" / OUTPUT_FILE, newline="") as fh:
        written = {(r["estimator"], r["quantity"]): r for r in csv.DictReader(fh)}
    assert float(written["ips", "score"]["estimate"]) == pytest.approx(100 / 3)
    assert written["ips", "score"]["warning"].startswith("IMPOSSIBLE")


# ---------------------------------------------------------------------- B. repeated rows and decisions
def test_a_row_repeating_an_earlier_row_is_refused_naming_both_rows(tmp_path):
    rows = fresh_rows(2)
    copied = write_log(tmp_path / "twice.csv", rows + rows)
    with pytest.raises(DataValidationError) as info:
        read_log(copied, models=MODELS)
    message = str(info.value)
    for part in (str(copied), "row 6 repeats row 0 exactly", "prompt id 'new0'", "(5 more repeated rows)"):
        assert part in message, (part, message)
    retimed = [dict(r, timestamp=r["timestamp"] + "Z") for r in rows]  # the same prompt served again later
    assert read_log(write_log(tmp_path / "again.csv", rows + retimed), models=MODELS).num_rows == 12


def test_a_repeated_decision_id_is_refused(tmp_path):
    rows = [dict(r, decision_id=f"d{i}") for i, r in enumerate(fresh_rows(2))]
    rows[4]["decision_id"] = "d1"
    path = write_log(tmp_path / "served.csv", rows)
    with pytest.raises(DataValidationError) as info:
        read_log(path, models=MODELS)
    for part in (str(path), "column 'decision_id', rows 1 and 4", "'d1'"):
        assert part in str(info.value)


def test_ope_refuses_a_log_of_every_row_twice(trained, tmp_path, capsys):
    ckpt, _ = trained
    log = write_log(tmp_path / "log.csv", fresh_rows() * 2)
    line = expect_exit_2(capsys, ope_args(log, ckpt, tmp_path / "out"))
    assert str(log) in line and "row 12 repeats row 0" in line
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- B. training prompts
def test_ope_refuses_the_checkpoints_training_prompts(trained, tmp_path, capsys):
    ckpt, train = trained
    rows = [{"prompt_id": pid, "prompt": text, "model": MODELS[i % 3], "propensity": 1 / 3, "score": 1.0,
             "cost": 1e-4} for i, (pid, text) in enumerate(train[:5])] + fresh_rows(1)
    log = write_log(tmp_path / "log.csv", rows)
    line = expect_exit_2(capsys, ope_args(log, ckpt, tmp_path / "out"))
    assert "5 of its 6 prompts were training prompts of the checkpoint" in line and ckpt in line
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- C. outputs
def test_ope_output_whose_result_file_is_the_log_is_refused(trained, tmp_path, capsys):
    ckpt, _ = trained
    log = write_log(tmp_path / OUTPUT_FILE, fresh_rows())
    before = log.read_bytes()
    for extra in ((), ("--overwrite", "true")):
        line = expect_exit_2(capsys, ope_args(log, ckpt, tmp_path, *extra))
        assert "is the input file" in line and "(--log)" in line and str(tmp_path) in line
    assert log.read_bytes() == before


def test_ope_refuses_an_earlier_result_unless_overwrite(trained, tmp_path, capsys):
    ckpt, _ = trained
    log = write_log(tmp_path / "log.csv", fresh_rows())
    out = tmp_path / "out"
    run_ope_cli(ope_args(log, ckpt, out))
    capsys.readouterr()
    first = (out / OUTPUT_FILE).read_text()
    line = expect_exit_2(capsys, ope_args(log, ckpt, out, "--seed", "1"))
    assert "already holds an ope result (ope.csv)" in line and "--overwrite true" in line
    assert (out / OUTPUT_FILE).read_text() == first
    run_ope_cli(ope_args(log, ckpt, out, "--seed", "1", "--overwrite", "true"))
    assert (out / OUTPUT_FILE).read_text() != first
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_FILE]


def test_ope_bad_output_is_one_error_before_any_work(trained, tmp_path, capsys, monkeypatch):
    import barp.models.trained as trained_module
    import barp.ope.cli as cli

    ckpt, _ = trained
    log = write_log(tmp_path / "log.csv", fresh_rows())
    monkeypatch.setattr(cli, "embed_prompts", lambda *a, **k: pytest.fail("embedded before checking --output"))
    monkeypatch.setattr(trained_module.TrainedRouter, "from_checkpoint",
                        classmethod(lambda *a, **k: pytest.fail("loaded the router before checking --output")))
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for output, message in ((afile, "is a file; barp ope writes a folder"),
                            (afile / "sub", "is a file, so the folder cannot be made"),
                            (Path("/proc/barp_ope"), "cannot write in '/proc'")):
        line = expect_exit_2(capsys, ope_args(log, ckpt, output))
        assert message in line and str(output) in line
    assert afile.read_text() == "keep"


def _recipe(tmp_path: Path) -> tuple[Path, Path]:
    from tests.helpers.tables import write_table

    data = write_table(tmp_path / "data.csv", n=12)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  class_path: barp.data.datamodule.RoutingDataModule\n  init_args:\n"
                      f"    source:\n      path: {data}\n    split:\n      ood_tasks: []\n")
    return recipe, data


def test_simulate_log_refuses_an_output_that_is_one_of_its_inputs(tmp_path, capsys):
    tool = _tool("simulate_log")
    recipe, data = _recipe(tmp_path)
    before = {p: p.read_bytes() for p in (recipe, data)}
    for output, option in ((recipe, "(--recipe)"), (data, "(data.source.path)")):
        assert tool.main(["--recipe", str(recipe), "--output", str(output)]) == 2
        line = last_error(capsys)
        assert line.startswith("error:") and "is the input file" in line and option in line
    assert {p: p.read_bytes() for p in before} == before


def test_prepare_data_refuses_an_output_that_is_the_price_table(tmp_path, capsys):
    tool = _tool("prepare_data")
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"question": f"q {i}", "scores": {"a": 1, "b": 0}} for i in range(3)]))
    prices = tmp_path / "prices.yaml"
    prices.write_text("a: [1, 2]\nb: [3, 4]\n")
    before = prices.read_bytes()
    assert tool.main(["--path", str(records), "--prices", str(prices), "--output", str(prices)]) == 1
    line = last_error(capsys)
    assert "is the input file" in line and "(--prices)" in line and str(prices) in line
    assert prices.read_bytes() == before
    assert tool.main(["--path", str(records), "--prices", str(prices), "--output", str(tmp_path / "d.parquet")]) == 0


# ---------------------------------------------------------------------- D. price tables
def test_a_price_table_for_a_table_with_costs_is_refused(tmp_path):
    from tests.helpers.tables import write_table

    data = write_table(tmp_path / "wide.csv", n=6)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({m: [1.0, 2.0] for m in MODELS}))
    with pytest.raises(DataValidationError) as info:
        load_table(str(data), prices=str(prices))
    message = str(info.value)
    for part in (str(data), str(prices), "already has a cost", "would not be used", "--data.source.prices"):
        assert part in message, (part, message)
    assert len(load_table(str(data))) == 6


def test_a_litellm_price_map_loads_with_entries_of_unscored_models(tmp_path):
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"question": "one two three", "scores": {"gpt-4o": 1, "gpt-4o-mini": 0}},
                                   {"question": "four", "scores": {"gpt-4o": 0, "gpt-4o-mini": 1}}]))
    litellm = {
        "sample_spec": {"max_tokens": "set to max_output_tokens if provider specifies it", "input_cost_per_token": 0},
        "gpt-4o": {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5, "litellm_provider": "openai",
                   "mode": "chat"},
        "gpt-4o-mini": {"input_cost_per_token": 1.5e-7, "output_cost_per_token": 6e-7, "mode": "chat"},
        "text-embedding-3-small": {"input_cost_per_token": 2e-8, "litellm_provider": "openai", "mode": "embedding"},
    }
    prices = tmp_path / "model_prices_and_context_window.json"
    prices.write_text(json.dumps(litellm))
    table = load_table(str(records), prices=str(prices))
    assert table.models == ["gpt-4o", "gpt-4o-mini"]
    np.testing.assert_allclose(table.costs[0], [(4 * 2.5e-6 + 256 * 1e-5), (4 * 1.5e-7 + 256 * 6e-7)])
    litellm["gpt-4o-mini"] = {"input_cost_per_token": 1.5e-7, "mode": "chat"}  # a scored model's entry stays checked
    prices.write_text(json.dumps(litellm))
    with pytest.raises(DataValidationError, match="model 'gpt-4o-mini'"):
        load_table(str(records), prices=str(prices))
