"""Checkpoint selection and result tables on a price table where every model costs the same: AIQ is undefined
there (every frontier is a vertical line), so it is not reported, and selection uses the mean reward over the
evaluation preferences."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from barp.cli import main
from barp.metrics.evaluation import aiq_defined
from barp.sweep.summary import format_summary, summarize
from tests.helpers import ROOT
from tests.helpers.cli import run_args

DEV = ROOT.parent / "shared" / "data" / "llmrouter-dcrouter"


def one_price_table(path: Path, n: int = 60, seed: int = 4) -> Path:
    """A wide CSV whose three models cost the same on each prompt (the cost varies with the prompt only)."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {"prompt_id": [f"q{i}" for i in range(n)],
                               "prompt": [f"Question {i}: what is {i} times {i % 5}?" for i in range(n)],
                               "task": [("math", "trivia", "code")[i % 3] for i in range(n)]}
    cost = 1e-4 * (1 + rng.random(n))
    for j, m in enumerate(["big", "mid", "small"]):
        data[m] = np.clip(rng.random(n) * (1 - 0.25 * j) + 0.1 * (data["task"] == np.array("math")), 0, 1)
    for m in ["big", "mid", "small"]:
        data[f"{m}|total_cost"] = cost
    pd.DataFrame(data).to_csv(path, index=False)
    return path


def test_aiq_is_defined_only_where_models_differ_in_price():
    assert aiq_defined([1e-3, 1e-4, 1e-5])
    assert not aiq_defined([2e-4, 2e-4, 2e-4])
    assert not aiq_defined([2e-4, 2e-4 * (1 + 1e-9)])  # float noise is no price difference
    assert not aiq_defined([0.0, 0.0])
    assert aiq_defined([1.5]) and not aiq_defined([0.0])  # one known model: its cost alone sets the range


def test_one_price_fit_selects_on_mean_reward_and_prints_no_aiq(tmp_path, capsys):
    data = one_price_table(tmp_path / "one_price.csv")
    cli = main(["fit", *run_args(data, tmp_path / "run", "--trainer.max_epochs", "6", "--test_after_fit", "true",
                                 "--model.init_args.guard", "null")])
    out = capsys.readouterr().out
    assert "AIQ over these preferences" not in out
    assert "AIQ undefined (every model has the same mean cost); mean reward over these preferences" in out
    with (Path(cli.trainer.log_dir) / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert not any(r.get("val/id/aiq") for r in rows) and not any(r.get("test/id/aiq") for r in rows)
    val = {int(r["epoch"]): float(r["val/id/reward_avg"]) for r in rows if r.get("val/id/reward_avg")}
    assert len(val) == 6 and all(float(r["val/id/selection"]) == float(r["val/id/reward_avg"])
                                 for r in rows if r.get("val/id/selection"))
    best = Path(cli.trainer.checkpoint_callback.best_model_path).name
    assert best == f"best-epoch={max(val, key=val.get)}.ckpt"  # the best by validation mean reward


def test_sweep_summary_reports_mean_reward_where_aiq_is_undefined():
    rows = [{"method": m, "w_c": w, "split": "id", "task": "all", "n": 10, "score": s - 0.1 * w, "cost": 2e-4,
             "reward": (1 - w) * (s - 0.1 * w) - w * 0.2}
            for m, s in (("barp", 0.7), ("knn", 0.6), ("single:a", 0.5), ("single:b", 0.65)) for w in (0.0, 0.5, 1.0)]
    summary = summarize(rows)
    assert summary["splits"]["id"]["aiq_defined"] is False
    assert all(e["id"]["aiq"] is None for e in summary["results"].values())
    assert summary["results"]["barp"]["id"]["mean_reward"] == pytest.approx(np.mean([r["reward"] for r in rows
                                                                                      if r["method"] == "barp"]))
    table = format_summary(summary)
    assert "mean reward (AIQ undefined: one price) id" in table and "| barp |" in table.splitlines()[2]


@pytest.mark.slow
@pytest.mark.skipif(not DEV.is_dir(), reason="the development set is not beside the project")
def test_development_set_with_one_price_selects_the_best_mean_reward(tmp_path, capsys):
    prices = tmp_path / "one_price.json"
    models = ["llama3-chatqa-1.5-8b", "qwen2.5-7b-instruct", "llama3-chatqa-1.5-70b", "llama-3.1-nemotron-51b-instruct",
              "mistral-7b-instruct-v0.3", "gemma-2-9b-it", "llama-3.1-8b-instruct", "codegemma-7b",
              "llama-3.3-nemotron-super-49b-v1"]  # the development set's 9 scored models, all at one price
    prices.write_text(json.dumps({m: {"input_price": 0.2, "output_price": 0.2} for m in models}))
    cli = main(["fit", "--config", str(ROOT / "configs" / "experiments" / "llmrouter.yaml"),
                "--data.init_args.source.path", str(DEV / "train.json"),
                "--data.init_args.source.test_path", str(DEV / "test.json"),
                "--data.init_args.source.prices", str(prices), "--trainer.max_epochs", "8",
                "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert "AIQ over these preferences" not in capsys.readouterr().out
    with (Path(cli.trainer.log_dir) / "metrics.csv").open(newline="") as f:
        val = {int(r["epoch"]): float(r["val/id/reward_avg"]) for r in csv.DictReader(f) if r.get("val/id/reward_avg")}
    chosen = int(Path(cli.trainer.checkpoint_callback.best_model_path).stem.split("=")[1])
    assert max(val.values()) - val[chosen] <= 0.002


def test_paper_tables_show_the_mean_reward_where_aiq_is_undefined(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    from paper_tables import summary_table

    rows = [{"method": m, "w_c": w, "split": "id", "task": "all", "n": 10, "score": s, "cost": 2e-4,
             "reward": (1 - w) * s - w * 0.2} for m, s in (("barp", 0.7), ("single:a", 0.5), ("single:b", 0.6))
            for w in (0.0, 1.0)]
    summary = summarize(rows)
    summary["results"]["oracle"] = summary["results"]["barp"]  # the table lists the splits the oracle has
    table = summary_table([(rows, summary)], ["barp"], [0.0])
    assert "ID mean reward (AIQ undefined: one price)" in table.splitlines()[0]
    assert f"| barp | {summary['results']['barp']['id']['mean_reward']:.3f} ± 0.000 |" in table
