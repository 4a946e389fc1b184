"""``barp sweep`` end to end on the small built-in benchmark, and comparison methods trained through ``barp fit``."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from barp.cli import main
from barp.models.baselines import KNNRouter, LinUCBRouter
from barp.sweep.contenders import ModuleContender
from barp.sweep.harness import DEFAULT_GRID, log_to_wandb
from tests.helpers import ROOT, load_tool
from tests.helpers import SYNTHETIC_RECIPE as RECIPE
from tests.helpers.cli import small_benchmark, tiny_args

TRAINED = {"knn", "mlp", "mf", "linucb", "linear_ts", "epsilon_greedy", "graphrouter", "routerdc"}
COLUMNS = ["method", "w_c", "split", "task", "n", "score", "cost", "reward"]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    cli = main(["fit", *tiny_args(out, "--test_after_fit", "false")])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    main(["sweep", *small_benchmark(), "--ckpt_path", ckpt, "--output", str(out / "sweep"), "--max_epochs", "1",
          "--progress", "false"])
    return out, ckpt, cli.datamodule


def test_sweep_writes_three_files_with_every_method(swept):
    out, _, dm = swept
    folder = out / "sweep"
    assert sorted(p.name for p in folder.iterdir()) == ["pareto.png", "summary.json", "sweep.csv"]
    assert (folder / "sweep.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    rows = read_rows(folder / "sweep.csv")
    expected = {"barp", "cheapest", "most_expensive", "best_fixed", "random", "oracle", *TRAINED,
                *(f"single:{m}" for m in dm.model_names)}
    assert {r["method"] for r in rows} == expected
    sizes = {"id": len(dm.splits.test), "ood": len(dm.splits.ood)}
    for split, n in sizes.items():
        for method in expected:
            mine = [r for r in rows if r["method"] == method and r["split"] == split]
            assert sorted({float(r["w_c"]) for r in mine}) == DEFAULT_GRID
            for w_c in DEFAULT_GRID:
                at = [r for r in mine if float(r["w_c"]) == w_c]
                assert [int(r["n"]) for r in at if r["task"] == "all"] == [n]
                assert sum(int(r["n"]) for r in at if r["task"] != "all") == n
    assert all(0 <= float(r["score"]) <= 1 and float(r["cost"]) >= 0 for r in rows)
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["results"]) == expected and set(summary["splits"]) == {"id", "ood"}
    for split in ("id", "ood"):
        entry = summary["results"]["barp"][split]
        # the checkpoint is the bootstrap reference: no difference to itself
        assert set(entry) == {"aiq", "mean_reward", "score_at_best_single_cost", "cost_to_best_single_score",
                              "mean_regret", "aiq_ci", "score_over_prompts", "score_over_tasks"}
        # both averages, named plainly: over prompts (the "all" row) and over tasks (each task once)
        at = [r for r in rows if r["method"] == "barp" and r["split"] == split and float(r["w_c"]) == 0.5]
        tasks = [float(r["score"]) for r in at if r["task"] != "all"]
        assert entry["score_over_tasks"]["0.5"] == pytest.approx(np.mean(tasks))
        assert entry["score_over_prompts"]["0.5"] == pytest.approx(float(next(r["score"] for r in at
                                                                              if r["task"] == "all")))
        assert entry["aiq_ci"][0] <= entry["aiq"] <= entry["aiq_ci"][1]
        knn = summary["results"]["knn"][split]
        assert knn["aiq_diff_ci"][0] <= knn["aiq"] - entry["aiq"] <= knn["aiq_diff_ci"][1]
        assert 0 <= knn["p_diff_positive"] <= 1
        assert summary["splits"][split]["cost_range"][0] == 0.0
        assert summary["results"]["oracle"][split]["aiq"] >= max(e[split]["aiq"] for e in summary["results"].values())
    png = (folder / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_comparison_methods_get_the_checkpoints_pull_budget(swept):
    out, ckpt, dm = swept
    summary = json.loads((out / "sweep" / "summary.json").read_text())
    k = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["training"]["samples_per_prompt"]
    assert k == 4  # the recipe pulls each prompt 4 times per step ...
    assert summary["meta"]["comparison_training"] == {  # ... so the bandits get 4 passes, in as many steps
        "train_repeats": dm.batches.train_repeats * k, "batch_size": dm.batches.batch_size * k}


def test_validation_and_test_aiq_match_the_sweeps(swept, tmp_path):
    """The AIQ that ``barp test`` logs (and checkpoint selection watches) is the sweep's, on the same grid."""
    out, ckpt, _ = swept
    cli = main(["test", *tiny_args(tmp_path), "--ckpt_path", ckpt])
    summary = json.loads((out / "sweep" / "summary.json").read_text())
    for split in ("id", "ood"):
        logged = float(cli.trainer.callback_metrics[f"test/{split}/aiq"])
        assert logged == pytest.approx(summary["results"]["barp"][split]["aiq"], abs=1e-5)


