"""``tools/learning_curve.py``: a quick run on the built-in benchmark with the tiny fake encoder writes a table with
one row per size, seed and method whose numbers come from the runs, the development set's subsamples are seeded and
nested, and bad options stop the tool with one line."""

from __future__ import annotations

import csv
import json
import math

import pytest

from tests.helpers import SYNTHETIC_RECIPE, load_tool
from tests.helpers.encoder import fake_encoder_args

tool = load_tool("learning_curve")


def test_quick_run_writes_a_table_of_real_numbers_per_size_seed_and_method(tmp_path):
    out = tmp_path / "lc"
    assert tool.main(["--recipe", SYNTHETIC_RECIPE, "--quick", "true", "--output", str(out),
                      "--barp_args", json.dumps(fake_encoder_args())]) == 0
    for name in ("learning_curve.md", "learning_curve.csv", "learning_curve.json", "learning_curve.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "learning_curve.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    sizes, methods = tool.QUICK_SIZES, tool.DEFAULT_METHODS
    assert [(int(r["size"]), r["method"]) for r in rows] == [(n, m) for n in sizes for m in methods]
    assert {r["seed"] for r in rows} == {"42"} and {r["measure"] for r in rows} == {"aiq"}
    values = [float(r["value"]) for r in rows]
    scores = [float(r["score_w0"]) for r in rows]
    assert all(0.0 < v <= 1.0 and math.isfinite(v) for v in values + scores)
    assert len(set(values)) == len(values)  # every method and size its own number: nothing is a constant
    by = {(int(r["size"]), r["method"]): r for r in rows}
    n_train = [int(by[n, "barp"]["n_train"]) for n in sizes]
    assert 0 < n_train[0] < n_train[1] and len({by[n, m]["n_train"] for n in sizes for m in methods}) == 2
    assert int(by[sizes[0], "barp"]["n_test"]) < int(by[sizes[1], "barp"]["n_test"])  # the test split scales too
    for n in sizes:
        knn = by[n, "knn"]
        diff = float(by[n, "barp"]["value"]) - float(knn["value"])
        assert float(knn["barp_minus"]) == pytest.approx(diff)
        assert float(knn["barp_minus_ci_low"]) <= diff <= float(knn["barp_minus_ci_high"])
        assert by[n, "barp"]["barp_minus"] == ""
    curve = json.loads((out / "learning_curve.json").read_text())["curve"]
    assert [e["size"] for e in curve] == sizes
    assert curve[0]["methods"]["mlp"]["value"]["mean"] == pytest.approx(float(by[sizes[0], "mlp"]["value"]))
    text = (out / "learning_curve.md").read_text()
    lines = [x for x in text.splitlines() if x.startswith(f"| {sizes[0]} |") or x.startswith(f"| {sizes[1]} |")]
    assert len(lines) == 4  # two sizes in each of the two tables
    assert f"{float(by[sizes[1], 'knn']['value']):.3f} ± 0.000" in text


def test_subsamples_are_seeded_nested_and_in_file_order(tmp_path):
    records = [{"question": f"q{i}", "scores": {"a": i % 2}} for i in range(50)]
    small = json.loads(tool.subsample(records, 10, 7, tmp_path).read_text())
    large = json.loads(tool.subsample(records, 20, 7, tmp_path).read_text())
    other = json.loads(tool.subsample(records, 10, 8, tmp_path).read_text())
    assert len(small) == 10 and len(large) == 20
    assert all(r in large for r in small) and small != other
    order = [int(r["question"][1:]) for r in large]
    assert order == sorted(order)
    assert json.loads(tool.subsample(records, 10, 7, tmp_path).read_text()) == small


@pytest.mark.parametrize(("args", "message"), [
    (["--sizes", "[500, 0]"], "--sizes: 0 is not a positive number of prompts"),
    (["--methods", "[knn, mlp]"], "--methods ['knn', 'mlp']: must include 'barp'"),
])
def test_bad_options_exit_with_one_line_naming_the_option(tmp_path, capsys, args, message):
    code = tool.main(["--recipe", SYNTHETIC_RECIPE, "--output", str(tmp_path / "o"), *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()
