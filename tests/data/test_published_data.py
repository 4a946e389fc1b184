"""Real data as it is published: repeated ids, published splits, LLMRouter/LiteLLM price tables, ``datasets``
folders and hub datasets, and the shared real development set (LLMRouter's DC router data) loaded as it is."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from barp.data.datamodule import RoutingDataModule
from barp.data.parts import Source, Split
from barp.data.sources import load_table
from barp.data.sources.duplicates import unique_rows
from barp.errors import ConfigError, DataValidationError
from tests.helpers import ROOT, load_script

DEV = ROOT.parent / "shared" / "data" / "llmrouter-dcrouter"
mf = load_script(ROOT / "tests" / "fixtures" / "make_fixtures.py")


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    return mf.write_fixtures(tmp_path_factory.mktemp("published"))


def _load(*args, **kwargs):
    """Load and return (table, warning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = load_table(*args, **kwargs)
    return table, [str(w.message) for w in caught]


# ---------------------------------------------------------------------- repeated ids and prompts
def test_repeated_ids_for_distinct_prompts_are_made_unique(fx):
    """The published quirk: RouterBench 5-shot CSVs label different prompts with one sample_id."""
    table, messages = _load(str(fx["routerbench_repeated_ids_csv"]))
    base = mf.expected_table()
    assert len(table) == len(base) + len(mf.REPEATED_IDS)
    for pid, k in mf.REPEATED_IDS:
        assert f"{pid}#{k}" in table.prompt_ids
        first, again = table.prompt_ids.index(pid), table.prompt_ids.index(f"{pid}#{k}")
        assert table.prompts[first] != table.prompts[again]
    (message,) = messages
    assert str(fx["routerbench_repeated_ids_csv"]) in message
    assert f"made {len(mf.REPEATED_IDS)} repeated prompt ids unique" in message


def test_rules_for_copies_samples_and_suffix_clashes():
    ids = ["a", "a", "a", "b", "a#2", "a"]
    prompts = ["x", "x", "y", "x", "z", "x"]
    scores = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [0, 0], [0, 1]], dtype=float)
    costs = np.ones((6, 2))
    out = unique_rows(ids, prompts, scores, costs)
    # row 1 copies row 0 exactly: dropped; row 2 (other prompt) and row 5 (same prompt, other outcome: a repeated
    # sample) are kept under new ids, skipping 'a#2', which the data already uses
    assert out.keep.tolist() == [0, 2, 3, 4, 5]
    assert out.ids == ["a", "a#3", "b", "a#2", "a#4"]
    assert (out.copies, out.relabelled) == (1, 2)
    # rows of different pools (a training file and a published test file) are never dropped as copies
    pooled = unique_rows(ids[:2], prompts[:2], scores[:2], costs[:2], pools=["pool", "test"])
    assert pooled.keep.tolist() == [0, 1] and pooled.ids == ["a", "a#2"]


def test_same_prompt_rows_stay_in_one_split():
    """Repeated samples of one prompt (same text, other outcomes) are never split between train and test."""
    from barp.data.splits import make_splits
    from barp.data.table import OutcomeTable

    rng = np.random.default_rng(0)
    n = 200
    prompts = [f"question {i % 50}" for i in range(n)]  # every prompt four times
    table = OutcomeTable([f"p{i}" for i in range(n)], prompts, ["t"] * n, ["m0", "m1"], rng.random((n, 2)),
                         np.ones((n, 2)))
    splits = make_splits(table, (), 0.1, 0.2, seed=3)
    where = {}
    for name in ("train", "val", "test"):
        for i in getattr(splits, name):
            where.setdefault(prompts[i], set()).add(name)
    assert all(len(s) == 1 for s in where.values())
    assert len(splits.test) == 40 and len(splits.val) == 20 and len(splits.train) == 140


def test_same_ids_across_files_of_a_glob(fx, tmp_path):
    frame = pd.read_csv(fx["wide_csv"])
    frame.iloc[:20].to_csv(tmp_path / "a.csv", index=False)
    other = frame.iloc[20:].copy()
    other["prompt_id"] = frame["prompt_id"].iloc[:20].values  # the second file reuses the first file's ids
    other.to_csv(tmp_path / "b.csv", index=False)
    table, messages = _load(str(tmp_path / "*.csv"))
    assert len(table) == 40 and table.prompts == mf.expected_table().prompts
    assert table.prompt_ids[20] == f"{frame['prompt_id'][0]}#2"
    assert any("across its 2 files" in m and "made 20 repeated prompt ids unique" in m for m in messages)


