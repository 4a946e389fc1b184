"""The HTTP API of ``barp serve`` (FastAPI; run by uvicorn): /route, /feedback, /health, /models.

Every bad input gets one 4xx answer ``{"error": "..."}`` naming the field and the value: 422 for an invalid field
(w_c outside [0, 1], an empty prompt list or prompt, an unknown field, a target no w_c meets, a feedback cost
outside [0, MAX_COST_USD]), 413 for a batch or a
prompt over the server's limits, 404 for an unknown decision id, 409 for a second feedback on one decision. A 500
means a bug in barp, never a bad request.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from barp.data.table import MAX_COST_USD
from barp.errors import BarpError
from barp.service.calibrate import Target
from barp.service.feedback_log import DuplicateFeedback, UnknownDecision
from barp.service.routing import Explore, RoutingService

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

    temperature: float = Field(1.0, gt=0, le=100, allow_inf_nan=False)
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


def _prompts(body: RouteRequest, max_batch: int, max_prompt_chars: int) -> list[str]:
    if (body.prompt is None) == (body.prompts is None):
        raise ApiError(422, "give exactly one of 'prompt' (one text) and 'prompts' (a list of texts)")
    prompts = [body.prompt] if body.prompt is not None else list(body.prompts)
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
        if len(text) > max_prompt_chars:
            raise ApiError(413, f"field {name!r}: {len(text)} characters is over this server's limit of "
                                f"{max_prompt_chars}")
    if body.prompt_ids is not None and len(body.prompt_ids) != len(prompts):
        raise ApiError(422, f"field 'prompt_ids': {len(body.prompt_ids)} ids for {len(prompts)} prompts; give one "
                            "per prompt")
    if body.w_c is not None and body.target is not None:
        raise ApiError(422, f"give at most one of 'w_c' ({body.w_c!r}) and 'target'")
    return prompts


def create_app(service: RoutingService, max_batch: int = 256, max_prompt_chars: int = 100_000) -> FastAPI:
    """The ASGI app serving ``service``.

    Args:
        service: The routing service (router, log, preferences).
        max_batch: Most prompts per /route request (more: 413).
        max_prompt_chars: Most characters per prompt (more: 413).
    """
    app = FastAPI(title="barp router", description="Route prompts to LLMs with a trained barp router; log feedback.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(err)}, status_code=422)

    @app.exception_handler(ApiError)
    async def _refused(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(BarpError)
    async def _user_error(request: Request, err: BarpError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=422)

    @app.post("/route")
    def route(body: RouteRequest) -> dict[str, Any]:
        """Route one prompt or a batch; each decision has an id to send its feedback with."""
        prompts = _prompts(body, max_batch, max_prompt_chars)
        target = None if body.target is None else Target(**body.target.model_dump())
        if target is not None:
            target.check(service.models, "field 'target'")
        explore = None if body.explore is None else Explore(**body.explore.model_dump())
        return service.route(prompts, w_c=body.w_c, target=target, explore=explore, seed=body.seed,
                             prompt_ids=body.prompt_ids)

    @app.post("/feedback")
    def feedback(body: FeedbackRequest) -> dict[str, Any]:
        """Log the score and cost of a routed decision (one row of the off-policy log, fsync'd)."""
        try:
            return service.feedback(body.decision_id, body.score, body.cost)
        except UnknownDecision:
            raise ApiError(404, f"field 'decision_id': unknown decision id {body.decision_id!r}") from None
        except DuplicateFeedback:
            raise ApiError(
                409, f"field 'decision_id': decision {body.decision_id!r} already has its feedback"
            ) from None

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and counters."""
        return service.health()

    @app.get("/models")
    def models() -> dict[str, Any]:
        """The models the router chooses among, its cost scale tau and the calibrated preference."""
        out: dict[str, Any] = {"models": service.models, "tau": service.router.module.tau_value,
                               "encoder": service.router.encoder.name}
        if service.curve is not None:
            out["calibration"] = {"source": service.curve.source, "best_single_model": service.curve.best_single_model}
        return out

    return app
