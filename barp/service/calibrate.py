"""``barp calibrate``: turn an operator's target (dollars per 1k queries, a model's traffic share, a share of the best
model's score) into the cost weight w_c that meets it.

    barp calibrate --ckpt_path best.ckpt --output runs/calibration --target.cost_per_1k 0.5 --check_split test

The greedy router is run over a grid of w_c on the checkpoint's validation split (rebuilt from the data settings
saved in the checkpoint; or on a served-request log with ``--log``), giving the curve of expected cost per 1k
queries, score and traffic share per model (:mod:`barp.service.curve`), with bootstrap intervals. The chosen w_c is
the smallest that meets every constraint (the most weight on quality the budget allows), or, for a score target, the
largest (the most weight on cost that keeps the score). Picking the highest estimated score instead would chase the
noise of a flat stretch of the curve and leave budget unspent. Writes ``curve.csv``, ``curve.png`` and
``calibration.json`` (the target, the chosen w_c, its estimates, the whole curve, and the router's identity, the
SHA-256 of its checkpoint file or of its folder's config.json and model.safetensors, which ``barp serve
--calibration`` compares with ``--ckpt_path``) atomically into ``--output``. ``--ckpt_path`` (alias ``--router``)
takes a checkpoint, a folder written by ``save_pretrained`` or a Hub repository id (with ``--revision``).
An ``--output`` that already holds any of these files is refused before any work unless ``--overwrite true``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from barp.errors import ConfigError
from barp.service.calibration_files import check_output, checkpoint_sha256, write_outputs
from barp.service.curve import Curve, curve_from_log, curve_from_table, greedy_choices


@dataclass(frozen=True)
class Target:
    """What the operator asks for; every field given is a constraint (at least one is needed).

    Args:
        cost_per_1k: Spend at most this many USD per 1000 queries.
        max_share: At most this share of traffic per named model, e.g. ``{"gpt-4-1106-preview": 0.2}``.
        score_fraction: Score at least this fraction of the best single model's mean score (then the cheapest such
            w_c is chosen).
    """

    cost_per_1k: float | None = None
    max_share: dict[str, float] | None = None
    score_fraction: float | None = None

    def check(self, models: list[str], where: str = "target") -> Target:
        """Validate against the router's models; returns self. Raises one ConfigError naming the field and value."""
        if self.cost_per_1k is None and not self.max_share and self.score_fraction is None:
            raise ConfigError(f"{where}: give at least one of cost_per_1k, max_share, score_fraction")
        if self.cost_per_1k is not None and not _finite(self.cost_per_1k, lambda v: v > 0):
            raise ConfigError(f"{where}.cost_per_1k must be a number > 0 (USD per 1000 queries), got "
                              f"{self.cost_per_1k!r}")
        if self.score_fraction is not None and not _finite(self.score_fraction, lambda v: 0 < v <= 1.5):
            raise ConfigError(f"{where}.score_fraction must be a number in (0, 1.5], got {self.score_fraction!r}")
        for model, share in (self.max_share or {}).items():
            if model not in models:
                raise ConfigError(f"{where}.max_share: unknown model {model!r}; the router's models are {models}")
            if not _finite(share, lambda v: 0 <= v <= 1):
                raise ConfigError(f"{where}.max_share[{model!r}] must be a share in [0, 1], got {share!r}")
        return self

    def describe(self) -> str:
        """The target in words, for tables and messages."""
        parts = []
        if self.cost_per_1k is not None:
            parts.append(f"cost <= ${self.cost_per_1k:g} per 1k queries")
        parts += [f"share of {m} <= {s:.0%}" for m, s in (self.max_share or {}).items()]
        if self.score_fraction is not None:
            parts.append(f"score >= {self.score_fraction:.0%} of the best single model's")
        return ", ".join(parts)


def _finite(value: Any, ok) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and ok(value)


