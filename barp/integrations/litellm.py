"""barp inside LiteLLM: a custom routing strategy that lets a trained router pick the deployment of each request, and
a callback that logs each outcome where ``barp ope`` and ``barp fit --data.init_args.train_log`` read it.

    from litellm import Router
    from barp.integrations.litellm import use_barp

    router = Router(model_list=[   # one deployment per model of the trained router, named in model_info.barp_model
        {"model_name": "barp", "litellm_params": {"model": "openai/gpt-4o"}, "model_info": {"barp_model": "gpt-4o"}},
        {"model_name": "barp", "litellm_params": {"model": "openai/gpt-4o-mini"},
         "model_info": {"barp_model": "gpt-4o-mini"}},
    ])
    strategy = use_barp(router, "best.ckpt", log_dir="runs/litellm", w_c=0.3)
    reply = router.completion(model="barp", messages=[{"role": "user", "content": "Hi"}], metadata={"barp_w_c": 0.5})

**Deployments.** A *barp group* is a LiteLLM model group (``model_name``) whose deployments name barp's models in
``model_info.barp_model``: one deployment per model of the trained router, each model once, no other names (checked
when the strategy is attached and at every request, with one :class:`~barp.errors.ConfigError` naming the group, the
deployment and the value). A LiteLLM Router has one routing strategy for all its groups: a request to a group that
names no barp model is served by that group's only deployment, and refused if the group has several (give such groups
a Router of their own).

**Preference.** barp routes each request's last user message at cost weight ``w_c`` (the preference ``w = (1 - w_c,
w_c)``), taken in this order: the request's ``metadata={"barp_w_c": 0.3}``; the request's
``metadata={"barp_target": {"cost_per_1k": 0.5}}``, resolved on the calibration curve (``calibration``: a
calibration.json of ``barp calibrate`` for this checkpoint); the group's default (``group_w_c={"barp": 0.3}``); the
strategy's default (``w_c``, else the calibration's chosen w_c or ``target``, else 0.5). A malformed value, an
unknown ``barp_*`` key or a request without a user message is refused with one ConfigError before any call is made.

**Logging.** Every decision is written (fsync'd) to ``log_dir``'s ``decisions.jsonl`` before LiteLLM calls the
deployment, with its propensity: 1 for greedy routing, the served model's probability when exploring (``explore``:
barp's one exploring sampler, as ``barp serve`` uses it). The request's metadata then holds ``barp_decision_id``.
After the response, :class:`BarpOutcomeLogger` (a LiteLLM ``CustomLogger``) takes the cost LiteLLM computed
(``response_cost``) and, if a ``score(prompt, reply_text) -> float in [0, 1]`` callback was given, the score, and
appends the row to ``log.jsonl`` (the off-policy log format that ``barp ope`` reads). Without a score callback, or when
LiteLLM knows no price for the model, the decision stays pending: post its outcome later with
:meth:`BarpRoutingStrategy.feedback`; pending decisions expire after ``decision_ttl_s`` (archived in
``expired.jsonl``). A failed call (or a retried one) records no outcome: its decision stays pending and expires. The
log folder is :class:`~barp.service.feedback_log.FeedbackLog`'s: one writing process per folder.

LiteLLM runs the callbacks of synchronous calls in a background thread and those of asynchronous calls on the event
loop: :meth:`BarpRoutingStrategy.flush` (or ``await strategy.aflush()`` on the loop) waits until every routed
decision's callback has run (before reading the log, or before the process ends).

Tested with LiteLLM 1.110; set ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (or ``LITELLM_OFFLINE_MODE=true``) where
LiteLLM must not fetch its cost map from GitHub when it is imported.
"""

from __future__ import annotations

import asyncio
import math
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from barp.errors import ConfigError
from barp.service.calibrate import Target
from barp.service.routing import Explore, RoutingService

