"""W&B beyond ``barp fit``: the Sweeps definition parses in barp's CLI, and the commands' reports reach an offline
run (barp sweep, barp ope, barp calibrate, the tools) through barp.wandb_report."""

from __future__ import annotations

import json

import pytest
import yaml

from barp.cli import main
from tests.helpers import ROOT
from tests.helpers.wandb_offline import charts, history_keys, media, offline_run

SWEEP = ROOT / "configs" / "wandb" / "sweep.yaml"


def one_value(spec: dict):
    """One value of a W&B Sweeps parameter: its last listed value, else its ``min``, else its ``value`` (each differs
    from the recipe's own, so a value the CLI dropped would show)."""
    if "values" in spec:
        return spec["values"][-1]
    if "min" in spec:
        return spec["min"]
    return spec["value"]


def test_sweep_definition_is_a_search_over_barp_knobs():
    sweep = yaml.safe_load(SWEEP.read_text())
    assert sweep["method"] in ("bayes", "random")
    recipe = yaml.safe_load((ROOT / "configs" / "experiments" / "synthetic.yaml").read_text())
    monitored = recipe["trainer"]["callbacks"][0]["init_args"]["monitor"]
    assert sweep["metric"] == {"name": monitored, "goal": "maximize"}
    assert set(sweep["parameters"]) == {
        "model.init_args.training.lr", "model.init_args.training.beta", "model.init_args.critic.init_args.neighbours",
        "model.init_args.training.explore", "model.init_args.training.cost_power"}
    command = sweep["command"]
    assert command[0] == "${env}" and command[-1] == "${args}"
    assert command[command.index("barp"):command.index("barp") + 4] == [
        "barp", "fit", "--config", "configs/experiments/synthetic.yaml"]
    for i, word in enumerate(command):
        if word == "--config":
            assert (ROOT / command[i + 1]).is_file(), command[i + 1]


def test_agent_arguments_parse_in_barps_cli(capsys, tmp_path):
    """The agent runs ``command`` with ``${args}`` expanded to one ``--name=value`` per parameter: barp's CLI takes
    them and the resolved config holds the values given."""
    sweep = yaml.safe_load(SWEEP.read_text())
    chosen = {name: one_value(spec) for name, spec in sweep["parameters"].items()}
    args = [f"--{name}={value}" for name, value in chosen.items()]
    command = sweep["command"]
    argv = [str(ROOT / w) if w.startswith("configs/") else w for w in command[command.index("barp") + 1:-1]]
    with pytest.raises(SystemExit) as done:
        main([*argv, *args, "--trainer.default_root_dir", str(tmp_path), "--print_config"])
    assert done.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    for name, value in chosen.items():
        node = config
        for key in name.split("."):
            node = node[key]
        assert node == pytest.approx(value), (name, node, value)
    assert config["trainer"]["logger"]["class_path"].endswith("WandbLogger")


def test_the_chosen_values_differ_from_the_recipe():
    """Guards the test above: each value it passes differs from the recipe's, so a dropped argument would fail it."""
    sweep = yaml.safe_load(SWEEP.read_text())
    recipe = yaml.safe_load((ROOT / "configs" / "experiments" / "synthetic.yaml").read_text())
    for name, spec in sweep["parameters"].items():
        node = recipe
        for key in name.split("."):
            node = node[key]
        assert node != one_value(spec), name


# ------------------------------------------------------------------------------------------------ the commands
@pytest.fixture(scope="module")
def ckpt():
    from tests.helpers.cli import tiny_checkpoint

    return tiny_checkpoint()


def test_calibrate_with_wandb_logs_curve_figure_and_traffic(ckpt, tmp_path):
    out = tmp_path / "calibration"
    result = main(["calibrate", "--ckpt_path", ckpt, "--output", str(out), "--grid", "5", "--bootstrap", "20",
                   "--target.max_share", '{"gpt-4-1106-preview": 0.0}', "--wandb", "true"]).result
    run = offline_run(out)
    assert {"calibrate/curve", "calibrate/traffic", "calibrate/curve_plot"} <= history_keys(run)
    (curve,) = media(run, "table", "calibrate/curve")
    logged = json.loads(curve.read_text())
    assert [r[0] for r in logged["data"]] == pytest.approx(result["curve"]["w_c"])
    assert [r[1] for r in logged["data"]] == pytest.approx(result["curve"]["cost_per_1k"])
    (traffic,) = media(run, "table", "calibrate/traffic")
    assert len(json.loads(traffic.read_text())["data"]) == 5 * len(result["curve"]["models"])
    assert media(run, "images", "calibrate/curve_plot")
    assert charts(run)["calibrate/traffic_at_chosen"]["panel_config"]["panelDefId"] == "wandb/bar/v0"