def choose(curve: Curve, target: Target, criterion: Literal["estimate", "interval"] = "estimate") -> int:
    """Index of the grid point that meets ``target``: the smallest feasible w_c, or the largest feasible one when the
    target has a score fraction.

    Args:
        curve: The calibration curve.
        target: The constraints.
        criterion: ``estimate``: constraints on the point estimates; ``interval``: on the conservative end of the
            bootstrap interval (upper for cost and shares, lower for score).

    Raises:
        ConfigError: No grid point meets the target (the message gives what the curve can reach).
    """
    target.check(curve.models)
    side = criterion == "interval"
    cost = curve.cost_per_1k_ci[:, 1] if side else curve.cost_per_1k
    ok = np.ones(len(curve.w_c), dtype=bool)
    if target.cost_per_1k is not None:
        ok &= cost <= target.cost_per_1k
    for model, share in (target.max_share or {}).items():
        j = curve.models.index(model)
        ok &= (curve.shares_ci[:, j, 1] if side else curve.shares[:, j]) <= share + 1e-12
    if target.score_fraction is not None:
        ok &= (curve.score_ci[:, 0] if side else curve.score) >= target.score_fraction * curve.best_single_score
    if not ok.any():
        reach = (f"on {curve.source} the cost per 1k queries ranges over "
                 f"[{np.nanmin(cost):.4g}, {np.nanmax(cost):.4g}] USD and the score up to {np.nanmax(curve.score):.4f} "
                 f"(best single model {curve.best_single_model}: {curve.best_single_score:.4f})")
        raise ConfigError(f"target ({target.describe()}): no w_c in [{curve.w_c[0]:g}, {curve.w_c[-1]:g}] meets it "
                          f"by its {'interval' if side else 'estimate'}; {reach}")
    idx = np.flatnonzero(ok)
    return int(idx[-1] if target.score_fraction is not None else idx[0])


def checkpoint_split(ckpt_path: str, split: Literal["val", "test", "ood"], router,
                     ckpt: dict[str, Any] | None = None) -> tuple[np.ndarray, ...]:
    """Embeddings, scores and costs (columns in the router's model order) of a split of the checkpoint's data.

    The data module is rebuilt from the settings saved in the checkpoint (relative paths are read from the current
    folder), its prompts are embedded through barp's embedding cache, and the split is checked to hold no training
    prompt of the checkpoint.

    Args:
        ckpt_path: The router as ``--ckpt_path`` names it: a checkpoint file, a router folder or a Hub repository id.
        split: The split.
        router: The :class:`~barp.models.trained.TrainedRouter`.
        ckpt: The checkpoint dictionary, when already read (:func:`barp.models.hub.load_router`).

    Raises:
        ConfigError: The router records no data settings (a folder saved from a module without them), the split is
            empty or holds training prompts.
    """
    from barp.models.checkpoints import check_unseen, datamodule_from_checkpoint, model_order
    from barp.models.hub import load_router

    ckpt = load_router(ckpt_path)[0] if ckpt is None else ckpt
    where = f"--ckpt_path {ckpt_path!r}"
    if not ckpt.get("datamodule_hyper_parameters"):
        raise ConfigError(f"{where} records no data settings, so its {split} split cannot be rebuilt: calibrate on a "
                          "served-request log (--log)")
    dm = datamodule_from_checkpoint(ckpt, "validate")
    rows = getattr(dm.splits, split)
    if not len(rows):
        raise ConfigError(f"{where}: the checkpoint's data has no {split} split")
    check_unseen(ckpt, dm, {split: rows}, where)
    order = model_order(router.models, dm.model_names, where)
    cols = np.arange(len(router.models)) if order is None else np.asarray(order)
    table = dm.table
    return dm.embeddings(rows), table.scores[rows][:, cols], table.costs[rows][:, cols], table.source


