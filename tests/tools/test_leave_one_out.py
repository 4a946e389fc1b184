"""``tools/leave_one_out.py``: the aggregation and rendering from sweep outputs (fast), the families that can be held
out, and (slow) a real run on a tiny benchmark: the held-out family never reaches training, and a rerun re-renders
without training."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from barp.data.parts import Split, Synthetic
from barp.sweep.harness import COLUMNS, DEFAULT_GRID
from barp.sweep.summary import summarize
from tests.helpers import ROOT, load_tool
from tests.helpers import SYNTHETIC_RECIPE as RECIPE

LLMROUTER = ROOT / "configs" / "experiments" / "llmrouter.yaml"


def _tool():
    return load_tool("leave_one_out")


lofo = _tool()


def fake_sweep(folder: Path, shift: float) -> dict:
    """A sweep's two files for the tool's methods: method i scores 0.4 + 0.1 i (+ shift) at cost 1e-4 (1 + i)(1 - w_c),
    the oracle best. Returns the summary."""
    rows = []
    for split in ("id", "ood"):
        for i, method in enumerate(lofo.METHODS):
            for w_c in DEFAULT_GRID:
                score = min(1.0, 0.4 + 0.1 * i + shift + 0.05 * (1 - w_c))
                cost = 1e-4 * (1 + i) * (1 - w_c) + 1e-5
                rows.append({"method": method, "w_c": w_c, "split": split, "task": "all", "n": 5, "score": score,
                             "cost": cost, "reward": (1 - w_c) * score - w_c * cost / 1e-3})
    costs = {s: np.tile([1e-5, 2e-4, 6e-4], (5, 1)) for s in ("id", "ood")}
    summary = summarize(rows, {"n": {"id": 5, "ood": 5}}, model_costs=costs)
    folder.mkdir(parents=True)
    with open(folder / "sweep.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    # a finished sweep's summary.json lists the files written before it (barp.sweep.harness.inspect_sweep_folder)
    summary["files"] = {"sweep.csv": {"sha256": hashlib.sha256((folder / "sweep.csv").read_bytes()).hexdigest()}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return summary


@pytest.fixture()
def fake_runs(tmp_path):
    """Finished sweeps for mbpp and gsm8k, seeds 42 and 43, as the tool lays them out."""
    summaries = {}
    for family, base in (("mbpp", 0.0), ("gsm8k", 0.1)):
        for seed, shift in ((42, 0.0), (43, 0.02)):
            summaries[family, seed] = fake_sweep(tmp_path / family / f"seed{seed}" / "sweep", base + shift)
    return tmp_path, summaries


def _no_training(monkeypatch):
    import barp.cli

    def fail(*args, **kwargs):
        raise AssertionError("the tool trained although every sweep was finished")

    monkeypatch.setattr(barp.cli, "main", fail)


def _overview_rows(text: str) -> list[str]:
    """The first Markdown table's body rows."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| held-out family"))
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append(line)
    return body


def test_renders_mean_and_std_over_seeds_from_finished_sweeps(fake_runs, monkeypatch):
    out, summaries = fake_runs
    _no_training(monkeypatch)
    results = lofo.leave_one_out(recipe=RECIPE, output=str(out), families=["mbpp", "gsm8k"], num_seeds=2,
                                 num_prompts=240)
    assert list(results) == ["mbpp", "gsm8k"]
    for family in results:
        for method in lofo.METHODS:
            values = [summaries[family, s]["results"][method]["ood"]["aiq"] for s in (42, 43)]
            got = results[family]["ood_aiq"][method]
            assert got["values"] == pytest.approx(values)
            assert got["mean"] == pytest.approx(np.mean(values)) and got["std"] == pytest.approx(np.std(values))
        ids = [summaries[family, s]["results"]["barp"]["id"]["aiq"] for s in (42, 43)]
        assert results[family]["id_aiq"]["barp"]["mean"] == pytest.approx(np.mean(ids))
        # method order in METHODS: barp scores lowest, so BaRP is below best_fixed and linear TS here
        assert results[family]["barp_ge_best_fixed"] is False and results[family]["barp_ge_linear_ts"] is False
        point = results[family]["points"]["knn"]["0.2"]
        assert point["score"]["mean"] == pytest.approx(
            np.mean([min(1.0, 0.4 + 0.2 + s + 0.05 * 0.8) for s in ((0.0, 0.02) if family == "mbpp"
                                                                     else (0.1, 0.12))]))
    text = (out / "lofo.md").read_text()
    rows = _overview_rows(text)
    assert [r.split("|")[1].strip() for r in rows] == ["mbpp", "gsm8k", "**mean over families**"]
    m = results["mbpp"]["ood_aiq"]["barp"]
    assert f"{m['mean']:.3f} ± {m['std']:.3f}" in rows[0]
    assert "- mbpp: BaRP's OOD AIQ" in text and "< the best fixed model's" in text and "< linear TS's" in text
    assert "## Held out: gsm8k (OOD operating points)" in text and "score (%) at w_c=0.5" in text
    saved = json.loads((out / "lofo.json").read_text())
    assert list(saved["families"]) == ["mbpp", "gsm8k"] and saved["meta"]["seeds"] == [42, 43]
    assert saved["families"]["mbpp"]["ood_aiq"] == results["mbpp"]["ood_aiq"]
    assert (out / "lofo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = lofo.leave_one_out(recipe=RECIPE, output=str(out), families=["mbpp", "gsm8k"], num_seeds=2,
                               num_prompts=240)
    assert (out / "lofo.md").read_text() == text and again["gsm8k"]["ood_aiq"] == results["gsm8k"]["ood_aiq"]


