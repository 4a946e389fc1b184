"""``barp ope``: estimate a trained router's score, cost and reward from a served-request log, without serving it.

    barp ope --log traffic.csv --ckpt_path best.ckpt --output runs/ope --w_c [0.2,0.5,0.8]

Reads and validates the log (:mod:`barp.data.sources.logs`), loads the router and its frozen encoder from the
checkpoint, embeds the log's prompts (through barp's embedding cache), and estimates the router's greedy policy (or
its softmax at ``--temperature``) at each preference with IPS, self-normalised IPS and doubly robust
(:mod:`barp.ope.estimators`). Writes ``ope.csv`` atomically into ``--output`` and prints a table; overlap problems
and impossible estimates (a mean no policy can have, marked ``!`` in the table) are printed as warnings and kept in
the CSV's ``warning`` column.

Before any work it refuses an ``--output`` that is a file, cannot be written, already holds an ``ope.csv`` (unless
``--overwrite true``) or would replace an input; it also refuses a log holding training prompts of the checkpoint,
and estimates that are not finite.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from jsonargparse import ArgumentParser

from barp.atomic import check_output_folder
from barp.commands import function_parser
from barp.errors import ConfigError, DataValidationError, exit_on_user_error
from barp.ope.estimators import ESTIMATORS, Estimate, check_options, estimate_policy, is_impossible

if TYPE_CHECKING:  # annotations only
    from barp.models.protocols import Router

OUTPUT_FILE = "ope.csv"


#: Log rows routed at a time by :func:`target_probabilities` (bounds the network's activations on a large log).
ROUTE_ROWS = 65_536


def target_probabilities(
    module: Router, embeddings: np.ndarray, w_c: float, temperature: float | None = None
) -> np.ndarray:
    """The router's policy at cost weight ``w_c`` on each embedded prompt, shape (n, K).

    Args:
        module: A router with ``route(emb, w) -> scores`` (e.g. BaRP's logits).
        embeddings: Prompt embeddings, shape (n, D).
        w_c: Cost weight (w = (1 - w_c, w_c)).
        temperature: None: greedy (one-hot on the argmax, how barp evaluates and serves by default); a number > 0:
            ``softmax(route / temperature)``.
    """
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"--temperature must be > 0 (or null for the greedy policy), got {temperature!r}")
    parts = []
    for start in range(0, max(len(embeddings), 1), ROUTE_ROWS):  # a log of millions: the network's activations
        chunk = np.asarray(embeddings[start:start + ROUTE_ROWS], dtype=np.float32)  # for one slice at a time
        emb = torch.as_tensor(chunk, device=module.device)
        w = torch.tensor([1.0 - w_c, w_c], dtype=torch.float32, device=module.device).expand(len(emb), 2)
        with torch.inference_mode():
            scores = module.route(emb, w).double().cpu()
            if temperature is None:
                parts.append(torch.nn.functional.one_hot(module.greedy(emb, w).cpu(), scores.shape[1]).double())
            else:
                parts.append(torch.softmax(scores / temperature, dim=-1))
    return torch.cat(parts).numpy()


def embed_prompts(router, prompts: Sequence[str], cache_dir: str | None = None) -> np.ndarray:
    """Embed ``prompts`` with the router's frozen encoder through barp's embedding cache (each text once).

    Args:
        router: A :class:`~barp.models.trained.TrainedRouter`.
        prompts: The texts.
        cache_dir: barp's cache folder (default ``$BARP_CACHE`` or ``~/.cache/barp``), as for training.
    """
    from barp.data.embedding_cache import EmbeddingCache, default_cache_dir
    from barp.encoders import encoder_identity

    encoder = router.encoder
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    dtype = str(next(encoder.model.parameters()).dtype).removeprefix("torch.")
    cache = EmbeddingCache(root / "embeddings", encoder_identity(encoder.name), encoder.max_length,
                           encoder.truncation_side, dtype)
    vectors, _ = cache.get_or_compute(list(prompts), lambda texts: encoder.encode(texts, progress=True))
    return vectors


def check_output(output: str, overwrite: bool = False, inputs: dict[str, str] | None = None) -> Path:
    """Check ``--output`` before any work: a folder (or a path one can be made at) that is writable, holds no
    earlier ``ope.csv`` unless ``overwrite``, and whose ``ope.csv`` is none of the ``inputs``. Nothing is created.

    Args:
        output: The folder ``ope.csv`` goes into.
        overwrite: Replace an ``ope.csv`` already there.
        inputs: Option -> file read by the run (``--log``, ``--ckpt_path``).

    Raises:
        ConfigError: ``output`` is a file, lies under a file, is not writable, already holds a result, or its
            ``ope.csv`` is one of the inputs.
    """
    from barp.data.sources.files import check_not_input

    out = check_output_folder(output, "barp ope", OUTPUT_FILE)
    check_not_input(out / OUTPUT_FILE, inputs or {}, option=f"--output {output!r}")
    if (out / OUTPUT_FILE).exists() and not overwrite:
        raise ConfigError(f"--output {output!r} already holds an ope result ({OUTPUT_FILE}): choose another folder, "
                          "or pass --overwrite true to replace it")
    return out


def check_unseen_prompts(ckpt: dict, logged, ckpt_path: str) -> None:
    """Refuse a log whose prompts (prompt id and text, as ``barp test`` matches them) trained the checkpoint.

    Prompts the checkpoint's own evaluation splits also held at fit time (a published test file sharing rows with
    the training file) are allowed, as in ``barp test``.

    Raises:
        ConfigError: How many of the log's distinct prompts were training prompts of the checkpoint.
    """
    from barp.models.checkpoints import row_fingerprints, trained_on

    pairs = sorted(set(zip(logged.prompt_ids, logged.prompts)))
    seen = trained_on(ckpt, row_fingerprints([pid for pid, _ in pairs], [text for _, text in pairs]).numpy())
    if seen is not None and seen.any():
        raise ConfigError(
            f"--log {logged.source!r}: {int(seen.sum())} of its {len(pairs)} prompts were training prompts of the "
            f"checkpoint {ckpt_path!r} (same prompt id and text), so the estimates would not measure unseen "
            "prompts; evaluate on a log of prompts the router was not trained on")


def check_finite(results: Sequence[Estimate], source: str) -> None:
    """Refuse estimates or intervals that are not finite numbers (nothing is then written or printed)."""
    bad = [r for r in results if not all(math.isfinite(v) for v in (r.estimate, r.ci_low, r.ci_high))]
    if not bad:
        return
    r = bad[0]
    if r.weight_mean == 0:
        why = "no logged request took the target's choices (every importance weight is 0)"
        if r.estimator == "snips":
            why += "; leave snips out (--estimators [ips,dr]) or evaluate on a log with exploration"
    elif math.isfinite(r.estimate):
        why = ("no bootstrap resample held a request that took the target's choices (too few such rows); raise "
               "--bootstrap or log more requests")
    else:
        why = "the log's values overflow the arithmetic"
    more = f" ({len(bad) - 1} more)" if len(bad) > 1 else ""
    raise DataValidationError(
        f"{source}: the {r.estimator} {r.quantity} estimate at w_c={r.w_c:g} is not a finite number (estimate "
        f"{r.estimate!r}, interval [{r.ci_low!r}, {r.ci_high!r}]){more}: {why}; nothing was written")


def ope(
    log: str,
    ckpt_path: str,
    output: str,
    w_c: list[float] | None = None,
    estimators: list[Literal["ips", "snips", "dr"]] | None = None,
    temperature: float | None = None,
    clip: float | None = None,
    bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    folds: int = 2,
    min_ess: float = 50.0,
    tau: float | None = None,
    cache_dir: str | None = None,
    overwrite: bool = False,
    revision: str | None = None,
) -> list[Estimate]:
    """Off-policy evaluation of a trained router on a served-request log.

    Args:
        log: The log file (CSV, TSV, JSON lines or parquet; columns prompt, model, propensity, score, cost and
            optionally w_c, timestamp, prompt_id, decision_id, note; see docs/off_policy.md). A row repeating an
            earlier one, and prompts the checkpoint was trained on, are refused.
        ckpt_path: The router to evaluate (alias ``--router``): a checkpoint written by ``barp fit``, a folder
            written by ``save_pretrained``, or a Hugging Face Hub repository id (owner/name; pin ``--revision``).
        output: Folder to write ``ope.csv`` into (created if needed; the file is written atomically). Checked
            before any work: not a file, writable, and its ``ope.csv`` none of the inputs.
        w_c: Evaluation cost weights (default [0.2, 0.5, 0.8]).
        estimators: Any of ips, snips, dr (default: all three).
        temperature: Evaluate the router's softmax at this temperature instead of its greedy choice (null: greedy).
        clip: Clip importance weights at this value (null: no clipping; clipping trades variance for bias).
        bootstrap: Bootstrap resamples of the log rows for the intervals.
        level: Coverage of the intervals.
        seed: Seed of the cross-fitting folds and of the bootstrap.
        folds: Cross-fitting folds of the doubly robust reward model (>= 2).
        min_ess: Warn when the effective sample size is below this.
        tau: Cost scale of the reward in USD (null: the checkpoint's tau).
        cache_dir: barp's cache folder for the prompt embeddings (default $BARP_CACHE or ~/.cache/barp).
        overwrite: Replace an ``ope.csv`` already in ``output`` (by default an existing result stops the run before
            any work).
        revision: The Hub revision (commit sha, tag or branch) of a repository id in ``--ckpt_path``.

    Returns:
        The estimates, also written to ``<output>/ope.csv``.
    """
    from barp.data.sources.logs import read_log
    from barp.learning.rl import check_w_c
    from barp.models.hub import load_router
    from barp.models.trained import TrainedRouter

    w_c = [0.2, 0.5, 0.8] if w_c is None else list(w_c)
    estimators = list(ESTIMATORS) if estimators is None else list(estimators)
    check_options(estimators, clip, bootstrap, level, folds)
    w_c = [check_w_c(pref, "--w_c") for pref in w_c]
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"--temperature must be > 0 (or null for the greedy policy), got {temperature!r}")
    if tau is not None and not tau > 0:
        raise ConfigError(f"--tau must be > 0 (USD), got {tau!r}")
    check_output(output, overwrite, {"--log": log, "--ckpt_path": ckpt_path})
    ckpt, _ = load_router(ckpt_path, "--ckpt_path", revision)
    router = TrainedRouter.from_loaded(ckpt, f"--ckpt_path {ckpt_path!r}")
    logged = read_log(log, models=router.models)
    check_unseen_prompts(ckpt, logged, ckpt_path)
    del ckpt
    tau = router.module.tau_value if tau is None else tau
    features = embed_prompts(router, logged.prompts, cache_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        results = estimate_policy(
            logged, lambda pref: target_probabilities(router.module, features, pref, temperature), w_c, tau,
            features, estimators=estimators, clip=clip, bootstrap=bootstrap, level=level, seed=seed, folds=folds,
            min_ess=min_ess,
        )
    for item in caught:
        print(f"barp ope: warning: {item.message}", file=sys.stderr)
    check_finite(results, logged.source)
    write_csv(results, Path(output).expanduser() / OUTPUT_FILE)
    print(describe_log(logged, ckpt_path, tau, temperature) + "\n" + format_table(results, level), flush=True)
    return results


def write_csv(results: Sequence[Estimate], path: Path) -> Path:
    """Write the estimates as CSV (one row per w_c, estimator and quantity) through a temporary file and a rename."""
    from barp.atomic import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(Estimate)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(r) for r in results)
    return atomic_write_text(path, buffer.getvalue())


def describe_log(logged, ckpt_path: str, tau: float, temperature: float | None) -> str:
    """One header line: the log, whether it is simulated, the router and the policy evaluated."""
    kind = f"SIMULATED ({'; '.join(logged.notes)})" if logged.simulated else "logged traffic"
    policy = "greedy" if temperature is None else f"softmax at temperature {temperature:g}"
    return (f"log {logged.source}: {logged.num_rows} requests, {kind}\n"
            f"router {ckpt_path} ({policy} policy), tau = {tau:.4g} USD")


def format_table(results: Sequence[Estimate], level: float = 0.95) -> str:
    """The estimates as a text table: one line per (w_c, estimator), each quantity with its interval; an impossible
    estimate (:func:`~barp.ope.estimators.is_impossible`) is marked ``!`` and its line says so."""
    by_key: dict[tuple[float, str], dict[str, Estimate]] = {}
    for r in results:
        by_key.setdefault((r.w_c, r.estimator), {})[r.quantity] = r
    pct = f"{level:.0%}"
    lines = [f"{'w_c':>4} {'estimator':<9} {'score [' + pct + ' CI]':>26} {'cost($) [' + pct + ' CI]':>34} "
             f"{'reward [' + pct + ' CI]':>27} {'ESS':>7}  warning"]
    fmt = {"score": "{:.4f}", "cost": "{:.3e}", "reward": "{:.4f}"}
    for (pref, name), row in by_key.items():
        cells = []
        for q, width in (("score", 26), ("cost", 34), ("reward", 27)):
            e = row.get(q)
            f = fmt[q]
            mark = "!" if e is not None and is_impossible(e) else ""
            text = "" if e is None else f"{f.format(e.estimate)}{mark} [{f.format(e.ci_low)}, {f.format(e.ci_high)}]"
            cells.append(f"{text:>{width}}")
        any_row = next(iter(row.values()))
        if any(is_impossible(e) for e in row.values()):
            flag = "IMPOSSIBLE estimate (marked !, see above)"
        else:
            flag = "yes (see above)" if any_row.warning else ""
        lines.append(f"{pref:>4g} {name:<9} {' '.join(cells)} {any_row.ess:>7.1f}  {flag}")
    return "\n".join(lines)


def ope_parser() -> ArgumentParser:
    """The ``barp ope`` argument parser (help text comes from :func:`ope`'s docstring; ``--ckpt_path`` with its alias
    ``--router``), with ``--wandb``."""
    from barp.models.hub import add_router_argument

    parser = function_parser(ope, "barp ope", "Estimate a trained router's mean score, cost and reward at each "
                             "preference from a log of served requests (IPS, self-normalised IPS, doubly robust), "
                             "with bootstrap intervals and effective sample sizes; write ope.csv into --output.",
                             skip={"ckpt_path"})
    parser.add_argument("--wandb", type=bool, default=False,
                        help="Also log the estimates table to a W&B run (project barp, folder <output>/wandb; offline "
                             "unless WANDB_MODE=online and an API key is set; a W&B failure only warns).")
    return add_router_argument(parser)


def run_ope(cfg) -> list[Estimate]:
    """Run ``barp ope`` from a config parsed by :func:`ope_parser`; returns the estimates written to ``ope.csv``
    (and logged to W&B with ``--wandb true``: :func:`log_to_wandb`)."""
    kwargs = {k: v for k, v in cfg.as_dict().items() if k != "__path__"}
    wandb = bool(kwargs.pop("wandb", False))
    with exit_on_user_error("barp ope"):
        results = ope(**kwargs)
    if wandb:
        log_to_wandb(results, Path(kwargs["output"]).expanduser())
    return results


def log_to_wandb(results: Sequence[Estimate], output: Path) -> bool:
    """Log the estimates (``ope/estimates``: the rows of ``ope.csv``) and each point estimate as a summary value
    (``ope/<estimator>/wc=<w_c>/<quantity>``) to a W&B run in ``output`` (:func:`barp.wandb_report.report`)."""
    from barp.wandb_report import report, table

    columns = [f.name for f in fields(Estimate)]
    summary = {f"ope/{r.estimator}/wc={r.w_c:g}/{r.quantity}": r.estimate for r in results}
    return report("barp ope", None, output, lambda: {"ope/estimates": table(columns, [asdict(r) for r in results])},
                  summary, name=f"ope-{output.name}")


def run_ope_cli(argv: list[str]) -> list[Estimate]:
    """Run ``barp ope`` with command-line arguments ``argv`` (without the ``ope`` word).

    Args:
        argv: Arguments, e.g. ``["--log", "traffic.csv", "--ckpt_path", "best.ckpt", "--output", "runs/ope"]``.

    Returns:
        The estimates written to ``ope.csv``. A bad input (file, checkpoint, option) prints one error line and
        exits with code 2.
    """
    return run_ope(ope_parser().parse_args(argv))
