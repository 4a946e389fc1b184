"""Checkpoints know their data and never run code: every unusable checkpoint or mismatched data stops with one clear
error (exit 2), before anything is written."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from barp.cli import main
from barp.data.parts import Batches, Split
from barp.errors import ConfigError
from barp.models.parts import Arms, Evaluation
from tests.helpers import ROUTERBENCH_RECIPE as RECIPE
from tests.helpers.cli import run_args
from tests.helpers.encoder import fake_encoder_args, fake_encoder_spec
from tests.helpers.tables import MODELS, write_table


def fails(capsys, args: list[str]) -> str:
    """Run barp with ``args``; assert exit code 2 and one error line, no traceback; return stderr."""
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2, err[-3000:]
    assert "Traceback" not in err and re.search(r"^barp( sweep)?: error: ", err, re.M), err[-3000:]
    return err


def test_checkpoint_records_models_tasks_encoder_and_training_prompts(table_checkpoint):
    _, ckpt, _ = table_checkpoint
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    record = saved["barp"]
    assert record["model_names"] == MODELS and record["task_names"] == ["code", "math", "trivia"]
    assert record["encoder"]["max_length"] == 256 and record["encoder"]["truncation_side"] == "left"
    assert "@" in record["encoder"]["identity"]  # name plus weights fingerprint
    assert record["train_rows"].dtype == torch.int64 and len(record["train_rows"]) > 0
    assert saved["datamodule_hyper_parameters"]["split"]["seed"] == 42  # split settings, generically
    assert {"torch", "numpy", "python"} <= set(saved["barp_rng"])


# ------------------------------------------------------------------ another model list
@pytest.mark.parametrize("models, named, subs", [(["zeta", "mid", "small"], "zeta", ("test", "predict")),
                                                 (["big", "mid", "small", "tiny"], "tiny", ("test",))])
def test_other_models_are_refused_not_misrouted(table_checkpoint, tmp_path, capsys, models, named, subs):
    _, ckpt, _ = table_checkpoint
    other = write_table(tmp_path / "other.csv", models=models)
    for sub in subs:
        err = fails(capsys, [sub, *run_args(other, tmp_path / "run"), "--ckpt_path", str(ckpt)])
        assert "routes to models ['big', 'mid', 'small']" in err and named in err
        assert "size mismatch" not in err
    assert not list(tmp_path.rglob("test_results.json")) and not list(tmp_path.rglob("predictions.csv"))


def test_models_in_another_order_are_mapped_by_name(tiny_model_pair):
    """Same models, other column order: evaluation maps arms to columns by name and gets the same numbers."""
    import lightning as L

    module, dm, shuffled = tiny_model_pair
    results = []
    for data in (dm, shuffled):
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        fresh = type(module)(arms=Arms(data.model_names, data.task_names, data.embed_dim),
                             evaluation=Evaluation(extra_w_c=[0.0]))
        with pytest.warns(UserWarning, match="mapped by name") if data is shuffled else nullcontext():
            trainer.test(fresh, datamodule=data, ckpt_path=module.ckpt_file, verbose=False)
        results.append({k: float(v) for k, v in trainer.callback_metrics.items()})
    assert "test/id/share/m0" in results[0] and results[0] == pytest.approx(results[1])


@pytest.fixture(scope="module")
def tiny_model_pair(tmp_path_factory):
    """A trained BaRP checkpoint on a 40-prompt table, and the same table with its model columns reversed."""
    import lightning as L

    from barp.data.datamodule import RoutingDataModule
    from barp.data.table import OutcomeTable
    from barp.models.barp import BaRPModule
    from tests.helpers.tables import make_table

    out = tmp_path_factory.mktemp("order")
    table = make_table(n=40, k=3, seed=3)
    dm = RoutingDataModule(encoder=fake_encoder_spec(), split=Split(ood_tasks=[], val_fraction=0.2, test_fraction=0.3),
                           batches=Batches(batch_size=8))
    dm.use_table(table)
    rev = RoutingDataModule(encoder=fake_encoder_spec(), split=Split(ood_tasks=[], val_fraction=0.2, test_fraction=0.3),
                            batches=Batches(batch_size=8))
    rev.use_table(OutcomeTable(table.prompt_ids, table.prompts, table.tasks, table.models[::-1],
                               table.scores[:, ::-1], table.costs[:, ::-1], source="reversed"))
    L.seed_everything(0)
    module = BaRPModule(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim), evaluation=Evaluation(extra_w_c=[0.0]))
    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=out)
    trainer.fit(module, datamodule=dm)
    module.ckpt_file = out / "order.ckpt"
    trainer.save_checkpoint(module.ckpt_file)
    rev.prepare_data()
    rev.setup("test")
    return module, dm, rev


# ------------------------------------------------------------------ the checkpoint's data settings
@pytest.mark.parametrize("sub", ["test", "validate", "sweep"])
def test_another_split_seed_that_would_test_on_training_prompts_is_refused(table_checkpoint, tmp_path, capsys, sub):
    data, ckpt, _ = table_checkpoint
    args = run_args(data, tmp_path) if sub != "sweep" else [
        "--config", RECIPE, *fake_encoder_args(), "--data.init_args.source.path", str(data),
        "--data.init_args.split.ood_tasks", "[]", "--model.init_args.critic.init_args.neighbours", "5",
        "--output", str(tmp_path / "sweep"), "--methods", "[barp]"]
    err = fails(capsys, [sub, *args, "--ckpt_path", str(ckpt), "--data.init_args.split.seed", "7"])
    assert "prompts were training prompts of this checkpoint" in err
    assert "data.split.seed: checkpoint 42, now 7" in err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("option, value", [("max_length", "128"), ("truncation_side", "right")])
def test_other_encoder_settings_are_refused(table_checkpoint, tmp_path, capsys, option, value):
    data, ckpt, _ = table_checkpoint
    err = fails(capsys, ["test", *run_args(data, tmp_path), "--ckpt_path", str(ckpt),
                         f"--data.init_args.encoder.{option}", value])
    assert f"data.encoder.{option}: checkpoint" in err and "embedded differently" in err


def test_the_checkpoints_own_settings_test_fine(table_checkpoint, tmp_path):
    data, ckpt, _ = table_checkpoint
    cli = main(["test", *run_args(data, tmp_path), "--ckpt_path", str(ckpt)])
    assert "test/id/reward" in cli.trainer.callback_metrics


# ------------------------------------------------------------------ untrained results
def test_test_without_a_checkpoint_is_refused(table_checkpoint, tmp_path, capsys):
    data, _, _ = table_checkpoint
    for sub in ("test", "predict"):  # validate takes the same path
        err = fails(capsys, [sub, *run_args(data, tmp_path)])
        assert "needs --ckpt_path" in err
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.csv"))


def test_fit_with_zero_epochs_is_refused_before_any_output(table_checkpoint, tmp_path, capsys):
    data, _, _ = table_checkpoint
    err = fails(capsys, ["fit", *run_args(data, tmp_path), "--trainer.max_epochs", "0"])
    assert "trainer.max_epochs=0 trains nothing" in err
    assert not list(tmp_path.rglob("*"))


def test_an_untrained_module_is_never_tested(tiny_datamodule):
    import lightning as L

    from barp.models.barp import BaRPModule

    dm = tiny_datamodule
    module = BaRPModule(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigError, match="has not been trained"):
        trainer.test(module, datamodule=dm, verbose=False)


# ------------------------------------------------------------------ TrainedRouter input
def test_trained_router_refuses_a_bare_string_and_non_strings(table_checkpoint):
    from barp.models.trained import TrainedRouter

    router = TrainedRouter.from_checkpoint(table_checkpoint[1])
    with pytest.raises(ConfigError, match=r"list of prompt texts.*\[prompt\]"):
        router.route("hello world")
    with pytest.raises(ConfigError, match=r"prompts\[1\] must be a string, got int"):
        router.route(["fine", 42])
    assert router.route([]) == []
    assert len(router.route(["hello world"])) == 1


# ------------------------------------------------------------------ unusable checkpoints
class _Payload:
    """Unpickling this creates a file: what a hostile checkpoint would do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def _crafted(tmp_path: Path, trained_ckpt: Path) -> tuple[Path, Path]:
    target = tmp_path / "pwned"
    saved = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    saved["hyper_parameters"]["evil"] = _Payload(target)
    path = tmp_path / "crafted.ckpt"
    torch.save(saved, path)
    return path, target


