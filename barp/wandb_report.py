"""W&B reports: the one place barp's tables, figures and charts go into a Weights & Biases run.

Every command that has a story to tell logs it here, so a run in W&B shows what the terminal and the run folder show:

- ``barp fit`` / ``barp test`` (:func:`log_test_results`, called by :class:`barp.cli.callbacks.ResultsTable` for
  every :class:`barp.loggers.WandbLogger` of the trainer): the results table (per split and preference: the
  router's and the reference policies' score, cost and reward), the Pareto figure and the per-model traffic shares;
- ``barp sweep``, ``barp ope``, ``barp calibrate``, ``tools/leave_one_out.py`` and ``tools/paper_tables.py``
  (:func:`report`): their tables and figures, to a run of their own opened from a ``trainer.logger`` section.

Runs are opened through :class:`barp.loggers.WandbLogger`: offline (a local folder, upload it with ``wandb sync``)
unless ``WANDB_MODE=online`` and an API key exist. The files a command writes are its result; W&B only mirrors them,
so a W&B failure (no network, a bad option, a full disk) warns and never stops the command (:func:`report`,
:func:`log_test_results` with ``strict=False``).
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from barp.atomic import atomic_path  # noqa: E402
from barp.loggers import WandbLogger  # noqa: E402
from barp.metrics.evaluation import metric_name  # noqa: E402

#: Columns of the results table at test end (one row per split, preference and policy).
RESULT_COLUMNS = ["split", "w_c", "policy", "score", "cost", "reward"]
#: Columns of the traffic table (one row per split, preference and model).
TRAFFIC_COLUMNS = ["split", "w_c", "model", "share"]


def is_wandb_section(section: Any) -> bool:
    """Whether a ``trainer.logger`` config section (a dict, or a list of them) names a W&B logger."""
    return wandb_section(section) is not None


def wandb_section(section: Any) -> dict | None:
    """The first W&B logger (``class_path`` ending in ``WandbLogger``) of a ``trainer.logger`` config section (a
    dict, a jsonargparse Namespace or a list of them); None when there is none."""
    for item in section if isinstance(section, list) else [section]:
        if hasattr(item, "as_dict"):
            item = item.as_dict()
        if isinstance(item, Mapping) and str(item.get("class_path", "")).endswith("WandbLogger"):
            return dict(item)
    return None


def open_logger(section: Mapping | None, save_dir: str | Path, name: str | None = None) -> WandbLogger:
    """A :class:`barp.loggers.WandbLogger` built from a logger section's ``init_args`` (project ``barp`` when it has
    none); ``save_dir`` is used unless the section sets one, ``name`` (when given) names the run."""
    init_args = dict((section or {}).get("init_args") or {}) or {"project": "barp"}
    init_args["save_dir"] = init_args.get("save_dir") or str(save_dir)
    init_args.pop("log_model", None)  # a command's report has no checkpoint to log
    if name:
        init_args["name"] = name
    return WandbLogger(**init_args)


def table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]]):
    """A ``wandb.Table`` of ``rows`` (dicts read by ``columns``, or lists in ``columns``' order)."""
    import wandb

    data = [[_plain(r[c]) for c in columns] if isinstance(r, Mapping) else [_plain(v) for v in r] for r in rows]
    names: list[str | int] = list(columns)  # wandb's annotation: a list of str or int
    return wandb.Table(columns=names, data=data)


def bar(pairs: Sequence[tuple[str, float]], label: str, value: str, title: str):
    """A W&B bar chart (``wandb.plot.bar``) of ``(label, value)`` pairs, e.g. each model's share of the traffic."""
    import wandb

    return wandb.plot.bar(table([label, value], [list(p) for p in pairs]), label, value, title=title)


def _plain(value: Any) -> Any:
    """A table cell W&B stores: numbers as float/int (NaN as None), everything else as given."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def log_items(run, items: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> None:
    """Log W&B objects in one step (``run.log``) and set summary values.

    ``items`` maps a key to a ``wandb`` object, a :class:`pathlib.Path` of a PNG (logged as ``wandb.Image``) or a
    string (logged as preformatted ``wandb.Html``)."""
    import wandb

    logged = {}
    for key, value in items.items():
        if isinstance(value, Path):
            value = wandb.Image(str(value))
        elif isinstance(value, str):
            value = wandb.Html(f"<pre>{_escape(value)}</pre>")
        logged[key] = value
    run.log(logged)
    if summary:
        run.summary.update({k: _plain(v) for k, v in summary.items()})


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def report(what: str, section: Mapping | None, save_dir: str | Path,
           items: Mapping[str, Any] | Callable[[], Mapping[str, Any]], summary: Mapping[str, Any] | None = None,
           name: str | None = None) -> bool:
    """Open a run from a logger section (:func:`open_logger`), log ``items`` and ``summary`` (:func:`log_items`),
    and finish the run. Never raises: the command's files are already written, so a failure only warns.

    Args:
        what: The command, for the warning (``barp sweep``...).
        section: The ``trainer.logger`` section (None: a run in project ``barp``).
        save_dir: Where the offline run folder goes unless the section says (``<save_dir>/wandb/offline-run-*``).
        items: What to log (see :func:`log_items`), or a function building it (called inside the guard, so a
            failure to build a W&B object warns too).
        summary: Summary values (e.g. AIQs).
        name: The run's name.

    Returns:
        Whether the run was logged.
    """
    try:
        built = items() if callable(items) else items
        run = open_logger(section, save_dir, name).experiment
        try:
            log_items(run, built, summary)
        finally:
            run.finish()
        return True
    except Exception as err:  # noqa: BLE001 - W&B must never break a command whose files are written
        warnings.warn(f"{what}: W&B logging skipped ({type(err).__name__}: {err})", stacklevel=2)
        return False


# ------------------------------------------------------------------------------------------------ test results
def traffic_rows(metrics: Mapping[str, float], model_names: Sequence[str], preferences: Sequence[float],
                 stage: str = "test") -> list[dict[str, Any]]:
    """Per split and evaluation preference, each model's share of the router's traffic, from the logged metrics
    (``{stage}/{split}/[wc=<w_c>/]share/<model>``; the first preference is the primary one, logged without
    ``wc=``). Splits or preferences that were not logged are left out."""
    rows = []
    for split in ("id", "ood"):
        for i, w_c in enumerate(preferences):
            at = None if i == 0 else w_c
            keys = [metric_name(stage, split, f"share/{m}", at) for m in model_names]
            if all(k in metrics for k in keys):
                rows += [{"split": split, "w_c": float(w_c), "model": m, "share": float(metrics[k])}
                         for m, k in zip(model_names, keys)]
    return rows


def plot_traffic(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Draw the traffic shares (:func:`traffic_rows`) as stacked bars, one bar per preference and one panel per
    split, and write the PNG atomically."""
    path = Path(path)
    splits = list(dict.fromkeys(r["split"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = [plt.get_cmap("tab20")(i % 20) for i in range(len(models))]
    fig, axes = plt.subplots(1, max(1, len(splits)), figsize=(6.5 * max(1, len(splits)), 4.5), squeeze=False)
    for ax, split in zip(axes[0], splits):
        mine = [r for r in rows if r["split"] == split]
        grid = sorted({r["w_c"] for r in mine})
        share = {(r["w_c"], r["model"]): r["share"] for r in mine}
        bottom = [0.0] * len(grid)
        labels = [f"{w:g}" for w in grid]
        for model, color in zip(models, colors):
            heights = [share.get((w, model), 0.0) for w in grid]
            ax.bar(labels, heights, bottom=bottom, color=color, label=model.rsplit("/", 1)[-1][:28])
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set(xlabel="cost weight w_c", ylabel="share of prompts", ylim=(0, 1.0),
               title=f"{split.upper()} test: traffic per model")
    axes[0][0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


def test_items(rows: Sequence[Mapping[str, Any]], traffic: Sequence[Mapping[str, Any]], pareto: Path | None,
               traffic_png: Path | None, primary_w_c: float, stage: str = "test") -> dict[str, Any]:
    """The W&B objects of a test's story: ``{stage}/results`` (the results table), ``{stage}/pareto`` (the figure),
    ``{stage}/traffic`` (the shares table), ``{stage}/traffic_plot`` (the stacked bars over the preferences) and,
    per split, ``{stage}/traffic/<split>`` (a W&B bar chart of the shares at the primary preference)."""
    items: dict[str, Any] = {f"{stage}/results": table(RESULT_COLUMNS, rows)}
    if pareto is not None:
        items[f"{stage}/pareto"] = pareto
    if traffic:
        items[f"{stage}/traffic"] = table(TRAFFIC_COLUMNS, traffic)
        if traffic_png is not None:
            items[f"{stage}/traffic_plot"] = traffic_png
        for split in dict.fromkeys(r["split"] for r in traffic):
            at = [(r["model"], r["share"]) for r in traffic if r["split"] == split and r["w_c"] == primary_w_c]
            if at:
                items[f"{stage}/traffic/{split}"] = bar(at, "model", "share",
                                                        f"{split.upper()} traffic at w_c={primary_w_c:g}")
    return items


def log_test_results(run, rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, float],
                     model_names: Sequence[str], preferences: Sequence[float], plot_pareto=None,
                     stage: str = "test", strict: bool = False) -> bool:
    """Log a test's results table, Pareto figure and traffic charts (:func:`test_items`) to an open W&B run.

    Args:
        run: The W&B run (a logger's ``experiment``).
        rows: The results rows (``split, w_c, policy, score, cost, reward``; :func:`barp.cli.callbacks.results_rows`).
        metrics: The logged test metrics (the traffic shares are read from them).
        model_names: The router's models.
        preferences: The evaluation preferences, the primary one first.
        plot_pareto: ``plot_pareto(rows, path)`` drawing the Pareto figure of ``rows`` (None: no figure).
        stage: The metrics' stage prefix.
        strict: Raise on a W&B failure (tests); by default it warns and returns False, since the results files
            are already written.

    Returns:
        Whether everything was logged.
    """
    try:
        traffic = traffic_rows(metrics, model_names, preferences, stage)
        with tempfile.TemporaryDirectory(prefix="barp-wandb-") as tmp:
            pareto = plot_pareto(rows, Path(tmp) / "pareto.png") if plot_pareto is not None and rows else None
            traffic_png = plot_traffic(traffic, Path(tmp) / "traffic.png") if traffic else None
            # wandb.Image copies the file into the run folder when it is made: the temporary folder may go after
            log_items(run, test_items(rows, traffic, pareto, traffic_png, float(preferences[0]), stage))
        return True
    except Exception as err:
        if strict:
            raise
        warnings.warn(f"W&B: the test results were not logged ({type(err).__name__}: {err}); they are in the run "
                      "folder's test_results.json", stacklevel=2)
        return False
