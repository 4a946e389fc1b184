"""Outcome-table validation: every bad input gets one clear error naming source, field, row and value."""

import numpy as np
import pytest

from barp.data.table import OutcomeTable
from barp.errors import DataValidationError
from tests.helpers.tables import make_table


def build(**changes):
    t = make_table()
    fields = dict(prompt_ids=t.prompt_ids, prompts=t.prompts, tasks=t.tasks, models=t.models,
                  scores=np.array(t.scores), costs=np.array(t.costs), source="data/my.csv")
    fields.update(changes)
    return OutcomeTable(**fields)


def _with(arr, i, j, value):
    arr = np.array(arr)
    arr[i, j] = value
    return arr


@pytest.mark.parametrize(
    "changes, expected",
    [
        (lambda t: {"scores": _with(t.scores, 2, 1, np.nan)},
         ["data/my.csv", "'score'", "row 2", "'p2'", "'m1'", "nan"]),
        (lambda t: {"scores": _with(t.scores, 0, 0, 1.5)}, ["'score'", "row 0", "1.5", "[0, 1]"]),
        (lambda t: {"scores": _with(t.scores, 0, 2, -0.2)}, ["'score'", "row 0", "'m2'", "-0.2"]),
        (lambda t: {"costs": _with(t.costs, 3, 0, -1e-4)}, ["'cost'", "row 3", "'m0'", "-0.0001"]),
        (lambda t: {"costs": _with(t.costs, 1, 1, np.nan)}, ["'cost'", "row 1", "nan"]),
        (lambda t: {"prompts": ["a", "  ", "c", "d", "e", "f"]}, ["'prompt'", "row 1", "'p1'", "empty"]),
        (lambda t: {"prompts": ["a", "b", 7, "d", "e", "f"]}, ["'prompt'", "row 2", "not text", "7"]),
        (lambda t: {"prompt_ids": ["a", "b", "c", "a", "e", "f"]}, ["'prompt_id'", "duplicate", "'a'", "rows 0 and 3"]),
        (lambda t: {"models": ["m0"], "scores": t.scores[:, :1], "costs": t.costs[:, :1]}, ["at least 2 models"]),
        (lambda t: {"models": ["m0", "m0", "m2"]}, ["duplicate model name", "'m0'"]),
        (lambda t: {"tasks": ["a"] * 5}, ["'tasks'", "expected 6"]),
        (lambda t: {"scores": t.scores[:, :2]}, ["'score'", "shape"]),
        (lambda t: {"prompt_ids": [], "prompts": [], "tasks": [],
                    "scores": np.zeros((0, 3)), "costs": np.zeros((0, 3))},
         ["no rows"]),
    ],
)
def test_bad_tables_raise_one_clear_error(changes, expected):
    t = make_table()
    with pytest.raises(DataValidationError) as info:
        build(**changes(t))
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_valid_table_views_and_subset():
    t = make_table(n=6, k=3)
    assert (t.num_prompts, t.num_models) == (6, 3)
    assert t.task_names == ["a", "b"]
    sub = t.subset([4, 1])
    assert sub.prompt_ids == ["p4", "p1"]
    assert np.array_equal(sub.scores, t.scores[[4, 1]])
    with pytest.raises(ValueError):
        t.scores[0, 0] = 0.5  # read-only: nothing downstream can alter logged outcomes


def test_summary_numbers():
    t = OutcomeTable(["a", "b"], ["x", "y"], ["t", "t"], ["m0", "m1"], np.array([[1.0, 0.0], [0.0, 0.5]]),
                     np.array([[1e-3, 1e-4], [1e-3, 1e-4]]))
    s = t.summary()
    assert s["oracle_score"] == pytest.approx(0.75)
    assert s["best_single_model"] == "m0"
    assert s["mean_cost"]["m1"] == pytest.approx(1e-4)


def test_parquet_roundtrip_is_atomic(tmp_path):
    t = make_table()
    path = t.to_parquet(tmp_path / "out" / "table.parquet")
    import pandas as pd

    df = pd.read_parquet(path)
    assert list(df.columns[:3]) == ["prompt_id", "prompt", "task"]
    assert np.allclose(df[[f"{m}|total_cost" for m in t.models]].to_numpy(), t.costs)
    assert [p.name for p in path.parent.iterdir()] == ["table.parquet"]