def test_a_crafted_checkpoint_never_runs_code(table_checkpoint, tmp_path, capsys):
    from barp.models.trained import TrainedRouter

    data, ckpt, _ = table_checkpoint
    crafted, target = _crafted(tmp_path, ckpt)
    with pytest.raises(ConfigError, match="refused to load.*getattr.*barp fit"):
        TrainedRouter.from_checkpoint(crafted)
    err = fails(capsys, ["test", *run_args(data, tmp_path / "run"), "--ckpt_path", str(crafted)])
    assert "refused to load" in err and "weights_only" not in err
    err = fails(capsys, ["sweep", "--config", RECIPE, *fake_encoder_args(), "--data.init_args.source.path", str(data),
                         "--ckpt_path", str(crafted), "--output", str(tmp_path / "sweep")])
    assert "refused to load" in err
    assert not target.exists()


def _unusable(kind: str, tmp_path: Path, ckpt: Path) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "missing":
        return path
    if kind == "folder":
        path.mkdir()
        return path
    if kind == "truncated":
        path.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif kind == "text":
        path.write_text("model: not a checkpoint\n")
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"state_dict": {}}))
    return path


@pytest.mark.parametrize("kind, named", [("missing", "does not exist"), ("folder", "is a folder"),
                                         ("truncated", "not a readable checkpoint"),
                                         ("text", "not a readable checkpoint"),
                                         ("foreign", "not a barp checkpoint"),
                                         ("plain_pickle", "not a readable checkpoint")])
