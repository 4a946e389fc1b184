"""barp serve: the HTTP API, the crash-safe feedback log (with a SIGKILL in a burst of feedback), exploring routing
and the online budget controller."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from barp.data.sources.logs import read_log
from barp.errors import ConfigError, DataValidationError
from barp.learning.rl import exploration_probabilities
from barp.models.serving import sample_exploring
from barp.service.budget import BudgetController
from barp.service.feedback_log import DECISIONS_FILE, LOG_FILE, FeedbackLog
from tests.helpers import ROOT
from tests.helpers.cli import tiny_checkpoint

RECIPE = str(ROOT / "configs" / "experiments" / "synthetic.yaml")
PROMPTS = [f"Question {i}: what is {i} times {i + 3}?" for i in range(32)]


@pytest.fixture(scope="module")
def ckpt() -> str:
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def client(ckpt, tmp_path_factory):
    from fastapi.testclient import TestClient

    from barp.service.app import create_app
    from barp.service.cli import build_service

    service = build_service(ckpt, str(tmp_path_factory.mktemp("serve-log")), w_c=0.3)
    with TestClient(create_app(service, max_batch=8, max_prompt_chars=1000), raise_server_exceptions=False) as c:
        yield c, service


# ---------------------------------------------------------------------- the API in process
def test_route_a_batch_greedy_then_feedback_makes_a_readable_log(client):
    c, service = client
    answer = c.post("/route", json={"prompts": PROMPTS[:5], "w_c": 0.2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["w_c"] == 0.2 and body["preference"] == "w_c" and body["mode"] == "greedy"
    greedy = service.router.route(PROMPTS[:5], w_c=0.2)
    assert [d["model"] for d in body["decisions"]] == [g.model for g in greedy]
    assert [d["probability"] for d in body["decisions"]] == [1.0] * 5  # a deterministic policy's propensity
    np.testing.assert_allclose([d["policy_probability"] for d in body["decisions"]],
                               [g.probability for g in greedy], rtol=1e-6)
    assert len({d["decision_id"] for d in body["decisions"]}) == 5
    one = c.post("/route", json={"prompt": PROMPTS[7]}).json()  # no preference: the server default
    assert one["w_c"] == 0.3 and one["preference"] == "default" and len(one["decisions"]) == 1
    for i, d in enumerate(body["decisions"][:3]):
        ok = c.post("/feedback", json={"decision_id": d["decision_id"], "score": 1.0, "cost": 0.001 * (i + 1)})
        assert ok.status_code == 200, ok.text
    again = c.post("/feedback", json={"decision_id": body["decisions"][0]["decision_id"], "score": 0, "cost": 0})
    assert again.status_code == 409 and "already has its feedback" in again.json()["error"]
    log = read_log(service.log.path, models=service.models)
    assert log.num_rows == 3 and log.prompts == PROMPTS[:3]
    np.testing.assert_allclose(log.cost, [0.001, 0.002, 0.003])
    np.testing.assert_allclose(log.w_c, 0.2)
    assert [log.models[a] for a in log.actions] == [d["model"] for d in body["decisions"][:3]]
    health = c.get("/health").json()
    assert health["logged_rows"] == 3 and health["pending_decisions"] == 3 and health["status"] == "ok"
    assert c.get("/models").json()["models"] == service.models


def test_exploring_routing_is_seeded_and_logs_the_sampled_models_probability(client):
    c, service = client
    request = {"prompts": PROMPTS[:8], "w_c": 0.4, "explore": {"temperature": 2.0, "epsilon": 0.2}, "seed": 7}
    a, b = c.post("/route", json=request).json(), c.post("/route", json=request).json()
    assert a["mode"] == "explore" and a["seed"] == 7
    assert [d["model"] for d in a["decisions"]] == [d["model"] for d in b["decisions"]]
    probs = service.router.probabilities(PROMPTS[:8], 0.4)
    mix = exploration_probabilities(torch.log(probs), 2.0, 0.2).double().numpy()  # log p: the logits up to a constant
    picked = [service.models.index(d["model"]) for d in a["decisions"]]
    np.testing.assert_allclose([d["probability"] for d in a["decisions"]], mix[np.arange(8), picked], rtol=1e-5)
    np.testing.assert_allclose([d["policy_probability"] for d in a["decisions"]],
                               probs.double().numpy()[np.arange(8), picked], rtol=1e-6)
    uniform = c.post("/route", json={**request, "explore": {"epsilon": 1.0}}).json()
    np.testing.assert_allclose([d["probability"] for d in uniform["decisions"]], 1 / len(service.models))


def test_the_one_exploring_sampler_is_seeded_and_draws_from_the_tempered_softmax_mixed_with_uniform():
    logits = torch.tensor([[2.0, 0.0, -1.0]]).repeat(64, 1)
    drawn, serving = sample_exploring(logits, 3.0, 0.3, seed=5)
    tempered = torch.softmax(logits / 3, dim=-1)
    torch.testing.assert_close(serving, 0.7 * tempered + 0.1)
    assert torch.equal(drawn, sample_exploring(logits, 3.0, 0.3, seed=5)[0]) and len(set(drawn.tolist())) == 3


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"prompts": []}, 422, "field 'prompts': the list is empty"),
    ({"prompts": ["hi"], "w_c": 1.5}, 422, "field 'w_c': Input should be less than or equal to 1, got 1.5"),
    ({"prompts": ["hi"], "w_c": -0.1}, 422, "field 'w_c'"),
    ({"prompts": ["hi"], "w_c": "0.5"}, 422, "field 'w_c'"),
    ({"prompts": ["hi"] * 9}, 413, "9 prompts is over this server's batch limit of 8"),
    ({"prompts": ["x" * 1001]}, 413, "field 'prompts[0]': 1001 characters"),
    ({"prompts": ["hi", "  "]}, 422, "field 'prompts[1]': the prompt is empty"),
    ({"prompts": ["hi", 3]}, 422, "field 'prompts[1]'"),
    ({"prompt": "hi", "prompts": ["hi"]}, 422, "exactly one of 'prompt'"),
    ({}, 422, "exactly one of 'prompt'"),
    ({"prompt": "hi", "wc": 0.5}, 422, "field 'wc': Extra inputs are not permitted"),
    ({"prompt": "hi", "w_c": 0.5, "target": {"cost_per_1k": 1.0}}, 422, "at most one of 'w_c'"),
    ({"prompt": "hi", "target": {"cost_per_1k": 1.0}}, 422, "no calibration curve"),
    ({"prompt": "hi", "target": {"max_share": {"gpt-5": 0.2}}}, 422, "unknown model 'gpt-5'"),
    ({"prompt": "hi", "explore": {"temperature": 0}}, 422, "field 'explore.temperature'"),
])
def test_bad_route_requests_get_one_clear_4xx(client, body, status, message):
    c, _ = client
    answer = c.post("/route", json=body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"decision_id": "nope", "score": 1, "cost": 0}, 404, "unknown decision id 'nope'"),
    ({"decision_id": "x", "score": 2, "cost": 0}, 422, "field 'score'"),
    ({"decision_id": "x", "score": 1, "cost": -1}, 422, "field 'cost'"),
    ({"decision_id": "x", "score": 1}, 422, "field 'cost': Field required"),
])
def test_bad_feedback_gets_one_clear_4xx(client, body, status, message):
    c, _ = client
    answer = c.post("/feedback", json=body)
    assert answer.status_code == status and message in answer.json()["error"], answer.text


def test_a_body_that_is_not_json_is_a_422(client):
    c, _ = client
    answer = c.post("/route", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "not valid JSON" in answer.json()["error"]


# ---------------------------------------------------------------------- the log on disk
def decision(i: int) -> dict:
    return {"decision_id": f"d{i}", "prompt": f"prompt {i}", "model": ["a", "b"][i % 2], "propensity": 0.5,
            "w_c": 0.5, "timestamp": "t", "prompt_id": f"p{i}", "note": "test"}


def test_a_partial_last_line_is_dropped_and_pending_decisions_survive_a_restart(tmp_path):
    log = FeedbackLog(tmp_path)
    log.record_decisions([decision(i) for i in range(4)])
    log.record_feedback("d0", 1.0, 0.1, "t")
    log.record_feedback("d1", 0.0, 0.2, "t")
    log.close()
    with open(tmp_path / LOG_FILE, "ab") as fh:  # a crash in the middle of the third row
        fh.write(b'{"prompt":"prompt 2","model":"a","propen')
    with open(tmp_path / DECISIONS_FILE, "ab") as fh:
        fh.write(b'{"decision_id":"d9","pro')
    again = FeedbackLog(tmp_path)
    assert again.dropped_bytes == {DECISIONS_FILE: 24, LOG_FILE: 40}
    assert again.num_rows == 2 and again.num_pending == 2  # d2, d3 still wait; d9 never reached the disk
    again.record_feedback("d2", 1.0, 0.3, "t")
    log = read_log(tmp_path / LOG_FILE)
    assert log.prompts == ["prompt 0", "prompt 1", "prompt 2"]
    np.testing.assert_allclose(log.cost, [0.1, 0.2, 0.3])


def test_a_damaged_complete_line_is_refused_with_its_line_number(tmp_path):
    row = {"decision_id": "d1", "prompt": "a", "model": "m", "propensity": 1.0, "score": 1.0, "cost": 0.0}
    (tmp_path / LOG_FILE).write_text(f'{json.dumps(row)}\nnot json\n{{"prompt": "b"}}\n')
    with pytest.raises(DataValidationError, match="line 2 is not valid JSON"):
        FeedbackLog(tmp_path)


# ---------------------------------------------------------------------- a real server, killed with SIGKILL
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(ckpt: str, log_dir: str, port: int) -> None:
    import uvicorn

    from barp.service.app import create_app
    from barp.service.cli import build_service

    uvicorn.run(create_app(build_service(ckpt, log_dir, w_c=0.5)), host="127.0.0.1", port=port, log_level="error")


def _start(ckpt: str, log_dir: Path, port: int) -> multiprocessing.Process:
    """A server forked from a fork server: a single-threaded process that imported barp's service once, so a server
    starts fast without copying this multi-threaded test process (a fork of it could inherit locks held by its
    threads mid-operation: the encoder once failed to load in such a server under the full suite)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["barp.service.app", "barp.service.cli", "barp.models.barp", "test_service"])
    proc = ctx.Process(target=_serve, args=(ckpt, str(log_dir), port), daemon=True)
    proc.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start within 60 s")


