"""``barp serve`` and ``barp calibrate``: the command lines of the routing service and of the calibration.

    barp calibrate --ckpt_path best.ckpt --output runs/calibration --target.cost_per_1k 0.5
    barp serve --ckpt_path best.ckpt --calibration runs/calibration/calibration.json --port 8000
    barp serve --router routers/synthetic-barp            # a folder written by save_pretrained
    barp serve --router owner/synthetic-barp --revision 3f2c...   # a Hugging Face Hub repository, pinned

``--router`` is ``--ckpt_path``'s alias: both take a checkpoint file, a router folder or a Hub repository id
(:func:`barp.models.hub.load_router`).
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from barp.commands import function_parser
from barp.data.table import MAX_COST_USD
from barp.errors import ConfigError, exit_on_user_error
from barp.service.calibrate import Target, calibrate

#: The default bound on one feedback's cost is this many times the checkpoint's tau (the 95th percentile of the
#: training costs per request), at least MIN_COST_BOUND_USD and at most MAX_COST_USD.
COST_BOUND_TAUS = 1000.0
#: The default cost bound is never below this (USD per request).
MIN_COST_BOUND_USD = 1.0


def default_max_cost(tau: float) -> float:
    """The default bound on one feedback's cost: ``min(MAX_COST_USD, max(1 USD, 1000 * tau))``."""
    if not (isinstance(tau, float) and math.isfinite(tau) and tau > 0):
        return MAX_COST_USD
    return min(MAX_COST_USD, max(MIN_COST_BOUND_USD, COST_BOUND_TAUS * tau))


