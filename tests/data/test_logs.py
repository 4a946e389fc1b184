"""The served-request log format: reading CSV / JSON lines / parquet, writing, and one clear error per bad value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from barp.data.sources.logs import LoggedFeedback, read_log
from barp.errors import DataValidationError

HEADER = "prompt_id,prompt,model,propensity,score,cost,w_c,timestamp\n"
GOOD = [
    "q1,What is 2+2?,small,0.5,1,0.0001,0.2,2025-01-01T00:00:00",
    "q2,Name a prime.,big,0.25,0.5,0.002,,2025-01-01T00:00:01",
    "q1,What is 2+2?,big,0.25,1,0.0021,0.9,2025-01-01T00:00:02",
]


def write_csv(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "log.csv") -> Path:
    path = tmp_path / name
    path.write_text(header + "\n".join(rows) + "\n")
    return path


def test_reads_every_column_with_models_sorted(tmp_path):
    log = read_log(write_csv(tmp_path, GOOD))
    assert log.models == ["big", "small"]
    assert log.actions.tolist() == [1, 0, 0]
    assert log.propensity.tolist() == [0.5, 0.25, 0.25]
    assert log.score.tolist() == [1.0, 0.5, 1.0]
    assert np.isnan(log.w_c[1]) and log.w_c[[0, 2]].tolist() == [0.2, 0.9]
    assert log.prompt_ids == ["q1", "q2", "q1"] and log.timestamps[2] == "2025-01-01T00:00:02"
    assert log.model_counts().tolist() == [2, 1] and not log.simulated


def test_given_model_list_sets_the_arm_order(tmp_path):
    log = read_log(write_csv(tmp_path, GOOD), models=["small", "medium", "big"])
    assert log.actions.tolist() == [0, 2, 2]
    assert log.model_counts().tolist() == [1, 0, 2]


def test_optional_columns_may_be_absent(tmp_path):
    path = write_csv(tmp_path, ["hi,a,1,1,0", "yo,b,1,0,0.5"], header="prompt,model,propensity,score,cost\n")
    log = read_log(path)
    assert np.isnan(log.w_c).all() and log.prompt_ids == ["0", "1"] and log.timestamps is None


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".tsv"])
def test_write_then_read_round_trips(tmp_path, suffix):
    log = read_log(write_csv(tmp_path, GOOD))
    note = LoggedFeedback(prompts=log.prompts, models=log.models, actions=log.actions, propensity=log.propensity,
                          score=log.score, cost=log.cost, w_c=log.w_c, prompt_ids=log.prompt_ids,
                          timestamps=log.timestamps, notes=["simulated: test"])
    back = read_log(note.write(tmp_path / f"out{suffix}"))
    for name in ("actions", "propensity", "score", "cost"):
        np.testing.assert_allclose(getattr(back, name), getattr(note, name))
    np.testing.assert_array_equal(np.isnan(back.w_c), np.isnan(note.w_c))
    assert back.prompts == note.prompts and back.prompt_ids == note.prompt_ids and back.simulated
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_container_is_sniffed_not_taken_from_the_name(tmp_path):
    rows = [dict(prompt="hi", model="a", propensity=0.5, score=1, cost=0.1),
            dict(prompt="yo", model="b", propensity=0.5, score=0, cost=0.2)]
    path = tmp_path / "log.csv"  # JSON lines behind a .csv name
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert read_log(path).actions.tolist() == [0, 1]


BAD = [  # (row text, column named, value shown)
    ("q3,x,small,0,1,0.001,0.5,t", "propensity", "0.0"),
    ("q3,x,small,1.5,1,0.001,0.5,t", "propensity", "1.5"),
    ("q3,x,small,abc,1,0.001,0.5,t", "propensity", "'abc'"),
    ("q3,x,small,0.5,,0.001,0.5,t", "score", "missing"),
    ("q3,x,small,0.5,1.2,0.001,0.5,t", "score", "1.2"),
    ("q3,x,small,0.5,1,-0.1,0.5,t", "cost", "-0.1"),
    ("q3,x,small,0.5,1,,0.5,t", "cost", "missing"),
    ("q3,x,small,0.5,1,0.001,1.5,t", "w_c", "1.5"),
    ("q3,x,huge,0.5,1,0.001,0.5,t", "model", "'huge'"),
    ("q3,,small,0.5,1,0.001,0.5,t", "prompt", "missing"),
]


@pytest.mark.parametrize(("row", "column", "value"), BAD)
def test_each_bad_value_is_one_error_naming_file_column_row_and_value(tmp_path, row, column, value):
    path = write_csv(tmp_path, [*GOOD, row])
    with pytest.raises(DataValidationError) as err:
        read_log(path, models=["big", "small"])
    text = str(err.value)
    assert text.startswith(str(path)) and f"column {column!r}" in text and "row 3" in text and value in text


def test_missing_column_lists_what_a_log_needs(tmp_path):
    path = write_csv(tmp_path, ["hi,a,1,0"], header="prompt,model,score,cost\n")
    with pytest.raises(DataValidationError, match="column 'propensity' is missing.*needs columns"):
        read_log(path)


def test_a_log_of_one_model_needs_the_model_list(tmp_path):
    path = write_csv(tmp_path, ["hi,a,1,1,0"], header="prompt,model,propensity,score,cost\n")
    with pytest.raises(DataValidationError, match="every row names 'a'"):
        read_log(path)
    assert read_log(path, models=["a", "b"]).model_counts().tolist() == [1, 0]


def test_empty_and_missing_files_are_named(tmp_path):
    with pytest.raises(DataValidationError, match="no such file"):
        read_log(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataValidationError, match="empty"):
        read_log(tmp_path / "empty.csv")


def test_in_memory_logs_are_validated_too():
    with pytest.raises(DataValidationError, match="column 'model', row 1"):
        LoggedFeedback(prompts=["a", "b"], models=["x", "y"], actions=[0, 2], propensity=[1, 1], score=[0, 0],
                       cost=[0, 0])
    with pytest.raises(DataValidationError, match="column 'score': expected 2 values"):
        LoggedFeedback(prompts=["a", "b"], models=["x", "y"], actions=[0, 1], propensity=[1, 1], score=[0],
                       cost=[0, 0])
