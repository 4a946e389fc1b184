"""W&B logging: offline by default, a real local run folder, and no crash without a key."""

from pathlib import Path

import pytest

from barp.cli import main
from barp.loggers import WandbLogger
from tests.helpers.encoder import fake_encoder_args

ROOT = Path(__file__).resolve().parents[1]


def test_fit_with_wandb_config_writes_offline_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cli = main([
        "fit", "--config", str(ROOT / "configs" / "experiments" / "synthetic.yaml"),
        "--config", str(ROOT / "configs" / "logger" / "wandb.yaml"), *fake_encoder_args(),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.default_root_dir", str(tmp_path),
        "--data.init_args.synthetic.num_prompts", "240", "--trainer.max_epochs", "1",
        "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
    ])
    logger = cli.trainer.logger
    assert isinstance(logger, WandbLogger)
    run = logger.experiment
    assert run.settings.mode in ("offline", "dryrun")
    assert run.summary.get("test/id/reward") is not None
    run.finish()
    run_dirs = list(tmp_path.rglob("offline-run-*"))
    assert run_dirs, list(tmp_path.rglob("*"))
    assert list(run_dirs[0].glob("*.wandb"))


def test_online_without_key_warns_and_stays_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.warns(UserWarning, match="no API key"):
        logger = WandbLogger(save_dir=str(tmp_path), project="barp-test")
    assert logger._offline
