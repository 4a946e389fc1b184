"""The barp command line end to end: fit -> test -> predict in-process, help, version, configs, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from barp.cli import main
from tests.helpers import ROOT
from tests.helpers import SYNTHETIC_RECIPE as RECIPE
from tests.helpers.cli import tiny_args


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    cli = main(["fit", *tiny_args(out, "--test_after_fit", "false")])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    return out, ckpt, cli


def test_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out.startswith("barp ")


def test_help_shows_docstrings(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--model", "BaRPModule", "--model.help", "BaRPModule"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "Entropy bonus coefficient" in text and "--model.baseline" in text


def test_fit_writes_config_checkpoint_and_metrics(fitted):
    out, ckpt, cli = fitted
    log_dir = Path(cli.trainer.log_dir)
    assert Path(ckpt).is_file()
    assert (log_dir / "config.yaml").is_file()
    header = (log_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "train/reward", "train/entropy", "val/id/reward", "val/id/wc=0.9/reward",
                "val/id/reward_avg", "val/id/aiq"):
        assert key in header, key
    rows = [dict(zip(header, line.split(","))) for line in (log_dir / "metrics.csv").read_text().splitlines()[1:]]
    aiqs = [float(r["val/id/aiq"]) for r in rows if r.get("val/id/aiq")]
    assert aiqs and all(0.0 < a < 1.0 for a in aiqs)
    hparams = (log_dir / "hparams.yaml").read_text()
    assert "params/trainable" in hparams and "params/frozen" in hparams


def test_test_reports_router_and_references(fitted, capsys):
    out, ckpt, _ = fitted
    cli = main(["test", *tiny_args(out), "--ckpt_path", ckpt])
    m = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in ("test/id/reward", "test/ood/reward", "test/id/oracle_reward", "test/id/random_reward",
                "test/id/cheapest_reward", "test/id/most_expensive_reward", "test/ood/wc=0.9/score",
                "test/id/task=mmlu/score"):
        assert key in m, key
    for split in ("id", "ood"):
        assert m[f"test/{split}/oracle_reward"] >= m[f"test/{split}/reward"]
        assert m[f"test/{split}/oracle_reward"] >= m[f"test/{split}/most_expensive_reward"]
    shares = sum(v for k, v in m.items() if k.startswith("test/id/share/"))
    assert shares == pytest.approx(1.0, abs=1e-5)
    printed = capsys.readouterr().out
    assert "oracle" in printed and "most_expensive" in printed
    for name in ("test/id/reward =", "test/ood/reward =", "test/id/oracle_reward =", "test/id/random_reward ="):
        assert name in printed, name
    results = json.loads((Path(cli.trainer.log_dir) / "test_results.json").read_text())
    assert {r["policy"] for r in results["rows"]} == {"BaRP", "oracle", "random", "cheapest", "most_expensive"}


def test_predict_writes_choice_and_probability(fitted):
    out, ckpt, cli_fit = fitted
    cli = main(["predict", *tiny_args(out), "--ckpt_path", ckpt, "--model.init_args.predict.w_c", "0.3"])
    path = Path(cli.trainer.log_dir) / "predictions.csv"
    rows = list(csv.DictReader(path.open()))
    dm = cli.datamodule
    assert len(rows) == len(dm.splits.test) + len(dm.splits.ood)
    assert set(rows[0]) == {"prompt_id", "split", "task", "w_c", "model", "probability"}
    assert {r["model"] for r in rows} <= set(dm.model_names)
    assert all(0 < float(r["probability"]) <= 1 and float(r["w_c"]) == 0.3 for r in rows)
    assert {r["split"] for r in rows} == {"test", "ood"}


def test_exploring_predict_writes_propensities(fitted):
    """predict samples from the exploring distribution and records each served model's propensity."""
    out, ckpt, _ = fitted
    cli = main(["predict", *tiny_args(out), "--ckpt_path", ckpt, "--model.init_args.predict.w_c", "0.3",
                "--model.init_args.predict.temperature", "2.0", "--model.init_args.predict.epsilon", "0.2"])
    rows = list(csv.DictReader((Path(cli.trainer.log_dir) / "predictions.csv").open()))
    k = len(cli.datamodule.model_names)
    assert set(rows[0]) == {"prompt_id", "split", "task", "w_c", "model", "probability", "propensity"}
    propensity = [float(r["propensity"]) for r in rows]
    assert all(0.2 / k - 1e-9 <= p <= 1 for p in propensity)  # epsilon / K is the floor of every model's chance
    assert len({r["model"] for r in rows}) > 2  # sampled, not the argmax of a few favourites
    with pytest.raises(SystemExit) as info:
        main(["predict", *tiny_args(out), "--ckpt_path", ckpt, "--model.init_args.predict.epsilon", "1.5"])
    assert info.value.code == 2