def test_a_model_column_named_twice_is_refused(fx, tmp_path):
    text = Path(fx["wide_csv"]).read_text().splitlines()
    header = text[0].split(",")
    header[4] = header[3]  # two score columns of one model (pandas would rename the second 'name.1')
    path = tmp_path / "twice.csv"
    path.write_text("\n".join([",".join(header), *text[1:]]) + "\n")
    with pytest.raises(DataValidationError, match=rf"twice\.csv: the header names column '{header[3]}' twice"):
        load_table(str(path))
    records = tmp_path / "twice.jsonl"
    records.write_text('{"question": "a", "scores": {"x": 1, "x": 0, "y": 1}}\n')
    with pytest.raises(DataValidationError, match=r"twice\.jsonl: line 1: an object names the key 'x' twice"):
        load_table(str(records), prices={"x": [1, 1], "y": [1, 1]})


# ---------------------------------------------------------------------- price tables
def test_llmrouter_and_litellm_price_tables(fx, tmp_path):
    records = str(fx["records_json"])
    llmrouter = {m: {"size": "7B", "feature": "a model", "input_price": p[0], "output_price": p[1],
                     "output_tokens": p[2], "model": f"org/{m}", "service": "X"} for m, p in mf.PRICES.items()}
    llmrouter["unscored-model"] = {"input_price": 5.0, "output_price": 5.0}  # priced, never scored: ignored
    litellm = {m: {"input_cost_per_token": p[0] / 1e6, "output_cost_per_token": p[1] / 1e6, "output_tokens": p[2],
                   "litellm_provider": "x", "mode": "chat"} for m, p in mf.PRICES.items()}
    expected = load_table(records, prices=str(fx["prices_json"]))
    for name, prices in (("llm.json", llmrouter), ("litellm.json", litellm)):
        (tmp_path / name).write_text(json.dumps(prices))
        table = load_table(records, prices=str(tmp_path / name))
        np.testing.assert_allclose(table.costs, expected.costs, rtol=1e-12)
    llmrouter[mf.MODELS[0]]["input_price"] = -1
    (tmp_path / "neg.json").write_text(json.dumps(llmrouter))
    with pytest.raises(DataValidationError, match=rf"neg\.json: model '{mf.MODELS[0]}': input_price -1 is not"):
        load_table(records, prices=str(tmp_path / "neg.json"))
    (tmp_path / "odd.json").write_text(json.dumps({m: {"price": 1} for m in mf.MODELS}))
    with pytest.raises(
        DataValidationError, match=r"odd\.json: model .*input_price, output_price.*got keys \['price'\]"
    ):
        load_table(records, prices=str(tmp_path / "odd.json"))


# ---------------------------------------------------------------------- published splits
def _split_files(fx, tmp_path):
    """The fixture table cut into a training file and a 'published' test file (with OOD-family rows in both)."""
    frame = pd.read_csv(fx["wide_csv"])
    test_rows = list(range(0, 40, 4))
    frame.drop(index=test_rows).to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[test_rows].to_csv(tmp_path / "test.csv", index=False)
    return frame, test_rows


def test_fixed_test_file_is_the_test_split_and_ood_stays_out(fx, tmp_path):
    frame, test_rows = _split_files(fx, tmp_path)
    dm = RoutingDataModule(source=Source(path=str(tmp_path / "train.csv"), test_path=str(tmp_path / "test.csv")),
                           split=Split(ood_tasks=["mbpp", "arc-challenge"], val_fraction=0.2))
    table, splits = dm.table, dm.splits
    ood_family = frame["task"].isin(["mbpp", "arc-challenge"])
    published = [pid for r, pid in enumerate(frame["prompt_id"]) if r in test_rows and not ood_family[r]]
    assert [table.prompt_ids[i] for i in splits.test] == published  # exactly the file's rows, in file order
    assert {table.tasks[i] for i in splits.ood} == {"mbpp", "arc-challenge"}
    assert len(splits.ood) == int(ood_family.sum())  # OOD rows of both files
    trained = {table.tasks[i] for i in splits.train} | {table.tasks[i] for i in splits.val}
    assert not trained & {"mbpp", "arc-challenge"}
    assert not set(splits.train) & set(splits.test) and not set(splits.val) & set(splits.test)
    assert len(splits.train) + len(splits.val) + len(splits.test) + len(splits.ood) == 40
    # a val file likewise; a fraction given together with its file is refused by name
    dm = RoutingDataModule(source=Source(path=str(tmp_path / "train.csv"), val_path=str(tmp_path / "test.csv")))
    assert [dm.table.prompt_ids[i] for i in dm.splits.val] == frame["prompt_id"].iloc[test_rows].tolist()
    with pytest.raises(ConfigError,
                       match=r"data.split.test_fraction \(0.3\) cannot be used with data.source.test_path"):
        RoutingDataModule(source=Source(path=str(tmp_path / "train.csv"), test_path=str(tmp_path / "test.csv")),
                          split=Split(test_fraction=0.3))
    with pytest.raises(ConfigError, match="data.source.path must be given"):
        RoutingDataModule(source={"test_path": str(tmp_path / "test.csv")})


