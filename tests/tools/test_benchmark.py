"""tools/benchmark.py in quick mode: the JSON's structure, every ratio equal to the two figures it names, cosines
in [-1, 1], targets judged from the ratios, and the GPU section skipped without CUDA. No figure is timed here."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import load_tool


@pytest.fixture(scope="module")
def bench():
    return load_tool("benchmark")


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        returned = bench.main(["--output", str(out), "--quick"])
    finally:
        torch.set_num_threads(threads)
    written = json.loads((out / "benchmark.json").read_text())
    return returned, written


def _ratios(node: dict, where: str = ""):
    """Every (where, name, ratio, section it lives in), at any depth."""
    for name, ratio in node.get("ratios", {}).items():
        yield where, name, ratio, node
    for key, value in node.items():
        if isinstance(value, dict) and key != "ratios":
            yield from _ratios(value, f"{where}.{key}")


def _figure(node: dict, path: str) -> float:
    for part in path.split("."):
        node = node[part]
    return float(node)


@pytest.mark.slow  # runs the benchmark's quick mode (~25 s)
def test_quick_run_writes_the_sections_and_no_tmp_file(quick_run, tmp_path):
    returned, written = quick_run
    assert written == json.loads(json.dumps(returned))  # the file holds what main returned
    assert set(written["sections"]) == {"encoder", "training", "routing", "startup", "growth", "neighbours", "gpu"}
    assert written["quick"] is True and written["machine"]["torch_threads"] == 1
    assert "skipped" in written["sections"]["startup"]  # quick mode starts no interpreters
    for name in ("encoder", "training", "routing", "growth"):
        assert "skipped" not in written["sections"][name]
        assert written["sections"][name]["wall_s"] > 0


@pytest.mark.slow  # runs the benchmark's quick mode (~25 s)
def test_every_ratio_is_its_numerator_over_its_denominator(quick_run):
    _, written = quick_run
    found = list(_ratios(written["sections"]))
    names = {f"{where}.{name}".lstrip(".") for where, name, _, _ in found}
    for expected in ("encoder.barp_default_vs_plain_fp32", "encoder.barp_bfloat16_vs_plain_fp32",
                     "training.reinforce_lightning_vs_bare", "training.critic_lightning_vs_bare",
                     "routing.single_p50_router_vs_encoder", "routing.batch_router_vs_encoder",
                     "growth.epoch_s_400_vs_100", "growth.embedding_s_400_vs_100", "growth.prompts_400_vs_100"):
        assert expected in names
    for where, name, ratio, node in found:
        a, b = _figure(node, ratio["numerator"]), _figure(node, ratio["denominator"])
        assert math.isfinite(ratio["value"]) and ratio["value"] > 0, (where, name, ratio)
        assert ratio["value"] == pytest.approx(a / b, rel=1e-12), (where, name)
    training = written["sections"]["training"]
    for key in ("reinforce", "critic"):  # both loops count the same pulls: the steps after the warm-up
        runs = training[key]
        assert runs["lightning"]["pulls"] == runs["bare"]["pulls"] > 0
        assert runs["lightning"]["steps"] == runs["bare"]["steps"] == training["steps"]
        for run in runs.values():
            steps = training["steps"] - training["warmup_steps"]
            assert run["pulls"] <= steps * training["batch_size"] * training["samples_per_prompt"]
            assert run["pulls_per_s"] == pytest.approx(run["pulls"] / run["seconds"])


@pytest.mark.slow  # runs the benchmark's quick mode (~25 s)
def test_cosines_are_cosines_and_the_encoder_paths_agree(quick_run):
    _, written = quick_run
    encoder = written["sections"]["encoder"]
    for name in ("barp_default", "barp_bfloat16"):
        cos = encoder[name]["cosine_to_plain_fp32"]
        assert -1.0 <= cos["min"] <= cos["mean"] <= 1.0 + 1e-6
        assert cos["min"] > 0.99  # the same network on the same prompts: a mismatch in truncation would show here
    assert encoder["tokens"]["max"] > encoder["max_length"]  # the mix includes 5-shot prompts longer than the cut


@pytest.mark.slow  # runs the benchmark's quick mode (~25 s)
def test_targets_are_judged_from_the_ratios(quick_run):
    _, written = quick_run
    targets = written["targets"]
    assert {t["ratio"] for t in targets} >= {"barp_default_vs_plain_fp32", "reinforce_lightning_vs_bare",
                                              "single_p50_router_vs_encoder", "batch_router_vs_encoder"}
    for t in targets:
        value = written["sections"][t["section"]]["ratios"][t["ratio"]]["value"]
        assert t["value"] == value
        op, threshold = t["target"].split()
        met = value >= float(threshold) if op == ">=" else value <= float(threshold)
        if t["section"] == "encoder":  # the cosine condition as well
            name = t["ratio"].removesuffix("_vs_plain_fp32")
            met = met and written["sections"]["encoder"][name]["cosine_to_plain_fp32"]["min"] >= 0.999
        assert t["met"] is met, t


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the record of a machine without CUDA")
def test_gpu_section_says_skipped_without_cuda(quick_run):
    _, written = quick_run
    assert written["machine"]["cuda"] is False
    assert "CUDA" in written["sections"]["gpu"]["skipped"]


def test_add_ratio_names_its_figures(bench):
    section = {"a": {"x": 6.0}, "b": 4.0}
    assert bench.add_ratio(section, "r", "a.x", "b") == 1.5
    assert section["ratios"]["r"] == {"value": 1.5, "numerator": "a.x", "denominator": "b"}


def test_import_breakdown_attributes_self_time_to_packages(bench):
    out = bench.import_breakdown("json")  # a fresh interpreter importing only the standard library: fast
    assert out["self_s"]["barp"] == 0 and out["self_s"]["torch"] == 0 and out["self_s"]["other"] > 0
    assert out["total_s"] == pytest.approx(sum(out["self_s"].values()))


IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:          10000 |      10000 |       pandas.core
import time:          20000 |      30000 |     pandas
import time:            5000 |      35000 |   barp.data.sources
import time:          40000 |      40000 |       torch.nn
import time:          10000 |      50000 |     torch
import time:            1000 |      51000 |   lightning.pytorch
import time:            2000 |      88000 | barp.cli.main
"""


