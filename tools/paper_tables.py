"""Render the BaRP paper's tables as Markdown, over several seeds (mean ± std), by training what they need.

Example::

    python tools/paper_tables.py --recipe configs/experiments/synthetic.yaml --output runs/paper_tables
    python tools/paper_tables.py --num_prompts 600 --max_epochs 5 --num_seeds 2 --output /tmp/tables   # quick

For each seed it trains BaRP with each decision head (``barp fit``), then runs ``barp sweep`` on the MLP-head
checkpoint (every method) and on the other heads (BaRP only), under ``<output>/seed<S>/``. A rerun reuses the
sweep outputs and finished fits it finds there (``--reuse``), so the tables can be re-rendered from existing sweeps
without training, and a sweep with other methods reuses the fitted BaRP checkpoints.
Tables: per-task ID and OOD scores at one preference (BaRP vs the smallest and largest model vs the offline
routers); BaRP's cost and score for w_c = 0.2 ... 0.8; the decision-head ablation; the learning-algorithm
ablation (BaRP's policy gradient vs LinUCB vs linear Thompson sampling vs epsilon-greedy); ``headline``, the
paper's own comparison (BaRP vs RouterDC and GraphRouter, the largest and the best single LLM, per task family and
averaged over tasks and over prompts, with BaRP's relative improvement)::

    python tools/paper_tables.py --recipe configs/experiments/llmrouter.yaml --tables '[headline]' \
        --methods '[barp, routerdc, graphrouter, most_expensive, single_models, oracle]' --first_seed 42
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
from jsonargparse import auto_cli

from barp.atomic import atomic_write_text
from barp.sweep.harness import ALL_METHODS, is_complete_sweep

Table = Literal["per_task", "cost", "heads", "algorithms", "summary", "headline"]
HEADS = ("mlp", "linear", "bilinear")
PER_TASK_METHODS = {"cheapest": "smallest LLM", "most_expensive": "largest LLM", "knn": "kNN (offline)",
                    "mlp": "MLP (offline)", "mf": "MF (offline)", "barp": "BaRP"}
ALGORITHMS = {"barp": "policy gradient (BaRP, as configured)", "linucb": "LinUCB", "linear_ts": "linear TS",
              "epsilon_greedy": "epsilon-greedy"}


def _covers(sweep_dir: Path, methods: list[str]) -> bool:
    """Whether a finished sweep holds every one of ``methods`` (``single_models``: the ``single:`` methods)."""
    done = set(json.loads((sweep_dir / "summary.json").read_text())["results"])
    return all(any(d.startswith("single:") for d in done) if m == "single_models" else m in done for m in methods)


def _fit_and_sweep(recipe: str, out: Path, seed: int, head: str, methods: list[str], grid: list[float],
                   num_prompts: int | None, max_epochs: int | None, reuse: bool,
                   extra: list[str] | None = None) -> Path:
    """Train BaRP with ``head`` for ``seed`` and sweep it; returns the sweep folder. ``extra``: more ``barp``
    options (after the recipe's) given to both the fit and the sweep, e.g. another data file or encoder
    (``tools/learning_curve.py``)."""
    from barp.cli.main import fit_checkpoint, main

    sweep_dir = out / f"seed{seed}" / f"head_{head}" / "sweep"
    if reuse and is_complete_sweep(sweep_dir) and _covers(sweep_dir, methods):  # interrupted or other: redone
        return sweep_dir
    run_dir = out / f"seed{seed}" / f"head_{head}"
    common = ["--config", recipe]
    if num_prompts is not None:
        common += ["--data.init_args.synthetic.num_prompts", str(num_prompts)]
    common += list(extra or [])
    fit = [*common, "--model.init_args.policy.head", head, "--seed_everything", str(seed),
           "--test_after_fit", "false", "--trainer.enable_progress_bar", "false",
           "--trainer.default_root_dir", str(run_dir), "--trainer.logger.init_args.save_dir", str(run_dir)]
    if max_epochs is not None:
        fit += ["--trainer.max_epochs", str(max_epochs), "--trainer.check_val_every_n_epoch", "1"]
    done = run_dir / "fitted_checkpoint.txt"  # written once the fit has finished: a rerun reuses its checkpoint
    if reuse and done.is_file() and Path(done.read_text().strip()).is_file():
        ckpt = done.read_text().strip()
    else:
        ckpt = fit_checkpoint(fit, str(run_dir / "final.ckpt"))
        atomic_write_text(done, ckpt)
    sweep = ["sweep", *common, "--ckpt_path", ckpt, "--output", str(sweep_dir), "--seed", str(seed),
             "--methods", json.dumps(methods), "--w_c", json.dumps(grid), "--progress", "false",
             "--overwrite", "true"]  # reached only to redo this sweep (no --reuse, or an incomplete one)
    if max_epochs is not None:
        sweep += ["--max_epochs", str(max_epochs)]
    main(sweep)
    return sweep_dir


def _read(sweep_dirs: list[Path]) -> list[tuple[list[dict], dict]]:
    out = []
    for d in sweep_dirs:
        with open(d / "sweep.csv", newline="") as fh:
            rows = [{**r, "w_c": float(r["w_c"]), "n": int(r["n"]), "score": float(r["score"]),
                     "cost": float(r["cost"]), "reward": float(r["reward"])} for r in csv.DictReader(fh)]
        out.append((rows, json.loads((d / "summary.json").read_text())))
    return out


def _pm(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± std`` over seeds (population std; 0 for one seed); ``-`` if there are no values."""
    if not values:
        return "-"
    v = np.asarray(values, dtype=np.float64) * scale
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def _pm_cost(values: list[float]) -> str:
    if not values:
        return "-"
    v = np.asarray(values, dtype=np.float64)
    return f"${v.mean():.6f} ± {v.std():.6f}"


def _cell(runs, method: str, split: str, w_c: float, task: str, key: str) -> list[float]:
    return [r[key] for rows, _ in runs for r in rows
            if r["method"] == method and r["split"] == split and r["task"] == task and abs(r["w_c"] - w_c) < 1e-9]


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def per_task_table(runs, split: str, w_c: float) -> str:
    """Scores (%) per task plus average score and cost at ``w_c`` on ``split``, one row per method."""
    tasks = sorted({r["task"] for rows, _ in runs for r in rows if r["split"] == split and r["task"] != "all"})
    body = []
    for method, label in PER_TASK_METHODS.items():
        over_tasks = [v for run in runs for k, v in _scores(run, method, split, w_c).items() if k == "over tasks"]
        body.append([label] + [_pm(_cell(runs, method, split, w_c, t, "score"), 100) for t in tasks]
                    + [_pm(over_tasks, 100), _pm(_cell(runs, method, split, w_c, "all", "score"), 100),
                       _pm_cost(_cell(runs, method, split, w_c, "all", "cost"))])
    return _markdown(["method", *tasks, "mean over tasks (%)", "mean over prompts (%)", "avg cost (USD)"], body)


HEADLINE = {"barp": "BaRP", "routerdc": "RouterDC", "graphrouter": "GraphRouter", "most_expensive": "largest LLM",
            "best_single": "best single LLM"}


def _method_in(run, method: str, split: str) -> str | None:
    """The sweep method behind a headline column in one run: ``best_single`` is that run's best single model on the
    split (the highest mean test score: in hindsight, as papers report it)."""
    rows, summary = run
    if method == "best_single":
        best = (summary["splits"].get(split) or {}).get("best_single_model")
        return best["method"] if best else None
    return method if any(r["method"] == method and r["split"] == split for r in rows) else None


def _scores(run, method: str, split: str, w_c: float) -> dict[str, float]:
    """One run's scores at ``w_c`` per task, plus ``over tasks`` (each task once) and ``over prompts``."""
    name = _method_in(run, method, split)
    if name is None:
        return {}
    at = {r["task"]: r["score"] for r in run[0]
          if r["method"] == name and r["split"] == split and abs(r["w_c"] - w_c) < 1e-9}
    tasks = {t: v for t, v in at.items() if t != "all"}
    out = dict(tasks)
    if tasks:
        out["over tasks"] = float(np.mean(list(tasks.values())))
    if "all" in at:
        out["over prompts"] = at["all"]
        out["cost"] = next(r["cost"] for r in run[0] if r["method"] == name and r["split"] == split
                           and r["task"] == "all" and abs(r["w_c"] - w_c) < 1e-9)
    return out


def headline_table(runs, split: str, w_c: float) -> str:
    """The paper's comparison at ``w_c``: scores (%) per task family and averaged (over tasks: each task once, as
    the paper and the routers it compares with report; over prompts: barp's own average) of BaRP, RouterDC,
    GraphRouter, the largest LLM and the best single LLM, then BaRP's relative improvement ``(BaRP - other) /
    other`` on each average, as the paper states it; mean ± std over the runs (seeds)."""
    per_run = [{m: _scores(run, m, split, w_c) for m in HEADLINE} for run in runs]
    tasks = sorted({t for r in per_run for t in r["barp"] if t not in ("over tasks", "over prompts", "cost")})
    present = [m for m in HEADLINE if any(r[m] for r in per_run)]
    body = []
    for row in [*tasks, "over tasks", "over prompts"]:
        label = row if row in tasks else f"**mean {row}**"
        body.append([label] + [_pm([r[m][row] for r in per_run if row in r[m]], 100) for m in present])
    body.append(["mean cost per prompt (USD)"] + [_pm_cost([r[m]["cost"] for r in per_run if "cost" in r[m]])
                                                  for m in present])
    head = ["task family", *(HEADLINE[m] + " (%)" for m in present)]
    rel_body = []
    for other in present[1:]:
        cells = []
        for avg in ("over tasks", "over prompts"):
            rel = [(r["barp"][avg] - r[other][avg]) / r[other][avg] for r in per_run
                   if avg in r["barp"] and avg in r[other] and r[other][avg] > 0]
            cells.append(_pm(rel, 100) + (" %" if rel else ""))
        rel_body.append([f"BaRP vs {HEADLINE[other]}", *cells])
    relative = _markdown(["(BaRP - other) / other", "on the mean over tasks", "on the mean over prompts"], rel_body)
    return _markdown(head, body) + "\n\n" + relative


def cost_table(runs, grid: list[float]) -> str:
    """BaRP's average score (%) and cost per query at each w_c, ID and OOD."""
    body = [[f"{w:g}"] + [f(_cell(runs, "barp", s, w, "all", k)) for s in ("id", "ood")
                          for k, f in (("score", lambda v: _pm(v, 100)), ("cost", _pm_cost))] for w in grid]
    return _markdown(["w_c", "ID score (%)", "ID cost (USD)", "OOD score (%)", "OOD cost (USD)"], body)


def _frontier_key(runs, split: str) -> str:
    """``aiq``, or ``mean_reward`` where every model of the split costs the same and AIQ is undefined."""
    defined = [s["splits"][split].get("aiq_defined", True) for _, s in runs if split in s.get("splits", {})]
    return "aiq" if not defined or any(defined) else "mean_reward"


def _aiq_label(runs, split: str) -> str:
    return "AIQ" if _frontier_key(runs, split) == "aiq" else "mean reward (AIQ undefined: one price)"


def _aiq(runs, method: str, split: str) -> list[float]:
    key = _frontier_key(runs, split)
    return [s["results"][method][split][key] for _, s in runs
            if split in s["results"].get(method, {}) and s["results"][method][split].get(key) is not None]


def ablation_table(runs_by_label: dict[str, tuple[list, str]], w_c: float) -> str:
    """Score (%), cost and reward at ``w_c`` plus AIQ, ID and OOD, one row per (label: (runs, method))."""
    body = []
    for label, (runs, method) in runs_by_label.items():
        row = [label]
        for s in ("id", "ood"):
            row += [_pm(_cell(runs, method, s, w_c, "all", "score"), 100),
                    _pm_cost(_cell(runs, method, s, w_c, "all", "cost")),
                    _pm(_cell(runs, method, s, w_c, "all", "reward"), 1, 4), _pm(_aiq(runs, method, s), 1, 4)]
        body.append(row)
    runs_any = [r for runs, _ in runs_by_label.values() for r in runs]
    head = [f"{s.upper()} {k}" for s in ("id", "ood")
            for k in ("score (%)", "cost (USD)", "reward", _aiq_label(runs_any, s))]
    return _markdown(["method", *head], body)


def summary_table(runs, methods: list[str], points: list[float]) -> str:
    """Per method: AIQ (ID, and OOD when there is an OOD split) and score (%) and cost at each ``points`` w_c."""
    splits = [s for s in ("id", "ood") if any(s in summ["results"].get("oracle", {}) for _, summ in runs)]
    body = []
    for method in methods:
        row = [method]
        for split in splits:
            row.append(_pm(_aiq(runs, method, split), 1, 3))
            for w in points:
                row += [_pm(_cell(runs, method, split, w, "all", "score"), 100),
                        _pm_cost(_cell(runs, method, split, w, "all", "cost"))]
        body.append(row)
    head = [h for split in splits
            for h in [f"{split.upper()} {_aiq_label(runs, split)}"]
            + [f"{split.upper()} {k} at w_c={w:g}" for w in points for k in ("score (%)", "cost (USD)")]]
    return _markdown(["method", *head], body)


def paper_tables(
    recipe: str = "configs/experiments/synthetic.yaml",
    output: str = "runs/paper_tables",
    num_seeds: int = 3,
    first_seed: int = 0,
    w_c: float = 0.5,
    cost_grid: list[float] | None = None,
    tables: list[Table] | None = None,
    num_prompts: int | None = None,
    max_epochs: int | None = None,
    reuse: bool = True,
    methods: list[str] | None = None,
    summary_points: list[float] | None = None,
    headline_points: list[float] | None = None,
    wandb: bool = False,
) -> str:
    """Train, sweep and render the paper's tables as Markdown (printed and written to ``<output>/paper_tables.md``).

    Args:
        recipe: Experiment config, as given to ``barp fit --config`` (named ``recipe`` here because ``--config``
            is the tool's own option for reading its arguments from a file).
        output: Folder for the runs, the sweeps and ``paper_tables.md``.
        num_seeds: Number of seeds (each trains BaRP and every comparison method anew).
        first_seed: Seeds are ``first_seed``, ``first_seed + 1``, ...
        w_c: Preference of the per-task and ablation tables.
        cost_grid: Preferences of the cost table (default 0.2, 0.3, ..., 0.8).
        tables: Which tables (default per_task, cost, heads, algorithms); ``summary``: AIQ and score/cost at
            ``summary_points`` per method of ``methods``, the table the README reports for each dataset.
        num_prompts: Override the benchmark's size (quick runs).
        max_epochs: Override the training epochs of BaRP and of the comparison methods (quick runs).
        reuse: Reuse sweep outputs already under ``output`` instead of retraining.
        methods: Methods to sweep with the MLP-head checkpoint (``barp sweep --methods``; default all). With
            ``summary`` these are its rows, ``single_models`` standing for ``single:<model>`` of each model.
        summary_points: Preferences at which the summary table gives score and cost (default 0 and ``w_c``).
        headline_points: Preferences of ``headline``, the paper's comparison (BaRP vs RouterDC, GraphRouter, the
            largest and the best single LLM, per task and averaged, with relative improvements). The paper does not
            say at which preference it compares; default w_c = 0 (quality only) and 0.5.
        wandb: Log every table (as a W&B table) and the whole text to one W&B run (offline unless
            WANDB_MODE=online, :func:`log_to_wandb`); also on when the recipe's ``trainer.logger`` is a WandbLogger.

    Returns:
        The Markdown text.
    """
    tables = list(tables or ["per_task", "cost", "heads", "algorithms"])
    grid_cost = [round(0.2 + 0.1 * i, 1) for i in range(7)] if cost_grid is None else list(cost_grid)
    grid = sorted({*(round(0.1 * i, 1) for i in range(11)), *grid_cost, float(w_c)})
    out = Path(output)
    seeds = [first_seed + i for i in range(num_seeds)]
    all_methods = list(methods or [m for m in ALL_METHODS if m != "random"])
    runs_by_head: dict[str, list] = defaultdict(list)
    heads = HEADS if "heads" in tables else HEADS[:1]
    for seed in seeds:
        for head in heads:
            methods = all_methods if head == "mlp" else ["barp", "single_models", "oracle"]
            d = _fit_and_sweep(recipe, out, seed, head, methods, grid, num_prompts, max_epochs, reuse)
            runs_by_head[head] += _read([d])
    main_runs = runs_by_head["mlp"]
    parts = [f"# BaRP paper tables ({len(seeds)} seeds: {seeds}; mean ± std)\n",
             f"Config: `{recipe}`; preference of the per-task and ablation tables: w_c = {w_c:g}.\n"]
    if "per_task" in tables:
        for split in ("id", "ood"):
            parts += [f"## Per-task scores (%), {split.upper()} test, w_c = {w_c:g}\n",
                      per_task_table(main_runs, split, w_c), ""]
    if "cost" in tables:
        parts += ["## BaRP across preferences (cost table)\n", cost_table(main_runs, grid_cost), ""]
    if "heads" in tables:
        parts += [f"## Decision-head ablation (BaRP), w_c = {w_c:g}\n",
                  ablation_table({h: (runs_by_head[h], "barp") for h in HEADS}, w_c), ""]
    if "algorithms" in tables:
        parts += [f"## Learning-algorithm ablation (same bandit feedback), w_c = {w_c:g}\n",
                  ablation_table({label: (main_runs, m) for m, label in ALGORITHMS.items()}, w_c), ""]
    if "headline" in tables:
        for point in ([0.0, 0.5] if headline_points is None else list(headline_points)):
            for split in ("id", "ood"):
                if any(r["split"] == split for rows, _ in main_runs for r in rows):
                    parts += [f"## The paper's comparison, {split.upper()} test, w_c = {point:g} (scores %, mean ± "
                              f"std over {len(seeds)} seeds)\n", headline_table(main_runs, split, point), ""]
    if "summary" in tables:
        points = [0.0, float(w_c)] if summary_points is None else list(summary_points)
        names = sorted({r["method"] for rows, _ in main_runs for r in rows})
        rows = [n for m in all_methods for n in ([x for x in names if x.startswith("single:")]
                                                  if m == "single_models" else [m]) if n in names]
        parts += [f"## AIQ and operating points ({recipe})\n", summary_table(main_runs, rows, points), ""]
    text = "\n".join(parts)
    atomic_write_text(out / "paper_tables.md", text)
    print(text)
    section = _wandb_section(recipe)
    if wandb or section is not None:
        log_to_wandb(text, out, section)
    return text


def _wandb_section(recipe: str) -> dict | None:
    """The recipe's W&B logger section (``trainer.logger``), if it has one."""
    import yaml

    from barp.wandb_report import wandb_section

    cfg = yaml.safe_load(Path(recipe).read_text()) if Path(recipe).is_file() else None
    return wandb_section(((cfg or {}).get("trainer") or {}).get("logger")) if isinstance(cfg, dict) else None


def markdown_tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The Markdown tables of ``text`` by their section title (``## ...``; numbered when a title repeats): the header
    cells and the body rows' cells, as rendered (``mean ± std`` strings)."""
    found: dict[str, tuple[list[str], list[list[str]]]] = {}
    title, lines = "tables", text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            title = line[3:].strip()
        rule = lines[i + 1] if i + 1 < len(lines) else ""
        is_head = line.startswith("|") and rule.startswith("|") and "-" in rule and set(rule) <= set("|-: ")
        if not is_head or (i > 0 and lines[i - 1].startswith("|")):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        body = []
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            body.append([c.strip() for c in row.strip().strip("|").split("|")])
        key = title if title not in found else f"{title} ({sum(k.startswith(title) for k in found) + 1})"
        found[key] = (cells, body)
    return found


def _slug(title: str) -> str:
    """A W&B key (and media file name) for a section title: lower case, runs of other characters as ``_``."""
    return re.sub(r"[^a-z0-9.=]+", "_", title.lower()).strip("_")


def log_to_wandb(text: str, output: Path, section: dict | None = None) -> bool:
    """Log each table of ``text`` (:func:`markdown_tables`) as ``paper_tables/<title>`` and the whole text as
    ``paper_tables/report`` to one W&B run (:func:`barp.wandb_report.report`: the recipe's W&B logger settings, else
    project ``barp``; its folder under ``output``). Never raises: ``paper_tables.md`` is written."""
    from barp.wandb_report import report, table

    def items() -> dict:
        built: dict = {f"paper_tables/{_slug(title)}": table(columns, rows)
                       for title, (columns, rows) in markdown_tables(text).items()}
        return {**built, "paper_tables/report": text}

    return report("paper_tables", section, output, items, name=f"paper-tables-{output.name}")


if __name__ == "__main__":
    sys.exit(0 if auto_cli(paper_tables) is not None else 1)
