"""``pareto.png``: each method's (cost, score) points over the preference sweep, cost on a log axis, one panel per
split. Single models are grey labelled points; routers are curves ordered by w_c; the oracle is dashed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from barp.atomic import atomic_path  # noqa: E402
from barp.sweep.summary import SINGLE_PREFIX  # noqa: E402

if TYPE_CHECKING:  # annotations only (matplotlib >= 3.8)
    from matplotlib.typing import ColorType

# cheapest / most_expensive coincide with a single model's point; the grey points already show them.
_SKIP = {"cheapest", "most_expensive"}


def _save_atomic(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", metadata={"Software": None})


def plot_pareto(rows: list[dict], path: str | Path, summary: dict | None = None) -> Path:
    """Draw the sweep's Pareto plot and write it atomically.

    Args:
        rows: Sweep rows (``task == "all"`` rows are drawn).
        path: Output PNG.
        summary: The sweep summary; when given, legend labels show each method's AIQ on the panel's split.

    Returns:
        The written path.
    """
    path = Path(path)
    splits = list(dict.fromkeys(r["split"] for r in rows))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in _SKIP]
    routers = [m for m in methods if not m.startswith(SINGLE_PREFIX)]
    palette = [plt.get_cmap("tab10")(i) for i in (0, 1, 2, 4, 5, 6, 8, 9)]  # no red (BaRP) or grey (single models)
    others = [r for r in routers if r not in ("barp", "oracle")]
    colors: dict[str, ColorType] = {m: palette[i % len(palette)] for i, m in enumerate(others)}
    colors.update({"barp": "tab:red", "oracle": "black"})
    fig, axes = plt.subplots(1, len(splits), figsize=(7.5 * len(splits), 6.5), squeeze=False)
    for ax, split in zip(axes[0], splits):
        pts = [r for r in rows if r["split"] == split and r["task"] == "all"]
        for m in methods:
            mine = sorted((r for r in pts if r["method"] == m), key=lambda r: r["w_c"])
            xs, ys = [r["cost"] for r in mine], [r["score"] for r in mine]
            if m.startswith(SINGLE_PREFIX):
                ax.scatter(xs[:1], ys[:1], color="grey", marker="s", s=22, zorder=2)
                ax.annotate(m[len(SINGLE_PREFIX):].rsplit("/", 1)[-1][:22], (xs[0], ys[0]), fontsize=7,
                            color="dimgrey", xytext=(3, 3), textcoords="offset points")
                continue
            label = m
            if summary and summary["results"].get(m, {}).get(split, {}).get("aiq") is not None:
                label = f"{m} (AIQ {summary['results'][m][split]['aiq']:.3f})"
            style = {"linestyle": "--" if m == "oracle" else "-", "linewidth": 2.5 if m == "barp" else 1.3,
                     "marker": "o", "markersize": 3.5, "color": colors[m], "zorder": 3 if m == "barp" else 2}
            ax.plot(xs, ys, label=label, **style)
        ax.set_xscale("log")
        ax.set_xlabel("cost per query (USD, log scale)")
        ax.set_ylabel("mean score")
        ax.set_title(f"{split.upper()} test: preference sweep (points ordered by w_c)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    fig.tight_layout()
    try:
        _save_atomic(fig, path)
    finally:
        plt.close(fig)
    return path
