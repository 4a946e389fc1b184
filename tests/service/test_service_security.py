"""barp serve is safe to expose: API keys, validated feedback and a clipped, resettable budget controller, size and time
limits with expiring decisions and a compacted decisions file, no 500 for any input, one writer per log folder, and no
server paths in answers."""

from __future__ import annotations

import asyncio
import errno
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from barp.data.sources.logs import read_log
from barp.errors import ConfigError, DataValidationError
from barp.service import feedback_log
from barp.service.app import create_app
from barp.service.budget import BudgetController
from barp.service.feedback_log import DECISIONS_FILE, EXPIRED_FILE, LOG_FILE, FeedbackLog
from barp.service.guard import Guard, KeyRing, read_key_file
from barp.service.routing import Explore, RoutingService

ROUTE_KEY = "route-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
GRADER_KEY = "grader-key-0123456789abcdef"


@pytest.fixture(scope="module")
def ckpt() -> str:
    from tests.helpers.cli import tiny_checkpoint

    return tiny_checkpoint()


@pytest.fixture(scope="module")
def router(ckpt):
    from barp.models.trained import TrainedRouter

    loaded = TrainedRouter.from_checkpoint(ckpt)
    loaded.encoder.encode(["warm-up"])
    return loaded


def make(router, folder: Path, keys: KeyRing | None = None, controller: BudgetController | None = None,
         max_cost_usd: float | None = None, log_kwargs: dict | None = None, **app_kwargs):
    """A service on ``folder`` and a TestClient of its app."""
    log = FeedbackLog(folder, **(log_kwargs or {}))
    service = RoutingService(router, log, w_c=0.5, controller=controller, max_cost_usd=max_cost_usd)
    return service, TestClient(create_app(service, max_batch=8, max_prompt_chars=1000, keys=keys, **app_kwargs),
                               raise_server_exceptions=False)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------------- 1. keys