def test_calibrate_without_wandb_makes_no_run(ckpt, tmp_path):
    main(["calibrate", "--ckpt_path", ckpt, "--output", str(tmp_path / "c"), "--grid", "3", "--bootstrap", "10"])
    assert not list(tmp_path.rglob("offline-run-*"))


def test_ope_with_wandb_logs_the_estimates(ckpt, tmp_path):
    from barp.models.trained import TrainedRouter

    models = TrainedRouter.from_checkpoint(ckpt).models
    log = tmp_path / "log.csv"
    lines = ["prompt,model,propensity,score,cost"]
    for i in range(40):  # prompts no training set holds, served uniformly at random
        lines.append(f"served question {i} about the weather in town {i * 7},{models[i % len(models)]},"
                     f"{1 / len(models)},{(i % 3) / 2},{1e-4 * (1 + i % len(models))}")
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "ope"
    results = main(["ope", "--log", str(log), "--ckpt_path", ckpt, "--output", str(out), "--w_c", "[0.5]",
                    "--bootstrap", "20", "--estimators", "[ips, snips]", "--wandb", "true"]).result
    run = offline_run(out)
    (path,) = media(run, "table", "ope/estimates")
    logged = json.loads(path.read_text())
    assert len(logged["data"]) == len(results) == 6
    column = logged["columns"].index("estimate")
    assert [r[column] for r in logged["data"]] == pytest.approx([r.estimate for r in results])


def test_sweep_wandb_failure_only_warns(tmp_path):
    from barp.sweep.harness import log_to_wandb

    figure = tmp_path / "pareto.png"
    figure.write_bytes(b"not used")
    summary = {"results": {"oracle": {"id": {"aiq": 0.9}}}}
    with pytest.warns(UserWarning, match="barp sweep: W&B logging skipped"):
        assert not log_to_wandb({"class_path": "barp.loggers.WandbLogger", "init_args": {"no_such_option": 1}},
                                [], summary, figure)


def test_leave_one_out_logs_overview_points_report_and_plot(tmp_path):
    from tests.helpers import load_tool

    lofo = load_tool("leave_one_out")
    stat = {"mean": 0.5, "std": 0.1}
    points = {m: {str(w): {"score": stat, "cost": stat} for w in lofo.POINTS} for m in lofo.POINT_METHODS}
    results = {"mbpp": {"seeds": 1, "id_aiq": {"barp": stat}, "ood_aiq": {m: stat for m in lofo.METHODS},
                        "barp_ge_best_fixed": True, "barp_ge_linear_ts": False, "points": points}}
    lofo.plot(results, tmp_path / "lofo.png")
    assert lofo.log_to_wandb({}, results, "the report", tmp_path / "lofo.png", tmp_path)
    run = offline_run(tmp_path)
    assert {"lofo/overview", "lofo/points", "lofo/report", "lofo/plot"} <= history_keys(run)
    (points_file,) = media(run, "table", "lofo/points")
    assert len(json.loads(points_file.read_text())["data"]) == len(lofo.POINT_METHODS) * len(lofo.POINTS)


def test_paper_tables_logs_each_markdown_table(tmp_path):
    from tests.helpers import load_tool

    tool = load_tool("paper_tables")
    text = ("# BaRP paper tables\n\n## Per-task scores (%), ID test, w_c = 0.5\n\n| task | BaRP |\n|---|---:|\n"
            "| mbpp | 50.0 ± 1.0 |\n| gsm8k | 60.0 ± 2.0 |\n\n## BaRP across preferences (cost table)\n\n"
            "| w_c | cost |\n|---|---|\n| 0.2 | 1e-4 |\n")
    tables = tool.markdown_tables(text)
    assert tables == {"Per-task scores (%), ID test, w_c = 0.5": (["task", "BaRP"], [["mbpp", "50.0 ± 1.0"],
                                                                                     ["gsm8k", "60.0 ± 2.0"]]),
                      "BaRP across preferences (cost table)": (["w_c", "cost"], [["0.2", "1e-4"]])}
    assert tool.log_to_wandb(text, tmp_path)
    run = offline_run(tmp_path)
    keys = {k for k in history_keys(run) if k.startswith("paper_tables/")}
    assert keys == {"paper_tables/per_task_scores_id_test_w_c_=_0.5", "paper_tables/barp_across_preferences_cost_table",
                    "paper_tables/report"}
