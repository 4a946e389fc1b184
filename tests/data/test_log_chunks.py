"""Served-request logs read in chunks: the same LoggedFeedback as one whole read, in every container, from a folder
of daily files and from a ``datasets`` folder; errors in a later chunk name the file, the row and the column."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from barp.data.sources.chunks import iter_chunks
from barp.data.sources.logs import LoggedFeedback, check_repeats, read_log
from barp.errors import DataValidationError

WHOLE = 10**6  # rows per chunk that hold any test log in one chunk


def sample_log(n: int = 23, seed: int = 0, first: int = 0) -> LoggedFeedback:
    """A log of ``n`` requests over a few prompts and three models; some w_c missing."""
    rng = np.random.default_rng(seed)
    prompts = [f"prompt number {i % 7}, with, commas and \"quotes\"" for i in range(n)]
    w_c = rng.random(n)
    w_c[::5] = np.nan
    return LoggedFeedback(
        prompts=prompts, models=["a", "b", "c"], actions=rng.integers(0, 3, n), propensity=rng.uniform(0.1, 1, n),
        score=rng.random(n), cost=rng.random(n) / 100, w_c=w_c, prompt_ids=[f"p{i % 7}" for i in range(n)],
        timestamps=[f"t{first + i}" for i in range(n)], notes=["simulated: test"],
    )


def assert_same(a: LoggedFeedback, b: LoggedFeedback) -> None:
    assert a.prompts == b.prompts and a.models == b.models and a.prompt_ids == b.prompt_ids
    assert a.timestamps == b.timestamps and a.notes == b.notes and a.source == b.source
    for name in ("actions", "propensity", "score", "cost", "w_c"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_chunked_reading_gives_the_whole_file_log(tmp_path, suffix):
    path = tmp_path / f"log{suffix}"
    if suffix == ".json":  # a JSON array (read whole, handed out in chunks)
        path.write_text(sample_log().to_frame().to_json(orient="records"))
    else:
        sample_log().write(path)
    whole = read_log(path, chunk_rows=WHOLE)
    assert len(whole) == 23
    for rows in (1, 5, 22, 23):
        assert_same(read_log(path, chunk_rows=rows), whole)
    assert [(c.start, len(c.frame), c.last) for c in iter_chunks(path, 10)] == [(0, 10, False), (10, 10, False),
                                                                                (20, 3, True)]


def test_model_list_is_sorted_over_every_chunk(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("prompt,model,propensity,score,cost\n" + "".join(
        f"q{i},{'zeta' if i < 4 else 'alpha'},0.5,1,0.1\n" for i in range(6)))
    log = read_log(path, chunk_rows=2)  # 'alpha' first seen in the third chunk
    assert log.models == ["alpha", "zeta"] and log.actions.tolist() == [1, 1, 1, 1, 0, 0]
    assert_same(log, read_log(path, chunk_rows=WHOLE))


@pytest.mark.parametrize(("suffix", "column", "value", "shown"), [
    (".csv", "propensity", 1.5, "1.5"), (".jsonl", "score", -2.0, "-2.0"), (".parquet", "cost", np.inf, "inf"),
])
def test_a_bad_value_in_a_later_chunk_names_file_row_and_column(tmp_path, suffix, column, value, shown):
    log = sample_log(40)
    frame = log.to_frame()
    frame.loc[[27, 29], column] = value
    path = tmp_path / f"log{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    with pytest.raises(DataValidationError) as err:
        read_log(path, chunk_rows=8)
    text = str(err.value)
    assert text.startswith(f"{path}: column {column!r}, row 27 (prompt id 'p6'): value {shown}"), text
    assert text.endswith("(1 more bad rows among rows 24-31; later rows not checked yet)")  # chunks of 8 rows
    with pytest.raises(DataValidationError) as whole:
        read_log(path, chunk_rows=WHOLE)
    assert str(whole.value).startswith(text.split(" (1 more")[0]) and "(1 more bad rows)" in str(whole.value)


def test_a_non_number_missing_value_and_unknown_model_in_a_later_chunk(tmp_path):
    header = "prompt,model,propensity,score,cost\n"
    good = "".join(f"q{i},a,0.5,1,0.1\n" for i in range(10))
    cases = [("q10,a,half,1,0.1\n", "column 'propensity', row 10: value 'half' is not a number"),
             ("q10,a,0.5,,0.1\n", "column 'score', row 10: the value is missing"),
             ("q10,zz,0.5,1,0.1\n", "column 'model', row 10: unknown model 'zz'")]
    for bad, message in cases:
        path = tmp_path / "log.csv"
        path.write_text(header + good + bad)
        with pytest.raises(DataValidationError, match=f"^{path}: {message}"):
            read_log(path, models=["a", "b"], chunk_rows=4)


def test_json_lines_errors_name_the_line_in_a_later_chunk(tmp_path):
    path = tmp_path / "log.jsonl"
    rows = [json.dumps(dict(prompt=f"q{i}", model="a", propensity=1, score=0, cost=0)) for i in range(9)]
    path.write_text("\n".join(rows[:7] + ["{not json"] + rows[7:]) + "\n")
    with pytest.raises(DataValidationError, match=f"^{path}: line 8 is not a JSON object"):
        read_log(path, models=["a", "b"], chunk_rows=3)


def test_a_row_repeated_across_chunks_is_refused_as_by_the_whole_reader(tmp_path):
    log = sample_log(12)
    frame = log.to_frame()
    frame = pd.concat([frame, frame.iloc[[2, 7, 2]]], ignore_index=True)  # rows 12 and 14 copy row 2, 13 row 7
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    messages = []
    for rows in (5, WHOLE):
        with pytest.raises(DataValidationError) as err:
            read_log(path, chunk_rows=rows)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and messages[0].startswith(f"{path}: row 12 repeats row 2 exactly")
    assert "(2 more repeated rows)" in messages[0]
    copied = LoggedFeedback(**{**log.__dict__, **{k: getattr(log, k)[np.r_[0:12, 2, 7, 2]] for k in (
        "actions", "propensity", "score", "cost", "w_c")}, "prompts": [log.prompts[i] for i in [*range(12), 2, 7, 2]],
        "prompt_ids": [log.prompt_ids[i] for i in [*range(12), 2, 7, 2]],
        "timestamps": [log.timestamps[i] for i in [*range(12), 2, 7, 2]], "source": str(path)})
    with pytest.raises(DataValidationError) as err:  # the whole-log check of LoggedFeedback users
        check_repeats(copied, copied.prompt_ids)
    assert str(err.value) == messages[0]


def test_a_folder_of_daily_files_is_one_log(tmp_path):
    days = [sample_log(9, seed=d, first=9 * d) for d in range(3)]
    folder = tmp_path / "logs"
    folder.mkdir()
    for d, (log, suffix) in enumerate(zip(days, (".csv", ".jsonl", ".parquet"))):
        log.write(folder / f"2026-12-0{d + 1}{suffix}")
    (folder / "README.txt").write_text("not a log")  # other files are left alone
    log = read_log(folder, chunk_rows=4)
    assert log.source == str(folder) and len(log) == 27
    assert log.prompts == [p for day in days for p in day.prompts]
    assert log.timestamps == [t for day in days for t in day.timestamps]
    np.testing.assert_array_equal(log.actions, np.concatenate([day.actions for day in days]))
    np.testing.assert_allclose(log.propensity, np.concatenate([day.propensity for day in days]), rtol=1e-14)
    assert_same(log, read_log(folder, chunk_rows=WHOLE))


def test_a_bad_row_in_a_later_daily_file_names_that_file_and_its_row(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    sample_log(9, seed=0).write(folder / "day1.csv")
    frame = sample_log(9, seed=1, first=9).to_frame()
    frame.loc[6, "w_c"] = 3.0
    frame.to_csv(folder / "day2.csv", index=False)
    with pytest.raises(DataValidationError, match=f"^{folder / 'day2.csv'}: column 'w_c', row 6 .*value 3.0"):
        read_log(folder, chunk_rows=4)


def test_a_row_repeated_in_a_later_daily_file_names_both_files(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    log = sample_log(6)
    log.write(folder / "day1.csv")
    log.subset([4]).write(folder / "day2.csv")
    with pytest.raises(DataValidationError, match=f"^{folder / 'day2.csv'}: row 0 repeats {folder / 'day1.csv'} "
                                                  "row 4 exactly"):
        read_log(folder)


def test_a_folder_without_logs_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataValidationError, match=f"^{tmp_path}: is a folder holding no log files"):
        read_log(tmp_path)


def test_a_datasets_folder_is_read_in_memory_mapped_slices(tmp_path):
    datasets = pytest.importorskip("datasets")
    log = sample_log(30)
    path = tmp_path / "log.csv"
    log.write(path)
    whole = read_log(path)
    datasets.Dataset.from_pandas(log.to_frame()).save_to_disk(str(tmp_path / "ds"))
    read = read_log(tmp_path / "ds", chunk_rows=7)
    assert read.source == str(tmp_path / "ds")
    for name in ("actions", "propensity", "score", "cost", "w_c"):
        np.testing.assert_array_equal(getattr(read, name), getattr(whole, name))
    assert read.prompts == whole.prompts and read.prompt_ids == whole.prompt_ids and read.models == whole.models
    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(log.to_frame())}).save_to_disk(str(tmp_path / "dd"))
    assert read_log(f"{tmp_path / 'dd'}#train", chunk_rows=4).prompts == whole.prompts
    frame = log.to_frame()
    frame.loc[25, "score"] = 7.0
    datasets.Dataset.from_pandas(frame).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataValidationError, match=f"^{tmp_path / 'bad'}: column 'score', row 25 "):
        read_log(tmp_path / "bad", chunk_rows=7)


def test_chunk_rows_must_be_a_positive_integer(tmp_path):
    path = tmp_path / "log.csv"
    sample_log(3).write(path)
    with pytest.raises(ValueError, match="chunk_rows"):
        read_log(path, chunk_rows=0)
