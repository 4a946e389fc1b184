"""barp serve and barp calibrate trust only what they can check: a calibration.json must be of the served checkpoint, a
complete last log row is kept, a damaged log folder is one clear error, calibrate refuses to replace earlier results and
a bad --output before any work, and no cost above MAX_COST_USD enters the log or the budget controller."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest

from barp.data.table import MAX_COST_USD
from barp.errors import ConfigError, DataValidationError
from barp.service.budget import BudgetController
from barp.service.feedback_log import DECISIONS_FILE, LOG_FILE, FeedbackLog


@pytest.fixture(scope="module")
def ckpt() -> str:
    from tests.helpers.cli import tiny_checkpoint

    return tiny_checkpoint()


@pytest.fixture(scope="module")
def calibration(ckpt, tmp_path_factory) -> Path:
    """calibration.json of the tiny checkpoint (a small grid and bootstrap: only the file matters here)."""
    from barp.service.calibrate import calibrate

    out = tmp_path_factory.mktemp("calibration")
    calibrate(ckpt, str(out), grid=5, bootstrap=20)
    return out / "calibration.json"


@pytest.fixture
def no_server(monkeypatch):
    """``barp serve`` runs its start-up checks, then would serve: stop it there instead."""
    import uvicorn

    def refuse(*args, **kwargs):
        raise AssertionError("barp serve started serving")

    monkeypatch.setattr(uvicorn, "run", refuse)


def serve_error(argv: list[str], capsys) -> str:
    """Run ``barp serve argv``; it must exit with code 2 and one ``barp serve: error:`` line: return that line."""
    from barp.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("barp serve: error:") and "Traceback" not in "\n".join(err), err
    return err[-1]


# ---------------------------------------------------------------------- 1. calibration.json of another checkpoint
def test_calibration_records_the_checkpoints_sha256_and_a_moved_copy_still_matches(ckpt, calibration, tmp_path):
    from barp.service.cli import build_service

    record = json.loads(calibration.read_text())
    assert record["checkpoint_sha256"] == hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    copy = tmp_path / "elsewhere" / "renamed.ckpt"
    copy.parent.mkdir()
    shutil.copy(ckpt, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a verified calibration gives no warning
        service = build_service(str(copy), str(tmp_path / "log"), calibration=str(calibration))
    assert service.curve is not None and list(service.curve.models) == service.models


def test_serve_refuses_a_calibration_made_for_another_checkpoint(ckpt, calibration, tmp_path, capsys, no_server):
    record = json.loads(calibration.read_text())
    # another router over the same models (e.g. a kNN router's calibration): same curve format, another checkpoint
    record.update(checkpoint="runs/knn/best.ckpt", checkpoint_sha256=hashlib.sha256(b"another checkpoint").hexdigest())
    other = tmp_path / "knn-calibration.json"
    other.write_text(json.dumps(record))
    log_dir = tmp_path / "log"
    line = serve_error(["--ckpt_path", ckpt, "--calibration", str(other), "--log_dir", str(log_dir)], capsys)
    assert "was made for checkpoint 'runs/knn/best.ckpt'" in line and f"not for --ckpt_path {ckpt!r}" in line
    assert str(other) in line and "run barp calibrate on this checkpoint" in line
    assert not log_dir.exists()  # refused before the log was opened


def test_an_older_calibration_without_the_identity_is_read_with_a_warning(ckpt, calibration, tmp_path):
    from barp.service.cli import build_service

    record = json.loads(calibration.read_text())
    record.pop("checkpoint_sha256", None)  # as written before the identity was recorded
    old = tmp_path / "old-calibration.json"
    old.write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="records no checkpoint identity.*re-run barp calibrate"):
        service = build_service(ckpt, str(tmp_path / "log"), calibration=str(old))
    assert service.curve is not None


# ---------------------------------------------------------------------- 2. the last line of the log
def decision(i: int) -> dict:
    return {"decision_id": f"d{i}", "prompt": f"prompt {i}", "model": "m", "propensity": 1.0, "w_c": 0.5,
            "preference": "budget" if i % 2 else "w_c", "timestamp": "t", "prompt_id": f"p{i}", "note": "test"}


def make_log(folder: Path, decisions: int = 4, feedback: int = 2) -> None:
    log = FeedbackLog(folder)
    log.record_decisions([decision(i) for i in range(decisions)])
    for i in range(feedback):
        log.record_feedback(f"d{i}", 1.0, 0.001 * (i + 1), "t")
    log.close()


@pytest.mark.parametrize("name", [LOG_FILE, DECISIONS_FILE])
def test_a_complete_last_row_without_its_newline_is_kept(tmp_path, name):
    make_log(tmp_path)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-1])  # the last row, complete, lacks only its newline
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is set aside, so nothing to warn about
        log = FeedbackLog(tmp_path)
    assert log.num_rows == 2 and log.num_pending == 2 and log.dropped_bytes[name] == 0
    log.record_feedback("d2", 0.5, 0.003, "t")  # appends start on a new line
    log.record_decisions([decision(9)])
    log.close()
    lines = (tmp_path / LOG_FILE).read_text().splitlines()
    assert [json.loads(line)["decision_id"] for line in lines] == ["d0", "d1", "d2"]
    decided = [json.loads(line)["decision_id"] for line in (tmp_path / DECISIONS_FILE).read_text().splitlines()]
    assert decided == ["d0", "d1", "d2", "d3", "d9"]
    assert FeedbackLog(tmp_path).num_rows == 3


def test_a_torn_last_line_is_set_aside_with_a_warning_naming_the_file_and_line(tmp_path):
    make_log(tmp_path)
    torn = b'{"prompt":"prompt 2","model":"m","propen'
    with open(tmp_path / LOG_FILE, "ab") as fh:
        fh.write(torn)
    with pytest.warns(UserWarning, match=rf"{LOG_FILE}: line 3 was cut short.*set aside in .*{LOG_FILE}\.torn"):
        log = FeedbackLog(tmp_path)
    assert log.num_rows == 2 and log.dropped_bytes == {DECISIONS_FILE: 0, LOG_FILE: len(torn)}
    assert (tmp_path / f"{LOG_FILE}.torn").read_bytes() == torn + b"\n"
    assert (tmp_path / LOG_FILE).read_bytes().endswith(b"\n")


def test_serve_prints_a_set_aside_line_as_one_warning_line(ckpt, tmp_path, capsys, monkeypatch):
    import uvicorn

    from barp.cli import main

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    make_log(tmp_path)
    with open(tmp_path / DECISIONS_FILE, "ab") as fh:
        fh.write(b'{"decision_id":"d9","pro')
    main(["serve", "--ckpt_path", ckpt, "--log_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert served and any(line.startswith(f"barp serve: warning: {tmp_path / DECISIONS_FILE}: line 5 was cut short")
                          for line in err), err


# ---------------------------------------------------------------------- 3. damaged log folders at start-up
def test_a_decision_without_its_id_is_one_error_naming_file_line_and_field(tmp_path):
    make_log(tmp_path)
    with open(tmp_path / DECISIONS_FILE, "a") as fh:
        fh.write('{"foo":1}\n')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(DataValidationError, match=rf"{DECISIONS_FILE}: line 5 lacks 'decision_id'"):
        FeedbackLog(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing changed


def test_a_log_file_that_is_a_folder_or_a_log_dir_that_is_a_file_is_one_config_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / LOG_FILE).mkdir()
    with pytest.raises(ConfigError, match=rf"{LOG_FILE}' is a folder"):
        FeedbackLog(tmp_path / "a")
    (tmp_path / "b").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"--log_dir '.*/b' is a file, not a folder"):
        FeedbackLog(tmp_path / "b")
    with pytest.raises(ConfigError, match=r"--log_dir .* cannot be created"):
        FeedbackLog(tmp_path / "b" / "sub")


@pytest.mark.parametrize("case", ["decision without id", "log.jsonl is a folder", "log_dir is a file"])
def test_serve_start_up_problems_are_one_line_and_exit_code_2(ckpt, tmp_path, capsys, no_server, case):
    log_dir = tmp_path / "serve"
    if case == "log_dir is a file":
        log_dir.write_text("x")
        expected = "is a file, not a folder"
    elif case == "log.jsonl is a folder":
        (log_dir / LOG_FILE).mkdir(parents=True)
        expected = "is a folder, not the log.jsonl file"
    else:
        make_log(log_dir)
        with open(log_dir / DECISIONS_FILE, "a") as fh:
            fh.write('{"foo":1}\n')
        expected = "line 5 lacks 'decision_id'"
    line = serve_error(["--ckpt_path", ckpt, "--log_dir", str(log_dir)], capsys)
    assert expected in line and str(log_dir) in line


# ---------------------------------------------------------------------- 4. barp calibrate --output
def test_calibrate_refuses_to_replace_earlier_results_without_overwrite(ckpt, tmp_path, capsys):
    from barp.cli import main

    out = tmp_path / "cal"
    out.mkdir()
    (out / "calibration.json").write_text("earlier\n")
    argv = ["calibrate", "--ckpt_path", ckpt, "--output", str(out), "--grid", "3", "--bootstrap", "10"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and last.startswith("barp calibrate: error:")
    assert "already holds a calibration (calibration.json)" in last and "--overwrite true" in last
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json"]
    assert (out / "calibration.json").read_text() == "earlier\n"
    main([*argv, "--overwrite", "true"])
    assert json.loads((out / "calibration.json").read_text())["checkpoint"] == ckpt


@pytest.mark.parametrize("output", ["a file", "/proc/barp_cal"])
def test_a_bad_calibrate_output_is_refused_before_any_work(ckpt, tmp_path, monkeypatch, output):
    from barp.models.trained import TrainedRouter
    from barp.service.calibrate import calibrate

    if output == "a file":
        output = str(tmp_path / "results.txt")
        Path(output).write_text("x")
        expected = "is a file; barp calibrate writes a folder"
    else:
        expected = "cannot write in '/proc'"

    def no_work(*args, **kwargs):
        raise AssertionError("calibrate loaded the checkpoint before checking --output")

    monkeypatch.setattr(TrainedRouter, "from_checkpoint", no_work)
    with pytest.raises(ConfigError, match=f"--output {output!r}.*{expected}"):
        calibrate(ckpt, output, grid=3, bootstrap=10)


# ---------------------------------------------------------------------- 5. costs above MAX_COST_USD
def test_feedback_refuses_a_cost_above_max_cost_usd(ckpt, tmp_path):
    from fastapi.testclient import TestClient

    from barp.service.app import create_app
    from barp.service.cli import build_service

    # the MAX_COST_USD bound itself (barp serve's default bound is lower: 1000 x the checkpoint's tau)
    service = build_service(ckpt, str(tmp_path), budget_per_1k=0.5, w_c=0.5, max_cost_usd=MAX_COST_USD)
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        ids = [d["decision_id"] for d in c.post("/route", json={"prompts": ["a", "b"]}).json()["decisions"]]
        for cost in (1e308, 1.7e308, MAX_COST_USD * 1.001):
            answer = c.post("/feedback", json={"decision_id": ids[0], "score": 1, "cost": cost})
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"].startswith("field 'cost'") and repr(cost) in answer.json()["error"]
        assert service.controller.w_c == 0.5 and service.log.num_rows == 0  # nothing logged, the controller still
        assert c.post("/feedback", json={"decision_id": ids[1], "score": 1, "cost": MAX_COST_USD}).status_code == 200
    with pytest.raises(DataValidationError, match="cost"):
        service.log.record_feedback(ids[0], 1.0, 1e308, "t")
    assert service.log.num_rows == 1


def test_the_budget_controller_refuses_a_cost_above_max_cost_usd():
    ctl = BudgetController(budget_per_1k=0.5, w_c=0.5)
    with pytest.raises(DataValidationError, match=r"1e\+308 is not a finite cost in \[0, 1000\]"):
        ctl.update(1e308)
    assert ctl.w_c == 0.5 and ctl.served == 0
    ctl.update(MAX_COST_USD)
    assert ctl.served == 1


def test_a_logged_cost_above_max_cost_usd_stops_the_replay_naming_file_line_and_value(tmp_path):
    make_log(tmp_path)
    rows = (tmp_path / LOG_FILE).read_text().splitlines()
    poisoned = json.loads(rows[1])
    poisoned["cost"] = 1e308
    (tmp_path / LOG_FILE).write_text(rows[0] + "\n" + json.dumps(poisoned) + "\n")
    with pytest.raises(DataValidationError, match=rf"{LOG_FILE}: line 2 'cost' 1e\+308 is not a finite cost"):
        FeedbackLog(tmp_path)