def test_sigkill_in_a_burst_of_feedback_leaves_a_valid_log_complete_up_to_the_kill(ckpt, tmp_path):
    port, log_dir = _free_port(), tmp_path / "log"
    server = _start(ckpt, log_dir, port)
    url = f"http://127.0.0.1:{port}"
    try:
        routed = httpx.post(f"{url}/route", json={"prompts": PROMPTS, "w_c": 0.1}, timeout=30).json()["decisions"]
        routed += httpx.post(f"{url}/route", json={"prompts": PROMPTS, "w_c": 0.9}, timeout=30).json()["decisions"]
        acknowledged: list[str] = []
        lock = threading.Lock()

        def send(item: tuple[int, dict]) -> None:
            i, d = item
            try:
                r = httpx.post(f"{url}/feedback", json={"decision_id": d["decision_id"], "score": (i % 3) / 2,
                                                        "cost": 1e-4 * (i + 1)}, timeout=10)
            except httpx.HTTPError:
                return  # the server died under this request
            if r.status_code == 200:
                with lock:
                    acknowledged.append(d["decision_id"])
                    if len(acknowledged) == 20:
                        os.kill(server.pid, signal.SIGKILL)  # in the middle of the burst

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(send, enumerate(routed[:48])))
        server.join(10)
        assert server.exitcode == -signal.SIGKILL
        assert 20 <= len(acknowledged) < 48
    finally:
        server.kill()
    # The log is valid, holds every acknowledged feedback, and at most the requests in flight besides.
    sent = {d["decision_id"] for d in routed[:48]}
    rows = [json.loads(line) for line in (log_dir / LOG_FILE).read_text().splitlines()]
    logged = [r["decision_id"] for r in rows]
    assert set(acknowledged) <= set(logged) <= sent and len(logged) == len(set(logged))
    assert len(logged) - len(acknowledged) <= 4  # the pool's requests in flight
    by_id = {d["decision_id"]: d for d in routed}
    assert all(r["model"] == by_id[r["decision_id"]]["model"] for r in rows)
    restarted = _start(ckpt, log_dir, port)
    try:
        health = httpx.get(f"{url}/health").json()
        assert health["logged_rows"] == len(logged) and health["pending_decisions"] == 64 - len(logged)
        later = next(d for d in routed if d["decision_id"] not in logged)  # a decision id from before the kill
        assert httpx.post(f"{url}/feedback", json={"decision_id": later["decision_id"], "score": 1,
                                                   "cost": 0.0}).status_code == 200
        assert httpx.post(f"{url}/feedback", json={"decision_id": logged[0], "score": 1, "cost": 0}).status_code == 409
    finally:
        restarted.kill()
        restarted.join(10)
    models = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["arms"]["model_names"]
    # the router's models: these made-up prompts may all fall back to one model (the shift guard)
    assert read_log(log_dir / LOG_FILE, models=models).num_rows == len(logged) + 1


