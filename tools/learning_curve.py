"""Learning curves: BaRP and the comparison methods (kNN, the MLP router, linear Thompson sampling) trained on more and
more prompts, over several seeds, tested on a fixed-size test split each.

Example::

    python tools/learning_curve.py --recipe configs/experiments/synthetic.yaml --output runs/learning_curve
    python tools/learning_curve.py --recipe configs/experiments/llmrouter.yaml --output runs/learning_curve_dev
    python tools/learning_curve.py --quick --output /tmp/lc    # tiny sizes, one seed, two epochs

For each size N and seed S it trains BaRP with the recipe (``barp fit``) and sweeps its best checkpoint with the other
methods (``barp sweep``: they are trained there on the same training split, with the same pulls per prompt, and a
paired bootstrap over the test prompts gives each method's AIQ difference to BaRP's), through the same fit-and-sweep
step as ``tools/paper_tables.py``, under ``<output>/n<N>/seed<S>/``. What N is:

- on the built-in benchmark (a recipe without ``data.init_args.source``), ``data.init_args.synthetic.num_prompts``:
  the whole benchmark, of which about 52% are training prompts, 7% validation, 15% ID test and 25% the held-out
  families' OOD test (2,000 prompts: 1,050 training, 300 ID test), so the test split grows with N too;
- on a recipe that reads a file (the development set, ``configs/experiments/llmrouter.yaml``), the number of rows
  kept of its training file ``data.init_args.source.path``: a seeded subsample (seed S; the sizes of one seed are
  nested) written to ``<output>/data/train-n<N>-seed<S>.json``, of which the recipe cuts its validation share; the
  test file (``source.test_path``) stays whole. Sizes above the file's rows run once on the whole file.

The table gives each method's test measure per size: the ID test AIQ, or where AIQ is undefined (every model at one
price) the sweep's mean reward over the w_c grid (as the sweep reports it), and the score at w_c = 0, as mean ± std
over the seeds (population std: 0 for one seed), plus per seed BaRP minus kNN with the sweep's 95% paired bootstrap
interval (only where AIQ is defined). Outputs: ``learning_curve.md`` (printed too), ``learning_curve.csv`` (one row
per size, seed and method), ``learning_curve.json`` (those rows and the means) and ``learning_curve.png``. A rerun
reuses finished fits and sweeps (``--reuse``), so an interrupted run resumes.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import sys
from pathlib import Path

import numpy as np

from barp.atomic import atomic_path, atomic_write_text
from barp.errors import ConfigError, run_tool
from barp.sweep.harness import ALL_METHODS

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling tools whose fit-and-sweep steps are reused
import leave_one_out  # noqa: E402
import paper_tables  # noqa: E402

DEFAULT_SIZES = [500, 1000, 2000, 4000, 8000]
QUICK_SIZES = [200, 400]
QUICK_EPOCHS = 2
DEFAULT_METHODS = ["barp", "knn", "mlp", "linear_ts"]
#: The sweep's preference grid (the AIQ needs all of it; the table reads w_c = 0 from it too).
GRID = [round(0.1 * i, 1) for i in range(11)]
LABELS = {"barp": "BaRP", "knn": "kNN", "mlp": "MLP router", "linear_ts": "linear TS", "linucb": "LinUCB",
          "epsilon_greedy": "epsilon-greedy", "mf": "MF", "graphrouter": "GraphRouter", "routerdc": "RouterDC"}
COLUMNS = ["size", "seed", "method", "n_train", "n_test", "measure", "value", "score_w0", "cost_w0", "ood_value",
           "barp_minus", "barp_minus_ci_low", "barp_minus_ci_high", "sweep"]


# ------------------------------------------------------------------------------------------------ options
def check_options(sizes: list[int], seeds: int, methods: list[str], max_epochs: int | None) -> None:
    """Refuse bad options before any work, naming the option and the value.

    Raises:
        ConfigError: A size that is not a positive integer, a repeated size, fewer than one seed, an unknown or
            untrainable method, no ``barp`` among the methods, or fewer than one epoch.
    """
    if not sizes:
        raise ConfigError("--sizes: no sizes given")
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"--sizes: {n!r} is not a positive number of prompts")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"--sizes: {sizes} repeats a size")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        raise ConfigError(f"--methods: unknown {bad}; expected some of {ALL_METHODS}")
    if "barp" not in methods:
        raise ConfigError(f"--methods {methods}: must include 'barp' (the curve compares the others with it)")
    if max_epochs is not None and max_epochs < 1:
        raise ConfigError(f"--max_epochs must be >= 1, got {max_epochs}")


def source_of(cfg: dict) -> dict | None:
    """The recipe's ``data.init_args.source`` section (None: the built-in benchmark)."""
    return (cfg["data"].get("init_args") or {}).get("source")


