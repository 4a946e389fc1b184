"""The HTTP API of ``barp serve`` (FastAPI; run by uvicorn): /route, /feedback, /budget/reset, /health, /models.

Every bad input gets one 4xx answer ``{"error": "..."}`` naming the field and the value: 401 without a valid API key
(when the server has keys; every path but /health), 403 for a routing key on a grader's path, 422 for an invalid field
(w_c outside [0, 1], an empty prompt list or prompt, text that is not valid Unicode (a lone surrogate), an unknown
field, a target no w_c meets, a feedback cost outside [0, the server's bound]), 413 for a body, a batch, a prompt, a
prompt id or a request's total characters over the server's limits, 404 for an unknown decision id, 409 for a second
feedback on one decision, 410 for feedback on an expired decision; 503 when the request ran past the time limit or the
log cannot be written (a full disk): nothing of that request was recorded. A 500 means a bug in barp, never a bad
request. Error messages name files by their name only.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from barp.data.table import MAX_COST_USD
from barp.errors import BarpError
from barp.service.calibrate import Target
from barp.service.feedback_log import DuplicateFeedback, ExpiredDecision, LogUnavailable, UnknownDecision
from barp.service.guard import KEY_ID_SCOPE, Guard, KeyRing, public_name, scrub_paths
from barp.service.routing import MAX_TEMPERATURE, MIN_TEMPERATURE, Explore, RequestTimeout, RoutingService

Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TargetBody(_Body):
    """A target resolved on the server's calibration curve (at least one field)."""

    cost_per_1k: float | None = Field(None, gt=0, allow_inf_nan=False, description="USD per 1000 queries")
    max_share: dict[str, Share] | None = Field(None, description="most traffic share per model")
    score_fraction: float | None = Field(None, gt=0, le=1.5, allow_inf_nan=False,
                                         description="least fraction of the best single model's score")


class ExploreBody(_Body):
    """Exploring routing: sample from (1 - epsilon) softmax(logits / temperature) + epsilon / K."""

    temperature: float = Field(1.0, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE, allow_inf_nan=False)
    epsilon: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)


class RouteRequest(_Body):
    """One prompt (``prompt``) or a batch (``prompts``), and at most one of ``w_c`` and ``target``."""

    prompt: str | None = None
    prompts: list[str] | None = None
    w_c: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    target: TargetBody | None = None
    explore: ExploreBody | None = None  # {} explores at temperature 1 without uniform mixing
    seed: int | None = Field(None, ge=0, lt=2**63)
    prompt_ids: list[str] | None = None


class FeedbackRequest(_Body):
    """The outcome of one routed decision."""

    decision_id: str = Field(min_length=1, max_length=64)
    score: float = Field(ge=0, le=1, allow_inf_nan=False)
    cost: float = Field(ge=0, le=MAX_COST_USD, allow_inf_nan=False,
                        description=f"USD for this request, in [0, {MAX_COST_USD:g}] (MAX_COST_USD)")


class BudgetResetRequest(_Body):
    """Restart the budget controller from ``w_c`` (default: the server's default w_c)."""

    w_c: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


class SafeJSON(JSONResponse):
    """JSON that is always encodable: text that is not valid Unicode (a lone surrogate) is escaped, never a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> SafeJSON:
    return SafeJSON({"error": scrub_paths(message)}, status_code=status, headers=headers)


class ApiError(Exception):
    """A refused request: HTTP status and one message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _field(loc: tuple) -> str:
    parts = [p for p in loc if p != "body"]
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "body"


def _validation_message(err: RequestValidationError) -> str:
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', first.get('msg'))})"
    shown = repr(first.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    more = f" (and {len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"field {_field(tuple(first.get('loc', ())))!r}: {first.get('msg')}, got {shown}{more}"


def _unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text (a lone surrogate, which no tokenizer or UTF-8 file takes), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"holds a lone surrogate {text[err.start]!r} at character {err.start}: not valid Unicode text "
                "(send UTF-8 text; a surrogate pair must be complete)")
    return None


def _check_text(name: str, text: str, limit: int, option: str = "") -> None:
    """Refuse a text field over ``limit`` characters (413) or that is not valid Unicode (422)."""
    if len(text) > limit:
        raise ApiError(413, f"field {name!r}: {len(text)} characters is over this server's limit of {limit}{option}")
    problem = _unicode_problem(text)
    if problem is not None:
        raise ApiError(422, f"field {name!r}: {problem}")


def _prompts(body: RouteRequest, max_batch: int, max_prompt_chars: int, max_request_chars: int = 10**9,
             max_prompt_id_chars: int = 256) -> list[str]:
    if (body.prompt is None) == (body.prompts is None):
        raise ApiError(422, "give exactly one of 'prompt' (one text) and 'prompts' (a list of texts)")
    prompts = [body.prompt] if body.prompt is not None else list(body.prompts or [])  # exactly one is given
    field = "prompt" if body.prompt is not None else "prompts"
    if not prompts:
        raise ApiError(422, "field 'prompts': the list is empty; give at least one prompt")
    if len(prompts) > max_batch:
        raise ApiError(413, f"field 'prompts': {len(prompts)} prompts is over this server's batch limit of "
                            f"{max_batch}; split the batch")
    for i, text in enumerate(prompts):
        name = field if field == "prompt" else f"prompts[{i}]"
        if not text.strip():
            raise ApiError(422, f"field {name!r}: the prompt is empty, got {text!r}")
        _check_text(name, text, max_prompt_chars)
    total = sum(len(text) for text in prompts)
    if total > max_request_chars:
        raise ApiError(413, f"field {field!r}: {total} characters in all is over this server's limit of "
                            f"{max_request_chars} per request (--max_request_chars); split the batch")
    if body.prompt_ids is not None and len(body.prompt_ids) != len(prompts):
        raise ApiError(422, f"field 'prompt_ids': {len(body.prompt_ids)} ids for {len(prompts)} prompts; give one "
                            "per prompt")
    for i, pid in enumerate(body.prompt_ids or ()):
        _check_text(f"prompt_ids[{i}]", pid, max_prompt_id_chars, " (--max_prompt_id_chars)")
    if body.w_c is not None and body.target is not None:
        raise ApiError(422, f"give at most one of 'w_c' ({body.w_c!r}) and 'target'")
    return prompts


