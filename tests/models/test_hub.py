"""Routers as folders and Hub repositories (barp.models.hub): save_pretrained / from_pretrained round trips that route
identically (BaRP and kNN), the folder's files and model card, atomic writing, barp serve / ope / calibrate reading a
folder (``--router``), one clear error per bad folder, loading that runs no code, and the offline Hub errors."""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

from barp.errors import ConfigError
from barp.models import hub
from barp.models.trained import TrainedRouter
from tests.helpers import ROOT, SYNTHETIC_RECIPE
from tests.helpers.cli import tiny_checkpoint
from tests.helpers.encoder import fake_encoder_args

PROMPTS = [f"Question {i}: what is {i} times {i + 3}?" for i in range(24)]
PREFERENCES = (0.0, 0.2, 0.5, 0.8, 1.0)


@pytest.fixture(scope="module")
def barp_ckpt() -> str:
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def knn_ckpt(tmp_path_factory) -> str:
    """A kNN router (configs/model/knn.yaml) fitted on the 200-prompt benchmark with the fake encoder."""
    from barp.cli import main

    out = tmp_path_factory.mktemp("knn")
    cli = main(["fit", "--config", SYNTHETIC_RECIPE, "--config", str(ROOT / "configs" / "model" / "knn.yaml"),
                *fake_encoder_args(), "--data.init_args.synthetic.num_prompts", "200",
                "--data.init_args.encoder.max_length", "64", "--trainer.max_epochs", "1",
                "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
                "--test_after_fit", "false"])
    return cli.trainer.checkpoint_callback.best_model_path


@pytest.fixture(scope="module")
def barp_folder(barp_ckpt, tmp_path_factory) -> Path:
    return TrainedRouter.from_checkpoint(barp_ckpt).save_pretrained(tmp_path_factory.mktemp("hub") / "barp-router")


def same_routing(a: TrainedRouter, b: TrainedRouter) -> None:
    """Identical decisions and probabilities, greedy and exploring (seeded), at every preference."""
    for w_c in PREFERENCES:
        assert a.route(PROMPTS, w_c) == b.route(PROMPTS, w_c)
        assert torch.equal(a.probabilities(PROMPTS, w_c), b.probabilities(PROMPTS, w_c))
        assert a.route(PROMPTS, w_c, temperature=1.5, epsilon=0.1, seed=3) == \
            b.route(PROMPTS, w_c, temperature=1.5, epsilon=0.1, seed=3)


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("which", ["barp", "knn"])
def test_save_and_load_a_folder_routes_identically(which, request, tmp_path):
    ckpt = request.getfixturevalue(f"{which}_ckpt")
    router = TrainedRouter.from_checkpoint(ckpt)
    folder = router.save_pretrained(tmp_path / "router")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["router"]  # no temporary folder left beside it
    loaded = TrainedRouter.from_pretrained(folder)
    assert type(loaded.module) is type(router.module) and loaded.models == router.models
    assert loaded.module.tau_value == router.module.tau_value
    same_routing(router, loaded)
    # saved again from the loaded router: the same files, so the same identity
    again = loaded.save_pretrained(tmp_path / "again")
    assert hub.router_sha256(again) == hub.router_sha256(folder)
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_config_json_and_model_card_say_what_the_router_is(barp_ckpt, barp_folder):
    from barp.models.checkpoints import load_checkpoint

    ckpt = load_checkpoint(barp_ckpt)
    config = json.loads((barp_folder / "config.json").read_text())
    assert config["format_version"] == hub.FORMAT_VERSION and config["router_class"] == "barp.models.barp.BaRPModule"
    assert config["models"] == ckpt["hyper_parameters"]["arms"]["model_names"]
    assert config["tau"] == float(ckpt["state_dict"]["tau"])
    assert config["encoder"] == {**ckpt["barp_encoder"], "identity": ckpt["barp"]["encoder"]["identity"]}
    assert config["preference"]["w"] == "(1 - w_c, w_c)" and "min(cost / tau, 1)" in config["preference"]["reward"]
    assert config["hyper_parameters"]["training"] == ckpt["hyper_parameters"]["training"]
    assert config["data"]["hyper_parameters"] == ckpt["datamodule_hyper_parameters"]
    assert config["data"]["record"]["train_prompts"] == len(ckpt["barp"]["train_rows"])
    assert config["training"]["validation"]["monitor"] == "val/id/selection"
    card = (barp_folder / "README.md").read_text()
    header = card.split("---")[1]
    assert "library_name: barp" in header and "- llm-router" in header
    for part in ("## Intended use", "## The preference knob", "w_c=0.2", "## Data", config["data"]["record"]
                 ["fingerprint"][:16], "## Recipe", '"beta": 0.05', "## Results", "barp test --config RECIPE"):
        assert part in card, part