def test_oracle_is_never_beaten_on_reward(swept):
    rows = read_rows(swept[0] / "sweep" / "sweep.csv")
    best = defaultdict(lambda: -float("inf"))
    oracle = {}
    for r in rows:
        key = (r["split"], r["w_c"], r["task"])
        if r["method"] == "oracle":
            oracle[key] = float(r["reward"])
        else:
            best[key] = max(best[key], float(r["reward"]))
    assert set(oracle) == set(best)
    assert all(oracle[k] >= best[k] - 1e-9 for k in oracle)


def test_rerun_gives_identical_numbers_whatever_the_method_subset(swept, tmp_path):
    out, ckpt, _ = swept
    main(["sweep", *small_benchmark(), "--ckpt_path", ckpt, "--output", str(tmp_path), "--max_epochs", "1",
          "--progress", "false", "--methods", "[random, linucb, barp, mlp]", "--w_c", "[0.0, 0.5, 1.0]"])
    again = read_rows(tmp_path / "sweep.csv")
    first = {(r["method"], r["w_c"], r["split"], r["task"]): r for r in read_rows(out / "sweep" / "sweep.csv")}
    assert {r["method"] for r in again} == {"random", "linucb", "barp", "mlp"}
    assert all(first[(r["method"], r["w_c"], r["split"], r["task"])] == r for r in again)


def test_aiq_does_not_depend_on_the_other_methods_swept(swept, tmp_path):
    """The AIQ cost range is fixed by the split's outcomes: BaRP swept alone gets the AIQ it gets beside everyone."""
    out, ckpt, _ = swept
    main(["sweep", *small_benchmark(), "--ckpt_path", ckpt, "--output", str(tmp_path), "--progress", "false",
          "--methods", "[barp]", "--bootstrap", "0"])
    alone = json.loads((tmp_path / "summary.json").read_text())
    full = json.loads((out / "sweep" / "summary.json").read_text())
    for split in ("id", "ood"):
        assert alone["splits"][split]["cost_range"] == full["splits"][split]["cost_range"]
        assert alone["results"]["barp"][split]["aiq"] == full["results"]["barp"][split]["aiq"]
        # and the range is the most expensive single model's mean cost, whatever else is swept
        singles = [r for r in read_rows(out / "sweep" / "sweep.csv")
                   if r["split"] == split and r["task"] == "all" and r["method"].startswith("single:")]
        assert full["splits"][split]["cost_range"][1] == pytest.approx(max(float(r["cost"]) for r in singles))


@pytest.mark.parametrize("option, value, named", [("--methods", "[nope]", "nope"),
                                                   ("--bootstrap", "-1", "--bootstrap must be an integer >= 0")])
def test_sweep_rejects_bad_options_and_writes_nothing(swept, tmp_path, capsys, option, value, named):
    with pytest.raises(SystemExit) as info:
        main(["sweep", *small_benchmark(), "--ckpt_path", swept[1], "--output", str(tmp_path / "o"), option, value])
    assert info.value.code not in (0, None)
    assert named in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name, cls", [("linucb", LinUCBRouter), ("knn", KNNRouter)])
