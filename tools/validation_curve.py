"""Validation curves of several ``barp fit`` runs: does a recipe's validation score rise and then stay level?

Each group is a name and the run folders of one setting over several seeds (each holding the ``metrics.csv`` of
barp's CSV logger, validated every epoch: ``--trainer.check_val_every_n_epoch 1``). For each group the tool prints,
per epoch, the mean over seeds of the metric (default ``val/id/selection``: the AIQ, else the mean reward) and its
range, then where the mean peaks and how far it falls after the peak, against the seed spread (the mean over epochs
of the range over seeds after the peak): a curve "holds" when its last value is within one spread of its peak.

Usage::

    python tools/validation_curve.py --group 'recipe=runs/v/base/*' --group 'beta kept=runs/v/beta/*' \\
        --output docs/figures/validation_curve.png [--metric val/id/wc=0/score] [--title ...]
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import sys
from pathlib import Path

import numpy as np


def read_curve(folder: Path, metric: str) -> dict[int, float]:
    """Epoch -> the metric's value in the run folder's ``metrics.csv`` (the newest version folder under it)."""
    files = sorted(folder.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"validation_curve: no metrics.csv under {folder}")
    curve: dict[int, float] = {}
    with files[-1].open() as f:
        for row in csv.DictReader(f):
            value = row.get(metric, "")
            if value not in ("", None):
                curve[int(row["epoch"])] = float(value)
    if not curve:
        raise SystemExit(f"validation_curve: {files[-1]} has no values of {metric!r}")
    return curve


def summarize(curves: list[dict[int, float]]) -> dict:
    """Per epoch the mean and range over the seeds (epochs every seed has), the peak, the fall after it and the
    seed spread after the peak."""
    epochs = sorted(set.intersection(*(set(c) for c in curves)))
    values = np.array([[c[e] for e in epochs] for c in curves])  # (seeds, epochs)
    mean, low, high = values.mean(0), values.min(0), values.max(0)
    peak = int(mean.argmax())
    spread = float((high - low)[peak:].mean())
    fall = float(mean[peak] - mean[-1])
    return {"epochs": epochs, "mean": mean, "low": low, "high": high, "peak_epoch": epochs[peak],
            "peak": float(mean[peak]), "last": float(mean[-1]), "fall": fall, "spread": spread,
            "holds": fall <= spread, "seeds": len(curves)}


def format_table(groups: dict[str, dict], metric: str) -> str:
    lines = [f"{metric}: mean over seeds per epoch [min, max]"]
    for name, s in groups.items():
        lines.append(f"\n{name} ({s['seeds']} seeds)")
        for e, m, lo, hi in zip(s["epochs"], s["mean"], s["low"], s["high"]):
            lines.append(f"  epoch {e:>3}  {m:.4f}  [{lo:.4f}, {hi:.4f}]")
        lines.append(f"  peak {s['peak']:.4f} at epoch {s['peak_epoch']}; last {s['last']:.4f}; fall after the peak "
                     f"{s['fall']:+.4f}; seed spread after the peak {s['spread']:.4f}; "
                     f"{'holds' if s['holds'] else 'FALLS'} (fall <= spread)")
    return "\n".join(lines)


def plot(groups: dict[str, dict], metric: str, output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, s in groups.items():
        line = ax.plot(s["epochs"], s["mean"], label=f"{name} (peak {s['peak']:.3f}, last {s['last']:.3f})")[0]
        ax.fill_between(s["epochs"], s["low"], s["high"], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(output)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", action="append", required=True,
                        help="NAME=GLOB: the run folders of one setting (one per seed)")
    parser.add_argument("--metric", default="val/id/selection")
    parser.add_argument("--output", type=Path, help="Write the figure here (PNG).")
    parser.add_argument("--title", default="validation curves (mean over seeds; band: min to max)")
    args = parser.parse_args(argv)
    groups = {}
    for spec in args.group:
        name, eq, pattern = spec.partition("=")
        folders = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
        if not eq or not folders:
            raise SystemExit(f"validation_curve: --group {spec!r}: expected NAME=GLOB matching run folders")
        groups[name] = summarize([read_curve(f, args.metric) for f in folders])
    print(format_table(groups, args.metric))
    if args.output:
        plot(groups, args.metric, args.output, args.title)
        print(f"\nwrote {args.output}")
    return 0 if all(math.isfinite(s["peak"]) for s in groups.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
