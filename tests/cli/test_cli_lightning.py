"""What barp's command line changes in LightningCLI (private methods it overrides; `lightning` is pinned to the
minor version these tests pass on): barp's own subcommands beside Lightning's, and a checkpoint's options for the
module it evaluates, with the operator's evaluation-time options winning."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from barp.cli import main
from tests.helpers import ROOT
from tests.helpers import SYNTHETIC_RECIPE as RECIPE
from tests.helpers.cli import encoder_args


def run_args(out: Path, *extra: str) -> list[str]:
    return ["--config", RECIPE, *encoder_args(), "--data.init_args.synthetic.num_prompts", "200",
            "--trainer.max_epochs", "1",
            "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(out),
            "--model.init_args.critic.init_args.neighbours", "5", *extra]


def test_help_lists_lightnings_and_barps_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    listed = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "sweep", "ope", "calibrate", "serve"):
        assert re.search(rf"\b{command}\b", listed), command


def test_test_builds_the_trained_module_and_evaluates_at_the_operators_preferences(tmp_path):
    fit = main(["fit", *run_args(tmp_path / "fit", "--model.init_args.policy.hidden_dim", "24",
                                 "--model.init_args.evaluation.extra_w_c", "[0.0]")])
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    assert ckpt
    # the config says hidden_dim 256 (the recipe's); the checkpoint's 24 must be built, or its weights would not load
    tested = main(["test", *run_args(tmp_path / "test", "--model.init_args.evaluation.extra_w_c", "[0.2]"),
                   "--ckpt_path", ckpt])
    assert tested.model.policy_options.hidden_dim == 24
    assert tested.model.extra_eval_w_c == [0.2]  # the operator's grid, not the checkpoint's [0.0]
    (results,) = (tmp_path / "test").rglob("test_results.json")
    grid = {row["w_c"] for row in json.loads(results.read_text())["rows"]}
    assert grid == {0.5, 0.2}


def test_a_checkpoint_of_another_router_class_is_built_as_that_class(tmp_path):
    fit = main(["fit", *run_args(tmp_path / "fit"), "--config", str(ROOT / "configs" / "model" / "knn.yaml")])
    ckpt = fit.trainer.checkpoint_callback.best_model_path or fit.trainer.checkpoint_callback.last_model_path
    tested = main(["test", *run_args(tmp_path / "test"), "--ckpt_path", ckpt])  # the recipe names BaRPModule
    assert type(tested.model).__name__ == "KNNRouter"