def calibrate(
    ckpt_path: str,
    output: str,
    target: Target | None = None,
    log: str | None = None,
    split: Literal["val", "test", "ood"] = "val",
    check_split: Literal["val", "test", "ood"] | None = None,
    grid: int = 101,
    criterion: Literal["estimate", "interval"] = "estimate",
    bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    cache_dir: str | None = None,
    overwrite: bool = False,
    revision: str | None = None,
) -> dict[str, Any]:
    """Compute the w_c curve of a trained router and the w_c that meets a target.

    Args:
        ckpt_path: The router (alias ``--router``): a checkpoint written by ``barp fit``, a folder written by
            ``save_pretrained``, or a Hugging Face Hub repository id (owner/name; pin ``--revision``).
        output: Folder for curve.csv, curve.png and calibration.json (created; each file written atomically). It is
            checked before any work: a file, or a folder that cannot be made or written, is refused, and so is a
            folder that already holds any of these files unless ``overwrite``.
        target: The constraints (``--target.cost_per_1k``, ``--target.max_share``, ``--target.score_fraction``);
            none: only the curve is written.
        log: Calibrate on this served-request log (self-normalised IPS) instead of the checkpoint's data.
        split: Split of the checkpoint's data to calibrate on (without ``--log``).
        check_split: Also measure the chosen w_c on this split (e.g. test), with its interval.
        grid: Number of w_c values, evenly spaced on [0, 1] (>= 2).
        criterion: Meet the target by the estimate, or by the conservative end of the interval.
        bootstrap: Bootstrap resamples of the calibration prompts.
        level: Coverage of the intervals.
        seed: Bootstrap seed.
        cache_dir: barp's cache folder for prompt embeddings of a log (default $BARP_CACHE or ~/.cache/barp).
        overwrite: Replace an earlier calibration in ``output`` (by default one stops the run before any work).
        revision: The Hub revision (commit sha, tag or branch) of a repository id in ``--ckpt_path``.

    Returns:
        The content of calibration.json.
    """
    from barp.models.hub import load_router
    from barp.models.trained import TrainedRouter

    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ConfigError(f"--grid must be an integer >= 2, got {grid!r}")
    if not 0 < level < 1:
        raise ConfigError(f"--level must be in (0, 1), got {level!r}")
    check_output(output, overwrite)
    ckpt, local = load_router(ckpt_path, "--ckpt_path", revision)
    router = TrainedRouter.from_loaded(ckpt, f"--ckpt_path {ckpt_path!r}")
    identity = checkpoint_sha256(local)
    if target is not None:
        target.check(router.models, "--target")
    w_grid = np.linspace(0.0, 1.0, grid)
    boot = dict(resamples=bootstrap, level=level, seed=seed)
    if log is not None:
        from barp.data.sources.logs import read_log
        from barp.ope.cli import embed_prompts

        logged = read_log(log, models=router.models)
        choices = greedy_choices(router.module, embed_prompts(router, logged.prompts, cache_dir), w_grid)
        curve = curve_from_log(w_grid, choices, logged.actions, logged.propensity, logged.score, logged.cost,
                               router.models, f"log {logged.source} ({logged.num_rows} rows)", **boot)
    else:
        emb, scores, costs, source = checkpoint_split(ckpt_path, split, router, ckpt)
        curve = curve_from_table(w_grid, greedy_choices(router.module, emb, w_grid), scores, costs, router.models,
                                 f"the {split} split of {source} ({len(emb)} prompts)", **boot)
    result: dict[str, Any] = {"checkpoint": str(ckpt_path), "checkpoint_sha256": identity, "source": curve.source,
                              "criterion": criterion, "target": None if target is None else asdict(target),
                              "chosen": None, "curve": curve.to_dict()}
    if target is not None:
        result["chosen"] = curve.at(choose(curve, target, criterion))
        if check_split is not None:
            emb, scores, costs, source = checkpoint_split(ckpt_path, check_split, router, ckpt)
            w_c = np.array([result["chosen"]["w_c"]])
            check = curve_from_table(w_c, greedy_choices(router.module, emb, w_c), scores, costs, router.models,
                                     f"the {check_split} split of {source} ({len(emb)} prompts)", **boot)
            result["check"] = {"source": check.source, **check.at(0)}
            if target.cost_per_1k is not None:  # met: the target is not below the whole interval
                result["check"]["cost_target_met"] = bool(check.cost_per_1k_ci[0, 0] <= target.cost_per_1k)
    write_outputs(Path(output), curve, result, target)
    print(summary(result, target), flush=True)
    return result


