"""barp calibrate: the curve's estimates and intervals by hand, choosing the w_c that meets a target, the files it
writes, and serving at a calibrated target."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from barp.errors import ConfigError
from barp.service.calibrate import Target, choose, load_calibration
from barp.service.curve import Curve, curve_from_log, curve_from_table

MODELS = ["cheap", "mid", "dear"]


def hand_curve() -> Curve:
    """Five w_c points: cost falls, score falls, and 'dear' loses its traffic as w_c rises."""
    w = np.linspace(0, 1, 5)
    cost = np.array([5.0, 3.0, 2.0, 1.0, 0.5])
    score = np.array([0.80, 0.78, 0.70, 0.60, 0.50])
    shares = np.array([[0.1, 0.4, 0.5], [0.2, 0.5, 0.3], [0.4, 0.5, 0.1], [0.7, 0.3, 0.0], [1.0, 0.0, 0.0]])
    band = lambda x, d: np.stack([x - d, x + d], axis=-1)  # noqa: E731
    return Curve(w_c=w, models=MODELS, cost_per_1k=cost, cost_per_1k_ci=band(cost, 0.6), score=score,
                 score_ci=band(score, 0.05), shares=shares, shares_ci=band(shares, 0.05), best_single_model="dear",
                 best_single_score=0.8, n=100, source="hand", level=0.95)


def test_choose_meets_each_kind_of_target():
    curve = hand_curve()
    assert choose(curve, Target(cost_per_1k=3.0)) == 1  # the smallest w_c at <= $3 per 1k
    assert choose(curve, Target(cost_per_1k=3.0), criterion="interval") == 2  # 3.0 + 0.6 > 3: next point
    assert choose(curve, Target(max_share={"dear": 0.2})) == 2
    assert choose(curve, Target(score_fraction=0.85)) == 2  # the largest w_c with score >= 0.68
    assert choose(curve, Target(cost_per_1k=4.0, max_share={"dear": 0.05})) == 3


def test_an_unreachable_target_is_one_error_saying_what_can_be_reached():
    with pytest.raises(ConfigError, match=r"no w_c in \[0, 1\] meets it.*ranges over \[0.5, 5\]"):
        choose(hand_curve(), Target(cost_per_1k=0.1))
    with pytest.raises(ConfigError, match="unknown model 'gpt-5'"):
        choose(hand_curve(), Target(max_share={"gpt-5": 0.1}))
    with pytest.raises(ConfigError, match="at least one of"):
        choose(hand_curve(), Target())


def test_curve_on_a_table_is_the_chosen_models_means_with_intervals_around_them():
    rng = np.random.default_rng(0)
    scores, costs = rng.random((40, 3)), rng.random((40, 3)) * 1e-3
    choices = np.stack([np.zeros(40, int), rng.integers(0, 3, 40)])
    curve = curve_from_table(np.array([0.0, 1.0]), choices, scores, costs, MODELS, "t", resamples=200, seed=1)
    picked = costs[np.arange(40), choices[1]]
    assert curve.cost_per_1k[1] == pytest.approx(1000 * picked.mean())
    assert curve.score[0] == pytest.approx(scores[:, 0].mean())
    np.testing.assert_allclose(curve.shares[1], np.bincount(choices[1], minlength=3) / 40)
    assert curve.shares[0].tolist() == [1.0, 0.0, 0.0]
    assert np.all(curve.cost_per_1k_ci[:, 0] <= curve.cost_per_1k)
    assert np.all(curve.cost_per_1k <= curve.cost_per_1k_ci[:, 1])
    assert curve.best_single_score == pytest.approx(scores.mean(0).max())
    again = curve_from_table(np.array([0.0, 1.0]), choices, scores, costs, MODELS, "t", resamples=200, seed=1)
    np.testing.assert_array_equal(again.score_ci, curve.score_ci)  # seeded


def test_curve_on_a_log_is_self_normalised_ips():
    actions = np.array([0, 1, 2, 0, 1])
    prop = np.array([0.5, 0.25, 0.25, 0.5, 0.25])
    score, cost = np.array([1.0, 0.0, 1.0, 0.0, 1.0]), np.array([1, 2, 3, 4, 5]) * 1e-3
    choices = np.array([[0, 0, 0, 0, 1]])  # matches rows 0, 3 (p 0.5) and 4 (p 0.25)
    curve = curve_from_log(np.array([0.5]), choices, actions, prop, score, cost, MODELS, "log", resamples=10)
    w = np.array([2, 0, 0, 2, 4])
    assert curve.score[0] == pytest.approx((w * score).sum() / w.sum())
    assert curve.cost_per_1k[0] == pytest.approx(1000 * (w * cost).sum() / w.sum())
    np.testing.assert_allclose(curve.shares[0], [0.8, 0.2, 0.0])


# ---------------------------------------------------------------------- end to end on a trained checkpoint
@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    from barp.cli import main
    from tests.helpers.cli import tiny_checkpoint

    ckpt, out = tiny_checkpoint(), tmp_path_factory.mktemp("calibration")
    main(["calibrate", "--ckpt_path", ckpt, "--output", str(out), "--grid", "21", "--bootstrap", "200",
          "--target.max_share", '{"gpt-4-1106-preview": 0.0}', "--check_split", "test"])
    return ckpt, out


def test_calibrate_writes_the_curve_the_plot_and_the_chosen_w_c(calibrated, capsys):
    _, out = calibrated
    record, curve = load_calibration(out / "calibration.json")
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "curve.csv", "curve.png"]
    with open(out / "curve.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 21 and float(rows[-1]["w_c"]) == 1.0 and "share:gpt-4-1106-preview" in rows[0]
    chosen = record["chosen"]
    g = int(np.flatnonzero(np.isclose(curve.w_c, chosen["w_c"]))[0])
    assert curve.shares[g, curve.models.index("gpt-4-1106-preview")] == 0.0  # the target holds on the curve
    assert chosen["cost_per_1k"][0] == pytest.approx(float(rows[g]["cost_per_1k"]), rel=1e-5)
    assert record["check"]["source"].startswith("the test split") and len(record["check"]["score"]) == 3
    assert "validation" not in record["source"] and record["source"].startswith("the val split")


def test_serve_resolves_targets_on_the_calibration_curve(calibrated, tmp_path):
    from barp.service.cli import build_service

    ckpt, out = calibrated
    record, curve = load_calibration(out / "calibration.json")
    service = build_service(ckpt, str(tmp_path), calibration=str(out / "calibration.json"))
    assert service.default_w_c == record["chosen"]["w_c"]
    target = Target(cost_per_1k=float(np.median(curve.cost_per_1k)))
    routed = service.route(["Write a limerick about routers."], target=target)
    assert routed["preference"] == "target" and routed["w_c"] == curve.w_c[choose(curve, target)]
    served_at_target = build_service(ckpt, str(tmp_path / "b"), calibration=str(out / "calibration.json"),
                                     target=target)
    assert served_at_target.default_w_c == routed["w_c"]


def test_bad_calibrate_input_is_one_error_and_exit_code_2(calibrated, tmp_path, capsys):
    from barp.cli import main

    ckpt, _ = calibrated
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--ckpt_path", ckpt, "--output", str(tmp_path / "o"),
              "--target.max_share", '{"gpt-5": 0.2}'])
    assert exit_.value.code == 2 and not (tmp_path / "o").exists()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("barp calibrate: error:") and "unknown model 'gpt-5'" in last
    (tmp_path / "bad.json").write_text(json.dumps({"curve": {}}))
    with pytest.raises(ConfigError, match="bad.json' is not a calibration.json"):
        load_calibration(tmp_path / "bad.json")


def test_help_lists_every_option(capsys):
    from barp.cli import main

    for command, options in (("calibrate", ("--ckpt_path", "--output", "--target.cost_per_1k", "--target.max_share",
                                            "--target.score_fraction", "--log", "--check_split", "--criterion")),
                             ("serve", ("--ckpt_path", "--log_dir", "--port", "--w_c", "--calibration",
                                        "--budget_per_1k", "--max_batch"))):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert all(option in text for option in options), (command, text)
