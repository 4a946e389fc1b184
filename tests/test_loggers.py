"""W&B logging: offline by default, a real local run folder, and no crash without a key; at test end the run holds
the results table, the Pareto figure and the traffic chart, and ``log_model`` logs checkpoints as artifacts carrying
the checkpoint's data fingerprint and encoder identity (read back from the offline run folder)."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from barp.cli import main
from barp.loggers import CHECKPOINT_ENCODER_KEY, CHECKPOINT_RECORD_KEY, WandbLogger, checkpoint_metadata
from barp.metrics.evaluation import REFERENCES
from barp.wandb_report import RESULT_COLUMNS, TRAFFIC_COLUMNS, log_test_results
from tests.helpers.cli import tiny_args
from tests.helpers.wandb_offline import artifacts, charts, history_keys, media, offline_run

ROOT = Path(__file__).resolve().parents[1]
WANDB_CONFIG = str(ROOT / "configs" / "logger" / "wandb.yaml")


@pytest.fixture(scope="module")
def wandb_fit(tmp_path_factory):
    """One tiny ``barp fit`` (test after fit) with configs/logger/wandb.yaml and ``log_model: true``, WANDB_MODE
    unset (offline is the default); its W&B run is finished, so the offline folder is complete."""
    out = tmp_path_factory.mktemp("wandb-fit")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        mp.setenv("WANDB_DATA_DIR", str(out / "wandb-data"))  # artifact staging, not the home folder
        mp.setenv("WANDB_CACHE_DIR", str(out / "wandb-cache"))
        cli = main(["fit", *tiny_args(out, "--config", WANDB_CONFIG, "--trainer.logger.init_args.log_model", "true",
                                      "--trainer.max_epochs", "1")])
        logger = cli.trainer.logger
        run = logger.experiment
        facts = {"logger": logger, "mode": run.settings.mode, "summary": dict(run.summary),
                 "best": cli.trainer.checkpoint_callback.best_model_path, "model": cli.model}
        run.finish()
    results = json.loads(next(out.rglob("test_results.json")).read_text())
    return {"out": out, "run": offline_run(out), "results": results, **facts}


def test_fit_with_wandb_config_writes_offline_run(wandb_fit):
    assert isinstance(wandb_fit["logger"], WandbLogger)
    assert wandb_fit["mode"] in ("offline", "dryrun")
    assert wandb_fit["summary"].get("test/id/reward") is not None
    assert list(wandb_fit["run"].glob("*.wandb"))


def test_offline_run_holds_the_results_table(wandb_fit):
    run = wandb_fit["run"]
    assert "test/results" in history_keys(run)
    (path,) = media(run, "table", "test/results")
    logged = json.loads(path.read_text())
    assert logged["columns"] == RESULT_COLUMNS
    rows = [dict(zip(RESULT_COLUMNS, r)) for r in logged["data"]]
    expected = wandb_fit["results"]["rows"]
    assert len(rows) == len(expected) > 0
    for got, want in zip(rows, expected):
        assert got == pytest.approx(want)
    module = wandb_fit["model"]
    assert {r["split"] for r in rows} == {"id", "ood"}
    assert {r["w_c"] for r in rows} == set(module.eval_preferences)
    assert {r["policy"] for r in rows} == {"BaRP", *REFERENCES}


def test_offline_run_holds_the_pareto_figure_and_traffic_chart(wandb_fit):
    run, module = wandb_fit["run"], wandb_fit["model"]
    keys = history_keys(run)
    assert {"test/pareto", "test/traffic", "test/traffic_plot"} <= keys
    for key in ("test/pareto", "test/traffic_plot"):
        (png,) = media(run, "images", key)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    (path,) = media(run, "table", "test/traffic")
    traffic = json.loads(path.read_text())
    assert traffic["columns"] == TRAFFIC_COLUMNS
    shares: dict = {}
    for split, w_c, model, share in traffic["data"]:
        assert model in module.model_names
        shares[(split, w_c)] = shares.get((split, w_c), 0.0) + share
    assert set(shares) == {(s, w) for s in ("id", "ood") for w in module.eval_preferences}
    assert all(total == pytest.approx(1.0, abs=1e-5) for total in shares.values())
    # the router's logged primary-preference shares are the ones charted
    summary = wandb_fit["summary"]
    primary = {m: s for split, w_c, m, s in traffic["data"] if split == "id" and w_c == module.eval_w_c}
    assert primary == pytest.approx({m: summary[f"test/id/share/{m}"] for m in module.model_names})
    bars = charts(run)
    assert set(bars) >= {"test/traffic/id", "test/traffic/ood"}
    assert bars["test/traffic/id"]["panel_config"]["panelDefId"] == "wandb/bar/v0"


def test_log_model_artifacts_carry_the_checkpoint_records(wandb_fit):
    """The offline folder's transaction log (read with wandb's own protobuf records) holds the model artifacts; their
    metadata holds the data fingerprint and the encoder identity the checkpoint records."""
    models = [a for a in artifacts(wandb_fit["run"]) if a.type == "model"]
    assert models, "no model artifact logged"
    best = [a for a in models if "best" in a.aliases]
    assert len(best) == 1
    meta = json.loads(best[0].metadata)
    assert meta["original_filename"] == Path(wandb_fit["best"]).name
    assert [c.path for c in best[0].manifest.contents] == ["model.ckpt"]
    ckpt = torch.load(wandb_fit["best"], map_location="cpu", weights_only=True)
    record = ckpt[CHECKPOINT_RECORD_KEY]
    train = record["train_rows"].to(torch.int64).numpy()
    assert meta["barp"]["data"]["train_sha256"] == hashlib.sha256(train.tobytes()).hexdigest()
    assert meta["barp"]["data"]["train_prompts"] == len(train) > 0
    assert meta["barp"]["data"]["models"] == record["model_names"]
    encoder = meta["barp"]["encoder"]
    assert encoder["identity"] == record["encoder"]["identity"] and "@" in encoder["identity"]
    assert {k: encoder[k] for k in ("name", "max_length", "truncation_side", "dtype")} == {
        k: ckpt[CHECKPOINT_ENCODER_KEY][k] for k in ("name", "max_length", "truncation_side", "dtype")}


def test_checkpoint_keys_agree_with_the_checkpoint_module():
    from barp.models import checkpoints

    assert (CHECKPOINT_RECORD_KEY, CHECKPOINT_ENCODER_KEY) == (checkpoints.RECORD_KEY, checkpoints.ENCODER_KEY)


def test_checkpoint_without_records_gives_empty_metadata(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, path)
    assert checkpoint_metadata(path) == {}


def test_a_wandb_failure_at_test_end_only_warns():
    class Broken:
        def log(self, items):
            raise OSError("disk full")

    rows = [{"split": "id", "w_c": 0.5, "policy": "BaRP", "score": 0.5, "cost": 1e-4, "reward": 0.4}]
    with pytest.warns(UserWarning, match="test results were not logged.*disk full"):
        assert log_test_results(Broken(), rows, {}, ["a", "b"], [0.5]) is False
    with pytest.raises(OSError, match="disk full"):
        log_test_results(Broken(), rows, {}, ["a", "b"], [0.5], strict=True)


def test_online_without_key_warns_and_stays_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.warns(UserWarning, match="no API key"):
        logger = WandbLogger(save_dir=str(tmp_path), project="barp-test")
    assert logger._offline


def test_offline_log_model_is_accepted(tmp_path, monkeypatch):
    """Lightning's logger refuses ``offline`` with ``log_model``; barp's logs the artifacts into the offline run."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = WandbLogger(save_dir=str(tmp_path), project="barp-test", log_model=True)
    assert logger._offline and logger._log_model is True