# ---------------------------------------------------------------------- the budget controller
def test_the_controller_raises_w_c_on_overspend_and_lowers_it_on_underspend():
    ctl = BudgetController(budget_per_1k=1.0, w_c=0.5, step=0.01)
    assert ctl.update(0.001) == pytest.approx(0.5)  # exactly on budget
    assert ctl.update(0.003) == pytest.approx(0.52)  # 3x the budget
    assert ctl.update(0.0) == pytest.approx(0.51)
    assert ctl.spend_per_1k == pytest.approx(4 / 3)
    with pytest.raises(ConfigError, match="budget_per_1k must be a number > 0"):
        BudgetController(budget_per_1k=0)


def test_the_controller_keeps_spend_near_budget_on_a_stream():
    """A toy market: the price of a query falls as w_c rises; the stream's spend ends within a few % of budget."""
    rng = np.random.default_rng(0)
    ctl = BudgetController(budget_per_1k=2.0, w_c=0.0, step=0.02)
    for _ in range(3000):
        ctl.update(rng.exponential(0.005 * (1 - ctl.w_c) ** 2))
    assert ctl.spend_per_1k == pytest.approx(2.0, rel=0.05)
    # the bound: overspend <= budget * (w_max - w_c0) / step
    assert (ctl.spent - ctl.budget * ctl.served) <= ctl.budget * 1.0 / 0.02 + 1e-12


def test_budget_serving_updates_the_controller_and_a_restart_replays_it(ckpt, tmp_path):
    from barp.service.cli import build_service

    service = build_service(ckpt, str(tmp_path), budget_per_1k=0.1, budget_step=0.01, w_c=0.2)
    out = service.route(PROMPTS[:3])
    assert out["preference"] == "budget" and out["w_c"] == 0.2
    for d in out["decisions"]:
        service.feedback(d["decision_id"], 1.0, 0.001)  # 10x the budget: w_c rises
    high = service.controller.w_c
    assert high == pytest.approx(0.2 + 3 * 0.01 * 9)
    service.feedback(service.route(PROMPTS[:1], w_c=0.0)["decisions"][0]["decision_id"], 1.0, 1.0)  # not budget
    service.log.close()
    assert build_service(ckpt, str(tmp_path), budget_per_1k=0.1, budget_step=0.01, w_c=0.2).controller.w_c == high