def build_service(
    ckpt_path: str,
    log_dir: str = "runs/serve",
    w_c: float | None = None,
    calibration: str | None = None,
    target: Target | None = None,
    budget_per_1k: float | None = None,
    budget_step: float = 0.01,
    fsync: bool = True,
    budget_max_move: float | None = 0.1,
    budget_reset: bool = False,
    max_cost_usd: float | None = None,
    decision_ttl_s: float | None = 86400.0,
    compact_after: int = 10_000,
    revision: str | None = None,
):
    """Load the router and its encoder once and open (or resume) the request log; see :func:`serve` for the
    arguments."""
    from barp.models.hub import load_router
    from barp.models.trained import TrainedRouter
    from barp.service.budget import BudgetController
    from barp.service.calibrate import check_calibration_checkpoint, choose, load_calibration
    from barp.service.feedback_log import FeedbackLog
    from barp.service.routing import RoutingService

    if w_c is not None and (isinstance(w_c, bool) or not math.isfinite(w_c) or not 0 <= w_c <= 1):
        raise ConfigError(f"--w_c must be a number in [0, 1], got {w_c!r}")
    if w_c is not None and target is not None:
        raise ConfigError("give at most one of --w_c and --target")
    for name, value in (("max_cost_usd", max_cost_usd), ("decision_ttl_s", decision_ttl_s),
                        ("budget_max_move", budget_max_move)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ConfigError(f"--{name} must be a number > 0 (or null), got {value!r}")
    if max_cost_usd is not None and max_cost_usd > MAX_COST_USD:
        raise ConfigError(f"--max_cost_usd must be at most MAX_COST_USD = {MAX_COST_USD:g}, got {max_cost_usd!r}")
    if isinstance(compact_after, bool) or not isinstance(compact_after, int) or compact_after < 1:
        raise ConfigError(f"--compact_after must be an integer >= 1, got {compact_after!r}")
    ckpt, local = load_router(ckpt_path, "--ckpt_path", revision)
    router = TrainedRouter.from_loaded(ckpt, f"--ckpt_path {ckpt_path!r}")
    del ckpt
    curve, default = None, 0.5 if w_c is None else float(w_c)
    if calibration is not None:
        record, curve = load_calibration(calibration)
        check_calibration_checkpoint(record, calibration, ckpt_path, local)
        if list(curve.models) != router.models:
            raise ConfigError(f"--calibration: the curve's models {curve.models} are not the checkpoint's "
                              f"{router.models}: calibrate this checkpoint")
        if w_c is None and record.get("chosen"):
            default = float(record["chosen"]["w_c"])
    if target is not None:
        if curve is None:
            raise ConfigError("--target needs --calibration (a calibration.json from barp calibrate), which maps "
                              "targets to w_c")
        default = float(curve.w_c[choose(curve, target.check(router.models, "--target"))])
    controller = None
    if budget_per_1k is not None:
        controller = BudgetController(budget_per_1k, w_c=default, step=budget_step, max_move=budget_max_move)
    if max_cost_usd is None:
        max_cost_usd = default_max_cost(router.module.tau_value)
    # last: every check above leaves the log as it was
    log = FeedbackLog(log_dir, sync=fsync, decision_ttl_s=decision_ttl_s, compact_after=compact_after)
    service = RoutingService(router, log, w_c=default, curve=curve, controller=controller, max_cost_usd=max_cost_usd)
    if budget_reset and controller is not None:
        service.reset_budget()
    router.encoder.encode(["warm-up"])  # load the encoder now: /health means ready, and no request pays for it
    return service


def serve(
    ckpt_path: str,
    log_dir: str = "runs/serve",
    host: str = "127.0.0.1",
    port: int = 8000,
    w_c: float | None = None,
    calibration: str | None = None,
    target: Target | None = None,
    budget_per_1k: float | None = None,
    budget_step: float = 0.01,
    max_batch: int = 256,
    max_prompt_chars: int = 100_000,
    fsync: bool = True,
    api_key_file: str | None = None,
    feedback_key_file: str | None = None,
    allow_unauthenticated: bool = False,
    max_body_bytes: int = 4 * 2**20,
    max_request_chars: int = 400_000,
    max_prompt_id_chars: int = 256,
    request_timeout_s: float = 30.0,
    max_cost_usd: float | None = None,
    budget_max_move: float | None = 0.1,
    budget_reset: bool = False,
    decision_ttl_s: float | None = 86400.0,
    compact_after: int = 10_000,
    docs: bool = False,
    revision: str | None = None,
) -> None:
    """Serve a trained router over HTTP: POST /route, POST /feedback, POST /budget/reset, GET /health, GET /models.

    Args:
        ckpt_path: The router (alias ``--router``): a checkpoint written by ``barp fit``, a folder written by
            ``save_pretrained``, or a Hugging Face Hub repository id (owner/name; pin ``--revision``).
        log_dir: Folder of the request log (``log.jsonl``, readable by ``barp ope``) and the pending decisions
            (``decisions.jsonl``); an existing log is checked (every row complete, costs in [0, MAX_COST_USD]) and
            resumed.
        host: Interface to listen on.
        port: TCP port.
        w_c: Default cost weight for requests that give no preference (default 0.5, or the calibrated one).
        calibration: A calibration.json from ``barp calibrate`` of this checkpoint (one made for another
            checkpoint is refused): its chosen w_c becomes the default, and requests may give targets
            (``{"target": {"cost_per_1k": 0.5}}``) resolved on its curve.
        target: Serve by default at the w_c that meets this target on the calibration curve (needs
            ``--calibration``), e.g. ``--target.cost_per_1k 0.5``.
        budget_per_1k: Run the online budget controller: requests without a preference are served at a w_c that
            moves with their feedback costs so that spend tracks this many USD per 1000 queries.
        budget_step: The controller's step (change of w_c per request per unit of relative overspend).
        max_batch: Most prompts per /route request.
        max_prompt_chars: Most characters per prompt.
        fsync: fsync the log after every write (turn off only to benchmark without disk syncs).
        api_key_file: File of API keys, one per line (optionally ``name:key``; ``#`` comments); with
            ``BARP_API_KEY``, the keys every endpoint but /health asks for (``Authorization: Bearer <key>`` or
            ``X-API-Key: <key>``). Logged rows record a key's name (or ``sha256:`` and 8 hex characters), never it.
        feedback_key_file: File of grader keys (same format; or ``BARP_FEEDBACK_KEY``): when set, only these keys may
            post /feedback and /budget/reset, and they may not route.
        allow_unauthenticated: Serve on a non-loopback --host without any key, on purpose: anyone who reaches the
            port may route and write the feedback the next router is trained on.
        max_body_bytes: Most bytes of a request body, checked before it is read (Content-Length, or while a chunked
            body streams in): 413.
        max_request_chars: Most characters of all prompts of one /route request: 413.
        max_prompt_id_chars: Most characters per entry of ``prompt_ids``: 413.
        request_timeout_s: Seconds one /route request may take; after it the answer is 503 and nothing is recorded.
        max_cost_usd: Most USD one /feedback may report (422 above). Default: 1000 x the checkpoint's tau (the 95th
            percentile of its training costs per request), at least 1 and at most MAX_COST_USD = 1000.
        budget_max_move: Most one feedback row may move the budget controller's w_c (null: unclipped).
        budget_reset: Restart the budget controller from the default w_c, ignoring the rows logged so far
            (recorded in the log folder, so later restarts replay only newer rows); also POST /budget/reset.
        decision_ttl_s: Seconds a routed decision waits for its feedback; later it expires (archived in
            expired.jsonl, and its feedback is answered 410). null: never.
        compact_after: Rewrite decisions.jsonl with only the pending decisions once it holds more than this many
            answered or expired lines (and more of them than pending ones).
        docs: Serve /docs, /redoc and /openapi.json (their pages load scripts from a CDN, cdn.jsdelivr.net).
        revision: The Hub revision (commit sha, tag or branch) of a repository id in ``--ckpt_path``.
    """
    import uvicorn

    from barp.service.app import create_app
    from barp.service.guard import API_KEY_ENV, KeyRing, is_loopback

    if not (isinstance(port, int) and 0 < port < 65536):
        raise ConfigError(f"--port must be an integer in [1, 65535], got {port!r}")
    for name, value in (("max_batch", max_batch), ("max_prompt_chars", max_prompt_chars),
                        ("max_body_bytes", max_body_bytes), ("max_request_chars", max_request_chars),
                        ("max_prompt_id_chars", max_prompt_id_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name} must be an integer >= 1, got {value!r}")
    if isinstance(request_timeout_s, bool) or not isinstance(request_timeout_s, (int, float)) \
            or not math.isfinite(request_timeout_s) or request_timeout_s <= 0:
        raise ConfigError(f"--request_timeout_s must be a number > 0, got {request_timeout_s!r}")
    keys = KeyRing.from_sources(api_key_file, feedback_key_file)
    if not keys and not is_loopback(host) and not allow_unauthenticated:
        raise ConfigError(f"--host {host!r} is not a loopback address and no API key is set: anyone who reaches the "
                          "port could route and write the feedback the next router learns from. Set "
                          f"{API_KEY_ENV} or --api_key_file, or pass --allow_unauthenticated true to serve open on "
                          "purpose")
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            service = build_service(ckpt_path, log_dir, w_c, calibration, target, budget_per_1k, budget_step, fsync,
                                    budget_max_move=budget_max_move, budget_reset=budget_reset,
                                    max_cost_usd=max_cost_usd, decision_ttl_s=decision_ttl_s,
                                    compact_after=compact_after, revision=revision)
    finally:  # a torn log line set aside, an unverifiable calibration: one line each, also before an error
        for item in caught:
            if issubclass(item.category, UserWarning):
                print(f"barp serve: warning: {item.message}", file=sys.stderr, flush=True)
            else:
                warnings.showwarning(item.message, item.category, item.filename, item.lineno)
    mode = (f"budget ${budget_per_1k:g} per 1k queries from w_c = {service.default_w_c:.4g}"
            if service.controller is not None else f"w_c = {service.default_w_c:.4g} by default")
    access = (f"{len(keys)} API keys" + (" (graders separate)" if keys.split else "") if keys
              else "no API key (open to anyone who reaches the port)")
    print(f"barp serve: {len(service.models)} models, {mode}; log {service.log.path} ({service.log.num_rows} rows, "
          f"{service.log.num_pending} pending); {access}; listening on http://{host}:{port}", flush=True)
    app = create_app(service, max_batch, max_prompt_chars, keys=keys, max_body_bytes=max_body_bytes,
                     max_request_chars=max_request_chars, max_prompt_id_chars=max_prompt_id_chars,
                     request_timeout_s=float(request_timeout_s), docs=docs)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", workers=1)
    finally:
        service.log.close()


def serve_parser() -> ArgumentParser:
    """The ``barp serve`` parser (help from :func:`serve`'s docstring; ``--ckpt_path`` with its alias ``--router``)."""
    from barp.models.hub import add_router_argument

    parser = function_parser(serve, "barp serve", "Serve a trained router over HTTP, with a crash-safe feedback log.",
                             skip={"ckpt_path"})
    return add_router_argument(parser)


def calibrate_parser() -> ArgumentParser:
    """The ``barp calibrate`` parser (help from :func:`~barp.service.calibrate.calibrate`'s docstring; ``--ckpt_path``
    with its alias ``--router``), with ``--wandb``."""
    from barp.models.hub import add_router_argument

    parser = function_parser(calibrate, "barp calibrate", "Curve of cost per 1k queries, score and traffic shares "
                             "against w_c, and the w_c that meets a target; writes curve.csv, curve.png, "
                             "calibration.json.", skip={"ckpt_path"})
    parser.add_argument("--wandb", type=bool, default=False,
                        help="Also log the curve (table and figure) and the traffic shares to a W&B run (project "
                             "barp, folder <output>/wandb; offline unless WANDB_MODE=online and an API key is set; a "
                             "W&B failure only warns).")
    return add_router_argument(parser)


def _kwargs(cfg) -> dict[str, Any]:
    kwargs = {k: v for k, v in cfg.as_dict().items() if k != "__path__"}
    target = kwargs.get("target")
    if isinstance(target, dict):  # a Target group with nothing set is no target
        kwargs["target"] = Target(**target) if any(v is not None for v in target.values()) else None
    return kwargs


def run_serve(cfg) -> None:
    """Run ``barp serve`` from a config parsed by :func:`serve_parser`; a bad input prints one error, exit code 2."""
    kwargs = _kwargs(cfg)
    with exit_on_user_error("barp serve"):
        serve(**kwargs)


def run_calibrate(cfg) -> dict[str, Any]:
    """Run ``barp calibrate`` from a config parsed by :func:`calibrate_parser`; a bad input exits with code 2. With
    ``--wandb true`` the result is also logged to W&B (:func:`log_calibration_to_wandb`)."""
    kwargs = _kwargs(cfg)
    wandb = bool(kwargs.pop("wandb", False))
    with exit_on_user_error("barp calibrate"):
        result = calibrate(**kwargs)
    if wandb:
        log_calibration_to_wandb(result, Path(kwargs["output"]).expanduser())
    return result


def log_calibration_to_wandb(result: dict[str, Any], output: Path) -> bool:
    """Log a calibration (calibration.json's content, its folder ``output``) to a W&B run in ``output``
    (:func:`barp.wandb_report.report`): ``calibrate/curve`` (per w_c: cost per 1k queries, score, each with its
    interval), ``calibrate/curve_plot`` (curve.png), ``calibrate/traffic`` (per w_c and model: the share), a W&B bar
    chart of the shares at the chosen w_c (``calibrate/traffic_at_chosen``) and the chosen w_c as a summary value."""
    from barp.wandb_report import bar, report, table

    curve = result["curve"]
    models, grid = curve["models"], curve["w_c"]
    rows = [[w, c, c_ci[0], c_ci[1], s, s_ci[0], s_ci[1]] for w, c, c_ci, s, s_ci in
            zip(grid, curve["cost_per_1k"], curve["cost_per_1k_ci"], curve["score"], curve["score_ci"])]
    traffic = [[w, m, share] for w, shares in zip(grid, curve["shares"]) for m, share in zip(models, shares)]
    chosen = result.get("chosen")
    summary = {"calibrate/chosen_w_c": chosen["w_c"]} if chosen else {}

    def items() -> dict[str, Any]:
        built: dict[str, Any] = {
            "calibrate/curve": table(["w_c", "cost_per_1k", "cost_low", "cost_high", "score", "score_low",
                                      "score_high"], rows),
            "calibrate/traffic": table(["w_c", "model", "share"], traffic)}
        if (output / "curve.png").is_file():
            built["calibrate/curve_plot"] = output / "curve.png"
        if chosen:
            built["calibrate/traffic_at_chosen"] = bar([(m, v[0]) for m, v in chosen["shares"].items()], "model",
                                                       "share", f"traffic at the chosen w_c={chosen['w_c']:.3g}")
        return built

    return report("barp calibrate", None, output, items, summary, name=f"calibrate-{output.name}")
