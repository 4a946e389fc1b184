"""Callbacks: checkpoints of the best and the last epoch, the printed results table after ``test`` and the per-prompt
prediction writer."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint

from barp.atomic import atomic_write_text
from barp.data.datamodule import SPLIT_ORDER
from barp.loggers import WandbLogger
from barp.metrics.evaluation import REFERENCES, SPLITS, metric_name
from barp.models.base import RouterModule
from barp.sweep.summary import SINGLE_PREFIX


def _log_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


def results_rows(metrics: dict[str, float], module: RouterModule) -> list[dict[str, Any]]:
    """Rows (split, w_c, policy, score, cost, reward) from logged test metrics."""
    rows = []
    for split in SPLITS:
        for w_c in sorted(module.eval_preferences):
            at = None if w_c == module.eval_w_c else w_c
            for policy in ("BaRP" if type(module).__name__ == "BaRPModule" else type(module).__name__,) + REFERENCES:
                ref = policy if policy in REFERENCES else None
                keys = [metric_name("test", split, m, at, ref) for m in ("score", "cost", "reward")]
                if all(k in metrics for k in keys):
                    rows.append({"split": split, "w_c": w_c, "policy": policy,
                                 **{m: float(metrics[k]) for m, k in zip(("score", "cost", "reward"), keys)}})
    return rows


def format_table(rows: list[dict[str, Any]], metrics: dict[str, float] | None = None) -> str:
    """A compact fixed-width table: per split and preference, the router's score, cost and reward, then each
    reference policy's reward; per split, the router's AIQ over the preferences when it was logged."""
    router = next((r["policy"] for r in rows if r["policy"] not in REFERENCES), "router")
    head = f"{'split':<5} {'w_c':>4}  {router[:10] + ' score':>16} {'cost($)':>10} {'reward':>8} | reward of"
    head += "".join(f" {name:>14}" for name in REFERENCES)
    lines = [head]
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_key.setdefault((r["split"], r["w_c"]), {})[r["policy"]] = r
    last_split = None
    for (split, w_c), policies in by_key.items():
        if last_split is not None and split != last_split:
            lines += _aiq_line(last_split, metrics)
        last_split = split
        own = policies.get(router)
        line = f"{split:<5} {w_c:>4.2g}  "
        own_cells = f"{own['score']:>16.4f} {own['cost']:>10.3e} {own['reward']:>8.4f}" if own else " " * 36
        line += own_cells + " |" + " " * 9
        line += "".join(f" {policies[p]['reward']:>14.4f}" if p in policies else " " * 15 for p in REFERENCES)
        lines.append(line)
    if last_split is not None:
        lines += _aiq_line(last_split, metrics)
    return "\n".join(lines)


def _aiq_line(split: str, metrics: dict[str, float] | None) -> list[str]:
    key, mean = metric_name("test", split, "aiq"), metric_name("test", split, "reward_avg")
    if metrics and key in metrics:
        return [f"{split:<5}  AIQ over these preferences: {metrics[key]:.4f}", ""]
    if metrics and mean in metrics:  # every model costs the same here: no frontier to measure (aiq_defined)
        return [f"{split:<5}  AIQ undefined (every model has the same mean cost); mean reward over these "
                f"preferences: {metrics[mean]:.4f}", ""]
    return [""]


def format_headline(metrics: dict[str, float]) -> str:
    """The primary-preference metrics by their logged names, e.g. ``test/id/reward = 0.3312``."""
    names = [metric_name("test", split, m, policy=policy) for split in SPLITS
             for policy in (None, *REFERENCES) for m in ("score", "cost", "reward")]
    names += [metric_name("test", split, "aiq") for split in SPLITS]
    return "\n".join(f"{n} = {metrics[n]:.6g}" for n in names if n in metrics)


class BestAndLastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is the state after the last finished epoch, always.

    Lightning (2.6) refreshes ``last.ckpt`` only when it also writes a monitored checkpoint, so once validation
    stops improving ``last.ckpt`` stays at the best epoch: a resume would replay every later epoch, and whoever
    takes "last" for the final policy would get an earlier one. Here ``last.ckpt`` is written at the end of every
    training epoch (after that epoch's validation, so it records the best checkpoint so far); the monitored
    ``best-...ckpt`` files are chosen as by ``ModelCheckpoint``. Takes ``ModelCheckpoint``'s arguments.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # (not if saved at this step)
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class ResultsTable(L.Callback):
    """After ``test``: print the router beside the reference policies, write ``test_results.json`` and log the same
    story to every :class:`barp.loggers.WandbLogger` of the trainer (:func:`log_to_wandb`).

    The W&B report hangs here rather than on the logger or the module: this callback is the one place the results
    rows are built (from the logged test metrics, after every rank's are reduced), it runs on every ``barp fit``
    with ``--test_after_fit`` and every ``barp test``, and it already holds what the report needs (the rows, the
    metrics, the module's models and preferences). A logger method would need the rows built a second time (the
    logger sees only metrics, one key at a time) and the module would need to know about W&B.

    Args:
        filename: Base name of the result files in the run's log folder.
    """

    def __init__(self, filename: str = "test_results") -> None:
        self.filename = filename

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = _log_dir(trainer)  # a collective under DDP: every rank must ask
        if not isinstance(pl_module, RouterModule) or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        rows = results_rows(metrics, pl_module)
        if not rows:
            return
        print("\n" + format_table(rows, metrics) + "\n" + format_headline(metrics) + "\n", flush=True)
        atomic_write_text(out / f"{self.filename}.json", json.dumps({"rows": rows, "metrics": metrics}, indent=2))
        log_to_wandb(trainer, pl_module, rows, metrics)


def log_to_wandb(trainer: L.Trainer, module: RouterModule, rows: list[dict[str, Any]],
                 metrics: dict[str, float]) -> None:
    """Log the results table, the Pareto figure and the traffic shares (:func:`barp.wandb_report.log_test_results`)
    to the run of every :class:`barp.loggers.WandbLogger` of ``trainer``; a W&B failure only warns."""
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    from barp.sweep.pareto import plot_pareto
    from barp.wandb_report import log_test_results

    def pareto(result_rows: list[dict[str, Any]], path: Path) -> Path:
        return plot_pareto(pareto_rows(result_rows), path)

    for logger in loggers:
        log_test_results(logger.experiment, rows, metrics, module.model_names, module.eval_preferences, pareto)


def pareto_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results rows in the form :func:`barp.sweep.pareto.plot_pareto` draws: the router as ``barp`` (BaRP) or
    its own name, the cheapest and most expensive single models as labelled single-model points."""
    out = []
    for r in rows:
        method = {"BaRP": "barp", "cheapest": f"{SINGLE_PREFIX}cheapest model",
                  "most_expensive": f"{SINGLE_PREFIX}most expensive model"}.get(r["policy"], r["policy"])
        out.append({**r, "method": method, "task": "all"})
    return out


class PredictionWriter(BasePredictionWriter):
    """Writes, per prompt, the chosen model and its probability at the module's ``predict.w_c`` to a CSV.

    Columns: ``prompt_id, split, task, w_c, model, probability``, and ``propensity`` (the probability that the
    exploring router served that model) when ``predict`` explores (``model.predict.temperature`` /
    ``model.predict.epsilon``).

    Args:
        output: CSV path; default ``<log dir>/predictions.csv`` (``predictions.rank<R>.csv`` per rank under DDP).
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        dm = trainer.datamodule
        table = dm.table
        flat = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        exploring = bool(flat) and "propensity" in flat[0]
        lines = [["prompt_id", "split", "task", "w_c", "model", "probability"] + (["propensity"] if exploring else [])]
        for batch in flat:
            extra = batch["propensity"].tolist() if exploring else [None] * len(batch["row"])
            for row, split, action, prob, prop in zip(batch["row"].tolist(), batch["split"].tolist(),
                                                      batch["action"].tolist(), batch["probability"].tolist(), extra):
                lines.append([table.prompt_ids[row], SPLIT_ORDER[split], table.tasks[row], batch["w_c"],
                              pl_module.model_names[action], f"{prob:.6f}"] + ([f"{prop:.9f}"] if exploring else []))
        path = Path(self.output) if self.output else _log_dir(trainer) / "predictions.csv"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        buf = io.StringIO()
        csv.writer(buf).writerows(lines)
        atomic_write_text(path, buf.getvalue())