def summary(result: dict[str, Any], target: Target | None) -> str:
    """What ``barp calibrate`` prints: the source, the target, the chosen w_c and the check."""
    pct = f"{result['curve']['level']:.0%}"
    lines = [f"calibrated {result['checkpoint']} on {result['source']}"]
    if target is None or result["chosen"] is None:
        return "\n".join(lines + ["no --target: curve written only"])

    def fmt(name: str, part: dict[str, Any]) -> str:
        c, s = part["cost_per_1k"], part["score"]
        return (f"{name}: cost ${c[0]:.4g} per 1k [{pct} CI {c[1]:.4g}, {c[2]:.4g}], score {s[0]:.4f} "
                f"[{s[1]:.4f}, {s[2]:.4f}]")

    chosen = result["chosen"]
    lines += [f"target: {target.describe()} -> w_c = {chosen['w_c']:.4g}", fmt("calibration", chosen)]
    top = sorted(chosen["shares"].items(), key=lambda kv: -kv[1][0])[:3]
    lines.append("top shares: " + ", ".join(f"{m} {v[0]:.1%}" for m, v in top))
    if "check" in result:
        line = fmt(f"check on {result['check']['source']}", result["check"])
        if "cost_target_met" in result["check"]:
            line += f"; cost target met within the interval: {result['check']['cost_target_met']}"
        lines.append(line)
    return "\n".join(lines)


def load_calibration(path: str | Path) -> tuple[dict[str, Any], Curve]:
    """Read a calibration.json written by ``barp calibrate``: the whole record and its curve."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return data, Curve.from_dict(data["curve"])
    except FileNotFoundError:
        raise ConfigError(f"--calibration {str(path)!r} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--calibration {str(path)!r} is not a calibration.json written by barp calibrate "
                          f"({type(err).__name__}: {err})") from None


def check_calibration_checkpoint(record: dict[str, Any], calibration: str, ckpt_path: str,
                                 local: str | Path | None = None) -> None:
    """Refuse a calibration.json made for another router than ``ckpt_path``.

    calibration.json records ``checkpoint_sha256``, the identity of the calibrated router
    (:func:`~barp.service.calibration_files.checkpoint_sha256`: the SHA-256 of a checkpoint file, or of a router
    folder's config.json and model.safetensors): a moved or copied checkpoint or folder still matches, any other
    one (another router over the same models, another training run) does not. ``local`` is the file or folder
    ``ckpt_path`` resolved to (a Hub repository's snapshot folder; default ``ckpt_path`` itself). A calibration.json
    from before this field was recorded cannot be checked: it is still read, with a UserWarning saying to re-run
    ``barp calibrate``.

    Raises:
        ConfigError: The identities differ (names both checkpoints), or the recorded one is not a SHA-256.
    """
    calibration, ckpt_path = str(calibration), str(ckpt_path)
    recorded, named = record.get("checkpoint_sha256"), record.get("checkpoint")
    if recorded is None:
        warnings.warn(f"--calibration {calibration!r} records no checkpoint identity (written by an older barp "
                      f"calibrate, for {named!r}), so it cannot be checked against --ckpt_path {ckpt_path!r}; "
                      "re-run barp calibrate on this checkpoint to record it", UserWarning, stacklevel=2)
        return
    if not isinstance(recorded, str) or not re.fullmatch(r"[0-9a-f]{64}", recorded):
        raise ConfigError(f"--calibration {calibration!r} is not a calibration.json written by barp calibrate "
                          f"(checkpoint_sha256 {recorded!r} is not a SHA-256)")
    actual = checkpoint_sha256(ckpt_path if local is None else local)
    if actual != recorded:
        raise ConfigError(f"--calibration {calibration!r} was made for checkpoint {named!r} (sha256 "
                          f"{recorded[:12]}...), not for --ckpt_path {ckpt_path!r} (sha256 {actual[:12]}...): its "
                          "w_c and curve do not hold for this router; run barp calibrate on this checkpoint")