def read_records(path: str) -> list:
    """The records of a JSON (a list) or JSON-lines training file, for subsampling.

    Raises:
        ConfigError: The file is missing or is not a list of records.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--recipe: data.init_args.source.path {path!r}: no such file (relative paths are read "
                          "from the current folder, as barp fit does)")
    text = file.read_text(encoding="utf-8")
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        records = None
    if not isinstance(records, list) or not records:
        raise ConfigError(f"--recipe: data.init_args.source.path {path!r}: subsampling needs a JSON list or JSON "
                          "lines of records")
    return records


def subsample(records: list, size: int, seed: int, folder: Path) -> Path:
    """``size`` of ``records`` drawn by ``seed`` (the first ``size`` of one seeded permutation: the sizes of one seed
    are nested), in their file order, written to ``<folder>/train-n<size>-seed<seed>.json``."""
    keep = np.sort(np.random.default_rng(seed).permutation(len(records))[:size])
    path = folder / f"train-n{size}-seed{seed}.json"
    atomic_write_text(path, json.dumps([records[i] for i in keep], ensure_ascii=False) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ one run
def train_rows(sweep_summary: dict) -> int | None:
    """The number of training rows of the checkpoint the sweep read (its data record)."""
    from barp.models.checkpoints import RECORD_KEY, load_checkpoint

    ckpt = sweep_summary["meta"].get("checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        return None
    rows = (load_checkpoint(ckpt).get(RECORD_KEY) or {}).get("train_rows")
    return None if rows is None else len(rows)


def results_of(rows: list[dict], summary: dict, methods: list[str]) -> list[dict]:
    """Per method, the ID test measure (AIQ, or the mean reward where AIQ is undefined), the score and cost at
    w_c = 0, the OOD measure, and BaRP minus the method with the sweep's paired bootstrap interval."""
    split = summary["splits"]["id"]
    measure = "aiq" if split.get("aiq_defined", True) else "mean_reward"
    ood = summary["splits"].get("ood")
    ood_measure = None if ood is None else ("aiq" if ood.get("aiq_defined", True) else "mean_reward")
    results = summary["results"]
    barp = results["barp"]["id"][measure]
    out = []
    for m in methods:
        e = results.get(m, {}).get("id")
        if e is None:
            continue
        at0 = next(r for r in rows if r["method"] == m and r["split"] == "id" and r["task"] == "all"
                   and abs(r["w_c"]) < 1e-9)
        ci = e.get("aiq_diff_ci") if m != "barp" else None  # the sweep's: this method minus BaRP
        out.append({"method": m, "measure": measure, "value": e[measure], "score_w0": at0["score"],
                    "cost_w0": at0["cost"],
                    "ood_value": results[m]["ood"][ood_measure] if ood_measure and "ood" in results[m] else None,
                    "barp_minus": None if m == "barp" else barp - e[measure],
                    "barp_minus_ci_low": None if ci is None else -ci[1],
                    "barp_minus_ci_high": None if ci is None else -ci[0]})
    return out


# ------------------------------------------------------------------------------------------------ aggregation
def _stats(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else None, "std": float(v.std()) if len(v) else None,
            "values": [float(x) for x in v]}


def aggregate(runs: list[dict], sizes: list[int], methods: list[str]) -> list[dict]:
    """Per size: the training and test rows, and per method the mean ± std over seeds of the measure and of the
    w_c = 0 score, and BaRP minus the method per seed (with its interval)."""
    out = []
    for size in sizes:
        at = [r for r in runs if r["size"] == size]
        if not at:
            continue
        entry = {"size": size, "seeds": sorted({r["seed"] for r in at}),
                 "n_train": sorted({r["n_train"] for r in at if r["n_train"] is not None}),
                 "n_test": sorted({r["n_test"] for r in at}), "measure": at[0]["measure"], "methods": {}}
        for m in methods:
            mine = sorted((r for r in at if r["method"] == m), key=lambda r: r["seed"])
            if mine:
                entry["methods"][m] = {
                    "value": _stats([r["value"] for r in mine]), "score_w0": _stats([r["score_w0"] for r in mine]),
                    "barp_minus": [{"seed": r["seed"], "diff": r["barp_minus"],
                                    "ci": None if r["barp_minus_ci_low"] is None
                                    else [r["barp_minus_ci_low"], r["barp_minus_ci_high"]]} for r in mine]}
        out.append(entry)
    return out