def test_with_keys_every_endpoint_but_health_needs_one_and_rows_record_its_id(router, tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# team keys\nalice:{ROUTE_KEY}\n\n{OTHER_KEY}\n")
    keys = KeyRing.from_sources(api_key_file=str(key_file), environ={})
    service, c = make(router, tmp_path / "log", keys=keys)
    with c:
        for path, method in (("/route", "post"), ("/feedback", "post"), ("/models", "get")):
            answer = getattr(c, method)(path, **({"json": {"prompt": "hi"}} if method == "post" else {}))
            assert answer.status_code == 401 and "needs an API key" in answer.json()["error"], answer.text
        wrong = c.post("/route", json={"prompt": "hi"}, headers=bearer("not-the-key-0123456789"))
        assert wrong.status_code == 401 and wrong.json() == {"error": "the API key is not valid"}
        assert c.get("/health").status_code == 200  # liveness probes need no key
        assert service.log.decision_lines == 0
        routed = c.post("/route", json={"prompts": ["a", "b"]}, headers=bearer(ROUTE_KEY)).json()["decisions"]
        other = c.post("/route", json={"prompt": "c"}, headers={"X-API-Key": OTHER_KEY})
        assert other.status_code == 200
        assert c.post("/feedback", json={"decision_id": routed[0]["decision_id"], "score": 1, "cost": 0.01},
                      headers={"X-API-Key": OTHER_KEY}).status_code == 200
        assert c.get("/models", headers=bearer(ROUTE_KEY)).status_code == 200
    rows = lines(tmp_path / "log" / LOG_FILE)
    assert len(rows) == 1 and rows[0]["route_key_id"] == "alice"
    assert rows[0]["key_id"] == "sha256:" + __import__("hashlib").sha256(OTHER_KEY.encode()).hexdigest()[:8]
    on_disk = "".join(p.read_text() for p in (tmp_path / "log").glob("*.jsonl"))
    assert ROUTE_KEY not in on_disk and OTHER_KEY not in on_disk


def test_only_grader_keys_write_outcomes_when_they_are_set(router, tmp_path):
    keys = KeyRing.from_sources(environ={"BARP_API_KEY": ROUTE_KEY, "BARP_FEEDBACK_KEY": GRADER_KEY})
    service, c = make(router, tmp_path, keys=keys)
    with c:
        decision = c.post("/route", json={"prompt": "hi"}, headers=bearer(ROUTE_KEY)).json()["decisions"][0]
        body = {"decision_id": decision["decision_id"], "score": 1, "cost": 0.0}
        refused = c.post("/feedback", json=body, headers=bearer(ROUTE_KEY))  # a client racing the grader
        assert refused.status_code == 403 and "only grader keys" in refused.json()["error"]
        assert c.post("/route", json={"prompt": "hi"}, headers=bearer(GRADER_KEY)).status_code == 403
        assert service.log.num_rows == 0
        assert c.post("/feedback", json=body, headers=bearer(GRADER_KEY)).status_code == 200
    assert service.log.num_rows == 1


def test_a_short_key_is_refused_without_showing_it(tmp_path):
    (tmp_path / "keys").write_text("bob:short\n")
    with pytest.raises(ConfigError, match=r"line 1: a key must be at least 16") as err:
        read_key_file(tmp_path / "keys", "--api_key_file")
    assert "short" not in str(err.value).split("got")[0].replace("line 1", "")
    with pytest.raises(ConfigError, match="need routing keys too"):
        KeyRing.from_sources(environ={"BARP_FEEDBACK_KEY": GRADER_KEY})


def serve_until_uvicorn(argv: list[str], monkeypatch, capsys) -> tuple[int | None, dict, str]:
    """Run ``barp serve argv`` with uvicorn.run replaced (nothing binds): exit code, uvicorn's kwargs, stderr."""
    import uvicorn

    from barp.cli import main

    served: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(kwargs, app=app))
    code = None
    try:
        main(["serve", *argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, served, capsys.readouterr().err


def test_serve_refuses_a_non_loopback_host_without_a_key(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BARP_API_KEY", raising=False)
    argv = ["--ckpt_path", ckpt, "--log_dir", str(tmp_path / "log"), "--host", "0.0.0.0"]
    code, served, err = serve_until_uvicorn(argv, monkeypatch, capsys)
    assert code == 2 and not served and not (tmp_path / "log").exists()
    last = err.strip().splitlines()[-1]
    assert last.startswith("barp serve: error: --host '0.0.0.0' is not a loopback address and no API key is set")
    assert "--allow_unauthenticated true" in last
    code, served, _ = serve_until_uvicorn([*argv, "--allow_unauthenticated", "true"], monkeypatch, capsys)
    assert code is None and served["host"] == "0.0.0.0"
    monkeypatch.setenv("BARP_API_KEY", ROUTE_KEY)
    code, served, _ = serve_until_uvicorn(argv, monkeypatch, capsys)
    assert code is None and served["host"] == "0.0.0.0"
    with TestClient(served["app"]) as c:  # the app uvicorn would have served: keyed
        assert c.post("/route", json={"prompt": "hi"}).status_code == 401
        assert c.get("/models", headers=bearer(ROUTE_KEY)).status_code == 200


# ---------------------------------------------------------------------- 2. validated feedback, the controller
def test_a_cost_over_the_servers_bound_is_a_422_naming_the_field(router, tmp_path):
    from barp.service.cli import default_max_cost

    assert default_max_cost(0.002) == 2.0 and default_max_cost(1e-6) == 1.0 and default_max_cost(5.0) == 1000.0
    service, c = make(router, tmp_path, max_cost_usd=5.0)
    with c:
        decision = c.post("/route", json={"prompt": "hi"}).json()["decisions"][0]["decision_id"]
        for body, field in (({"score": 1, "cost": 6.0}, "field 'cost': 6.0 USD is over this server's bound of 5 USD"),
                            ({"score": 1.5, "cost": 0.1}, "field 'score'"),
                            ({"score": 1, "cost": "1"}, "field 'cost'")):
            answer = c.post("/feedback", json={"decision_id": decision, **body})
            assert answer.status_code == 422 and answer.json()["error"].startswith(field), answer.text
        assert service.log.num_rows == 0
        assert c.post("/feedback", json={"decision_id": decision, "score": 1, "cost": 5.0}).status_code == 200


def test_one_huge_cost_then_zero_costs_barely_move_the_controller(router, tmp_path):
    """One huge cost, then 120 zero costs (poisoned feedback): refused for a client, bounded for a grader, and
    resettable."""
    keys = KeyRing.from_sources(environ={"BARP_API_KEY": ROUTE_KEY, "BARP_FEEDBACK_KEY": GRADER_KEY})
    ctl = BudgetController(budget_per_1k=0.5, w_c=0.5, step=0.01, max_move=0.1)
    service, c = make(router, tmp_path, keys=keys, controller=ctl, max_cost_usd=20.0)
    with c:
        ids = [d["decision_id"] for d in c.post("/route", json={"prompts": [f"q{i}" for i in range(8)]},
                                                headers=bearer(ROUTE_KEY)).json()["decisions"]]
        for _ in range(16):
            ids += [d["decision_id"] for d in c.post("/route", json={"prompts": [f"q{i}" for i in range(8)]},
                                                     headers=bearer(ROUTE_KEY)).json()["decisions"]]
        poison = [(ids[0], 1e308), (ids[0], 20.0)] + [(d, 0.0) for d in ids[1:121]]
        for headers, status in (({}, 401), (bearer(ROUTE_KEY), 403)):  # a client, with and without a key
            for decision_id, cost in poison:
                r = c.post("/feedback", json={"decision_id": decision_id, "score": 1, "cost": cost}, headers=headers)
                assert r.status_code == status
        assert ctl.w_c == 0.5 and ctl.served == 0 and service.log.num_rows == 0
        # a grader (trusted, or its key stolen): 1e308 is refused, the bound itself moves w_c by at most max_move
        grader = bearer(GRADER_KEY)
        assert c.post("/feedback", json={"decision_id": ids[0], "score": 1, "cost": 1e308},
                      headers=grader).status_code == 422
        assert c.post("/feedback", json={"decision_id": ids[0], "score": 1, "cost": 20.0},
                      headers=grader).status_code == 200
        assert 0.5 < ctl.w_c <= 0.6 + 1e-12  # unclipped: 0.5 + 0.01 * (20 / 0.0005 - 1) pins it to 1.0
        for decision_id in ids[1:121]:
            assert c.post("/feedback", json={"decision_id": decision_id, "score": 1, "cost": 0.0},
                          headers=grader).status_code == 200
        assert ctl.w_c == 0.0 and ctl.served == 121  # a zero cost moves w_c by step (0.01): 120 of them, 1.2
        reset = c.post("/budget/reset", json={}, headers=bearer(ROUTE_KEY))
        assert reset.status_code == 403  # only graders reset
        reset = c.post("/budget/reset", json={}, headers=grader)
        assert reset.status_code == 200 and reset.json()["budget"]["w_c"] == 0.5 and ctl.served == 0
        c.post("/feedback", json={"decision_id": ids[121], "score": 1, "cost": 0.001}, headers=grader)  # 2x budget
    service.log.close()
    assert json.loads((tmp_path / "budget_reset.json").read_text())["after_rows"] == 121
    again = BudgetController(budget_per_1k=0.5, w_c=0.5, step=0.01, max_move=0.1)
    RoutingService(router, FeedbackLog(tmp_path), w_c=0.5, controller=again)  # a restart replays after the reset
    assert again.served == 1 and again.w_c == pytest.approx(0.51)


def test_one_row_moves_the_controller_by_at_most_max_move():
    ctl = BudgetController(budget_per_1k=0.5, w_c=0.5, step=0.01, max_move=0.1)
    assert ctl.update(1000.0) == pytest.approx(0.6)
    assert ctl.update(0.0) == pytest.approx(0.59)
    ctl.reset(0.3)
    assert ctl.w_c == 0.3 and ctl.served == 0 and ctl.spent == 0.0


# ---------------------------------------------------------------------- 3. limits
def _asgi(app, scope_headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, dict, int]:
    """Call ``app`` with a POST /route whose body arrives in ``chunks``: status, body, chunks read."""
    read = 0
    sent: list[dict] = []

    async def receive():
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/route", "raw_path": b"/route", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), *scope_headers], "http_version": "1.1",
             "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1), "root_path": ""}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), read


def test_the_body_limit_is_checked_before_the_body_is_read(router, tmp_path):
    service, c = make(router, tmp_path, max_body_bytes=4096)
    chunk = b"x" * 1024
    status, body, read = _asgi(c.app, [(b"content-length", str(100 * 2**20).encode())], [chunk] * 100)
    assert status == 413 and read == 0 and "over this server's limit of 4096 bytes" in body["error"]
    status, body, read = _asgi(c.app, [(b"transfer-encoding", b"chunked")], [chunk] * 100)  # no Content-Length
    assert status == 413 and read <= 5 and "--max_body_bytes" in body["error"]
    guard = Guard(None, KeyRing(), 10)
    assert guard.max_body_bytes == 10
    with c:
        assert c.post("/route", content=b"{" + b" " * 5000 + b"}",
                      headers={"content-type": "application/json"}).status_code == 413
    assert service.log.decision_lines == 0


def test_prompt_ids_total_characters_and_time_are_capped(router, tmp_path, monkeypatch):
    service, c = make(router, tmp_path, max_request_chars=1500, max_prompt_id_chars=16, request_timeout_s=0.3)
    with c:
        answer = c.post("/route", json={"prompt": "hi", "prompt_ids": ["x" * 17]})
        assert answer.status_code == 413 and answer.json()["error"].startswith("field 'prompt_ids[0]': 17 characters")
        answer = c.post("/route", json={"prompts": ["y" * 900, "z" * 900]})
        assert answer.status_code == 413 and "1800 characters in all" in answer.json()["error"]
        slow = service.router.route_prompts

        def sleepy(*args, **kwargs):
            time.sleep(0.8)
            return slow(*args, **kwargs)

        monkeypatch.setattr(service.router, "route_prompts", sleepy)
        start = time.monotonic()
        answer = c.post("/route", json={"prompt": "hi"})
        assert answer.status_code == 503 and "longer than this server's limit of 0.3 s" in answer.json()["error"]
        assert time.monotonic() - start < 0.75  # answered at the limit, not when the work ended
        time.sleep(1.0)  # the abandoned work ends and records nothing
    assert service.log.decision_lines == 0 and service.log.num_pending == 0


def test_pending_decisions_expire_and_their_late_feedback_is_a_410(router, tmp_path):
    now = [1_000_000.0]
    service, c = make(router, tmp_path, log_kwargs={"decision_ttl_s": 60, "clock": lambda: now[0]})
    with c:
        old = c.post("/route", json={"prompts": ["a", "b"]}).json()["decisions"]
        now[0] += 61
        assert c.get("/health").json()["pending_decisions"] == 0
        late = c.post("/feedback", json={"decision_id": old[0]["decision_id"], "score": 1, "cost": 0.1})
        assert late.status_code == 410 and "expired without feedback (after 60 s" in late.json()["error"]
    expired = lines(tmp_path / EXPIRED_FILE)
    assert [e["decision_id"] for e in expired] == [d["decision_id"] for d in old]
    assert all(e["expired_at"] and e["note"] == "expired: no feedback within 60 s" for e in expired)
    assert service.log.num_rows == 0


def test_the_decisions_file_is_compacted_atomically(router, tmp_path):
    service, c = make(router, tmp_path, log_kwargs={"compact_after": 5})
    with c:
        ids = [d["decision_id"] for d in c.post("/route", json={"prompts": [f"p{i}" for i in range(8)]}).json()
               ["decisions"]]
        ids += [d["decision_id"] for d in c.post("/route", json={"prompts": ["p8", "p9"]}).json()["decisions"]]
        for decision_id in ids[:7]:
            assert c.post("/feedback", json={"decision_id": decision_id, "score": 1, "cost": 0.1}).status_code == 200
    kept = [d["decision_id"] for d in lines(tmp_path / DECISIONS_FILE)]
    assert kept == ids[6:] or kept == ids[7:]  # compacted once 6 answered lines outnumbered the 4 pending
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file of the atomic rewrite is left
    service.log.close()
    again = FeedbackLog(tmp_path)
    assert again.num_pending == 3 and again.num_rows == 7


# ---------------------------------------------------------------------- 4. no 500 for any input
@pytest.mark.parametrize(("raw", "status", "message"), [
    ('{"prompt": "bad \\ud800 text"}', 422, "field 'prompt': holds a lone surrogate '\\ud800' at character 4"),
    ('{"prompts": ["ok", "\\udfff"]}', 422, "field 'prompts[1]': holds a lone surrogate"),
    ('{"prompt": "hi", "prompt_ids": ["\\ud800"]}', 422, "field 'prompt_ids[0]': holds a lone surrogate"),
    ('{"prompt": "hi", "explore": {"temperature": 1e-310}}', 422, "field 'explore.temperature'"),
    ('{"prompt": "hi", "explore": {"temperature": 1e-320}}', 422, "field 'explore.temperature'"),
    ('{"prompt": "hi", "target": {"max_share": {"\\ud800": 0.5}}}', 422, "field 'target'"),
])
def test_hostile_route_inputs_are_one_4xx(router, tmp_path, raw, status, message):
    service, c = make(router, tmp_path)
    with c:
        answer = c.post("/route", content=raw.encode(), headers={"content-type": "application/json"})
    assert answer.status_code == status and answer.json()["error"].startswith(message), answer.text
    assert service.log.decision_lines == 0
    with pytest.raises(ConfigError, match="explore.temperature"):
        Explore(temperature=1e-320)


def test_a_surrogate_decision_id_is_a_422_not_a_500(router, tmp_path):
    _, c = make(router, tmp_path)
    with c:
        answer = c.post("/feedback", content=b'{"decision_id": "\\ud800", "score": 1, "cost": 0}',
                        headers={"content-type": "application/json"})
    assert answer.status_code == 422 and answer.json()["error"].startswith("field 'decision_id': Input should be a "
                                                                           "valid string")


def test_a_full_disk_is_a_503_and_the_log_stays_as_it_was(router, tmp_path, monkeypatch):
    service, c = make(router, tmp_path)
    with c:
        decision = c.post("/route", json={"prompt": "hi"}).json()["decisions"][0]["decision_id"]
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(feedback_log.os, "write", full)
        for path, body in (("/route", {"prompt": "again"}),
                           ("/feedback", {"decision_id": decision, "score": 1, "cost": 0.1})):
            answer = c.post(path, json=body)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == ("the server cannot write its log (No space left on device); nothing of "
                                              "this request was recorded: retry later")
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
        assert service.log.num_rows == 0 and service.log.num_pending == 1
        monkeypatch.undo()
        assert c.post("/feedback", json={"decision_id": decision, "score": 1, "cost": 0.1}).status_code == 200


# ---------------------------------------------------------------------- 5. one writer per log folder
def test_a_second_writer_on_one_log_folder_is_refused(router, ckpt, tmp_path, monkeypatch, capsys):
    first = FeedbackLog(tmp_path)
    with pytest.raises(ConfigError, match=r"is in use by another barp serve \(pid \d+\): one server per log folder"):
        FeedbackLog(tmp_path)
    code, served, err = serve_until_uvicorn(["--ckpt_path", ckpt, "--log_dir", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and not served and "barp serve: error: --log_dir" in err and "in use by another" in err
    first.close()
    FeedbackLog(tmp_path).close()  # the lock goes with its holder


def test_duplicate_feedback_for_one_decision_is_refused_by_restart_and_read_log(router, tmp_path):
    service, c = make(router, tmp_path)
    with c:
        ids = [d["decision_id"] for d in c.post("/route", json={"prompts": ["a", "b"]}).json()["decisions"]]
        for decision_id in ids:
            c.post("/feedback", json={"decision_id": decision_id, "score": 1, "cost": 0.1})
    service.log.close()
    rows = (tmp_path / LOG_FILE).read_text().splitlines()
    twin = json.loads(rows[0])
    twin["score"] = 0.0  # a second server's outcome for the same decision
    (tmp_path / LOG_FILE).write_text("\n".join([*rows, json.dumps(twin)]) + "\n")
    with pytest.raises(DataValidationError, match=rf"{LOG_FILE}: lines 1 and 3 both hold the feedback of decision"):
        FeedbackLog(tmp_path)
    with pytest.raises(DataValidationError, match="column 'decision_id', rows 0 and 2"):  # barp ope reads with it
        read_log(tmp_path / LOG_FILE, models=router.models)


# ---------------------------------------------------------------------- 6. no paths, no docs by default
def test_no_server_paths_in_answers_and_no_docs_unless_asked(router, tmp_path, monkeypatch):
    service, c = make(router, tmp_path)
    service.curve = SimpleNamespace(source="/srv/secret/runs/calibration.json", best_single_model="m",
                                    models=service.models)
    monkeypatch.setattr(type(service.router.encoder), "name", property(lambda self: "/srv/secret/encoders/minilm"),
                        raising=False)

    def leaky(*args, **kwargs):
        raise ConfigError("--calibration '/srv/secret/runs/calibration.json' cannot be read")

    with c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert c.get(path).status_code == 404
        models = c.get("/models").json()
        assert models["calibration"]["source"] == "calibration.json" and models["encoder"] == "minilm"
        monkeypatch.setattr(service, "route", leaky)
        answer = c.post("/route", json={"prompt": "hi"})
        assert answer.status_code == 422 and answer.json()["error"] == "--calibration 'calibration.json' cannot be read"
    _, docs = make(router, tmp_path / "docs", docs=True)
    with docs:
        assert docs.get("/openapi.json").status_code == 200