try:
    import litellm
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.router import CustomRoutingStrategyBase
except ImportError as _missing:  # pragma: no cover - exercised only without the extra
    raise ImportError("barp.integrations.litellm needs LiteLLM: pip install 'barp[litellm]'") from _missing

#: The ``model_info`` key of a deployment that names the barp model it serves.
MODEL_INFO_KEY = "barp_model"
#: Request metadata keys barp reads (``barp_decision_id`` is written by barp into the request's metadata).
W_C_KEY, TARGET_KEY, PROMPT_ID_KEY, DECISION_ID_KEY = "barp_w_c", "barp_target", "barp_prompt_id", "barp_decision_id"
METADATA_KEYS = (W_C_KEY, TARGET_KEY, PROMPT_ID_KEY, DECISION_ID_KEY)

#: ``score(prompt, reply_text) -> float in [0, 1]``: grades a reply (e.g. an LLM judge, a unit test, user feedback).
ScoreFn = Callable[[str, str], float]


class OutcomeWarning(UserWarning):
    """An outcome could not be logged (no cost known, a score callback failed): its decision stays pending."""


def _number_in_unit(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0 <= value <= 1


def check_w_c(value: Any, where: str) -> float:
    """A cost weight: a number in [0, 1] (not a string, not a bool), else one ConfigError naming ``where``."""
    if not _number_in_unit(value):
        raise ConfigError(f"{where}: must be a number in [0, 1] (the cost weight w_c of the preference "
                          f"w = (1 - w_c, w_c)), got {value!r}")
    return float(value)


def last_user_message(messages: Any) -> str:
    """The text barp routes a chat request by: its last ``user`` message (a string, or the text parts of a list of
    content parts, joined by newlines).

    Raises:
        ConfigError: The request has no messages, no user message, or the user message holds no text.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConfigError("barp routes chat requests (messages=[...]) by their last user message; this request has "
                          f"no messages (got {type(messages).__name__})")
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = "\n".join(part.get("text", "") for part in content
                                    if isinstance(part, Mapping) and part.get("type") == "text")
            if not isinstance(content, str) or not content.strip():
                raise ConfigError(f"the last user message holds no text to route by, got content {content!r:.80}")
            return content
    raise ConfigError("barp routes chat requests by their last user message; this request has no message with "
                      "role 'user'")


def _entries(router: Any) -> list[Mapping[str, Any]]:
    """The Router's deployments (``registry().all()``; ``model_list`` on LiteLLM versions without a registry)."""
    registry = getattr(router, "registry", None)
    return list(registry().all()) if callable(registry) else list(router.model_list)


def barp_groups(router: Any, models: list[str]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """Each barp group of ``router``: group name -> {barp model -> its deployment}, checked.

    Raises:
        ConfigError: A group mixes deployments with and without ``model_info.barp_model``, names a model the trained
            router does not have, names one model twice, or lacks a deployment for one of the router's models.
    """
    by_group: dict[str, list[Mapping[str, Any]]] = {}
    for entry in _entries(router):
        by_group.setdefault(str(entry.get("model_name")), []).append(entry)
    groups: dict[str, dict[str, Mapping[str, Any]]] = {}
    for group, entries in by_group.items():
        named = [(e, (e.get("model_info") or {}).get(MODEL_INFO_KEY)) for e in entries]
        if all(name is None for _, name in named):
            continue
        table: dict[str, Mapping[str, Any]] = {}
        for entry, name in named:
            deployment = (entry.get("litellm_params") or {}).get("model")
            where = f"LiteLLM model group {group!r}, deployment {deployment!r}"
            if name is None:
                raise ConfigError(f"{where}: model_info.{MODEL_INFO_KEY} is missing; every deployment of a barp group "
                                  "names the barp model it serves")
            if name not in models:
                raise ConfigError(f"{where}: model_info.{MODEL_INFO_KEY} {name!r} is not a model of the trained "
                                  f"router; its models are {models}")
            if name in table:
                raise ConfigError(f"{where}: model_info.{MODEL_INFO_KEY} {name!r} is named by two deployments of the "
                                  "group; give each barp model one deployment")
            table[name] = entry
        missing = [m for m in models if m not in table]
        if missing:
            raise ConfigError(f"LiteLLM model group {group!r} has no deployment for the barp models {missing}; barp "
                              "may choose any model of the trained router: add one deployment per model "
                              f"(model_info.{MODEL_INFO_KEY})")
        groups[group] = table
    return groups


class BarpRoutingStrategy(CustomRoutingStrategyBase):
    """A LiteLLM custom routing strategy: barp's trained router picks each request's deployment (see the module).

    Args:
        router: The LiteLLM ``Router`` whose barp groups it routes.
        service: barp's routing service (the trained router, the request log, the default preference and the
            calibration curve), e.g. from :func:`barp.service.cli.build_service`.
        group_w_c: Default w_c per barp group (a request's own ``barp_w_c`` or ``barp_target`` comes first).
        explore: Explore (sample from barp's exploring distribution, logging the served model's probability as the
            propensity); None: greedy, propensity 1.
        score: ``score(prompt, reply_text) -> float in [0, 1]`` run after each successful call; None: decisions stay
            pending until :meth:`feedback`.

    Raises:
        ConfigError: A barp group is malformed (:func:`barp_groups`), the router has none, or ``group_w_c`` names a
            group that is not a barp group or a w_c outside [0, 1].
    """

    def __init__(self, router: Any, service: RoutingService, group_w_c: Mapping[str, float] | None = None,
                 explore: Explore | None = None, score: ScoreFn | None = None) -> None:
        self.router = router
        self.service = service
        self.explore = explore
        self.score = score
        groups = barp_groups(router, service.models)
        if not groups:
            raise ConfigError(f"the LiteLLM Router has no barp group: give each deployment that barp chooses among "
                              f"model_info.{MODEL_INFO_KEY} (one of {service.models})")
        self.group_w_c = {}
        for group, value in (group_w_c or {}).items():
            if group not in groups:
                raise ConfigError(f"group_w_c: {group!r} is not a barp group of the Router (barp groups: "
                                  f"{sorted(groups)})")
            self.group_w_c[group] = check_w_c(value, f"group_w_c[{group!r}]")
        self.logger = BarpOutcomeLogger(self)
        self._lock = threading.Condition()
        self._in_flight: dict[str, str] = {}  # decision id -> prompt, until its callback ran
        self._costs: dict[str, float] = {}  # decision id -> LiteLLM's cost, for a pending decision's later score

    # ------------------------------------------------------------------ LiteLLM's hooks
    def get_available_deployment(self, model: str, messages: list[dict[str, str]] | None = None,
                                 input: str | list[object] | None = None, specific_deployment: bool | None = False,
                                 request_kwargs: dict[str, object] | None = None) -> Any:
        """LiteLLM's synchronous pick: the deployment barp chooses for this request (recorded before it returns)."""
        return self.choose(model, messages, request_kwargs)

    async def async_get_available_deployment(self, model: str, messages: list[dict[str, str]] | None = None,
                                             input: str | list[object] | None = None,
                                             specific_deployment: bool | None = False,
                                             request_kwargs: dict[str, object] | None = None) -> Any:
        """LiteLLM's asynchronous pick: :meth:`choose` in a worker thread (encoding a prompt blocks)."""
        return await asyncio.to_thread(self.choose, model, messages, request_kwargs)

    # ------------------------------------------------------------------ routing
    def preference(self, group: str, metadata: Mapping[str, Any]) -> tuple[float | None, Target | None]:
        """The request's ``(w_c, target)`` for :meth:`RoutingService.resolve`: its own ``barp_w_c`` or
        ``barp_target``, else the group's default w_c, else ``(None, None)`` (the service's default).

        Raises:
            ConfigError: An unknown ``barp_*`` key, both keys given, a w_c outside [0, 1], a target that is not a
                mapping of Target's fields or that the calibration cannot resolve.
        """
        unknown = sorted(k for k in metadata if isinstance(k, str) and k.startswith("barp_") and k not in METADATA_KEYS)
        if unknown:
            raise ConfigError(f"metadata[{unknown[0]!r}]: not a key barp reads; barp reads {list(METADATA_KEYS[:3])}")
        if W_C_KEY in metadata and TARGET_KEY in metadata:
            raise ConfigError(f"metadata: give at most one of {W_C_KEY!r} ({metadata[W_C_KEY]!r}) and {TARGET_KEY!r}")
        if W_C_KEY in metadata:
            return check_w_c(metadata[W_C_KEY], f"metadata[{W_C_KEY!r}]"), None
        if TARGET_KEY in metadata:
            raw = metadata[TARGET_KEY]
            fields = ("cost_per_1k", "max_share", "score_fraction")
            if not isinstance(raw, Mapping) or not set(raw) <= set(fields):
                raise ConfigError(f"metadata[{TARGET_KEY!r}]: must be a mapping of {list(fields)}, got {raw!r}")
            target = Target(**dict(raw)).check(self.service.models, f"metadata[{TARGET_KEY!r}]")
            if self.service.curve is None:
                raise ConfigError(f"metadata[{TARGET_KEY!r}]: this strategy has no calibration curve; attach it with "
                                  f"calibration=calibration.json (from barp calibrate) or give {W_C_KEY!r}")
            return None, target
        return self.group_w_c.get(group), None

    def choose(self, model: str, messages: Any, request_kwargs: dict[str, Any] | None) -> Mapping[str, Any]:
        """Route one request of model group ``model``: check its preference, let barp choose, record the decision
        (fsync'd) and its id in the request's metadata, and return the chosen deployment.

        Raises:
            ConfigError: The request or the group is malformed (see the module); nothing is recorded.
        """
        request = request_kwargs if request_kwargs is not None else {}
        groups = barp_groups(self.router, self.service.models)
        if model not in groups:
            entries = [e for e in _entries(self.router) if e.get("model_name") == model]
            if len(entries) == 1:
                return entries[0]
            raise ConfigError(f"LiteLLM model group {model!r} is not a barp group (no deployment names "
                              f"model_info.{MODEL_INFO_KEY}) and has {len(entries)} deployments; barp's strategy "
                              "routes the whole Router: serve that group from a Router of its own")
        metadata = request.get("metadata")
        if metadata is None:
            metadata = request["metadata"] = {}
        if not isinstance(metadata, dict):
            raise ConfigError(f"metadata: must be a mapping, got {type(metadata).__name__}")
        w_c, target = self.preference(model, metadata)
        prompt = last_user_message(messages if messages is not None else request.get("messages"))
        prompt_id = metadata.get(PROMPT_ID_KEY)
        if prompt_id is not None and (not isinstance(prompt_id, str) or not prompt_id):
            raise ConfigError(f"metadata[{PROMPT_ID_KEY!r}]: must be a non-empty string, got {prompt_id!r}")
        routed = self.service.route([prompt], w_c=w_c, target=target, explore=self.explore,
                                    prompt_ids=None if prompt_id is None else [prompt_id], origin="barp litellm")
        decision = routed["decisions"][0]
        with self._lock:
            self._in_flight[decision["decision_id"]] = prompt
        metadata[DECISION_ID_KEY] = decision["decision_id"]
        return groups[model][decision["model"]]

    # ------------------------------------------------------------------ outcomes
    def outcome(self, kwargs: Mapping[str, Any], response: Any, success: bool) -> None:
        """Handle LiteLLM's callback of one call: log the outcome of a successful call that barp routed (see the
        module); calls barp did not route are ignored. Problems are :class:`OutcomeWarning`s (a callback cannot
        fail the call it reports)."""
        decision_id = _decision_id(kwargs)
        with self._lock:
            prompt = self._in_flight.pop(decision_id, None) if decision_id else None
            self._lock.notify_all()
        if prompt is None or not success:
            return
        assert decision_id is not None  # prompt is None otherwise
        cost = response_cost(kwargs, response)
        if cost is None:
            warnings.warn(f"barp decision {decision_id}: LiteLLM computed no cost for this call (a model outside its "
                          "cost map?); the decision stays pending: log it with strategy.feedback(decision_id, score, "
                          "cost)", OutcomeWarning, stacklevel=2)
            return
        if self.score is None:
            with self._lock:
                self._costs[decision_id] = cost
            return
        try:
            score = self.score(prompt, reply_text(response))
            if not _number_in_unit(score):
                raise ConfigError(f"the score callback returned {score!r}, not a number in [0, 1]")
            self.service.feedback(decision_id, float(score), cost)
        except Exception as err:  # noqa: BLE001 - reported, and the decision stays open for feedback()
            with self._lock:
                self._costs[decision_id] = cost
            warnings.warn(f"barp decision {decision_id}: its outcome was not logged ({type(err).__name__}: {err}); "
                          "the decision stays pending: log it with strategy.feedback(decision_id, score)",
                          OutcomeWarning, stacklevel=2)

    def feedback(self, decision_id: str, score: float, cost: float | None = None) -> dict[str, Any]:
        """Log the outcome of a pending decision (its id is the request's ``metadata["barp_decision_id"]``).

        Args:
            decision_id: The decision's id.
            score: The reply's score in [0, 1].
            cost: Its cost in USD; None: the cost LiteLLM computed for the call.

        Raises:
            ConfigError: ``cost`` is None and LiteLLM computed none for this decision.
            barp.errors.DataValidationError, KeyError: see :meth:`RoutingService.feedback` (score or cost out of
                range, unknown, expired or already answered decision).
        """
        if cost is None:
            with self._lock:
                cost = self._costs.get(decision_id)
            if cost is None:
                raise ConfigError(f"decision {decision_id!r}: no cost is known for it (LiteLLM computed none, or its "
                                  "call has not finished): give cost=")
        answer = self.service.feedback(decision_id, score, cost)
        with self._lock:
            self._costs.pop(decision_id, None)
        return answer

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until LiteLLM has run the callback of every call barp routed so far; False if ``timeout`` seconds
        passed first. Synchronous calls only: the callbacks of ``acompletion`` run on the event loop, so a
        coroutine awaits :meth:`aflush` instead (a blocked loop runs none)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._in_flight, timeout)

    async def aflush(self, timeout: float = 10.0) -> bool:
        """:meth:`flush` on the event loop: wait, letting the loop run LiteLLM's asynchronous callbacks."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:
                if not self._in_flight:
                    return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ set-up
    def attach(self) -> BarpRoutingStrategy:
        """Make this the Router's routing strategy and register :attr:`logger` with LiteLLM's callbacks (through
        its callback manager, which keeps one logger per class and public settings: the logger's ``log_dir`` keeps
        two strategies of one process apart); returns self."""
        register = getattr(self.router, "register_plugin", None)
        (register if callable(register) else self.router.set_custom_routing_strategy)(self)
        litellm.logging_callback_manager.add_litellm_callback(self.logger)
        return self

    def close(self) -> None:
        """Remove :attr:`logger` from every LiteLLM callback list (LiteLLM copies ``litellm.callbacks`` into its
        success and failure lists on the first call) and close the request log (releasing its folder)."""
        litellm.logging_callback_manager.remove_callback_from_all_lists(self.logger)
        self.service.log.close()

    def __enter__(self) -> BarpRoutingStrategy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BarpOutcomeLogger(CustomLogger):
    """LiteLLM's callback of a :class:`BarpRoutingStrategy`: hands each call's outcome to
    :meth:`BarpRoutingStrategy.outcome` (synchronous calls: LiteLLM's logging thread; asynchronous ones: its loop)."""

    def __init__(self, strategy: BarpRoutingStrategy) -> None:
        super().__init__()
        self.strategy = strategy
        #: The strategy's log folder: part of the key LiteLLM tells loggers apart by (one logger per key).
        self.log_dir = str(strategy.service.log.folder)

    def log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102
        self.strategy.outcome(kwargs, response_obj, success=True)

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102
        self.strategy.outcome(kwargs, response_obj, success=False)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102
        self.strategy.outcome(kwargs, response_obj, success=True)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: D102
        self.strategy.outcome(kwargs, response_obj, success=False)


def _decision_id(kwargs: Mapping[str, Any]) -> str | None:
    """The barp decision id a LiteLLM callback's kwargs carry in the request's metadata, or None."""
    params = kwargs.get("litellm_params") or {}
    for holder in (params.get("metadata"), params.get("litellm_metadata"), kwargs.get("metadata")):
        if isinstance(holder, Mapping) and isinstance(holder.get(DECISION_ID_KEY), str):
            return holder[DECISION_ID_KEY]
    return None


def response_cost(kwargs: Mapping[str, Any], response: Any) -> float | None:
    """The call's cost in USD as LiteLLM computed it (the callback's ``response_cost``, else the response's
    ``_hidden_params["response_cost"]``), or None when LiteLLM computed none."""
    cost = kwargs.get("response_cost")
    if cost is None:
        cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
        return None
    return float(cost)


def reply_text(response: Any) -> str:
    """The text of a chat completion's first choice ('' when it has none)."""
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


def use_barp(router: Any, ckpt_path: str, log_dir: str = "runs/litellm", *, w_c: float | None = None,
             calibration: str | None = None, target: Target | None = None,
             group_w_c: Mapping[str, float] | None = None, explore: Explore | None = None,
             score: ScoreFn | None = None, decision_ttl_s: float | None = 86400.0, fsync: bool = True,
             max_cost_usd: float | None = None) -> BarpRoutingStrategy:
    """Load a trained router and attach it to a LiteLLM ``Router`` as its routing strategy, with its outcome logger.

    Args:
        router: The LiteLLM Router (one deployment per barp model in each barp group: see the module).
        ckpt_path: Checkpoint written by ``barp fit``.
        log_dir: Folder of the request log (``decisions.jsonl``, ``log.jsonl``: ``barp ope --log
            <log_dir>/log.jsonl``); an existing log is checked and resumed; one process writes it.
        w_c: Default cost weight (default: the calibration's chosen w_c, else 0.5).
        calibration: calibration.json of ``barp calibrate`` for this checkpoint: its chosen w_c becomes the default
            and requests may give ``metadata={"barp_target": {...}}``.
        target: Serve by default at the w_c that meets this target on the calibration curve.
        group_w_c: Default w_c per barp group.
        explore: Explore with barp's sampler (``Explore(temperature=1.0, epsilon=0.05)``): the logged propensity is
            the served model's probability; None: greedy (propensity 1).
        score: ``score(prompt, reply_text) -> float in [0, 1]``; None: outcomes wait for ``strategy.feedback``.
        decision_ttl_s: Seconds a decision waits for its outcome before it expires (None: never).
        fsync: fsync the log after every write.
        max_cost_usd: Most USD one outcome may cost (default: from the checkpoint's tau, as ``barp serve``).

    Returns:
        The attached strategy (``strategy.flush()`` waits for pending callbacks; ``strategy.close()`` releases the
        log folder).

    Raises:
        ConfigError: A bad option, checkpoint, calibration or Router configuration (one error, nothing attached).
    """
    from barp.service.cli import build_service

    service = build_service(ckpt_path, log_dir, w_c=w_c, calibration=calibration, target=target, fsync=fsync,
                            decision_ttl_s=decision_ttl_s, max_cost_usd=max_cost_usd)
    try:
        return BarpRoutingStrategy(router, service, group_w_c=group_w_c, explore=explore, score=score).attach()
    except BaseException:
        service.log.close()
        raise