def test_train_false_renders_what_is_finished_and_lists_the_rest(fake_runs, monkeypatch):
    out, _ = fake_runs
    _no_training(monkeypatch)
    results = lofo.leave_one_out(recipe=RECIPE, output=str(out), families=["mbpp", "gsm8k", "mmlu"], num_seeds=3,
                                 num_prompts=240, train=False)
    assert list(results) == ["mbpp", "gsm8k"] and results["mbpp"]["seeds"] == 2
    text = (out / "lofo.md").read_text()
    assert "Not yet run (--train false): mmlu/seed42, mmlu/seed43, mbpp/seed44, gsm8k/seed44, mmlu/seed44" in text
    assert json.loads((out / "lofo.json").read_text())["meta"]["missing"][-1] == "mmlu/seed44"


def test_families_that_can_be_held_out():
    from barp.data.synthetic import TASKS

    assert sorted(lofo.holdable_families(lofo.read_recipe(RECIPE), 240)) == sorted(TASKS)


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "llmrouter-dcrouter" / "train.json").is_file(),
                    reason="the llmrouter development set is not in ../shared")
def test_llmrouter_clusters_can_be_held_out_but_not_its_published_test_file(monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipe's paths are relative to the repository
    assert lofo.holdable_families(lofo.read_recipe(str(LLMROUTER))) == ["cluster-0", "cluster-1", "cluster-2"]


@pytest.mark.parametrize("args, message", [
    (["--families", "[no-such-family]"], "cannot be held out"),
    (["--num_seeds", "0"], "--num_seeds"),
    (["--recipe", "no/such.yaml"], "no such file"),
])
def test_bad_options_exit_with_one_line(tmp_path, capsys, args, message):
    code = lofo.main(["--recipe", RECIPE, "--num_prompts", "240", "--output", str(tmp_path / "o"), *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_quick_run_holds_each_family_out_of_training_and_reruns_without_training(tmp_path, monkeypatch):
    from barp.data.datamodule import RoutingDataModule
    from barp.models.checkpoints import RECORD_KEY, split_fingerprints

    families = ["mbpp", "gsm8k"]
    argv = ["--recipe", RECIPE, "--output", str(tmp_path), "--num_prompts", "240", "--max_epochs", "1",
            "--num_seeds", "1", "--families", json.dumps(families)]
    assert lofo.main(argv) == 0
    for name in ("lofo.md", "lofo.json", "lofo.png"):
        assert (tmp_path / name).is_file(), name
    text = (tmp_path / "lofo.md").read_text()
    assert [r.split("|")[1].strip() for r in _overview_rows(text)] == [*families, "**mean over families**"]
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    for family in families:
        run = tmp_path / family / "seed42"
        ckpt = json.loads((run / "fit.json").read_text())["checkpoint"]
        record = torch.load(ckpt, map_location="cpu", weights_only=False)[RECORD_KEY]
        dm = RoutingDataModule(synthetic=Synthetic(num_prompts=240), split=Split(ood_tasks=[family]))
        rows = np.asarray([i for i, t in enumerate(dm.table.tasks) if t == family])
        assert sorted(np.asarray(dm.splits.ood).tolist()) == rows.tolist()  # the fit's OOD split is the family
        held_out = set(split_fingerprints(dm, rows).tolist())
        assert held_out and not held_out & set(record["train_rows"].tolist())  # never trained on
        assert held_out <= set(record["eval_rows"].tolist())  # evaluated on
        summary = json.loads((run / "sweep" / "summary.json").read_text())
        assert summary["meta"]["n"]["ood"] == len(rows) and summary["meta"]["checkpoint"] == ckpt
        with open(run / "sweep" / "sweep.csv", newline="") as fh:
            assert {r["task"] for r in csv.DictReader(fh) if r["split"] == "ood"} == {"all", family}
    stamps = {p: p.stat().st_mtime_ns for p in checkpoints}
    _no_training(monkeypatch)
    assert lofo.main(argv) == 0
    assert (tmp_path / "lofo.md").read_text() == text
    assert sorted(tmp_path.rglob("*.ckpt")) == checkpoints
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