def create_app(service: RoutingService, max_batch: int = 256, max_prompt_chars: int = 100_000, *,
               keys: KeyRing | None = None, max_body_bytes: int = 4 * 2**20, max_request_chars: int = 400_000,
               max_prompt_id_chars: int = 256, request_timeout_s: float = 30.0, docs: bool = False) -> FastAPI:
    """The ASGI app serving ``service``.

    Args:
        service: The routing service (router, log, preferences).
        max_batch: Most prompts per /route request (more: 413).
        max_prompt_chars: Most characters per prompt (more: 413).
        keys: API keys; None or empty: no key needed (only for a loopback address, or on purpose).
        max_body_bytes: Most bytes of a request body, checked before it is read (more: 413).
        max_request_chars: Most characters of all prompts of one /route request (more: 413).
        max_prompt_id_chars: Most characters per prompt id (more: 413).
        request_timeout_s: Seconds a /route request may take; later it is answered 503 and nothing is recorded.
        docs: Serve /docs, /redoc and /openapi.json (their pages load scripts and styles from a CDN).
    """
    keys = keys if keys is not None else KeyRing()
    pages = {"docs_url": "/docs", "redoc_url": "/redoc", "openapi_url": "/openapi.json"} if docs else \
        {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="barp router", description="Route prompts to LLMs with a trained barp router; log feedback.",
                  default_response_class=SafeJSON, **pages)
    app.add_middleware(Guard, keys=keys, max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(err))

    @app.exception_handler(ApiError)
    async def _refused(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.message)

    @app.exception_handler(BarpError)
    async def _user_error(request: Request, err: BarpError) -> JSONResponse:
        return _error(422, str(err))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(LogUnavailable)
    async def _no_log(request: Request, err: LogUnavailable) -> JSONResponse:
        return _error(503, f"the server cannot write its log ({err.strerror or err}); nothing of this request was "
                           "recorded: retry later", {"Retry-After": "60"})

    @app.exception_handler(RequestTimeout)
    async def _slow(request: Request, err: RequestTimeout) -> JSONResponse:
        return _error(503, f"the request took longer than this server's limit of {request_timeout_s:g} s "
                           "(--request_timeout_s); nothing was recorded: send fewer or shorter prompts")

    @app.post("/route")
    async def route(body: RouteRequest, request: Request) -> dict[str, Any]:
        """Route one prompt or a batch; each decision has an id to send its feedback with."""
        prompts = _prompts(body, max_batch, max_prompt_chars, max_request_chars, max_prompt_id_chars)
        target = None if body.target is None else Target(**body.target.model_dump())
        if target is not None:
            target.check(service.models, "field 'target'")
        explore = None if body.explore is None else Explore(**body.explore.model_dump())
        deadline = time.monotonic() + request_timeout_s
        call = functools.partial(service.route, prompts, w_c=body.w_c, target=target, explore=explore,
                                 seed=body.seed, prompt_ids=body.prompt_ids, deadline=deadline,
                                 key_id=request.scope.get(KEY_ID_SCOPE))
        with anyio.move_on_after(request_timeout_s) as scope:
            # an abandoned thread finishes its encoding, sees the deadline passed and records nothing
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        assert scope.cancelled_caught
        raise RequestTimeout("routing")

    @app.post("/feedback")
    def feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
        """Log the score and cost of a routed decision (one row of the off-policy log, fsync'd)."""
        try:
            return service.feedback(body.decision_id, body.score, body.cost, key_id=request.scope.get(KEY_ID_SCOPE))
        except UnknownDecision:
            raise ApiError(404, f"field 'decision_id': unknown decision id {body.decision_id!r}") from None
        except ExpiredDecision:
            ttl = service.log.decision_ttl_s
            raise ApiError(410, f"field 'decision_id': decision {body.decision_id!r} expired without feedback "
                                f"(after {ttl:g} s, --decision_ttl_s); its feedback is not logged") from None
        except DuplicateFeedback:
            raise ApiError(
                409, f"field 'decision_id': decision {body.decision_id!r} already has its feedback"
            ) from None

    @app.post("/budget/reset")
    def budget_reset(body: BudgetResetRequest, request: Request) -> dict[str, Any]:
        """Restart the budget controller (recorded in the log folder: a restart replays only later rows)."""
        return service.reset_budget(body.w_c, key_id=request.scope.get(KEY_ID_SCOPE))

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and counters."""
        return service.health()

    @app.get("/models")
    def models() -> dict[str, Any]:
        """The models the router chooses among, its cost scale tau and the calibrated preference."""
        out: dict[str, Any] = {"models": service.models, "tau": service.router.module.tau_value,
                               "encoder": public_name(service.router.encoder.name),
                               "max_cost_usd": service.max_cost_usd}
        if service.curve is not None:
            out["calibration"] = {"source": public_name(service.curve.source),
                                  "best_single_model": service.curve.best_single_model}
        return out

    return app
