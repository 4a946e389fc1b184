"""tools/simulate_log.py: a log of an exact number of requests over the first N prompts of a split (the scale
benchmark's million requests over 100,000 prompts, here small)."""

from __future__ import annotations

import json

from barp.data.sources.logs import read_log
from tests.helpers import ROOT, load_tool

RECIPE = ROOT / "configs" / "experiments" / "synthetic.yaml"


def test_requests_over_the_first_prompts_of_the_split(tmp_path, capsys):
    tool = load_tool("simulate_log")
    out = tmp_path / "log.parquet"
    args = ["--recipe", str(RECIPE), "--output", str(out), "--data", json.dumps({"synthetic": {"num_prompts": 200}})]
    assert tool.main([*args, "--prompts", "30", "--requests", "95"]) == 0
    log = read_log(out)
    assert len(log) == 95 and len(set(log.prompt_ids)) == 30 and log.simulated
    assert log.prompt_ids[:30] == log.prompt_ids[30:60] == log.prompt_ids[60:90]  # pass by pass, the last cut short
    assert log.prompt_ids[90:] == log.prompt_ids[:5]
    assert "95 requests on 30 prompts of the train split (uniform, 95 requests in 4 passes" in capsys.readouterr().out


def test_bad_prompts_and_requests_are_one_error_each(tmp_path, capsys):
    tool = load_tool("simulate_log")
    out = tmp_path / "log.parquet"
    args = ["--recipe", str(RECIPE), "--output", str(out), "--data", json.dumps({"synthetic": {"num_prompts": 200}})]
    for extra, message in ((["--prompts", "5000"], "--prompts 5000: the recipe's train split has only"),
                           (["--requests", "0"], "--requests must be an integer >= 1"),
                           (["--requests", "10", "--passes", "2"], "give --passes (2) or --requests (10), not both")):
        assert tool.main([*args, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
