"""A checkpoint grants no trust and never gives a traceback: data settings saved in a checkpoint cannot make barp
unpickle a file; unreadable or minimal files are one clear error; NaN and infinity on the command line are refused by
name."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

from barp.cli import main
from barp.errors import BarpError, ConfigError
from barp.models.trained import TrainedRouter
from tests.helpers import ROOT


def fails(capsys, args: list[str]) -> str:
    """Run barp with ``args``; assert exit code 2 and one error line, no traceback; return stderr."""
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2, err[-3000:]
    assert "Traceback" not in err and re.search(r"^barp( \w+)?: error: ", err, re.M), err[-3000:]
    return err


class _Payload:
    """Unpickling this creates the file ``marker`` (what a crafted pickle could do, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture()
def crafted(table_checkpoint, tmp_path):  # noqa: F811
    """A checkpoint that passes weights-only loading but whose data settings name a payload pickle and trust it."""
    _, best, _ = table_checkpoint
    marker = tmp_path / "PWNED"
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps(_Payload(marker)))
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    ckpt["datamodule_hyper_parameters"] = {**dict(ckpt["datamodule_hyper_parameters"]),
                                           "source": {"path": str(payload), "trust_pickle": True}}
    path = tmp_path / "crafted.ckpt"
    torch.save(ckpt, path)
    return path, marker


def test_calibrate_never_takes_trust_pickle_from_a_checkpoint(crafted, tmp_path, capsys):
    path, marker = crafted
    err = fails(capsys, ["calibrate", "--ckpt_path", str(path), "--output", str(tmp_path / "cal"),
                         "--target.cost_per_1k", "0.5"])
    assert "a checkpoint never grants trust_pickle" in err and "refusing to unpickle" in err
    assert not marker.exists()  # the payload did not run


def test_critic_coverage_never_takes_trust_pickle_from_a_checkpoint(crafted, monkeypatch):
    path, marker = crafted
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    from critic_coverage import coverage

    with pytest.raises(BarpError, match="refusing to unpickle"):
        coverage(str(path))
    assert not marker.exists()


def test_the_users_own_trust_pickle_still_applies(crafted):
    """The user may still trust a pickle on their own command line: the checkpoint only cannot do it for them."""
    from barp.models.checkpoints import datamodule_from_checkpoint, load_checkpoint

    path, marker = crafted
    with pytest.raises(BarpError):  # the payload is no table, so loading fails after unpickling it
        datamodule_from_checkpoint(load_checkpoint(path), "validate", trust_pickle=True)
    assert marker.exists()


def _minimal(path: Path) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": {"model_names": ["a", "b"]}}, path)
    return path


@pytest.mark.parametrize("make", [
    lambda p: (p.write_text("this is not a checkpoint"), p)[1],  # IndexError in the unpickler before
    lambda p: (torch.save(torch.zeros(3), p), p)[1],  # AttributeError: 'Tensor' object has no attribute 'get'
    _minimal,  # KeyError: 'pytorch-lightning_version'
], ids=["text", "tensor", "minimal_dict"])
def test_unusable_checkpoints_are_one_clear_error(make, tmp_path, capsys):
    path = make(tmp_path / "x.ckpt")
    with pytest.raises(ConfigError, match="not a (readable|barp) checkpoint"):
        TrainedRouter.from_checkpoint(path)
    err = fails(capsys, ["test", "--config", str(ROOT / "configs" / "experiments" / "synthetic.yaml"),
                         "--ckpt_path", str(path)])
    assert "checkpoint" in err
    for command in (["serve", "--ckpt_path", str(path)],
                    ["ope", "--ckpt_path", str(path), "--log", str(tmp_path / "log.csv"),
                     "--output", str(tmp_path / "ope")]):
        err = fails(capsys, command)
        assert "not a readable checkpoint" in err or "not a barp checkpoint" in err or "log" in err


@pytest.mark.parametrize("option", ["--model.training.lr", "--model.init_args.evaluation.w_c", "--model.training.beta"])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_non_finite_numbers_are_refused_by_name(option, value, capsys):
    err = fails(capsys, ["fit", "--config", str(ROOT / "configs" / "experiments" / "synthetic.yaml"), option, value])
    assert f"{option} '{value}': not a finite number" in err


def test_non_finite_in_equals_form_and_for_barp_commands(capsys, tmp_path):
    err = fails(capsys, ["calibrate", "--ckpt_path", str(tmp_path / "x.ckpt"), "--output", str(tmp_path / "c"),
                         "--target.cost_per_1k=nan"])
    assert "--target.cost_per_1k 'nan': not a finite number" in err
