"""Leave one task family out: train BaRP with each family held out as the OOD test, over several seeds, and compare it
on the unseen family with the best fixed model, kNN, linear Thompson sampling and the oracle.

Example::

    python tools/leave_one_out.py --recipe configs/experiments/synthetic.yaml --output runs/lofo_synthetic
    python tools/leave_one_out.py --recipe configs/experiments/llmrouter.yaml --output runs/lofo_llmrouter
    python tools/leave_one_out.py --num_prompts 600 --max_epochs 2 --num_seeds 1 --families '[mbpp, gsm8k]' \\
        --output /tmp/lofo   # quick

For each family F and seed S it runs ``barp fit --config RECIPE --data.init_args.split.ood_tasks [F]
--seed_everything S`` under ``<output>/<F>/seed<S>/`` (checkpoints kept there), then ``barp sweep`` of the best
checkpoint with
``barp, best_fixed, knn, linear_ts, oracle`` (kNN and linear TS trained by the sweep on the same training split),
no bootstrap, w_c = 0, 0.1, ..., 1, into ``<output>/<F>/seed<S>/sweep``. A rerun reuses finished sweeps and finished
fits (``--reuse``), so it resumes an interrupted run, or only re-renders. Results: ``<output>/lofo.md`` (also printed),
``<output>/lofo.json`` and ``<output>/lofo.png``, each written atomically.
"""

from __future__ import annotations

import csv
import datetime
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import yaml

from barp.atomic import atomic_path, atomic_write_text
from barp.errors import ConfigError, run_tool
from barp.sweep.harness import is_complete_sweep

#: Methods every sweep evaluates (``barp sweep --methods``).
METHODS = ["barp", "best_fixed", "knn", "linear_ts", "oracle"]
#: Methods whose OOD score and cost are tabled at ``POINTS``.
POINT_METHODS = ["barp", "best_fixed", "knn", "linear_ts"]
POINTS = [0.0, 0.2, 0.5]
LABELS = {"barp": "BaRP", "best_fixed": "best fixed model", "knn": "kNN (full information)",
          "linear_ts": "linear TS (bandit)", "oracle": "oracle (upper bound)"}
GRID = [round(0.1 * i, 1) for i in range(11)]
FIT_RECORD = "fit.json"


# ------------------------------------------------------------------------------------------------ the recipe
def read_recipe(recipe: str) -> dict:
    """The recipe's YAML as a dict.

    Raises:
        ConfigError: The file is missing or is not a barp experiment config with a ``data`` section.
    """
    path = Path(recipe)
    if not path.is_file():
        raise ConfigError(f"--recipe {recipe!r}: no such file")
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict) or not isinstance(cfg.get("data"), dict):
        raise ConfigError(f"--recipe {recipe!r}: not an experiment config (no data section)")
    return cfg