def test_import_breakdown_names_the_packages_barp_itself_imports(bench, monkeypatch):
    class Done:
        stderr = IMPORTTIME

    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: Done())
    out = bench.import_breakdown("barp.cli.main")
    assert out["self_s"]["barp"] == pytest.approx(0.007) and out["self_s"]["torch"] == pytest.approx(0.05)
    # pandas is imported by a barp module (barp's to make lazy); torch by Lightning (upstream), so not listed
    assert out["imported_by_barp_s"] == {"lightning": pytest.approx(0.051), "pandas": pytest.approx(0.03)}


def test_startup_section_reports_barp_help_and_import_of_the_cli(bench, monkeypatch):
    seconds = {"pass": 0.05, "import torch": 3.0, "import transformers": 1.5, "import lightning": 8.0,
               "import barp.cli.main": 8.5}
    monkeypatch.setattr(bench, "_timed", lambda cmd: seconds.get(cmd[-1], 9.0))  # barp --help: 9 s
    monkeypatch.setattr(bench, "import_breakdown", lambda module: {"self_s": {"barp": 0.01}, "total_s": 7.0})
    section = bench.startup_section(1)
    s = section["seconds"]
    assert s["barp_help"] == 9.0 and s["import_barp_cli"] == 8.5
    assert s["import_barp_cli_beyond_import_lightning"] == pytest.approx(0.5)
    assert s["barp_help_beyond_import_lightning"] == pytest.approx(1.0)
    assert "barp.cli.main" in section["commands"]["import_barp_cli"]
    assert section["ratios"]["import_lightning_vs_barp_help"]["value"] == pytest.approx(8.0 / 9.0)


def test_neighbours_section_times_both_searches_side_by_side(bench):
    section = bench.neighbours_section([300, 1200], exact_up_to=300, k=5, dim=16, sample=100)
    small, large = section["sizes"]["300"], section["sizes"]["1200"]
    assert small["exact_s"] > 0 and small["approximate_s"] > 0 and "exact_s" not in large  # exact up to 300 only
    assert 0.9 <= small["recall_at_k"] <= 1.0 and 0.9 <= large["recall_at_k"] <= 1.0
    assert len(small["recall_by_seed"]) == 3 and small["recall_by_seed"][0] == small["recall_at_k"]
    assert small["recall_min_over_seeds"] == min(small["recall_by_seed"]) and "recall_by_seed" not in large
    assert small["critic_k"]["k"] == 40 and small["critic_k"]["exact_s"] > 0 and "critic_k" not in large
    assert 0.8 <= small["critic_k"]["recall"] <= 1.0
    assert section["ratios"]["exact_vs_approximate_s_300"]["value"] == small["exact_s"] / small["approximate_s"]
    assert section["ratios"]["approximate_s_1200_vs_300"]["value"] == large["approximate_s"] / small["approximate_s"]
    assert "exact_s_1200_vs_300" not in section["ratios"]
    assert "neighbours" in bench.report({"date": "d", "quick": True, "machine": {"cpu": "c", "cores": 2,
                                         "torch_threads": 1}, "sections": {"neighbours": section}, "targets": []})


def test_stand_in_embeddings_are_seeded_unit_vectors(bench):
    a, b = bench.clustered_unit_vectors(200, 8, seed=1), bench.clustered_unit_vectors(200, 8, seed=1)
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=-1), torch.ones(200))
    assert not torch.equal(a, bench.clustered_unit_vectors(200, 8, seed=2))


@pytest.mark.slow  # two small logs end to end through simulate_log, read_log, barp fit and barp ope (~2 min)
def test_scale_section_measures_every_stage_and_its_growth(bench, tmp_path):
    threads = torch.get_num_threads()
    try:
        returned = bench.main(["--output", str(tmp_path), "--scale", "--quick"])
    finally:
        torch.set_num_threads(threads)
    section = returned["sections"]["scale"]
    assert set(returned["sections"]) == {"scale"} and list(section["sizes"]) == ["1000", "4000"]
    for n, row in section["sizes"].items():
        assert row["train_rows"] == int(n) and row["train_distinct_prompts"] <= row["train_prompts"] == int(n) // 10
        assert set(row["stages"]) == {"simulate", "read_log", "fit", "ope"}
        assert all(st["s"] > 0 and st["peak_mib"] > 0 for st in row["stages"].values())
        assert (tmp_path / "scale" / n / "ope" / "ope.csv").is_file()
    for name, g in section["growth"].items():
        ratio = section["ratios"][name]
        assert g["ratio"] == ratio["value"] == pytest.approx(_figure(section, ratio["numerator"])
                                                             / _figure(section, ratio["denominator"]))
        assert g["exponent"] == pytest.approx(math.log(g["ratio"]) / math.log(4))
        assert g["n_log_n_bound"] == pytest.approx(4000 * math.log(4000) / (1000 * math.log(1000)))
    peak = [t for t in returned["targets"] if t["ratio"] == "peak_mib_4000"]
    assert peak and peak[0]["value"] == section["sizes"]["4000"]["peak_mib"]