# ------------------------------------------------------------------------------------------------ outputs
def _pm(stats: dict, digits: int = 3, scale: float = 1.0) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def _diffs(entries: list[dict]) -> str:
    cells = []
    for d in entries:
        if d["diff"] is None:
            continue
        ci = "" if d["ci"] is None else f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
        cells.append(f"{d['diff']:+.3f}{ci}")
    return "; ".join(cells) or "-"


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def render(curve: list[dict], recipe: str, seeds: list[int], methods: list[str], what: str) -> str:
    """The Markdown report: the measure per size and method, BaRP minus kNN per seed, and the w_c = 0 score."""
    measure = curve[0]["measure"] if curve else "aiq"
    label = "ID test AIQ" if measure == "aiq" else "ID test mean reward over the w_c grid (AIQ undefined: one price)"
    others = [m for m in methods if m != "barp"]
    knn = "knn" if "knn" in others else (others[0] if others else None)
    head = ["size", "train rows", "test rows", *(LABELS.get(m, m) for m in methods)]
    if knn:
        head.append(f"BaRP − {LABELS.get(knn, knn)} per seed [95% paired bootstrap]")
    body, scores = [], []
    for e in curve:
        sizes = [str(e["size"]), "/".join(map(str, e["n_train"])) or "-", "/".join(map(str, e["n_test"]))]
        row = [*sizes, *(_pm(e["methods"][m]["value"]) if m in e["methods"] else "-" for m in methods)]
        if knn:
            row.append(_diffs(e["methods"][knn]["barp_minus"]) if knn in e["methods"] else "-")
        body.append(row)
        scores.append([*sizes, *(_pm(e["methods"][m]["score_w0"], 1, 100) if m in e["methods"] else "-"
                                 for m in methods)])
    return "\n".join([
        f"# Learning curves (seeds {seeds}; mean ± std over seeds, population std)\n",
        f"Recipe: `{recipe}`; size: {what}. Each run: BaRP fitted with the recipe, then `barp sweep` of its best "
        f"checkpoint with {', '.join(others) or 'no other method'} trained on the same training split, "
        f"w_c = 0, 0.1, ..., 1.\n",
        f"## {label}\n", _markdown(head, body), "",
        "## Score at w_c = 0 (%), ID test\n", _markdown(head[:len(head) - bool(knn)], scores), ""])


def write_csv(runs: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS} for r in runs)
    atomic_write_text(path, buf.getvalue())