def holdable_families(cfg: dict, num_prompts: int | None = None) -> list[str]:
    """The task families that can be held out: those of the training rows (``data.source.path``, or the built-in
    benchmark), less any family a fixed split file (``test_path``, ``val_path``) holds, e.g. the llmrouter data's
    ``unclustered`` published test file."""
    from barp.data.datamodule import RoutingDataModule
    from barp.data.parts import merge_options

    overrides: dict = {"split": {"ood_tasks": []}}
    if num_prompts is not None:
        overrides["synthetic"] = {"num_prompts": num_prompts}
    init = merge_options(cfg["data"].get("init_args") or {}, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the published test file's overlap with the training file
        dm = RoutingDataModule(**init)
        table = dm.table
    roles = dm._roles or ["pool"] * len(table)
    pool = {t for t, r in zip(table.tasks, roles) if r == "pool"}
    fixed = {t for t, r in zip(table.tasks, roles) if r != "pool"}
    return [t for t in table.task_names if t in pool - fixed]


def _uses_wandb(cfg: dict) -> bool:
    from barp.wandb_report import is_wandb_section

    return is_wandb_section((cfg.get("trainer") or {}).get("logger"))


# ------------------------------------------------------------------------------------------------ the runs
def fit_and_sweep(recipe: str, cfg: dict, run_dir: Path, family: str, seed: int, num_prompts: int | None,
                  max_epochs: int | None, reuse: bool) -> tuple[Path, bool]:
    """Train BaRP with ``family`` held out (seed ``seed``) under ``run_dir`` and sweep its best checkpoint.

    Returns:
        The sweep folder and whether anything was trained (False: a finished sweep was reused).
    """
    from barp.cli.main import fit_checkpoint, main

    sweep_dir = run_dir / "sweep"
    if reuse and is_complete_sweep(sweep_dir):  # an interrupted sweep is redone, never read
        return sweep_dir, False
    common = ["--config", recipe, "--data.init_args.split.ood_tasks", json.dumps([family])]
    if num_prompts is not None:
        common += ["--data.init_args.synthetic.num_prompts", str(num_prompts)]
    record = run_dir / FIT_RECORD
    ckpt = json.loads(record.read_text())["checkpoint"] if reuse and record.is_file() else ""
    if not (ckpt and Path(ckpt).is_file()):
        fit = [*common, "--seed_everything", str(seed), "--test_after_fit", "false",
               "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir)]
        logger = (cfg.get("trainer") or {}).get("logger")
        if isinstance(logger, dict) and "init_args" in logger:
            fit += ["--trainer.logger.init_args.save_dir", str(run_dir)]
        if max_epochs is not None:
            fit += ["--trainer.max_epochs", str(max_epochs), "--trainer.check_val_every_n_epoch", "1"]
        ckpt = fit_checkpoint(fit, str(run_dir / "final.ckpt"))
        atomic_write_text(record, json.dumps({"family": family, "seed": seed, "checkpoint": str(ckpt)}, indent=2)
                          + "\n")
    sweep = ["sweep", *common, "--ckpt_path", str(ckpt), "--output", str(sweep_dir), "--seed", str(seed),
             "--methods", json.dumps(METHODS), "--w_c", json.dumps(GRID), "--bootstrap", "0", "--progress", "false",
             "--overwrite", "true"]  # reached only to redo this sweep (no --reuse, or an unfinished one)
    if max_epochs is not None:
        sweep += ["--max_epochs", str(max_epochs)]
    main(sweep)
    return sweep_dir, True


def read_sweep(sweep_dir: Path) -> tuple[list[dict], dict]:
    """A sweep's rows (numbers parsed) and summary."""
    with open(sweep_dir / "sweep.csv", newline="") as fh:
        rows = [{**r, "w_c": float(r["w_c"]), "n": int(r["n"]), "score": float(r["score"]),
                 "cost": float(r["cost"]), "reward": float(r["reward"])} for r in csv.DictReader(fh)]
    return rows, json.loads((sweep_dir / "summary.json").read_text())


# ------------------------------------------------------------------------------------------------ aggregation
def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else None, "std": float(v.std()) if len(v) else None,
            "values": [float(x) for x in v]}


def aggregate(runs: dict[str, list[tuple[list[dict], dict]]]) -> dict[str, dict]:
    """Per family, mean ± std over its seeds' sweeps (population std; 0 for one seed).

    Args:
        runs: Family -> one (rows, summary) per seed.

    Returns:
        Family -> ``{"seeds", "n_ood", "ood_aiq": {method: stats}, "id_aiq": {method: stats}, "points": {method:
        {w_c: {"score": stats, "cost": stats}}}, "barp_ge_best_fixed", "barp_ge_linear_ts", "seeds_barp_ge_...}``,
        stats being ``{"mean", "std", "values"}``.
    """
    out: dict[str, dict] = {}
    for family, sweeps in runs.items():
        entry: dict = {"seeds": len(sweeps), "n_ood": sorted({s["meta"]["n"].get("ood") for _, s in sweeps})}
        for split in ("ood", "id"):
            # AIQ; where every model costs the same it is undefined and the sweep's mean reward stands in for it
            key = "aiq" if all(s["splits"].get(split, {}).get("aiq_defined", True) for _, s in sweeps) \
                else "mean_reward"
            entry[f"{split}_measure"] = "AIQ" if key == "aiq" else "mean reward"
            entry[f"{split}_aiq"] = {m: _stats([s["results"][m][split][key] for _, s in sweeps
                                                if split in s["results"].get(m, {})]) for m in METHODS}
        entry["points"] = {m: {str(w): {k: _stats([r[k] for rows, _ in sweeps for r in rows
                                                   if r["method"] == m and r["split"] == "ood" and r["task"] == "all"
                                                   and abs(r["w_c"] - w) < 1e-9]) for k in ("score", "cost")}
                               for w in POINTS} for m in POINT_METHODS}
        ood = entry["ood_aiq"]
        for other in ("best_fixed", "linear_ts"):
            mean_b, mean_o = ood["barp"]["mean"], ood[other]["mean"]
            entry[f"barp_ge_{other}"] = None if mean_b is None or mean_o is None else bool(mean_b >= mean_o)
            entry[f"seeds_barp_ge_{other}"] = int(sum(b >= o for b, o in zip(ood["barp"]["values"],
                                                                             ood[other]["values"])))
        out[family] = entry
    return out


def _pm(stats: dict, digits: int = 3, scale: float = 1.0) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def _cost(stats: dict) -> str:
    return "-" if stats["mean"] is None else f"${stats['mean']:.2e} ± {stats['std']:.1e}"


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def render(results: dict[str, dict], recipe: str, seeds: list[int]) -> str:
    """The Markdown report: the overview (one row per family), the verdict lines, and per family the operating
    points."""
    yes = {True: "yes", False: "no", None: "-"}
    first = next(iter(results.values()), {})
    id_measure, ood_measure = first.get("id_measure", "AIQ"), first.get("ood_measure", "AIQ")
    header = ["held-out family", "OOD prompts", "seeds", f"BaRP ID {id_measure}",
              *(f"OOD {ood_measure} {LABELS[m]}" for m in METHODS),
              "BaRP >= best fixed", "BaRP >= linear TS"]
    body = []
    for family, e in results.items():
        body.append([family, "/".join(str(n) for n in e["n_ood"]), str(e["seeds"]), _pm(e["id_aiq"]["barp"]),
                     *(_pm(e["ood_aiq"][m]) for m in METHODS),
                     f"{yes[e['barp_ge_best_fixed']]} ({e['seeds_barp_ge_best_fixed']}/{e['seeds']} seeds)",
                     f"{yes[e['barp_ge_linear_ts']]} ({e['seeds_barp_ge_linear_ts']}/{e['seeds']} seeds)"])
    if len(results) > 1:
        def over(m: str, split: str = "ood") -> str:
            means = [e[f"{split}_aiq"][m]["mean"] for e in results.values() if e[f"{split}_aiq"][m]["mean"] is not None]
            return f"{np.mean(means):.3f}" if means else "-"
        body.append(["**mean over families**", "", "", over("barp", "id"), *(over(m) for m in METHODS),
                     f"{sum(bool(e['barp_ge_best_fixed']) for e in results.values())}/{len(results)} families",
                     f"{sum(bool(e['barp_ge_linear_ts']) for e in results.values())}/{len(results)} families"])
    parts = [f"# Leave one family out (seeds {seeds}; mean ± std over each family's finished seeds)\n",
             f"Recipe: `{recipe}`. Each row: BaRP trained with that family held out (its prompts are the OOD test), "
             f"swept with w_c = 0, 0.1, ..., 1. AIQ on the held-out family (OOD) per method; BaRP's AIQ on the "
             f"ID test for reference. `best fixed model`: at each w_c the single model with the highest mean "
             f"training reward.\n", _markdown(header, body), "", "## Verdicts (mean over seeds)\n"]
    for family, e in results.items():
        b, f, t = (e["ood_aiq"][m]["mean"] for m in ("barp", "best_fixed", "linear_ts"))
        if b is None:
            parts.append(f"- {family}: no BaRP result")
            continue
        parts.append(f"- {family}: BaRP's OOD AIQ {b:.3f} is {'>=' if e['barp_ge_best_fixed'] else '<'} the best "
                     f"fixed model's {f:.3f} and {'>=' if e['barp_ge_linear_ts'] else '<'} linear TS's {t:.3f}"
                     f" (per seed: {e['seeds_barp_ge_best_fixed']}/{e['seeds']} and "
                     f"{e['seeds_barp_ge_linear_ts']}/{e['seeds']})")
    parts.append("")
    for family, e in results.items():
        head = ["method", "OOD AIQ"] + [f"{k} at w_c={w:g}" for w in POINTS for k in ("score (%)", "cost (USD)")]
        body = [[LABELS[m], _pm(e["ood_aiq"][m])] + [cell for w in POINTS for cell in (
                    _pm(e["points"][m][str(w)]["score"], 1, 100), _cost(e["points"][m][str(w)]["cost"]))]
                for m in POINT_METHODS]
        parts += [f"## Held out: {family} (OOD operating points)\n", _markdown(head, body), ""]
    return "\n".join(parts)


def plot(results: dict[str, dict], path: Path) -> None:
    """``lofo.png``: per family, each method's OOD AIQ (bars, mean over seeds, std as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(results)
    x = np.arange(len(families))
    width = 0.8 / len(METHODS)
    colors = {"barp": "tab:red", "best_fixed": "tab:orange", "knn": "tab:blue", "linear_ts": "tab:green",
              "oracle": "black"}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(families) + 2), 4.2))
    for i, m in enumerate(METHODS):
        means = [results[f]["ood_aiq"][m]["mean"] or 0.0 for f in families]
        stds = [results[f]["ood_aiq"][m]["std"] or 0.0 for f in families]
        ax.bar(x + (i - (len(METHODS) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=LABELS[m],
               color=colors[m], alpha=0.45 if m == "oracle" else 0.9)
    ax.set_xticks(x, families, rotation=20)
    ax.set(ylabel="OOD AIQ (held-out family)", title="Leave one family out: AIQ on the unseen family")
    ax.set_ylim(0, 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def log_to_wandb(cfg: dict, results: dict[str, dict], text: str, figure: Path, output: Path) -> bool:
    """Log the overview table, the report and the plot to one W&B run (:func:`barp.wandb_report.report`: offline
    unless WANDB_MODE=online, the recipe's W&B logger settings if it has one). Never raises: the files are written."""
    from barp.wandb_report import report, table, wandb_section

    columns = ["family", "seeds", "barp_id_aiq", *(f"{m}_ood_aiq" for m in METHODS),
               *(f"{m}_ood_aiq_std" for m in METHODS), "barp_ge_best_fixed", "barp_ge_linear_ts"]
    data = [[f, e["seeds"], e["id_aiq"]["barp"]["mean"], *(e["ood_aiq"][m]["mean"] for m in METHODS),
             *(e["ood_aiq"][m]["std"] for m in METHODS), e["barp_ge_best_fixed"], e["barp_ge_linear_ts"]]
            for f, e in results.items()]
    points = [[f, m, w, e["points"][m][str(w)]["score"]["mean"], e["points"][m][str(w)]["cost"]["mean"]]
              for f, e in results.items() for m in POINT_METHODS for w in POINTS]

    def items() -> dict:
        return {"lofo/overview": table(columns, data),
                "lofo/points": table(["family", "method", "w_c", "score", "cost"], points),
                "lofo/report": text, "lofo/plot": figure}

    section = wandb_section((cfg.get("trainer") or {}).get("logger"))
    return report("leave_one_out", section, output, items, name=f"lofo-{output.name}")


# ------------------------------------------------------------------------------------------------ the command
def leave_one_out(
    recipe: str = "configs/experiments/synthetic.yaml",
    output: str = "runs/lofo",
    families: list[str] | None = None,
    num_seeds: int = 3,
    first_seed: int = 42,
    num_prompts: int | None = None,
    max_epochs: int | None = None,
    reuse: bool = True,
    train: bool = True,
    wandb: bool = False,
) -> dict[str, dict]:
    """Leave one task family out: per family and seed, train BaRP without the family, sweep it against the best fixed
    model, kNN, linear TS and the oracle on the held-out family, and report OOD AIQ (mean ± std over seeds).

    Args:
        recipe: Experiment config, as given to ``barp fit --config`` (e.g. ``configs/experiments/synthetic.yaml``
            or ``configs/experiments/llmrouter.yaml``).
        output: Folder for the runs (``<output>/<family>/seed<S>/``, checkpoints kept) and for ``lofo.md``,
            ``lofo.json`` and ``lofo.png``.
        families: Families to hold out, one at a time (default: every family that can be held out, i.e. those of
            the training rows; a fixed test file's family, like llmrouter's ``unclustered``, cannot).
        num_seeds: Seeds per family (each trains BaRP, kNN and linear TS anew).
        first_seed: Seeds are ``first_seed``, ``first_seed + 1``, ...
        num_prompts: Override the built-in benchmark's size (quick runs; synthetic recipes only).
        max_epochs: Override the training epochs of BaRP and of the comparison methods (quick runs).
        reuse: Reuse finished sweeps (and finished fits) under ``output`` instead of retraining.
        train: False: train nothing, render only the (family, seed) runs already swept under ``output`` (partial
            results of a run still going); the rest are listed as not yet run.
        wandb: Log the tables and the plot to one W&B run (offline unless WANDB_MODE=online); also on when the
            recipe's ``trainer.logger`` is a WandbLogger.

    Returns:
        Per family, the aggregated results (as in ``lofo.json``).
    """
    cfg = read_recipe(recipe)
    if num_seeds < 1:
        raise ConfigError(f"--num_seeds must be >= 1, got {num_seeds}")
    if num_prompts is not None and (cfg["data"].get("init_args") or {}).get("source") is not None:
        raise ConfigError("--num_prompts sets the size of the built-in benchmark; the recipe reads data.source.path")
    holdable = holdable_families(cfg, num_prompts)
    chosen = list(families) if families else holdable
    bad = [f for f in chosen if f not in holdable]
    if bad:
        raise ConfigError(f"--families: {bad} cannot be held out; the data's families that can are {holdable}")
    out = Path(output)
    seeds = [first_seed + i for i in range(num_seeds)]
    runs: dict[str, list] = {f: [] for f in chosen}
    sweeps: dict[str, list[str]] = {f: [] for f in chosen}
    missing: list[str] = []
    for seed in seeds:  # seed-major: an interrupted run has every family at the first seeds
        for family in chosen:
            run_dir = out / family / f"seed{seed}"
            if not train and not is_complete_sweep(run_dir / "sweep"):
                missing.append(f"{family}/seed{seed}")
                continue
            print(f"leave_one_out: {family}, seed {seed}", file=sys.stderr, flush=True)
            sweep_dir, _ = fit_and_sweep(recipe, cfg, run_dir, family, seed, num_prompts, max_epochs, reuse)
            runs[family].append(read_sweep(sweep_dir))
            sweeps[family].append(str(sweep_dir))
    runs = {f: r for f, r in runs.items() if r}
    if not runs:
        raise ConfigError(f"--train false: no finished sweep under {output!r} for {chosen} and seeds {seeds}")
    results = aggregate(runs)
    for family in results:
        results[family]["sweeps"] = sweeps[family]
    text = render(results, recipe, seeds)
    if missing:
        text += f"\nNot yet run (--train false): {', '.join(missing)}.\n"
    meta = {"recipe": recipe, "seeds": seeds, "families": chosen, "methods": METHODS, "points": POINTS,
            "w_c": GRID, "num_prompts": num_prompts, "max_epochs": max_epochs, "missing": missing,
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(out / "lofo.md", text + "\n")
    atomic_write_text(out / "lofo.json", json.dumps({"meta": meta, "families": results}, indent=2) + "\n")
    plot(results, out / "lofo.png")
    print(text, flush=True)
    print(f"wrote {out / 'lofo.md'}, lofo.json, lofo.png", flush=True)
    if wandb or _uses_wandb(cfg):
        log_to_wandb(cfg, results, text, out / "lofo.png", out)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input prints one message and exits with code 2."""
    return run_tool(leave_one_out, argv)


if __name__ == "__main__":
    sys.exit(main())
