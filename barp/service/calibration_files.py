"""What ``barp calibrate`` writes: the curve as CSV and as a plot, and calibration.json (all atomically); the check of
``--output`` before any work; and the identity of a checkpoint that calibration.json records."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from barp.atomic import atomic_path, atomic_write_text, check_output_folder
from barp.errors import ConfigError
from barp.service.curve import Curve

CURVE_CSV, CURVE_PNG, CALIBRATION_JSON = "curve.csv", "curve.png", "calibration.json"
OUTPUT_FILES = (CALIBRATION_JSON, CURVE_CSV, CURVE_PNG)


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """The identity of a router that calibration.json records (``checkpoint_sha256``): for a checkpoint file the
    SHA-256 of its bytes; for a folder written by ``save_pretrained`` (or a Hub repository's snapshot of one) the
    SHA-256 over its config.json and model.safetensors (:func:`barp.models.hub.router_sha256`; the model card is left
    out). Hex. It follows the file or folder when it is moved or copied, and differs for any other router (another
    training run, even one over the same models)."""
    from barp.models.hub import router_sha256

    return router_sha256(path)


def check_output(output: str, overwrite: bool = False) -> Path:
    """Check ``--output`` before any work: a folder (or a path one can be made at) that is writable and holds no
    earlier calibration unless ``overwrite``. Nothing is created.

    Raises:
        ConfigError: ``output`` is a file, lies under a file, is not writable, or already holds a calibration.
    """
    out = check_output_folder(output, "barp calibrate", ", ".join(OUTPUT_FILES))
    existing = [f for f in OUTPUT_FILES if (out / f).exists()]
    if existing and not overwrite:
        raise ConfigError(f"--output {output!r} already holds a calibration ({', '.join(existing)}): choose another "
                          "folder, or pass --overwrite true to replace it")
    return out


def curve_csv(curve: Curve) -> str:
    """One row per w_c: cost per 1k and score with their interval, then each model's share with its interval."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["w_c", "cost_per_1k", "cost_per_1k_low", "cost_per_1k_high", "score", "score_low", "score_high"]
    for m in curve.models:
        header += [f"share:{m}", f"share_low:{m}", f"share_high:{m}"]
    writer.writerow(header)
    for g, w_c in enumerate(curve.w_c):
        row = [f"{w_c:.6g}", f"{curve.cost_per_1k[g]:.6g}", *(f"{v:.6g}" for v in curve.cost_per_1k_ci[g]),
               f"{curve.score[g]:.6g}", *(f"{v:.6g}" for v in curve.score_ci[g])]
        for j in range(len(curve.models)):
            row += [f"{curve.shares[g, j]:.6g}", *(f"{v:.6g}" for v in curve.shares_ci[g, j])]
        writer.writerow(row)
    return buffer.getvalue()


def plot_curve(curve: Curve, path: Path, chosen: dict[str, Any] | None, cost_target: float | None) -> Path:
    """Cost per 1k and score (with interval bands) and the traffic shares, as functions of w_c."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cost, ax_share) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    ax_cost.plot(curve.w_c, curve.cost_per_1k, color="tab:red", label="cost per 1k queries (USD)")
    ax_cost.fill_between(curve.w_c, curve.cost_per_1k_ci[:, 0], curve.cost_per_1k_ci[:, 1], color="tab:red",
                         alpha=0.2)
    if cost_target is not None:
        ax_cost.axhline(cost_target, color="tab:red", linestyle=":", label="cost target")
    ax_cost.set_ylabel("USD per 1k queries")
    ax_score = ax_cost.twinx()
    ax_score.plot(curve.w_c, curve.score, color="tab:blue", label="score")
    ax_score.fill_between(curve.w_c, curve.score_ci[:, 0], curve.score_ci[:, 1], color="tab:blue", alpha=0.2)
    ax_score.set_ylabel("mean score")
    handles = ax_cost.get_legend_handles_labels()[0] + ax_score.get_legend_handles_labels()[0]
    ax_cost.legend(handles=handles, loc="upper right", fontsize=8)
    ax_share.stackplot(curve.w_c, curve.shares.T, labels=curve.models)
    ax_share.set_ylabel("traffic share")
    ax_share.set_xlabel("w_c (cost weight)")
    ax_share.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    for ax in (ax_cost, ax_share):
        if chosen is not None:
            ax.axvline(chosen["w_c"], color="black", linestyle="--", linewidth=1)
    ax_cost.set_title(f"calibration on {curve.source}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_outputs(folder: Path, curve: Curve, result: dict[str, Any], target) -> None:
    """Write curve.csv, curve.png and calibration.json into ``folder``."""

    atomic_write_text(folder / CURVE_CSV, curve_csv(curve))
    plot_curve(curve, folder / CURVE_PNG, result.get("chosen"), None if target is None else target.cost_per_1k)
    atomic_write_text(folder / CALIBRATION_JSON, json.dumps(result, indent=1, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