# ---------------------------------------------------------------------- datasets
def test_datasets_folder_and_hub_dataset_load_offline(fx, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("network used"))
    expected = load_table(str(fx["routerbench_csv"]))
    frame = pd.read_csv(fx["routerbench_csv"], dtype={"sample_id": str, "prompt": str, "eval_name": str})
    single = tmp_path / "single"
    datasets.Dataset.from_pandas(frame).save_to_disk(str(single))
    table = load_table(str(single))
    assert table.prompt_ids == expected.prompt_ids and table.prompts == expected.prompts
    np.testing.assert_allclose(table.scores, expected.scores)
    both = tmp_path / "dict"
    half = len(frame) // 2
    datasets.DatasetDict({
        "train": datasets.Dataset.from_pandas(frame.iloc[:half], preserve_index=False),
        "test": datasets.Dataset.from_pandas(frame.iloc[half:], preserve_index=False),
    }).save_to_disk(str(both))
    assert load_table(f"{both}#test").prompt_ids == [p for p in expected.prompt_ids if p in set(frame.sample_id[half:])]
    with pytest.raises(DataValidationError, match=r"holds the splits \['train', 'test'\]; name one"):
        load_table(str(both))
    with pytest.raises(DataValidationError, match="has no split 'dev'"):
        load_table(f"{both}#dev")
    # records with a scores dict column load through datasets as well
    recs = json.loads(Path(fx["records_json"]).read_text())
    datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "recs"))
    assert load_table(str(tmp_path / "recs"), prices=str(fx["prices_json"])).prompt_ids == expected.prompt_ids

    # a hub dataset by name and revision: read from its snapshot folder in barp's cache, no network
    url = "hf-dataset://acme/routing-logs@0123abc#test"
    snapshot = tmp_path / "cache" / "hub" / "datasets" / "acme" / "routing-logs@0123abc" / "data"
    with pytest.raises(DataValidationError, match=r"the hub is offline .* is empty\. On a machine with network"):
        load_table(url, cache_dir=str(tmp_path / "cache"))
    snapshot.mkdir(parents=True)
    frame.iloc[:half].to_parquet(snapshot / "train-00000-of-00001.parquet", index=False)
    frame.iloc[half:].to_parquet(snapshot / "test-00000-of-00001.parquet", index=False)
    table = load_table(url, cache_dir=str(tmp_path / "cache"))
    assert table.prompt_ids == load_table(f"{both}#test").prompt_ids
    with pytest.raises(DataValidationError, match="the revision, a commit hash or tag, is required"):
        load_table("hf-dataset://acme/routing-logs#test", cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------- the real development set
@pytest.mark.skipif(not DEV.is_dir(), reason="the shared development set is not next to this checkout")
def test_real_development_set_loads_as_published():
    """LLMRouter's DC router files as they are: records + LLMRouter price table + its own train/test split."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = RoutingDataModule(source=Source(path=str(DEV / "train.json"), test_path=str(DEV / "test.json"),
                                             prices=str(DEV / "llm_candidates.json"), task_column="cluster_id",
                                             task_map={"0": "cluster-0", "1": "cluster-1", "2": "cluster-2"},
                                             default_task="unclustered"),
                               split=Split(ood_tasks=["cluster-2"]))
        table, splits = dm.table, dm.splits
    messages = [str(w.message) for w in caught]
    assert table.num_prompts == 6108 and table.num_models == 9
    assert sorted(table.task_names) == ["cluster-0", "cluster-1", "cluster-2", "unclustered"]
    assert len(splits.test) == 500 and {table.tasks[i] for i in splits.test} == {"unclustered"}
    assert len(splits.ood) == 1564 and {table.tasks[i] for i in splits.ood} == {"cluster-2"}
    assert len(splits.train) + len(splits.val) == 2183 + 1861
    binary = np.isin(table.scores, [0.0, 1.0])
    assert binary.mean() > 0.95 and not binary.all()  # mostly 0/1; a few questions carry partial credit
    assert (table.costs > 0).all()
    assert any("119 of its 500 prompts also occur" in m for m in messages)
    assert any("no row has the task column 'cluster_id'" in m and "test.json" in m for m in messages)
    # the most expensive models cost (0.9 / 0.1) x the cheapest on every prompt (same estimated tokens)
    ratio = table.costs.max(axis=1) / table.costs.min(axis=1)
    np.testing.assert_allclose(ratio, ratio[0])