def test_every_unusable_checkpoint_gets_one_message(table_checkpoint, tmp_path, capsys, kind, named):
    from barp.models.trained import TrainedRouter

    data, ckpt, _ = table_checkpoint
    path = _unusable(kind, tmp_path, ckpt)
    err = fails(capsys, ["test", *run_args(data, tmp_path / "run"), "--ckpt_path", str(path)])
    assert named in err and str(path) in err and "weights_only" not in err
    with pytest.raises(ConfigError, match=named):
        TrainedRouter.from_checkpoint(path)
    assert not (tmp_path / "run").exists()


def test_resume_on_other_training_prompts_is_refused(table_checkpoint, tmp_path, capsys):
    data, ckpt, _ = table_checkpoint
    err = fails(capsys, ["fit", *run_args(data, tmp_path), "--ckpt_path", str(ckpt), "--trainer.max_epochs", "3",
                         "--data.init_args.split.seed", "3"])
    assert "training prompts differ from the checkpoint's" in err and "data.split.seed" in err


# ------------------------------------------------------------------ config values that used to crash
@pytest.mark.parametrize("yaml_text, named", [("model:\n  init_args:\n    training:\n      lr: .nan\n",
                                               "model.training.lr"),
                                              ("model:\n  init_args:\n    training:\n      beta: .nan\n",
                                               "model.training.beta"),
                                              ("data:\n  init_args:\n    encoder:\n      max_length: 1000\n",
                                               "data.encoder.max_length=1000")])
def test_nan_rates_and_too_long_max_length_are_named(table_checkpoint, tmp_path, capsys, yaml_text, named):
    data, _, _ = table_checkpoint
    config = tmp_path / "override.yaml"
    config.write_text(yaml_text)
    err = fails(capsys, ["fit", *run_args(data, tmp_path / "run"), "--config", str(config)])
    assert named in err
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_max_length_is_checked_against_the_encoder():
    from barp.encoders import SentenceEncoder, check_max_length

    assert check_max_length("all-MiniLM-L6-v2", 512) == 512
    with pytest.raises(ConfigError, match="513 exceeds the 512 token positions"):
        SentenceEncoder(max_length=513)


