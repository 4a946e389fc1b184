"""Data sources: every layout loads to the same table, RouterBench pitfalls, clear errors, pickle and hub safety."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from barp.data.sources import load_table, safety
from barp.data.table import OutcomeTable
from barp.errors import DataValidationError
from tests.helpers import ROOT, load_script

mf = load_script(ROOT / "tests" / "fixtures" / "make_fixtures.py")


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    return mf.write_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="module")
def expected() -> OutcomeTable:
    return mf.expected_table()


def assert_same(table: OutcomeTable, exp: OutcomeTable) -> None:
    assert table.prompt_ids == exp.prompt_ids
    assert table.prompts == exp.prompts
    assert table.tasks == exp.tasks
    assert table.models == exp.models
    np.testing.assert_array_equal(table.scores, exp.scores)
    np.testing.assert_allclose(table.costs, exp.costs, rtol=1e-12, atol=0)


def expect_error(match: list[str], *args, **kwargs) -> str:
    """Load, expect exactly one DataValidationError whose message contains every string of ``match``."""
    with pytest.raises(DataValidationError) as info:
        load_table(*args, **kwargs)
    message = str(info.value)
    for part in match:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# fmt: off
LAYOUTS = ["routerbench_pkl", "routerbench_csv_index", "routerbench_csv", "routerbench_parquet", "routerbench_long_pkl",
           "routerbench_long_csv", "wide_csv", "wide_jsonl", "wide_parquet", "long_csv", "long_jsonl", "records_json",
           "canonical_parquet"]
NAMED = {"routerbench_pkl": "routerbench", "routerbench_csv_index": "routerbench",
         "routerbench_parquet": "routerbench", "routerbench_long_csv": "routerbench_long", "wide_jsonl": "wide",
         "long_csv": "long", "records_json": "records", "canonical_parquet": "parquet"}
FAMILIES = {"arc-challenge": 4, "gsm8k": 5, "hellaswag": 4, "mbpp": 3, "mmlu": 12, "mt-bench": 4, "other": 4,
            "winogrande": 4}
# fmt: on


def _kwargs(fx, name):
    """The options a fixture needs: trust for the (unpinned) fixture pickles, prices for the records."""
    if name.endswith("_pkl"):
        return {"trust_pickle": True}
    return {"prices": str(fx["prices_json"])} if name.startswith("records") else {}


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_layout_loads_to_the_same_table(fx, expected, name):
    table = load_table(str(fx[name]), **_kwargs(fx, name))
    assert_same(table, expected)
    assert table.source == str(fx[name])


@pytest.mark.parametrize("name", list(NAMED))
def test_named_format_matches_detection(fx, expected, name):
    assert_same(load_table(str(fx[name]), NAMED[name], **_kwargs(fx, name)), expected)


def test_records_prices_from_yaml_and_dict(fx, expected):
    assert_same(load_table(str(fx["records_json"]), prices=str(fx["prices_yaml"])), expected)
    prices = {m: list(p) for m, p in mf.PRICES.items()}
    assert_same(load_table(str(fx["records_json"]), "records", prices=prices), expected)


def test_routerbench_pitfalls(fx, expected):
    raw = pd.read_pickle(fx["routerbench_pkl"])
    assert all(raw[m].dtype == object for m in mf.MODELS)  # scores stored as objects, as in the official files
    table = load_table(str(fx["routerbench_pkl"]), trust_pickle=True)
    assert table.scores.dtype == np.float64
    assert not any(pid.startswith("test-match") for pid in table.prompt_ids)
    assert len(table) == 40 and "test-match" in set(raw["eval_name"])
    multi = table.prompts[table.prompt_ids.index("mtbench.val.0")]
    assert "\n\n" in multi and not multi.startswith("[") and "short poem,\nusing" in multi
    assert table.prompts[table.prompt_ids.index("mmlu-astronomy.val.0")].startswith("Question 0 about")
    assert table.prompts[table.prompt_ids.index("abstract2title.val.1")].startswith("[draft]")  # raw fallback
    counts = {t: table.tasks.count(t) for t in table.task_names}
    assert counts == FAMILIES


def test_task_map_and_default_task(fx):
    path = str(fx["routerbench_csv"])
    table = load_table(
        path, task_map={"mmlu-virology": "bio", "abstract2*": "titles", "mtbench-": "mtx"}, default_task="misc"
    )
    counts = {t: table.tasks.count(t) for t in table.task_names}
    assert counts["bio"] == 4 and counts["mmlu"] == 8 and counts["titles"] == 2 and counts["misc"] == 2
    assert counts["mtx"] == 2 and counts["mt-bench"] == 2
    generic = load_table(str(fx["wide_csv"]), task_map={"mmlu": "knowledge"})
    assert generic.tasks.count("knowledge") == 12 and "gsm8k" in generic.tasks


def test_missing_scores_dropped_with_one_warning(fx, expected):
    path = str(fx["routerbench_missing_csv"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = load_table(path)
    messages = [str(w.message) for w in caught if "missing score" in str(w.message)]
    assert len(messages) == 1 and "dropped 3 of 40 rows" in messages[0] and path in messages[0]
    keep = [i for i, pid in enumerate(expected.prompt_ids) if pid not in mf.MISSING_ROWS]
    assert_same(table, expected.subset(keep))


def test_missing_scores_rejected_on_request(fx):
    path = str(fx["routerbench_missing_csv"])
    expect_error(
        [path, "column 'acme/alpha-7b-chat'", "row 28", "arc-challenge.val.1", "3 rows"], path, on_missing="error"
    )


def test_long_missing_pair_is_a_missing_cell(fx, tmp_path):
    frame = pd.read_csv(fx["long_csv"]).drop(index=[7])
    path = tmp_path / "gap.csv"
    frame.to_csv(path, index=False)
    with pytest.warns(UserWarning, match="dropped 1 of 40 rows"):
        assert len(load_table(str(path))) == 39
    expect_error(
        [str(path), "column 'score'", "no row for prompt id 'mmlu-astronomy.val.1'"], str(path), on_missing="error"
    )


def test_several_files_and_globs(fx, expected, tmp_path):
    frame = pd.read_csv(fx["wide_csv"])
    frame.iloc[:15].to_csv(tmp_path / "part1.csv", index=False)
    frame.iloc[15:].to_csv(tmp_path / "part2.csv", index=False)
    assert_same(load_table(f"{tmp_path / 'part1.csv'},{tmp_path / 'part2.csv'}"), expected)
    assert_same(load_table(str(tmp_path / "part*.csv")), expected)
    frame.iloc[10:20].to_csv(tmp_path / "part3.csv", index=False)  # exact copies of rows in part1/part2
    with pytest.warns(UserWarning, match="across its 3 files.*dropped 10 rows that exactly copy"):
        assert_same(load_table(str(tmp_path / "part*.csv")), expected)
    expect_error(["no file matches"], str(tmp_path / "nothing*.csv"))


def test_csv_text_columns_keep_their_text(fx, tmp_path):
    frame = pd.read_csv(fx["wide_csv"])
    frame.loc[3, "prompt"] = "NA"
    frame.loc[4, "prompt"] = "42"
    frame.to_csv(tmp_path / "t.csv", index=False)
    table = load_table(str(tmp_path / "t.csv"))
    assert table.prompts[3] == "NA" and table.prompts[4] == "42"


def _variant(fx, tmp_path, cells=(), drop=(), name="bad.csv", base="wide_csv", extra_rows=()):
    """A copy of fixture ``base`` with ``cells`` ((row, column, value)) overwritten, columns dropped, rows appended."""
    frame = pd.read_csv(fx[base], keep_default_na=False, na_values=[""]).astype(object).drop(columns=list(drop))
    for row, column, value in cells:
        frame.loc[row, column] = value
    frame = pd.concat([frame, frame.iloc[list(extra_rows)]], ignore_index=True)
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    else:
        frame.to_csv(path, index=False)
    return str(path)


M, C = "gamma-large-1106", "gamma-large-1106|total_cost"
MALFORMED = {  # (row, column, bad value, words the message must have besides file, column and row)
    "nan cost": (5, C, None, ["missing"]),
    "negative cost": (6, C, -1.0, ["-1.0"]),
    "score above 1": (7, M, 1.5, ["1.5", "[0, 1]"]),
    "score below 0": (8, M, -0.5, ["-0.5"]),
    "score not a number": (9, M, "abc", ["'abc'", "not a number"]),
    "empty prompt": (10, "prompt", "   ", ["empty"]),
    "missing prompt": (11, "prompt", None, ["missing"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_values_name_file_column_row(fx, tmp_path, case):
    row, column, value, words = MALFORMED[case]
    path = _variant(fx, tmp_path, cells=[(row, column, value)])
    expect_error([path, f"column {column!r}", f"row {row} (id ", *words], path)


def test_missing_model_column(fx, tmp_path):
    path = _variant(fx, tmp_path, drop=[M])
    expect_error([path, f"column {M!r} is missing", f"{C!r} exists"], path)


def test_prompt_that_is_not_text(fx, tmp_path):
    path = _variant(fx, tmp_path, cells=[(3, "prompt", 123)], name="bad.jsonl")
    expect_error([path, "column 'prompt'", "row 3", "not text", "123"], path)


def test_routerbench_errors_use_file_rows(fx, tmp_path):
    # row 20 of the file is after the two test-match rows: the message must count file rows, not table rows
    path = _variant(fx, tmp_path, cells=[(20, M, 3)], base="routerbench_csv_index")
    expect_error([path, f"column {M!r}", "row 20", "(id 'mtbench-reference.val.0')"], path)
    path = _variant(fx, tmp_path, drop=["eval_name"], name="noeval.csv", base="routerbench_csv")
    expect_error([path, "column 'eval_name' is missing"], path, "routerbench")


def test_long_duplicate_row(fx, tmp_path):
    path = _variant(fx, tmp_path, extra_rows=[3], base="long_csv")
    expect_error([path, "column 'model'", "row 200", "a second row", "the first is row 3"], path)


def test_file_level_errors(fx, tmp_path):
    expect_error(["unknown format 'excel'"], str(fx["wide_csv"]), "excel")
    expect_error([str(tmp_path / "nope.csv"), "no such file"], str(tmp_path / "nope.csv"))
    expect_error([str(tmp_path), "is a directory"], str(tmp_path))
    (tmp_path / "empty.csv").write_text("")
    expect_error([str(tmp_path / "empty.csv"), "empty"], str(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("prompt_id,prompt,task,a,a|total_cost\n")
    expect_error([str(tmp_path / "header.csv"), "no data rows"], str(tmp_path / "header.csv"))
    (tmp_path / "junk.parquet").write_bytes(b"\x00\x01not parquet at all")
    expect_error([str(tmp_path / "junk.parquet"), "not a valid parquet"], str(tmp_path / "junk.parquet"))
    (tmp_path / "bin.csv").write_bytes(b"id,x\n" + bytes(range(128, 256)) * 4)
    expect_error([str(tmp_path / "bin.csv"), "UTF-8"], str(tmp_path / "bin.csv"))
    (tmp_path / "broken.json").write_text('[{"question": "a", "scores": {"x": 1}},\n {"question": ')
    expect_error([str(tmp_path / "broken.json"), "not valid JSON", "line 2"], str(tmp_path / "broken.json"))
    (tmp_path / "cols.csv").write_text("foo,bar\n1,2\n")
    expect_error(
        [str(tmp_path / "cols.csv"), "cannot detect the format", "'foo'",
         "--data.source.format"], str(tmp_path / "cols.csv")
    )
    expect_error([str(fx["wide_csv"]), "format 'parquet'"], str(fx["wide_csv"]), "parquet")
    expect_error([str(fx["wide_csv"]), "format 'records'"], str(fx["wide_csv"]), "records")
    expect_error(["on_missing"], str(fx["wide_csv"]), on_missing="skip")


def test_price_table_errors(fx, tmp_path):
    records = str(fx["records_json"])
    expect_error([records, "price table is needed"], records)
    bad = tmp_path / "prices.json"
    bad.write_text(json.dumps({m: [0.1, 0.2] for m in mf.MODELS[:-1]}))
    expect_error([str(bad), f"model {mf.MODELS[-1]!r} has no price", records, "row 0"], records, prices=str(bad))
    bad.write_text(json.dumps({m: [0.1, "cheap"] for m in mf.MODELS}))
    expect_error([str(bad), f"model {mf.MODELS[0]!r}", "'cheap'"], records, prices=str(bad))
    bad.write_text("{not json")
    expect_error([str(bad), "not valid JSON/YAML"], records, prices=str(bad))
    expect_error([str(tmp_path / "none.json"), "cannot be read"], records, prices=str(tmp_path / "none.json"))
    data = json.loads(Path(records).read_text())
    data[4]["scores"] = [1, 0]
    (tmp_path / "r.json").write_text(json.dumps(data))
    expect_error(
        [str(tmp_path / "r.json"), "column 'scores'", "row 4"], str(tmp_path / "r.json"), prices=str(fx["prices_json"])
    )


def test_pickle_guard(fx, expected, tmp_path, monkeypatch):
    path = str(fx["routerbench_pkl"])
    message = expect_error(
        [path, "refusing to unpickle", "arbitrary code", "trust_pickle", "python tools/prepare_data.py --path"], path
    )
    assert "SHA-256" in message
    assert_same(load_table(path, trust_pickle=True), expected)
    monkeypatch.setitem(safety.PINNED_PICKLES, "fixture.pkl", safety.sha256_of(fx["routerbench_pkl"]))
    assert_same(load_table(path), expected)  # a pinned hash needs no trust


def test_pickle_hash_mismatch(fx, tmp_path):
    fake = tmp_path / "routerbench_0shot.pkl"
    shutil.copy(fx["routerbench_pkl"], fake)
    expect_error([str(fake), "hash mismatch", safety.PINNED_PICKLES["routerbench_0shot.pkl"]], str(fake))


def test_hub_path_fails_fast_offline(fx, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("network used"))
    url = "hf://withmartian/routerbench/routerbench_0shot.pkl"
    target = tmp_path / "hub" / "withmartian" / "routerbench" / "routerbench_0shot.pkl"
    expect_error(
        [url, "offline", str(target), "784021482c3f320c6619ed4b3bb3b41a21424fcb"], url, cache_dir=str(tmp_path)
    )
    target.parent.mkdir(parents=True)
    shutil.copy(fx["routerbench_pkl"], target)  # a file put there by hand is used, and hash-checked
    expect_error([str(target), "hash mismatch"], url, cache_dir=str(tmp_path))
    assert len(load_table(url, cache_dir=str(tmp_path), trust_pickle=True)) == 40


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "prepare_data.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_prepare_data_tool(fx, expected, tmp_path):
    out = tmp_path / "out" / "rb.parquet"
    done = _prepare("--path", str(fx["routerbench_csv_index"]), "--output", str(out))
    assert done.returncode == 0, done.stderr
    for part in ("40 prompts x 5 models", "mmlu", "mean score", "oracle mean score", "best single model"):
        assert part in done.stdout
    assert_same(load_table(str(out), "parquet"), expected)
    bad = tmp_path / "bad.parquet"
    done = _prepare("--path", str(fx["routerbench_pkl"]), "--output", str(bad))
    assert done.returncode == 1 and "refusing to unpickle" in done.stderr and "Traceback" not in done.stderr
    assert not bad.exists() and not list(tmp_path.glob(".bad.parquet*"))