def test_test_metrics_are_recorded_and_shown(barp_ckpt, tmp_path):
    router = TrainedRouter.from_checkpoint(barp_ckpt)
    folder = router.save_pretrained(tmp_path / "r", test_metrics={"test/id/aiq": 0.61})
    assert "| `test/id/aiq` | 0.6100 |" in (folder / "README.md").read_text()
    kept = TrainedRouter.from_pretrained(folder).save_pretrained(tmp_path / "r2")  # kept through a reload
    assert json.loads((kept / "config.json").read_text())["test_metrics"] == {"test/id/aiq": 0.61}
    with pytest.raises(ConfigError, match=r"test_metrics\['x'\] must be a finite number, got nan"):
        router.save_pretrained(tmp_path / "r3", test_metrics={"x": float("nan")})
    assert not (tmp_path / "r3").exists()


def test_saving_refuses_a_folder_with_files_unless_overwrite_which_keeps_other_files(barp_ckpt, tmp_path):
    router = TrainedRouter.from_checkpoint(barp_ckpt)
    folder = tmp_path / "clone"
    folder.mkdir()
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    with pytest.raises(ConfigError, match=r"already holds files \(\.gitattributes\).*overwrite=True"):
        router.save_pretrained(folder)
    assert [p.name for p in folder.iterdir()] == [".gitattributes"]
    router.save_pretrained(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == [".gitattributes", "README.md", "config.json",
                                                        "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clone"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file; a router is saved as a folder"):
        router.save_pretrained(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert TrainedRouter.from_pretrained(router.save_pretrained(empty)).models == router.models


def test_identity_covers_config_and_weights_not_the_card(barp_folder, tmp_path):
    from barp.service.calibration_files import checkpoint_sha256

    copy = Path(shutil.copytree(barp_folder, tmp_path / "copy"))
    assert checkpoint_sha256(copy) == hub.router_sha256(barp_folder)
    (copy / "README.md").write_text("edited card\n")
    assert checkpoint_sha256(copy) == hub.router_sha256(barp_folder)
    config = json.loads((copy / "config.json").read_text())
    config["test_metrics"] = {"test/id/aiq": 0.5}
    (copy / "config.json").write_text(json.dumps(config))
    assert checkpoint_sha256(copy) != hub.router_sha256(barp_folder)


# ---------------------------------------------------------------------- the commands
def test_barp_serve_router_folder_serves_it(barp_ckpt, barp_folder, tmp_path, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    from barp.cli import main

    answers: dict = {}

    def run(app, **kwargs):  # in place of the server: the requests while barp serve runs
        with TestClient(app) as client:
            answers["route"] = client.post("/route", json={"prompts": PROMPTS, "w_c": 0.3})
            answers["models"] = client.get("/models").json()["models"]

    monkeypatch.setattr(uvicorn, "run", run)
    main(["serve", "--router", str(barp_folder), "--log_dir", str(tmp_path / "log")])
    router = TrainedRouter.from_checkpoint(barp_ckpt)
    assert answers["route"].status_code == 200, answers["route"].text
    assert [d["model"] for d in answers["route"].json()["decisions"]] == [d.model for d in router.route(PROMPTS, 0.3)]
    assert answers["models"] == router.models


@pytest.fixture(scope="module")
def served_log(barp_folder, tmp_path_factory) -> Path:
    """log.jsonl of exploring requests served from the folder (barp serve's service and app), all with feedback."""
    from fastapi.testclient import TestClient

    from barp.service.app import create_app
    from barp.service.cli import build_service

    folder = tmp_path_factory.mktemp("served")
    service = build_service(str(barp_folder), str(folder))
    with TestClient(create_app(service)) as client:
        body = client.post("/route", json={"prompts": PROMPTS, "w_c": 0.5, "seed": 1,
                                           "explore": {"temperature": 2.0, "epsilon": 0.3}}).json()
        for i, d in enumerate(body["decisions"]):
            ok = client.post("/feedback", json={"decision_id": d["decision_id"], "score": (i % 3) / 2,
                                                "cost": 0.0005 * (1 + i % 4)})
            assert ok.status_code == 200, ok.text
    service.log.close()
    return folder / "log.jsonl"


def test_ope_reads_a_folder_and_estimates_as_from_the_checkpoint(barp_ckpt, barp_folder, served_log, tmp_path):
    from barp.ope.cli import run_ope_cli

    common = ["--log", str(served_log), "--w_c", "[0.2,0.8]", "--bootstrap", "30"]
    from_folder = run_ope_cli([*common, "--router", str(barp_folder), "--output", str(tmp_path / "a")])
    from_ckpt = run_ope_cli([*common, "--ckpt_path", barp_ckpt, "--output", str(tmp_path / "b")])
    assert len(from_folder) == len(from_ckpt) > 0
    assert [(r.w_c, r.estimator, r.quantity, r.estimate) for r in from_folder] == \
        [(r.w_c, r.estimator, r.quantity, r.estimate) for r in from_ckpt]
    assert (tmp_path / "a" / "ope.csv").read_text() == (tmp_path / "b" / "ope.csv").read_text()


def test_calibrate_reads_a_folder_and_serve_checks_its_identity(barp_ckpt, barp_folder, tmp_path, capsys):
    from barp.cli import main
    from barp.service.calibrate import calibrate
    from barp.service.cli import build_service

    record = calibrate(str(barp_folder), str(tmp_path / "cal"), grid=5, bootstrap=20)
    assert record["checkpoint"] == str(barp_folder) and record["checkpoint_sha256"] == hub.router_sha256(barp_folder)
    from_ckpt = calibrate(barp_ckpt, str(tmp_path / "cal-ckpt"), grid=5, bootstrap=20)
    assert record["curve"] == from_ckpt["curve"]  # the same router, the same curve
    calibration = str(tmp_path / "cal" / "calibration.json")
    assert build_service(str(barp_folder), str(tmp_path / "log"), calibration=calibration).models
    # the folder's calibration is not the checkpoint's (another identity), and the other way round
    with pytest.raises(ConfigError, match="was made for checkpoint"):
        build_service(barp_ckpt, str(tmp_path / "log2"), calibration=calibration)
    with pytest.raises(SystemExit) as info:
        main(["serve", "--router", str(barp_folder), "--calibration", str(tmp_path / "cal-ckpt" / "calibration.json"),
              "--log_dir", str(tmp_path / "log3")])
    assert info.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("barp serve")]
    assert len(err) == 1 and "was made for checkpoint" in err[0] and str(barp_folder) in err[0], err


# ---------------------------------------------------------------------- bad folders: one clear error each
def _edit(key_path: tuple[str, ...], value):
    def edit(config: dict) -> None:
        target = config
        for key in key_path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[key_path[-1]]
        else:
            target[key_path[-1]] = value
    return edit


_DELETE = object()


@pytest.mark.parametrize("damage, message", [
    ("no-config", r"is a folder without config\.json: neither a checkpoint file written by barp fit nor a router "
                  r"folder written by save_pretrained"),
    ("no-weights", r"holds no model\.safetensors: the folder is incomplete"),
    ("truncated-weights", r"model\.safetensors is not a readable safetensors file \(truncated or damaged"),
    ("bad-json", r"config\.json is not readable JSON"),
    (_edit(("format_version",), 99), r"format_version 99, and this barp reads versions 1 to 1: upgrade barp"),
    (_edit(("models",), _DELETE), r"config\.json lacks the field 'models'"),
    (_edit(("tau",), "cheap"), r"config\.json: field 'tau' must be a number, got 'cheap'"),
    (_edit(("tau",), float("nan")), r"field 'tau' must be a finite number > 0 \(USD\), got nan"),
    (_edit(("tau",), 0.5), r"field 'tau' \(0\.5\) differs from the weights' tau"),
    (_edit(("router_class",), "barp.models.nowhere.Router"),
     r"router class 'barp\.models\.nowhere\.Router' is not a barp router class"),
    (_edit(("router_class",), "os.system"), r"router class 'os\.system' is not a barp router class"),
    (_edit(("router_class",), 7), r"field 'router_class' must be a string, got 7"),
    (_edit(("hyper_parameters", "_instantiator"), "os.system"),
     r"field 'hyper_parameters' holds \['_instantiator'\]"),
    (_edit(("models",), ["a", "a"]), r"field 'models' must list at least 2 distinct model names"),
    (_edit(("training", "validation", "score"), "high"),
     r"field 'training.validation': field 'score' must be a number, got 'high'"),
    (_edit(("encoder", "truncation_side"), "middle"), r"truncation_side left or right, got 64 and 'middle'"),
    (_edit(("hyper_parameters", "policy", "hidden_dim"), 8),
     r"its weights and hyperparameters do not build a BaRPModule \(Error\(s\) in loading state_dict"),
])
def test_a_bad_folder_is_one_clear_error(barp_folder, tmp_path, damage, message):
    folder = Path(shutil.copytree(barp_folder, tmp_path / "bad"))
    if damage == "no-config":
        (folder / "config.json").unlink()
    elif damage == "no-weights":
        (folder / "model.safetensors").unlink()
    elif damage == "truncated-weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "bad-json":
        (folder / "config.json").write_text('{"format_version": 1,')
    else:
        config = json.loads((folder / "config.json").read_text())
        damage(config)
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message) as info:
        TrainedRouter.from_pretrained(folder)
    assert str(folder) in str(info.value)


def test_loading_runs_no_code_from_the_files(barp_folder, tmp_path, monkeypatch):
    """A class path naming a module that is not imported is refused without importing it; one naming os.system is
    refused without calling it."""
    marker = tmp_path / "ran"
    (tmp_path / "evil_router.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nclass Router: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    calls: list = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    for class_path in ("evil_router.Router", "os.system"):
        folder = Path(shutil.copytree(barp_folder, tmp_path / class_path))
        config = json.loads((folder / "config.json").read_text())
        config["router_class"] = class_path
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ConfigError, match="is not a barp router class"):
            TrainedRouter.from_pretrained(folder)
    assert not marker.exists() and "evil_router" not in sys.modules and calls == []


def test_a_bad_folder_on_the_command_line_is_one_line_and_exit_code_2(barp_folder, tmp_path, capsys):
    from barp.cli import main

    folder = Path(shutil.copytree(barp_folder, tmp_path / "bad"))
    (folder / "config.json").unlink()
    with pytest.raises(SystemExit) as info:
        main(["ope", "--log", "x.csv", "--router", str(folder), "--output", str(tmp_path / "o")])
    assert info.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("barp ope")]
    assert len(err) == 1 and "--ckpt_path" in err[0] and "is a folder without config.json" in err[0], err


# ---------------------------------------------------------------------- the Hub, offline
@pytest.fixture()
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of this test's own (HF_HUB_OFFLINE=1 is set for the whole session)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_name_not_in_the_cache_offline_is_one_error_saying_where_to_put_the_files(hf_cache, tmp_path, capsys):
    from barp.cli import main

    with pytest.raises(ConfigError) as info:
        TrainedRouter.from_pretrained("someone/barp-router", revision="0123456789abcdef0123456789abcdef01234567")
    text = str(info.value)
    for part in ("'someone/barp-router'", "not in the local Hugging Face cache", "HF_HUB_OFFLINE is set",
                 "hf download someone/barp-router --revision 0123456789abcdef", "--local-dir DIR", "save_pretrained"):
        assert part in text, part
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--router", "someone/barp-router", "--log_dir", str(tmp_path / "log")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("no revision given" in line for line in err)  # an unpinned name is warned about
    assert "not in the local Hugging Face cache" in err[-1] and not (tmp_path / "log").exists()


def test_a_hub_name_in_the_local_cache_loads_offline_at_its_pinned_revision(barp_ckpt, barp_folder, hf_cache):
    sha = "89abcdef0123456789abcdef0123456789abcdef"
    snapshot = hf_cache / "models--someone--barp-router" / "snapshots" / sha
    shutil.copytree(barp_folder, snapshot)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pinned: no warning
        loaded = TrainedRouter.from_pretrained("someone/barp-router", revision=sha)
    same_routing(TrainedRouter.from_checkpoint(barp_ckpt), loaded)
    with pytest.raises(ConfigError, match="--revision 'abc' applies to a Hugging Face Hub repository id"):
        TrainedRouter.from_pretrained(barp_folder, revision="abc")


def test_a_missing_path_that_is_no_repository_id_is_one_error(tmp_path):
    for ref in (str(tmp_path / "nothing"), "runs/best.ckpt", ""):
        with pytest.raises(ConfigError, match="does not exist|is empty"):
            TrainedRouter.from_pretrained(ref)


def test_push_to_hub_offline_is_one_clear_error(barp_ckpt):
    router = TrainedRouter.from_checkpoint(barp_ckpt)
    with pytest.raises(ConfigError, match=r"push_to_hub 'someone/barp-router': HF_HUB_OFFLINE is set"):
        router.push_to_hub("someone/barp-router", private=True)
    with pytest.raises(ConfigError, match="repo_id must be 'owner/name'"):
        router.push_to_hub("no-owner")