def test_a_yaml_syntax_error_names_its_file(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  init_args:\n    lr: [0.1\n")
    err = fails(capsys, ["fit", "--config", RECIPE, "--config", str(bad)])
    assert f"--config {bad}: not valid YAML at line" in err
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--config", str(bad), "--output", str(tmp_path / "o")])
    assert info.value.code == 2 and str(bad) in capsys.readouterr().err


def test_checkpoint_loads_need_no_unsafe_types(table_checkpoint):
    """Every barp checkpoint loads with torch's weights-only unpickler (no allow-list needed)."""
    _, ckpt, _ = table_checkpoint
    with zipfile.ZipFile(ckpt) as z:
        assert any(name.endswith("data.pkl") for name in z.namelist())
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    json.dumps(saved["datamodule_hyper_parameters"])  # plain values only


# ------------------------------------------------------------------ the module owns its frozen encoder
def test_module_owns_its_frozen_encoder_rebuilt_from_its_checkpoint(table_checkpoint):
    from barp.models.barp import BaRPModule
    from barp.models.checkpoints import ENCODER_KEY
    from barp.models.trained import TrainedRouter

    data, ckpt, _ = table_checkpoint
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    data_encoder = saved["datamodule_hyper_parameters"]["encoder"]
    assert saved[ENCODER_KEY] == {"name": data_encoder["name"], "max_length": 256, "truncation_side": "left",
                                  "dtype": data_encoder["dtype"]}
    assert not any("encoder" in key for key in saved["state_dict"])  # never stored as weights
    module = BaRPModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    prompts = ["Question 3: what is 3 plus 3?", "Write a haiku about rain."]
    emb = module.embed(prompts)  # built on first use from the recorded settings
    assert emb.shape == (2, module.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-4)
    params = {id(p) for p in module.parameters()}
    assert not any(id(p) in params for p in module.encoder.parameters())  # not trained, not in the optimiser
    assert all(not p.requires_grad for p in module.encoder.parameters())
    assert TrainedRouter(module).route(prompts, w_c=0.2) == TrainedRouter.from_checkpoint(ckpt).route(prompts, w_c=0.2)
    probs = TrainedRouter(module).probabilities(prompts, 0.2)
    assert probs.shape == (2, len(MODELS)) and torch.allclose(probs.sum(-1), torch.ones(2))


def test_checkpoints_naming_the_former_module_paths_still_load(table_checkpoint, tmp_path):
    """Checkpoints written before the modules moved into layers name ``barp.module.BaRPModule``."""
    from barp.models.trained import TrainedRouter

    data, ckpt, _ = table_checkpoint
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["_class_path"] == "barp.models.barp.BaRPModule"
    saved["hyper_parameters"]["_class_path"] = "barp.module.BaRPModule"
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    assert TrainedRouter.from_checkpoint(old).route(["hello"]) == TrainedRouter.from_checkpoint(ckpt).route(["hello"])
    cli = main(["test", *run_args(data, tmp_path / "run"), "--ckpt_path", str(old)])
    assert type(cli.model).__name__ == "BaRPModule" and "test/id/aiq" in cli.trainer.callback_metrics


def test_auto_dtype_with_a_checkpoint_embeds_like_the_checkpoint():
    from jsonargparse import Namespace

    from barp.models.checkpoints import embed_like_checkpoint

    for saved in ({"datamodule_hyper_parameters": {"encoder": {"name": "x", "dtype": "float32"}}},
                  {"datamodule_hyper_parameters": {"encoder": "x", "encoder_dtype": "float32"}}):  # old, flat
        auto = Namespace(class_path="RoutingDataModule", init_args=Namespace(encoder=Namespace(dtype="auto")))
        embed_like_checkpoint(auto, saved)
        assert auto.init_args.encoder.dtype == "float32"
        explicit = Namespace(class_path="RoutingDataModule",
                             init_args=Namespace(encoder=Namespace(dtype="bfloat16")))
        embed_like_checkpoint(explicit, saved)
        assert explicit.init_args.encoder.dtype == "bfloat16"  # an explicit choice stays (and is checked later)