def test_non_gradient_methods_fit_checkpoint_and_test_through_barp_fit(tmp_path, name, cls):
    config = str(ROOT / "configs" / "model" / f"{name}.yaml")
    cli = main(["fit", *tiny_args(tmp_path), "--config", config, "--trainer.max_epochs", "1",
                "--test_after_fit", "true"])
    assert type(cli.model) is cls
    metrics = cli.trainer.callback_metrics
    assert "test/ood/reward" in metrics and "test/id/wc=0.9/reward" in metrics
    assert float(metrics["test/id/oracle_reward"]) >= float(metrics["test/id/reward"])
    hp = cli.datamodule.batches
    batches = -(-len(cli.datamodule.splits.train) * hp.train_repeats // hp.batch_size)
    assert cli.trainer.global_step == batches  # counted like BaRP's steps, so ModelCheckpoint saves
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    loaded = ModuleContender(cls.load_from_checkpoint(ckpt, map_location="cpu"), name)
    emb = torch.as_tensor(cli.datamodule.embeddings(cli.datamodule.splits.test))
    w = torch.tensor([[0.7, 0.3]]).expand(len(emb), 2)
    # the checkpoint routes as the trained module does (greedy: the argmax, or the recipe's shift guard's fallback)
    assert torch.equal(loaded.choose(emb, w), cli.model.greedy(emb, w))
    # barp sweep takes the checkpoint's class from the model config and does not retrain that method
    main(["sweep", *small_benchmark(), "--config", config, "--ckpt_path", ckpt, "--output", str(tmp_path / "sweep"),
          "--methods", f"[{name}, oracle]", "--w_c", "[0.0, 1.0]", "--progress", "false"])
    assert {r["method"] for r in read_rows(tmp_path / "sweep" / "sweep.csv")} == {name, "oracle"}


def _load_paper_tables():
    return load_tool("paper_tables")


def test_paper_tables_render_mean_and_std_from_sweep_outputs(swept, tmp_path):
    """Two 'seeds' holding the same sweep: means equal the sweep's numbers and stds are 0 (no training: reuse)."""
    out, _, _ = swept
    for seed in (0, 1):
        shutil.copytree(out / "sweep", tmp_path / f"seed{seed}" / "head_mlp" / "sweep")
    text = _load_paper_tables().paper_tables(output=str(tmp_path), num_seeds=2, w_c=0.5,
                                             tables=["per_task", "cost", "algorithms"])
    rows = read_rows(out / "sweep" / "sweep.csv")
    barp = next(r for r in rows if r["method"] == "barp" and r["split"] == "id" and r["task"] == "all"
                and float(r["w_c"]) == 0.5)
    assert "| BaRP | " in text and f"{100 * float(barp['score']):.1f} ± 0.0 |" in text
    assert "| LinUCB |" in text and "| epsilon-greedy |" in text and "| 0.8 |" in text
    assert "## Per-task scores (%), OOD test" in text and "Decision-head" not in text
    assert (tmp_path / "paper_tables.md").read_text() == text


def test_wandb_failure_never_breaks_a_sweep(swept):
    folder = swept[0] / "sweep"
    rows = read_rows(folder / "sweep.csv")
    summary = json.loads((folder / "summary.json").read_text())
    with pytest.warns(UserWarning, match="W&B logging skipped"):
        log_to_wandb({"class_path": "WandbLogger", "init_args": {"no_such_option": 1}}, rows, summary,
                      folder / "pareto.png")


@pytest.mark.slow
def test_sweep_logs_table_and_figure_to_wandb_offline(tmp_path):
    config = tmp_path / "wandb.yaml"
    config.write_text(f"trainer:\n  logger:\n    class_path: barp.loggers.WandbLogger\n    init_args:\n"
                      f"      project: barp-test\n      save_dir: {tmp_path}\n")
    main(["sweep", *small_benchmark(), "--config", str(config), "--methods", "[oracle, random, single_models]",
          "--output", str(tmp_path / "out"), "--progress", "false"])
    files = {p.parent.name for p in tmp_path.glob("wandb/offline-run-*/files/media/*/sweep/*")}
    assert files == {"sweep"} and len(list(tmp_path.glob("wandb/offline-run-*/files/media/*/sweep/*"))) == 2


def test_sweep_help_shows_the_docstrings(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for fragment in ("--ckpt_path", "--w_c", "Cost weights of the grid", "--methods", "--max_epochs", "--data"):
        assert fragment in text, fragment


@pytest.mark.slow
def test_paper_tables_train_every_head_and_method(tmp_path):
    text = _load_paper_tables().paper_tables(recipe=RECIPE, output=str(tmp_path), num_seeds=1, num_prompts=240,
                                             max_epochs=1)
    for title in ("Per-task scores (%), ID", "Per-task scores (%), OOD", "cost table", "Decision-head ablation",
                  "Learning-algorithm ablation"):
        assert title in text, title
    for row in ("| mlp |", "| linear |", "| bilinear |", "| policy gradient (BaRP, as configured) |", "| linear TS |",
                "| MF (offline) |"):
        assert row in text, row
    assert "| - |" not in text and " - |" not in text  # every cell filled
    assert sorted(p.name for p in tmp_path.glob("seed0/head_*")) == ["head_bilinear", "head_linear", "head_mlp"]