def test_same_seed_same_metrics(tmp_path):
    runs = []
    for name in ("a", "b"):
        cli = main(["fit", *tiny_args(tmp_path / name, "--trainer.max_epochs", "2")])
        runs.append({k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")})
    assert runs[0] and runs[0] == runs[1]


# configs/wandb/ holds W&B Sweeps definitions, not barp configs (tests/cli/test_wandb_report.py checks them)
@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "wandb"),
                         ids=lambda p: p.name)
def test_every_config_parses(path, capsys):
    args = ["fit", "--config", RECIPE]
    if path.parent.name == "experiments":
        args = ["fit"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--config", str(path), "--print_config"])
    assert info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--model.init_args.evaluation.w_c", "1.5"], ["model.evaluation.w_c", "1.5"]),
        (["--data.init_args.split.ood_tasks", "[no-such-task]"], ["data.split.ood_tasks", "no-such-task"]),
        (["--data.init_args.split.val_fraction", "0.9"], ["val_fraction", "0.9"]),
        (["--model.init_args.policy.head", "transformer"], ["head", "transformer"]),
        (["--model.init_args.baseline", "LeaveOneOut", "--model.init_args.training.samples_per_prompt", "1"],
         ["LeaveOneOut", "samples_per_prompt", "1"]),
        (["--model.init_args.training.cost_power", "0"], ["model.training.cost_power", "0"]),
        (["--model.init_args.policy.features", "sqrt"], ["features", "sqrt"]),
        (["--model.init_args.critic", "knn"], ["critic", "knn"]),
        (["--data.init_args.source.path", "a.csv", "--data.init_args.source.test_path", "b.csv",
          "--data.init_args.split.test_fraction",
          "0.25"], ["data.split.test_fraction", "0.25", "data.source.test_path", "b.csv"]),
        (["--model.init_args.critic", "Neighbours", "--model.init_args.critic.init_args.neighbours", "1000"],
         ["model.critic.neighbours", "1000"]),
    ],
)
def test_bad_config_fails_clearly(tmp_path, capsys, extra, fragments):
    with pytest.raises(SystemExit) as info:
        main(["fit", *tiny_args(tmp_path), *extra])
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, (fragment, err[-2000:])
    assert not list(tmp_path.rglob("*.ckpt"))


def test_trained_router_routes_raw_text_like_predict(fitted):
    from barp.errors import ConfigError
    from barp.models.trained import TrainedRouter

    out, ckpt, cli_fit = fitted
    cli = main(["predict", *tiny_args(out), "--ckpt_path", ckpt, "--model.init_args.predict.w_c", "0.2"])
    rows = list(csv.DictReader((Path(cli.trainer.log_dir) / "predictions.csv").open()))[:40]
    table = cli.datamodule.table
    text = {pid: p for pid, p in zip(table.prompt_ids, table.prompts)}
    router = TrainedRouter.from_checkpoint(ckpt)
    decisions = router.route([text[r["prompt_id"]] for r in rows], w_c=0.2)
    agree = sum(d.model == r["model"] for d, r in zip(decisions, rows)) / len(rows)
    assert agree >= 0.95
    probs = router.probabilities(["hello there"], w_c=0.7)
    assert probs.shape == (1, len(router.models)) and abs(float(probs.sum()) - 1) < 1e-5
    with pytest.raises(ConfigError, match="w_c"):
        router.route(["x"], w_c=1.2)
    with pytest.raises(ConfigError, match="does not exist"):
        TrainedRouter.from_checkpoint(out / "missing.ckpt")
