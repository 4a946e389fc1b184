"""The preference sweep: every method at every w_c on the ID and OOD test splits, written to ``sweep.csv``,
``summary.json`` and ``pareto.png`` (see :func:`sweep`; the command is ``barp sweep``, :mod:`barp.sweep.cli`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import lightning as L
import numpy as np
import torch
from tqdm.auto import tqdm

from barp.atomic import atomic_write_text, check_output_folder, replace_file_set
from barp.errors import ConfigError
from barp.learning.rl import check_w_c
from barp.metrics.bootstrap import PerPrompt
from barp.metrics.routing import RoutingMetrics
from barp.models.base import RouterModule
from barp.models.checkpoints import (
    check_encoder,
    check_unseen,
    load_checkpoint,
    model_order,
)
from barp.models.compat import load_module
from barp.models.evaluation import evaluate as evaluate_policies
from barp.models.registry import METHOD_CLASSES, method_name, read_method_configs, train_method
from barp.models.trained import module_class as checkpoint_class
from barp.paths import file_sha256
from barp.sweep.contenders import (
    BestFixed,
    Contender,
    ModuleContender,
    Oracle,
    Outcomes,
    RandomChoice,
    SingleModel,
    cheapest_and_most_expensive,
)
from barp.sweep.pareto import plot_pareto
from barp.sweep.summary import SINGLE_PREFIX, summarize
from barp.wandb_report import is_wandb_section, report, table

#: The reference policies a sweep compares with (computed from the full outcomes, not trained; ``sweep/contenders``).
REFERENCE_METHODS = ("single_models", "cheapest", "most_expensive", "best_fixed", "random", "oracle")
#: Every method name of ``--methods``, in report order: BaRP, the references, the comparison methods of the registry.
ALL_METHODS: list[str] = ["barp", *REFERENCE_METHODS, *METHOD_CLASSES]
if TYPE_CHECKING:  # the choices are known at run time only (the registry's methods); jsonargparse reads them
    Method = str
else:
    Method = Literal[tuple(ALL_METHODS)]
COLUMNS = ["method", "w_c", "split", "task", "n", "score", "cost", "reward"]
DEFAULT_GRID = [round(0.1 * i, 1) for i in range(11)]
OUTPUT_FILES = ("sweep.csv", "summary.json", "pareto.png")
MARKER = "summary.json"  # removed first and moved in last when a sweep replaces another: without it, no finished sweep
STAGING_PREFIX = ".sweep-staging-"  # folder inside --output where a sweep's files are written before they move in


@dataclass(frozen=True)
class SweepFolder:
    """What a folder holds of a ``barp sweep`` (see :func:`inspect_sweep_folder`).

    Attributes:
        present: The sweep's result files in the folder (names from ``OUTPUT_FILES``).
        problem: Why those files are not one finished sweep (None: they are, or there are none).
        leftovers: Staging folders of runs stopped while writing (or still writing).
    """

    present: list[str]
    problem: str | None
    leftovers: list[str]

    @property
    def complete(self) -> bool:
        """The folder holds one finished sweep: every file its ``summary.json`` lists, unchanged."""
        return bool(self.present) and self.problem is None




def inspect_sweep_folder(folder: str | os.PathLike) -> SweepFolder:
    """Whether ``folder`` holds a finished sweep, an incomplete one (a run stopped while replacing its files), or none.

    A sweep moves ``summary.json`` in last, after the other files, and lists them there (``files``: name and
    SHA-256), so a set without it, with a listed file missing or changed, is incomplete. A ``summary.json`` from
    before that list counts as finished when all of ``OUTPUT_FILES`` are present. Readers of sweep folders should
    take only a ``complete`` one.
    """
    out = Path(folder)
    present = [f for f in OUTPUT_FILES if (out / f).is_file()]
    leftovers = sorted(p.name for p in out.glob(STAGING_PREFIX + "*")) if out.is_dir() else []
    problem = None
    if present and MARKER not in present:
        problem = f"{', '.join(present)} without {MARKER}, which is written last"
    elif present:
        try:
            listed = json.loads((out / MARKER).read_text(encoding="utf-8")).get("files")
        except (OSError, ValueError, AttributeError):
            listed = {}
            problem = f"{MARKER} unreadable"
        if problem is None and listed is None:  # written before summary.json listed the files
            missing = [f for f in OUTPUT_FILES if f not in present]
            problem = f"{', '.join(missing)} missing" if missing else None
        elif problem is None:
            listed = listed if isinstance(listed, dict) else {}
            missing = [f for f in listed if f not in present]
            changed = [f for f in listed if f in present and not (
                isinstance(listed[f], dict) and listed[f].get("sha256") == file_sha256(out / f))]
            unlisted = [f for f in present if f != MARKER and f not in listed]
            problem = "; ".join([f"{', '.join(missing)} missing"] * bool(missing)
                                + [f"{', '.join(changed)} not the file(s) {MARKER} lists"] * bool(changed)
                                + [f"{', '.join(unlisted)} not listed in {MARKER}"] * bool(unlisted)) or None
    return SweepFolder(present, problem, leftovers)


def is_complete_sweep(folder: str | os.PathLike) -> bool:
    """``folder`` holds one finished sweep (see :func:`inspect_sweep_folder`); what readers of sweep folders check."""
    return inspect_sweep_folder(folder).complete


def check_output(output: str, overwrite: bool = False) -> Path:
    """Check ``--output`` before any work: a folder (or a path one can be made at) that is writable and holds no
    earlier sweep, finished or left incomplete by an interrupted run, unless ``overwrite`` (then one line on stderr
    says what an incomplete one held). Nothing is created.

    Raises:
        ConfigError: ``output`` is a file, lies under a file, is not writable, or already holds a sweep (or the
            staging folder of an interrupted one).
    """
    out = check_output_folder(output, "barp sweep", ", ".join(OUTPUT_FILES))
    state = inspect_sweep_folder(out)
    staged = (f"the staging folder {', '.join(state.leftovers)} of a barp sweep stopped while writing its files (or "
              "still writing)") if state.leftovers else ""
    if state.problem is not None:
        found = f"a sweep left incomplete by an interrupted run ({state.problem})" + (f", and {staged}" * bool(staged))
    elif state.present:
        found = f"a sweep ({', '.join(state.present)})" + (f", and {staged}" * bool(staged))
    else:
        found = staged
    if found and not overwrite:
        raise ConfigError(f"--output {output!r} already holds {found}: choose another folder, or pass "
                          "--overwrite true to replace it")
    if found and (state.problem is not None or state.leftovers):
        print(f"barp sweep: warning: --output {output!r} holds {found}; replacing it (--overwrite true)",
              file=sys.stderr, flush=True)
    return out


class NameMappedContender(ModuleContender):
    """A checkpoint's router over data whose model columns are in another order: arm i is data column ``order[i]``."""

    def __init__(self, module: RouterModule, name: str, order: list[int]) -> None:
        super().__init__(module, name)
        self.order = torch.as_tensor(order, dtype=torch.long)

    def choose(self, emb: torch.Tensor, w: torch.Tensor, outcomes: Outcomes | None = None) -> torch.Tensor:
        return self.order[super().choose(emb, w, outcomes)]


