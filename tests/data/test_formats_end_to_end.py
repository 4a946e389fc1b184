"""Every supported file format trains through `barp fit --data.source.path` and evaluates through `barp test` (with
the tiny fake encoder: these runs check reading, splitting and bookkeeping, not what is learned)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from barp.cli import main
from tests.helpers import ROOT, load_script
from tests.helpers.encoder import fake_encoder_args

RECIPE = str(ROOT / "configs" / "experiments" / "routerbench.yaml")
fixtures = load_script(ROOT / "tests" / "fixtures" / "make_fixtures.py")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return fixtures.write_fixtures(tmp_path_factory.mktemp("fixtures"))


def args_for(path: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", RECIPE, *fake_encoder_args(),
        "--data.init_args.source.path", str(path),
        "--data.init_args.split.val_fraction", "0.2",
        "--data.init_args.split.test_fraction", "0.3",
        "--data.init_args.batches.batch_size", "8",
        "--model.init_args.critic.init_args.neighbours", "5",  # the fixture tables hold a few dozen prompts
        "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        *extra,
    ]


def test_routerbench_csv_with_index_and_missing_cells_end_to_end(files, tmp_path):
    with pytest.warns(UserWarning, match="dropped 3 of"):
        cli = main(["fit", *args_for(files["routerbench_missing_csv"], tmp_path, "--test_after_fit", "false")])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    cli = main(["test", *args_for(files["routerbench_missing_csv"], tmp_path), "--ckpt_path", ckpt])
    m = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in ("test/id/reward", "test/ood/reward", "test/id/oracle_reward", "test/id/random_reward",
                "test/ood/cheapest_reward", "test/ood/most_expensive_reward", "test/ood/task=mbpp/score"):
        assert key in m, key
    assert cli.datamodule.table.num_prompts == 37
    assert set(cli.datamodule.ood_tasks) == {"arc-challenge", "mbpp"}


def test_routerbench_csv_with_repeated_ids_trains_and_tests(files, tmp_path):
    """Published RouterBench 5-shot CSVs reuse sample_ids for different prompts: they train and test as they are."""
    with pytest.warns(UserWarning, match=r"made 3 repeated prompt ids unique by a '#N' suffix"):
        cli = main(["fit", *args_for(files["routerbench_repeated_ids_csv"], tmp_path, "--test_after_fit", "true")])
    table = cli.datamodule.table
    assert len(table) == 43 and "mmlu-astronomy.val.0#3" in table.prompt_ids
    results = json.loads(next(Path(cli.trainer.log_dir).glob("test_results.json")).read_text())
    assert {r["split"] for r in results["rows"]} == {"id", "ood"}


def test_published_test_file_through_the_recipe(files, tmp_path):
    """A given test file is the ID test split through `barp fit --data.source.test_path` (the recipe's test_fraction
    unset)."""
    import pandas as pd

    frame = pd.read_csv(files["routerbench_csv"], dtype=str, keep_default_na=False)
    rows = list(range(1, 42, 3))
    frame.drop(index=rows).to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[rows].to_csv(tmp_path / "test.csv", index=False)
    argv = [a for a in args_for(tmp_path / "train.csv", tmp_path, "--data.init_args.source.test_path",
                                str(tmp_path / "test.csv"), "--test_after_fit", "true")]
    i = argv.index("--data.init_args.split.test_fraction")
    cli = main(["fit", *argv[:i], *argv[i + 2:]])
    dm = cli.datamodule
    published = [s for s, e in zip(frame["sample_id"].iloc[rows], frame["eval_name"].iloc[rows])
                 if e not in ("arc-challenge", "mbpp", "test-match")]
    assert [dm.table.prompt_ids[i] for i in dm.splits.test] == published


FORMATS = ["routerbench_pkl", "routerbench_csv_index", "routerbench_csv", "routerbench_parquet",
           "routerbench_long_pkl", "routerbench_long_csv", "wide_csv", "wide_jsonl", "wide_parquet", "long_csv",
           "long_jsonl", "records_json", "canonical_parquet"]


#: Formats trained end to end in the default run; the rest are `slow` (every layout's loading is in test_sources).
FAST_FORMATS = ("routerbench_csv_index", "long_jsonl", "records_json")


@pytest.mark.parametrize("name", [n if n in FAST_FORMATS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in FORMATS])
def test_each_format_trains_and_tests(files, tmp_path, name):
    extra = ["--test_after_fit", "true"]
    if name.endswith("pkl"):
        extra += ["--data.init_args.source.trust_pickle", "true"]
    if name == "records_json":
        extra += ["--data.init_args.source.prices", str(files["prices_json"])]
    cli = main(["fit", *args_for(files[name], tmp_path, *extra)])
    results = json.loads(next(Path(cli.trainer.log_dir).glob("test_results.json")).read_text())
    assert {r["split"] for r in results["rows"]} == {"id", "ood"}
    assert results["metrics"]["test/id/oracle_reward"] >= results["metrics"]["test/id/reward"]


def test_untrusted_pickle_fails_cleanly(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", *args_for(files["routerbench_pkl"], tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "rb_wide.pkl" in err and "trust_pickle" in err
    assert not list(tmp_path.rglob("*.ckpt"))
