"""The data module's parts: built from dataclasses or dicts, saved as plain dicts, old flat hyperparameters upgraded."""

from __future__ import annotations

import json

import pytest
import torch

from barp.data.compat import upgrade_data_hparams
from barp.data.datamodule import RoutingDataModule
from barp.data.environment import BanditEnvironment, Environment, LoggedEnvironment
from barp.data.parts import Batches, Source, Split, Synthetic, merge_options
from barp.encoders import EncoderSpec
from barp.errors import ConfigError
from barp.models.checkpoints import saved_encoder
from tests.helpers import ROOT

OLD = ROOT / "tests" / "fixtures" / "checkpoints" / "barp_v0.ckpt"


def test_parts_as_dataclasses_or_dicts_give_the_same_plain_hyperparameters():
    typed = RoutingDataModule(synthetic=Synthetic(num_prompts=300), split=Split(ood_tasks=[], seed=7),
                              encoder=EncoderSpec(dtype="float32"), batches=Batches(batch_size=8))
    plain = RoutingDataModule(synthetic={"num_prompts": 300}, split={"ood_tasks": [], "seed": 7},
                              encoder={"dtype": "float32"}, batches={"batch_size": 8})
    assert dict(typed.hparams) == dict(plain.hparams)
    json.dumps(dict(typed.hparams))  # plain values only: weights_only loading reads them
    assert typed.encoder_spec == EncoderSpec(dtype="float32") and typed.batches.batch_size == 8
    rebuilt = RoutingDataModule(**dict(typed.hparams))  # as Lightning rebuilds a data module from a checkpoint
    assert dict(rebuilt.hparams) == dict(typed.hparams)


@pytest.mark.parametrize("kwargs, message", [
    ({"batches": Batches(batch_size=0)}, "data.batches.batch_size must be >= 1, got 0"),
    ({"batches": {"train_repeats": 0}}, "data.batches.train_repeats must be >= 1, got 0"),
    ({"encoder": EncoderSpec(max_length=0)}, "data.encoder.max_length must be >= 1, got 0"),
    ({"split": {"seeds": 1}}, "data.split: unknown option(s) ['seeds']"),
    ({"source": {"test_path": "t.csv"}}, "data.source.path must be given"),
    ({"source": Source("a.csv", test_path="t.csv"), "split": Split(test_fraction=0.3)},
     "data.split.test_fraction (0.3) cannot be used with data.source.test_path"),
    ({"synthetic": 3}, "data.synthetic must be a Synthetic"),
])
def test_bad_parts_are_refused_by_option_name(kwargs, message):
    with pytest.raises(ConfigError) as info:
        RoutingDataModule(**kwargs)
    assert message in str(info.value)


def test_old_flat_checkpoint_hyperparameters_upgrade_to_the_parts():
    old = torch.load(OLD, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]
    assert old["num_prompts"] == 300 and old["encoder_dtype"] == "float32"  # the fixture is the old flat form
    new = upgrade_data_hparams(old)
    assert new["source"] is None and new["train_log"] is None
    assert new["synthetic"] == {"num_prompts": 300, "seed": old["synthetic_seed"]}
    assert new["split"] == {"ood_tasks": old["ood_tasks"], "val_fraction": old["val_fraction"],
                            "test_fraction": old["test_fraction"], "seed": old["split_seed"]}
    assert new["encoder"] == {"name": old["encoder"], "max_length": old["max_length"],
                              "truncation_side": old["truncation_side"], "dtype": "float32",
                              "batch_size": old["encoder_batch_size"], "device": old["encoder_device"]}
    assert new["batches"] == {"batch_size": old["batch_size"], "eval_batch_size": old["eval_batch_size"],
                              "train_repeats": old["train_repeats"], "num_workers": old["num_workers"]}
    assert upgrade_data_hparams(new) == new  # idempotent on the grouped form
    dm = RoutingDataModule(**{k: v for k, v in new.items() if not k.startswith("_")})
    assert dm.synthetic.num_prompts == 300 and dm.split.seed == old["split_seed"]
    # a flat file option moves into the source, with the other file options
    with_file = upgrade_data_hparams({**old, "path": "a.csv", "prices": "p.json"})
    assert with_file["source"]["path"] == "a.csv" and with_file["source"]["prices"] == "p.json"


def test_encoder_spec_reads_new_and_old_records():
    spec = EncoderSpec(max_length=128, dtype="bfloat16", batch_size=8)
    assert EncoderSpec.from_record(spec.identity()) == EncoderSpec(max_length=128, dtype="bfloat16")
    old = {"encoder": spec.name, "max_length": 128, "truncation_side": "left", "encoder_dtype": "bfloat16",
           "identity": "model@x"}
    assert EncoderSpec.from_record(old).identity() == spec.identity()
    assert EncoderSpec.from_record({"encoder": spec.name}).dtype == "float32"  # before the dtype option: float32
    ckpt = torch.load(OLD, map_location="cpu", weights_only=True)
    assert saved_encoder(ckpt).identity() == {"name": ckpt["datamodule_hyper_parameters"]["encoder"],
                                              "max_length": 256, "truncation_side": "left", "dtype": "float32"}
    del ckpt["barp_encoder"]
    assert saved_encoder(ckpt).identity()["dtype"] == "float32"  # from the flat data hyperparameters


def test_merge_options_overrides_a_parts_options_one_by_one():
    base = {"synthetic": {"num_prompts": 3000, "seed": 1}, "train_log": None}
    assert merge_options(base, {"synthetic": {"num_prompts": 300}, "train_log": "l.csv"}) == {
        "synthetic": {"num_prompts": 300, "seed": 1}, "train_log": "l.csv"}
    assert base["synthetic"]["num_prompts"] == 3000


def test_both_environments_are_one_type():
    assert issubclass(BanditEnvironment, Environment) and issubclass(LoggedEnvironment, Environment)