def plot(curve: list[dict], methods: list[str], path: Path, title: str) -> None:
    """``learning_curve.png``: the measure and the w_c = 0 score against the training rows (log scale), mean over
    seeds with the std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    measure = curve[0]["measure"] if curve else "aiq"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (("value", "ID test AIQ" if measure == "aiq" else "ID test mean reward", 1.0),
              ("score_w0", "ID test score at w_c = 0 (%)", 100.0))
    for ax, (key, ylabel, scale) in zip(axes, panels):
        for m in methods:
            pts = [(float(np.mean(e["n_train"])) if e["n_train"] else float(e["size"]), e["methods"][m][key])
                   for e in curve if m in e["methods"] and e["methods"][m][key]["mean"] is not None]
            if not pts:
                continue
            x = [p[0] for p in pts]
            ax.errorbar(x, [p[1]["mean"] * scale for p in pts], yerr=[p[1]["std"] * scale for p in pts],
                        marker="o", capsize=3, label=LABELS.get(m, m), linewidth=2.2 if m == "barp" else 1.4)
        ax.set_xscale("log")
        ticks = sorted({float(np.mean(e["n_train"])) if e["n_train"] else float(e["size"]) for e in curve})
        ax.set_xticks(ticks, [f"{t:.0f}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="training rows", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ the command
def learning_curve(
    recipe: str = "configs/experiments/synthetic.yaml",
    output: str = "runs/learning_curve",
    sizes: list[int] | None = None,
    seeds: int | None = None,
    first_seed: int = 42,
    methods: list[str] | None = None,
    max_epochs: int | None = None,
    quick: bool = False,
    reuse: bool = True,
    barp_args: list[str] | None = None,
) -> list[dict]:
    """Learning curves of BaRP and the comparison methods: per training-set size and seed, fit BaRP and sweep it with
    the other methods; write the table (Markdown, CSV, JSON) and the figure.

    Args:
        recipe: Experiment config, as given to ``barp fit --config``: the built-in benchmark
            (``configs/experiments/synthetic.yaml``) or one reading a training file (the development set,
            ``configs/experiments/llmrouter.yaml``).
        output: Folder for the runs (``<output>/n<N>/seed<S>/``, checkpoints kept), the subsampled training files
            (``<output>/data/``) and ``learning_curve.{md,csv,json,png}``.
        sizes: Sizes N (default 500, 1000, 2000, 4000, 8000; with ``--quick`` 200, 400): the built-in benchmark's
            number of prompts, or the number of the training file's rows kept.
        seeds: Number of seeds (default 3; with ``--quick`` 1); each trains every method anew (and, on a training
            file, draws its own subsample).
        first_seed: Seeds are ``first_seed``, ``first_seed + 1``, ...
        methods: Methods to compare (``barp sweep --methods``; must include ``barp``; default barp, knn, mlp,
            linear_ts).
        max_epochs: Training epochs of BaRP and of the comparison methods (default the recipe's; with ``--quick``
            2).
        quick: Tiny sizes, one seed, two epochs: a smoke run of seconds to a minute with a small encoder.
        reuse: Reuse finished fits and sweeps under ``output`` instead of retraining.
        barp_args: More ``barp`` command-line options given to every fit and sweep after the recipe's, e.g.
            ``'[--data.init_args.encoder.name, PATH]'``.

    Returns:
        The aggregated curve (as in ``learning_curve.json``'s ``curve``).
    """
    cfg = leave_one_out.read_recipe(recipe)
    sizes = list(sizes if sizes is not None else (QUICK_SIZES if quick else DEFAULT_SIZES))
    seeds = seeds if seeds is not None else (1 if quick else 3)
    methods = list(methods or DEFAULT_METHODS)
    max_epochs = max_epochs if max_epochs is not None else (QUICK_EPOCHS if quick else None)
    check_options(sizes, seeds, methods, max_epochs)
    out = Path(output)
    source = source_of(cfg)
    records = read_records(str(source.get("path"))) if source is not None else None
    if records is not None:
        capped = sorted({min(n, len(records)) for n in sizes})
        if capped != sorted(sizes):
            print(f"learning_curve: the training file has {len(records)} rows: sizes {sorted(sizes)} run as "
                  f"{capped}", file=sys.stderr, flush=True)
        sizes = capped
        what = (f"rows kept of the training file `{source.get('path')}` (seeded subsample; the recipe's validation "
                f"share is cut from them; the test file `{source.get('test_path')}` whole)")
    else:
        what = "the built-in benchmark's num_prompts (train, validation, ID and OOD test all scale with it)"
    head = str((((cfg.get("model") or {}).get("init_args") or {}).get("policy") or {}).get("head") or "mlp")
    seed_list = [first_seed + i for i in range(seeds)]
    runs: list[dict] = []
    for size in sizes:
        for seed in seed_list:
            print(f"learning_curve: size {size}, seed {seed}", file=sys.stderr, flush=True)
            extra = list(barp_args or [])
            if records is not None:
                path = subsample(records, size, seed, out / "data")
                extra = ["--data.init_args.source.path", str(path.resolve()), *extra]
            sweep_dir = paper_tables._fit_and_sweep(recipe, out / f"n{size}", seed, head, methods, GRID,
                                                    size if records is None else None, max_epochs, reuse, extra)
            rows, summary = leave_one_out.read_sweep(sweep_dir)
            common = {"size": size, "seed": seed, "n_train": train_rows(summary), "n_test": summary["meta"]["n"]["id"],
                      "sweep": str(sweep_dir)}
            runs += [{**common, **r} for r in results_of(rows, summary, methods)]
    curve = aggregate(runs, sizes, methods)
    text = render(curve, recipe, seed_list, methods, what)
    meta = {"recipe": recipe, "sizes": sizes, "size_is": what, "seeds": seed_list, "methods": methods,
            "max_epochs": max_epochs, "quick": quick, "barp_args": list(barp_args or []), "w_c": GRID,
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(out / "learning_curve.md", text + "\n")
    write_csv(runs, out / "learning_curve.csv")
    atomic_write_text(out / "learning_curve.json",
                      json.dumps({"meta": meta, "runs": runs, "curve": curve}, indent=2) + "\n")
    plot(curve, methods, out / "learning_curve.png", f"{Path(recipe).name}: learning curves (seeds {seed_list})")
    print(text, flush=True)
    print(f"wrote {out / 'learning_curve.md'}, learning_curve.csv, learning_curve.json, learning_curve.png",
          flush=True)
    return curve


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input prints one message and exits with code 2."""
    return run_tool(learning_curve, argv)


if __name__ == "__main__":
    sys.exit(main())