def load_checkpoint_router(ckpt_path: str, module_class: type[RouterModule], datamodule) -> ModuleContender:
    """Read ``ckpt_path`` safely, check it against the set-up data (models, encoder, unseen test prompts) and wrap it.

    Raises:
        ConfigError: An unusable checkpoint, another router class than ``module_class``, other models, another
            encoder setting, or test prompts the checkpoint was trained on.
    """
    where = f"--ckpt_path {ckpt_path!r}"
    ckpt = load_checkpoint(ckpt_path)
    saved = checkpoint_class(ckpt)
    if not issubclass(saved, module_class):
        raise ConfigError(f"{where} holds a {saved.__name__}, but model.class_path names {module_class.__name__}: "
                          "pass the config the checkpoint was trained with")
    order = model_order(list(ckpt["hyper_parameters"]["arms"]["model_names"]), list(datamodule.model_names), where)
    check_encoder(ckpt, dict(datamodule.hparams), where)
    check_unseen(ckpt, datamodule, {"test": datamodule.splits.test, "ood": datamodule.splits.ood}, where)
    module = load_module(saved, ckpt, map_location="cpu")  # load_checkpoint upgraded its hyperparameters
    if not module._trained:
        raise ConfigError(f"{where} holds an untrained router (no training step)")
    name = method_name(saved)
    if order is None:
        return ModuleContender(module, name)
    warnings.warn(f"barp sweep: {where} orders the models {module.model_names}, the data "
                  f"{datamodule.model_names}: mapped by name", stacklevel=2)
    return NameMappedContender(module, name, order)


