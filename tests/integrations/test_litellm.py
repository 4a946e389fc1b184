"""barp inside LiteLLM, offline: a LiteLLM Router with barp's strategy sends mocked completions (``mock_response``,
no network) to the deployments barp chooses, logs them with their propensities and LiteLLM's costs, and ``barp ope``
reads the log; malformed preferences and deployments are one clear error each."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

# LiteLLM fetches its cost map (and other catalogs) from GitHub when imported unless told not to
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_OFFLINE_MODE"] = "true"
litellm = pytest.importorskip("litellm")

from barp.errors import ConfigError  # noqa: E402
from barp.service.feedback_log import DECISIONS_FILE, LOG_FILE  # noqa: E402
from barp.service.routing import Explore  # noqa: E402

#: Prompts the tiny checkpoint never saw (``barp ope`` refuses training prompts).
PROMPTS = [f"Question {i}: explain how routers pick a model for task number {i * 7}." for i in range(6)]
W_C = (0.1, 0.9)  # the tiny checkpoint routes these prompts differently at these two preferences


@pytest.fixture(scope="module")
def trained():
    """``(checkpoint, TrainedRouter)`` of the shared tiny checkpoint (fake encoder)."""
    from barp.models.trained import TrainedRouter
    from tests.helpers.cli import tiny_checkpoint

    ckpt = tiny_checkpoint()
    return ckpt, TrainedRouter.from_checkpoint(ckpt)


def model_list(models: list[str], groups=("barp",)) -> list[dict]:
    """One deployment per barp model in each group, each with its own price (LiteLLM computes the cost from it)."""
    return [{"model_name": group,
             "litellm_params": {"model": f"openai/fake-{i}", "api_key": "sk-offline",
                                "input_cost_per_token": 1e-6 * (i + 1), "output_cost_per_token": 3e-6 * (i + 1)},
             "model_info": {"barp_model": name}}
            for group in groups for i, name in enumerate(models)]


def served_barp_model(router, response) -> str:
    """The barp model of the deployment that answered (by the deployment id LiteLLM reports)."""
    model_id = response._hidden_params["model_id"]
    entries = [e for e in router.registry().all() if e["model_info"]["id"] == model_id]
    assert len(entries) == 1
    return entries[0]["model_info"]["barp_model"]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def ask(router, prompt: str, metadata: dict | None = None, group: str = "barp"):
    extra = {} if metadata is None else {"metadata": metadata}  # no metadata at all: barp adds its own
    return router.completion(model=group, messages=[{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": prompt}],
                             mock_response=f"mocked reply to: {prompt}", **extra)


def test_requests_go_to_barps_choice_and_the_log_is_what_barp_ope_reads(trained, tmp_path):
    from barp.integrations.litellm import use_barp
    from barp.ope.cli import ope

    ckpt, barp_router = trained
    router = litellm.Router(model_list=model_list(barp_router.models, groups=("barp", "barp-thrifty")))
    graded: list[tuple[str, str]] = []

    def score(prompt: str, reply: str) -> float:
        graded.append((prompt, reply))
        return (len(prompt) % 5) / 4

    strategy = use_barp(router, ckpt, str(tmp_path / "log"), group_w_c={"barp-thrifty": 0.9}, score=score)
    try:
        served, costs = [], []
        for w_c in W_C:
            for prompt in PROMPTS:
                response = ask(router, prompt, {"barp_w_c": w_c})
                served.append(served_barp_model(router, response))
                costs.append(response._hidden_params["response_cost"])
        thrifty = ask(router, PROMPTS[0], group="barp-thrifty")  # no barp_w_c: the group's default
        default = ask(router, PROMPTS[1])  # no barp_w_c, no group default: the strategy's default (0.5)
        assert strategy.flush(timeout=30)
    finally:
        strategy.close()

    expected = [d.model for w_c in W_C for d in barp_router.route(PROMPTS, w_c=w_c)]
    assert served == expected and len(set(served)) > 1  # barp's greedy choices, which differ across preferences
    assert served_barp_model(router, thrifty) == barp_router.route(PROMPTS[:1], w_c=0.9)[0].model
    assert served_barp_model(router, default) == barp_router.route(PROMPTS[1:2], w_c=0.5)[0].model

    rows = read_jsonl(tmp_path / "log" / LOG_FILE)
    assert len(rows) == 2 * len(PROMPTS) + 2
    main_rows = rows[:-2]
    assert [r["model"] for r in main_rows] == expected
    assert [r["w_c"] for r in main_rows] == [w for w in W_C for _ in PROMPTS]
    assert [r["w_c"] for r in rows[-2:]] == [0.9, 0.5]
    assert all(r["propensity"] == 1.0 for r in rows)  # greedy: a deterministic policy
    assert {r["note"] for r in rows} == {"barp litellm: greedy"}  # the log says who routed
    assert [r["cost"] for r in main_rows] == pytest.approx(costs) and min(costs) > 0  # LiteLLM's own costs
    assert [r["score"] for r in main_rows] == [(len(p) % 5) / 4 for _ in W_C for p in PROMPTS]
    assert graded[0] == (PROMPTS[0], f"mocked reply to: {PROMPTS[0]}")  # the score callback saw the reply

    results = ope(str(tmp_path / "log" / LOG_FILE), ckpt, str(tmp_path / "ope"), w_c=list(W_C),
                  estimators=["ips", "snips"], bootstrap=50)
    ips = {r.w_c: r.estimate for r in results if r.estimator == "ips" and r.quantity == "score"}
    for w_c in W_C:  # greedy logging policy: IPS is the mean score over the rows where the target agrees
        target = [d.model for d in barp_router.route([r["prompt"] for r in rows], w_c=w_c)]
        by_hand = sum(r["score"] for r, m in zip(rows, target) if m == r["model"]) / len(rows)
        assert ips[w_c] == pytest.approx(by_hand)
    assert (tmp_path / "ope" / "ope.csv").is_file()

    # ... and the reader behind ``barp fit --data.init_args.train_log`` takes it as training data, row for row
    from barp.data.sources.logs import read_log

    logged = read_log(tmp_path / "log" / LOG_FILE, models=barp_router.models)
    assert len(logged) == len(rows)
    assert [barp_router.models[a] for a in logged.actions] == [r["model"] for r in rows]
    assert logged.propensity.tolist() == [1.0] * len(rows)


def test_exploring_async_calls_log_the_served_models_propensity_and_wait_for_their_score(trained, tmp_path):
    from barp.cli import main
    from barp.integrations.litellm import use_barp

    ckpt, barp_router = trained
    router = litellm.Router(model_list=model_list(barp_router.models))
    strategy = use_barp(router, ckpt, str(tmp_path / "log"), w_c=0.5, explore=Explore(temperature=1.0, epsilon=0.2))

    async def send() -> list[dict]:
        metadata = [{"barp_prompt_id": f"p{i}"} for i in range(len(PROMPTS))]
        await asyncio.gather(*(router.acompletion(model="barp", messages=[{"role": "user", "content": p}],
                                                  mock_response="ok", metadata=m)
                               for p, m in zip(PROMPTS, metadata)))
        assert await strategy.aflush(timeout=30)  # the callbacks run on this loop
        return metadata

    try:
        metadata = asyncio.run(send())
        assert not (tmp_path / "log" / LOG_FILE).exists() or not read_jsonl(tmp_path / "log" / LOG_FILE)
        decisions = {d["decision_id"]: d for d in read_jsonl(tmp_path / "log" / DECISIONS_FILE)}
        assert sorted(d["prompt_id"] for d in decisions.values()) == sorted(m["barp_prompt_id"] for m in metadata)
        for m in metadata:  # the outcome arrives later (a grader): LiteLLM's cost was kept for it
            strategy.feedback(m["barp_decision_id"], score=0.75)
        with pytest.raises(ConfigError, match="no cost is known"):
            strategy.feedback("never-routed", score=1.0)
    finally:
        strategy.close()

    rows = read_jsonl(tmp_path / "log" / LOG_FILE)
    assert len(rows) == len(PROMPTS) and all(r["score"] == 0.75 and r["cost"] > 0 for r in rows)
    models = barp_router.models
    for row in rows:  # p = (1 - epsilon) softmax(logits) + epsilon / K at temperature 1
        policy = barp_router.probabilities([row["prompt"]], 0.5)[0, models.index(row["model"])].item()
        assert row["propensity"] == pytest.approx(0.8 * policy + 0.2 / len(models), rel=1e-5)
        assert row["propensity"] < 1 and decisions[row["decision_id"]]["note"].startswith("barp litellm: explore")
    main(["ope", "--log", str(tmp_path / "log" / LOG_FILE), "--ckpt_path", ckpt, "--output", str(tmp_path / "ope"),
          "--w_c", "[0.5]", "--bootstrap", "50", "--estimators", "[ips,snips]",
          "--temperature", "1.0"])  # the router's softmax: every logged row has a weight, whatever was sampled
    assert (tmp_path / "ope" / "ope.csv").is_file()


@pytest.mark.parametrize(("metadata", "message"), [
    ({"barp_w_c": "0.3"}, r"metadata\['barp_w_c'\]: must be a number in \[0, 1\].*got '0.3'"),
    ({"barp_w_c": 1.5}, r"metadata\['barp_w_c'\]: must be a number in \[0, 1\].*got 1.5"),
    ({"barp_w_c": True}, r"metadata\['barp_w_c'\].*got True"),
    ({"barp_w_c": float("nan")}, r"metadata\['barp_w_c'\].*got nan"),
    ({"barp_wc": 0.3}, r"metadata\['barp_wc'\]: not a key barp reads"),
    ({"barp_w_c": 0.3, "barp_target": {"cost_per_1k": 1.0}}, "at most one of 'barp_w_c'"),
    ({"barp_target": {"cost_per_1k": 1.0}}, "no calibration curve"),
    ({"barp_target": {"budget": 1.0}}, r"metadata\['barp_target'\]: must be a mapping of"),
    ({"barp_prompt_id": 7}, r"metadata\['barp_prompt_id'\]: must be a non-empty string, got 7"),
])
def test_a_malformed_preference_is_one_clear_error_and_nothing_is_logged(trained, tmp_path, metadata, message):
    from barp.integrations.litellm import use_barp

    ckpt, barp_router = trained
    router = litellm.Router(model_list=model_list(barp_router.models))
    with use_barp(router, ckpt, str(tmp_path)) as strategy:
        with pytest.raises(ConfigError, match=message):
            ask(router, PROMPTS[0], metadata)
        with pytest.raises(ConfigError, match="no message with role 'user'"):
            router.completion(model="barp", messages=[{"role": "system", "content": "x"}], mock_response="ok")
        assert strategy.service.log.decision_lines == 0 and not read_jsonl(tmp_path / DECISIONS_FILE)


def test_deployments_that_do_not_cover_barps_models_are_refused_when_attached(trained, tmp_path):
    from barp.integrations.litellm import BarpRoutingStrategy
    from barp.service.cli import build_service

    ckpt, barp_router = trained
    models = barp_router.models
    service = build_service(ckpt, str(tmp_path))
    try:
        cases = [
            (model_list(models)[:-1], rf"group 'barp' has no deployment for the barp models \['{models[-1]}'\]"),
            (model_list([*models, "gpt-5"]), "model_info.barp_model 'gpt-5' is not a model of the trained router"),
            (model_list([*models, models[0]]), f"'{models[0]}' is named by two deployments"),
            (model_list(models) + [{"model_name": "barp", "litellm_params": {"model": "openai/x", "api_key": "k"}}],
             "deployment 'openai/x': model_info.barp_model is missing"),
            ([{"model_name": "other", "litellm_params": {"model": "openai/x", "api_key": "k"}}], "has no barp group"),
        ]
        for deployments, message in cases:
            with pytest.raises(ConfigError, match=message):
                BarpRoutingStrategy(litellm.Router(model_list=deployments), service)
        with pytest.raises(ConfigError, match=r"group_w_c\['barp'\]: must be a number in \[0, 1\]"):
            BarpRoutingStrategy(litellm.Router(model_list=model_list(models)), service, group_w_c={"barp": 2})
        with pytest.raises(ConfigError, match="group_w_c: 'nope' is not a barp group"):
            BarpRoutingStrategy(litellm.Router(model_list=model_list(models)), service, group_w_c={"nope": 0.2})
        # another group of the same Router: its only deployment serves it, several are refused
        others = [{"model_name": g, "litellm_params": {"model": f"openai/{g}-{i}", "api_key": "k"}}
                  for g, n in (("solo", 1), ("pair", 2)) for i in range(n)]
        router = litellm.Router(model_list=model_list(models) + others)
        strategy = BarpRoutingStrategy(router, service).attach()
        try:
            answer = ask(router, PROMPTS[0], group="solo")
            assert answer._hidden_params["litellm_model_name"] == "openai/solo-0"
            with pytest.raises(ConfigError, match="group 'pair' is not a barp group .* has 2 deployments"):
                ask(router, PROMPTS[0], group="pair")
            assert service.log.decision_lines == 0
        finally:
            litellm.logging_callback_manager.remove_callback_from_all_lists(strategy.logger)
    finally:
        service.log.close()


def test_a_calibration_file_resolves_per_request_targets(trained, tmp_path):
    from barp.cli import main
    from barp.integrations.litellm import use_barp
    from barp.service.calibrate import Target, choose, load_calibration

    ckpt, barp_router = trained
    main(["calibrate", "--ckpt_path", ckpt, "--output", str(tmp_path / "cal"), "--grid", "11", "--bootstrap", "20"])
    _, curve = load_calibration(tmp_path / "cal" / "calibration.json")
    target = {"cost_per_1k": float(sorted(curve.cost_per_1k)[5])}
    router = litellm.Router(model_list=model_list(barp_router.models))
    with use_barp(router, ckpt, str(tmp_path / "log"), calibration=str(tmp_path / "cal" / "calibration.json")) \
            as strategy:
        response = ask(router, PROMPTS[2], {"barp_target": target})
        decisions = read_jsonl(tmp_path / "log" / DECISIONS_FILE)
        assert strategy.flush(timeout=30)
    w_c = float(curve.w_c[choose(curve, Target(**target))])
    assert decisions[0]["w_c"] == w_c and decisions[0]["preference"] == "target"
    assert served_barp_model(router, response) == barp_router.route(PROMPTS[2:3], w_c=w_c)[0].model