@dataclass(frozen=True)
class SplitData:
    """One evaluation split: embeddings (N, D), full outcomes (N, K) and task names (N)."""

    name: str
    emb: torch.Tensor
    scores: torch.Tensor
    costs: torch.Tensor
    tasks: list[str]


def split_data(datamodule, split: Literal["id", "ood"]) -> SplitData:
    """The ID test (``id``) or OOD test (``ood``) rows of a set-up datamodule, with full outcomes (evaluation only)."""
    rows = datamodule.splits.test if split == "id" else datamodule.splits.ood
    table = datamodule.table
    return SplitData(split, torch.as_tensor(datamodule.embeddings(rows), dtype=torch.float32),
                     torch.as_tensor(table.scores[rows], dtype=torch.float32),
                     torch.as_tensor(table.costs[rows], dtype=torch.float32), [table.tasks[i] for i in rows])


def evaluate(routers: list[Contender], splits: list[SplitData], grid: list[float], tau: float,
             progress: bool = True, per_prompt: dict[tuple[str, str], PerPrompt] | None = None) -> list[dict]:
    """Route every split at every preference with every method; rows of ``method, w_c, split, task, n, score, cost,
    reward`` (the split mean under ``task = all``, then one row per task).

    Each method's outcomes come from the evaluation loop validation and test use
    (:func:`barp.models.evaluation.evaluate`) and its means from :class:`~barp.metrics.routing.RoutingMetrics`.

    Args:
        routers: The methods; only those with ``needs_outcomes`` get the outcome rows.
        splits: Evaluation splits.
        grid: Cost weights w_c (w = (1 - w_c, w_c)).
        tau: Cost scale of the reward.
        progress: Show a progress bar (stderr).
        per_prompt: If given, filled with each (split, method)'s per-prompt scores and costs over the grid.
    """
    out: list[dict] = []
    with tqdm(total=len(routers) * len(splits) * len(grid), desc="barp sweep: evaluating", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        for sp in splits:
            n = len(sp.emb)
            task_names = sorted(set(sp.tasks))
            task = torch.as_tensor([task_names.index(t) for t in sp.tasks], dtype=torch.long)
            for router in routers:
                chosen_q, chosen_c = [], []
                for point in evaluate_policies([router], sp.emb, grid, tau, sp.scores, sp.costs):
                    w_c, o = point.w_c, point.outcome
                    assert o is not None  # evaluated with every model's scores and costs
                    metrics = RoutingMetrics([str(j) for j in range(sp.scores.shape[1])], task_names)
                    metrics.update(task, o.action, o.score, o.cost, o.reward)
                    means = metrics.means()
                    chosen_q.append(o.score.double().numpy())
                    chosen_c.append(o.cost.double().numpy())
                    for name, prefix, count in [("all", "", n)] + [
                            (t, f"task={t}/", int(metrics.count[i])) for i, t in enumerate(task_names)]:
                        out.append({"method": router.name, "w_c": float(w_c), "split": sp.name, "task": name,
                                    "n": count, **{k: float(means[prefix + k]) for k in ("score", "cost", "reward")}})
                    bar.update()
                if per_prompt is not None:
                    per_prompt[(sp.name, router.name)] = PerPrompt(np.stack(chosen_q), np.stack(chosen_c))
    return out


def build_routers(methods: list[str], checkpoint: ModuleContender | None, datamodule, tau: float, seed: int,
                  max_epochs: int, method_configs: list[str] | None = None, progress: bool = True,
                  grid: list[float] | None = None) -> list[Contender]:
    """The routers to compare, in ``ALL_METHODS`` order, training the comparison methods that need it (with the
    sweep's ``grid`` as their evaluation preferences)."""
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; expected some of {ALL_METHODS}")
    overrides = read_method_configs(method_configs)
    env = datamodule.train_environment()
    cheapest, expensive = cheapest_and_most_expensive(env.mean_cost_per_model())
    routers: list[Contender] = []
    if checkpoint is not None and ("barp" in methods or checkpoint.name in methods):
        routers.append(checkpoint)  # named by its class: ``barp`` for BaRPModule
    to_train = [m for m in ALL_METHODS if m in methods and m in METHOD_CLASSES
                and not (checkpoint is not None and checkpoint.name == m)]
    for m in ALL_METHODS:
        if m not in methods:
            continue
        if m == "single_models":
            routers += [SingleModel(j, SINGLE_PREFIX + name) for j, name in enumerate(datamodule.model_names)]
        elif m == "cheapest":
            routers.append(cheapest)
        elif m == "most_expensive":
            routers.append(expensive)
        elif m == "best_fixed":  # per preference, the best single model on the training rows' full outcomes
            routers.append(BestFixed.from_datamodule(datamodule, tau))
        elif m == "random":
            routers.append(RandomChoice(len(datamodule.model_names), seed))
        elif m == "oracle":
            routers.append(Oracle(tau))
    for m in tqdm(to_train, desc="barp sweep: training baselines", file=sys.stderr, disable=not progress):
        # the sweep's grid is every trained method's evaluation grid (a per-preference router trains one model
        # per point of it: RouterDC's default); a method config's own values win
        args = dict(overrides.get(m) or {})
        if grid:
            args["evaluation"] = {"w_c": grid[0], "extra_w_c": list(grid[1:]), **(args.get("evaluation") or {})}
        module = train_method(m, datamodule, tau, seed, max_epochs, args)
        routers.append(ModuleContender(module, m))
    return routers


def sweep(datamodule, ckpt_path: str | None, output: str, methods: list[Method] | None = None,
          w_c: list[float] | None = None, seed: int = 0, max_epochs: int = 40,
          method_configs: list[str] | None = None, module_class: type[RouterModule] | None = None,
          wandb_logger: dict | None = None, progress: bool = True, bootstrap: int = 1000,
          overwrite: bool = False) -> dict:
    """Evaluate BaRP and the comparison methods over a preference grid on the ID and OOD test splits.

    Args:
        datamodule: The data (same split and embeddings as the checkpoint was trained on).
        ckpt_path: Checkpoint of the router to compare (``barp fit``); its tau is used by every method. None
            (only with ``barp`` left out of ``methods``) uses the datamodule's training-cost percentile as tau.
        output: Folder for ``sweep.csv``, ``summary.json`` and ``pareto.png``, written as one set (see
            :func:`write_outputs`).
        methods: Methods to evaluate (default all); ``single_models`` expands to one ``single:<model>`` per model.
        w_c: Cost weights of the grid (default 0, 0.1, ..., 1).
        seed: Seed for training the comparison methods and for the random router.
        max_epochs: Training epochs of each trainable comparison method. They train with the data's
            ``train_repeats`` and ``batch_size`` multiplied by the checkpoint's ``samples_per_prompt``, so that they
            see each training prompt as often, in as many steps, as the checkpoint did.
        method_configs: YAML files (like ``configs/model/knn.yaml``) whose model init_args override a method's
            defaults.
        module_class: The RouterModule class that wrote the checkpoint (default BaRPModule).
        wandb_logger: A ``trainer.logger`` config section; when it is a WandbLogger, the table and figure are
            logged to a W&B run too (offline unless WANDB_MODE=online).
        progress: Show progress bars.
        bootstrap: Resamples of the test prompts for the 95% intervals of each AIQ and of its difference to the
            checkpoint's (paired bootstrap, seeded by ``seed``); 0 skips them.
        overwrite: Replace a sweep already in ``output``, finished or left incomplete by an interrupted run (by
            default either stops the run before any work, saying which).

    Returns:
        The summary (as written to ``summary.json``).
    """
    from barp.models.barp import BaRPModule

    methods = list(methods or ALL_METHODS)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ConfigError(f"--bootstrap must be an integer >= 0 (0: no intervals), got {bootstrap!r}")
    grid = [check_w_c(x, "--w_c") for x in (w_c if w_c is not None else DEFAULT_GRID)]
    if not grid:
        raise ConfigError("--w_c: the preference grid is empty")
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; expected some of {ALL_METHODS}")
    out = check_output(output, overwrite)
    stale = inspect_sweep_folder(out).leftovers if overwrite else []
    if ckpt_path is not None:
        load_checkpoint(ckpt_path)  # an unusable checkpoint stops the run before the data are embedded
    L.seed_everything(seed, verbose=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    checkpoint = None
    if ckpt_path is not None:
        checkpoint = load_checkpoint_router(ckpt_path, module_class or BaRPModule, datamodule)
        tau = checkpoint.module.tau_value
    elif "barp" in methods:
        raise ConfigError("barp sweep: --ckpt_path is required to evaluate 'barp' (or leave it out of --methods)")
    else:
        tau = datamodule.train_environment().cost_percentile(95.0)
    # Same budget for everyone: a checkpoint that pulled each prompt k times per step (samples_per_prompt) saw k
    # times the data's train_repeats; the comparison methods get those repeats, in as many steps.
    module = checkpoint.module if checkpoint is not None else None
    pulls = module.training_options.samples_per_prompt if isinstance(module, BaRPModule) else 1
    saved = datamodule.batches
    datamodule.batches = replace(saved, train_repeats=saved.train_repeats * pulls,
                                 batch_size=saved.batch_size * pulls)
    try:
        routers = build_routers(methods, checkpoint, datamodule, tau, seed, max_epochs, method_configs, progress,
                                grid)
        budget = {"train_repeats": datamodule.batches.train_repeats, "batch_size": datamodule.batches.batch_size}
    finally:
        datamodule.batches = saved
    splits = [split_data(datamodule, "id")] + ([split_data(datamodule, "ood")] if len(datamodule.splits.ood) else [])
    per_prompt: dict[tuple[str, str], PerPrompt] = {}
    rows = evaluate(routers, splits, grid, tau, progress, per_prompt)
    meta = {"checkpoint": ckpt_path, "tau": tau, "w_c": grid, "seed": seed, "max_epochs": max_epochs,
            "comparison_training": budget, "bootstrap": bootstrap,
            "methods": [r.name for r in routers], "n": {s.name: len(s.emb) for s in splits}}
    reference = checkpoint.name if checkpoint is not None and checkpoint in routers else None
    model_costs = {s.name: s.costs.double().numpy() for s in splits}
    summary = summarize(rows, meta, per_prompt if bootstrap else None, bootstrap, seed, reference, model_costs)
    summary = write_outputs(rows, summary, out, stale)
    if is_wandb_section(wandb_logger):
        log_to_wandb(dict(wandb_logger or {}), rows, summary, out / "pareto.png")
    return summary


def write_outputs(rows: list[dict], summary: dict, output: Path, stale: list[str] | None = None) -> dict:
    """Write ``sweep.csv``, ``pareto.png`` and ``summary.json`` into ``output`` as one set.

    Each is written into a fresh staging folder inside ``output`` first; only when all are written does the set
    replace an earlier sweep's (:func:`barp.atomic.replace_file_set`: ``summary.json``, which lists the other files
    with their SHA-256 under ``files``, is removed first and moved in last). A run stopped before that leaves the
    earlier sweep as it was; one killed during the replacement leaves a set that :func:`inspect_sweep_folder` calls
    incomplete, never earlier files beside new ones.

    Args:
        rows: The sweep's rows.
        summary: Its summary (written with ``files`` added).
        output: The folder.
        stale: Staging folders of interrupted runs found in ``output`` before the sweep; removed once it is written.

    Returns:
        The summary as written to ``summary.json``.
    """
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output, prefix=STAGING_PREFIX))
    try:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
        atomic_write_text(staging / "sweep.csv", buf.getvalue())
        plot_pareto(rows, staging / "pareto.png", summary)
        files = {f: {"sha256": file_sha256(staging / f)} for f in OUTPUT_FILES if f != MARKER}
        written = {**summary, "files": files}
        atomic_write_text(staging / MARKER, json.dumps(written, indent=2) + "\n")
        replace_file_set(staging, output, OUTPUT_FILES, MARKER, earlier=OUTPUT_FILES)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for name in stale or []:  # an interrupted run's staging folder, seen before this sweep began
        if name.startswith(STAGING_PREFIX) and Path(name).name == name:
            shutil.rmtree(output / name, ignore_errors=True)
    return written


def log_to_wandb(logger_config: dict, rows: list[dict], summary: dict, figure: Path) -> bool:
    """Log the sweep table, figure and AIQs to a W&B run (:func:`barp.wandb_report.report`: barp's WandbLogger,
    offline by default, its folder beside the sweep's files unless the section names one). Never raises."""
    aiqs = {f"sweep/{split}/{m}/aiq": e.get("aiq") for m, by_split in summary["results"].items()
            for split, e in by_split.items()}
    return report("barp sweep", logger_config, figure.parent,
                  lambda: {"sweep/table": table(COLUMNS, rows), "sweep/pareto": figure}, aiqs)
