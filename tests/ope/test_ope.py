"""Off-policy evaluation: the log simulator, the estimators on hand-made problems, and ``barp ope`` end to end."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from barp.data.environment import BanditEnvironment
from barp.data.table import OutcomeTable
from barp.models.barp import BaRPModule
from barp.models.parts import Arms
from barp.ope.cli import run_ope_cli, target_probabilities
from barp.ope.estimators import (
    cross_fit_predictions,
    effective_sample_size,
    estimate_policy,
    fold_of_rows,
    target_logging_ratios,
)
from barp.ope.simulate import router_probabilities, simulate, simulate_log
from tests.helpers import ROOT

RECIPE = str(ROOT / "configs" / "experiments" / "synthetic.yaml")
TAU = 1.0


def table(n: int = 30, k: int = 3, seed: int = 0, constant: bool = False) -> OutcomeTable:
    """A random table; with ``constant`` every model has the same score and cost on every prompt."""
    rng = np.random.default_rng(seed)
    scores, costs = rng.random((n, k)), rng.random((n, k)) * 0.5
    if constant:
        scores, costs = np.repeat(scores[:1], n, 0), np.repeat(costs[:1], n, 0)
    return OutcomeTable(prompt_ids=[f"p{i}" for i in range(n)], prompts=[f"prompt {i}" for i in range(n)],
                        tasks=["t"] * n, models=[f"m{j}" for j in range(k)], scores=scores, costs=costs)


def true_values(tab: OutcomeTable, probs: np.ndarray, w_c: float, rows: np.ndarray | None = None) -> dict[str, float]:
    """The target's exact mean score, cost and reward over the table rows ``rows`` (probs: one row per entry)."""
    scores, costs = (tab.scores, tab.costs) if rows is None else (tab.scores[rows], tab.costs[rows])
    reward = (1 - w_c) * scores - w_c * np.minimum(costs / TAU, 1)
    return {"score": float((probs * scores).sum(1).mean()), "cost": float((probs * costs).sum(1).mean()),
            "reward": float((probs * reward).sum(1).mean())}


def by_key(results) -> dict[tuple[str, str], object]:
    return {(r.estimator, r.quantity): r for r in results}


def random_policy(n: int, k: int, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).dirichlet(np.ones(k), size=n)
    return 0.9 * p + 0.1 / k  # every model has probability >= 0.1 / K


# ---------------------------------------------------------------------- weights and ESS
def test_effective_sample_size_formula():
    assert effective_sample_size(np.ones(4)) == pytest.approx(4.0)
    assert effective_sample_size(np.array([4.0, 0, 0, 0])) == pytest.approx(1.0)
    assert effective_sample_size(np.array([2.0, 1.0, 1.0])) == pytest.approx(16 / 6)
    assert effective_sample_size(np.zeros(3)) == 0.0


def test_weights_and_clipping():
    target = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    w = target_logging_ratios(target, np.array([0, 1, 1]), np.array([0.1, 0.5, 0.25]))
    np.testing.assert_allclose(w, [10.0, 1.0, 4.0])
    np.testing.assert_allclose(target_logging_ratios(target, np.array([0, 1, 1]), np.array([0.1, 0.5, 0.25]), clip=3),
                               [3.0, 1.0, 3.0])


def test_clipped_estimates_use_the_clipped_weights():
    tab = table(n=40)
    log = simulate_log(tab, lambda rows, w: np.tile([0.05, 0.05, 0.9], (len(rows), 1)), seed=1, passes=3)
    target = np.tile([0.6, 0.2, 0.2], (log.num_rows, 1))
    res = by_key(estimate_policy(log, {0.5: target}, [0.5], TAU, estimators=["ips"], clip=5.0, bootstrap=10))
    w = np.minimum(target[np.arange(log.num_rows), log.actions] / log.propensity, 5.0)
    assert res["ips", "score"].estimate == pytest.approx(np.mean(w * log.score))
    assert res["ips", "score"].clipped_rows == int((log.actions == 0).sum()) > 0  # weight 12 > 5 on model 0


# ---------------------------------------------------------------------- the estimators on known problems
def test_ips_is_exact_when_the_log_holds_each_model_in_proportion_to_its_propensity():
    """E[IPS] = truth: a log whose action counts per prompt equal the logging probabilities is that expectation."""
    tab = table(n=12)
    mu = np.array([0.5, 0.25, 0.25])
    rows = np.repeat(np.arange(tab.num_prompts), 4)
    actions = np.tile([0, 0, 1, 2], tab.num_prompts)
    from barp.data.sources.logs import LoggedFeedback

    log = LoggedFeedback(prompts=[tab.prompts[i] for i in rows], models=tab.models, actions=actions,
                         propensity=mu[actions], score=tab.scores[rows, actions], cost=tab.costs[rows, actions])
    target = random_policy(tab.num_prompts, 3, seed=3)
    res = by_key(estimate_policy(log, {0.3: target[rows]}, [0.3], TAU, estimators=["ips"], bootstrap=10))
    for quantity, value in true_values(tab, target, 0.3).items():
        assert res["ips", quantity].estimate == pytest.approx(value)


def test_ips_is_unbiased_over_simulated_logs():
    tab = table(n=20, seed=4)
    logging = random_policy(tab.num_prompts, 3, seed=5)
    target = random_policy(tab.num_prompts, 3, seed=6)
    truth = true_values(tab, target, 0.5)["reward"]
    estimates = []
    for seed in range(300):
        log = simulate_log(tab, lambda rows, w: logging[rows], seed=seed)
        estimates.append(estimate_policy(log, {0.5: target}, [0.5], TAU, estimators=["ips"], bootstrap=1)[2].estimate)
    estimates = np.array(estimates)
    assert abs(estimates.mean() - truth) < 4 * estimates.std() / np.sqrt(len(estimates))


def test_snips_is_the_on_policy_mean_when_logging_equals_target():
    tab = table(n=25, seed=7)
    policy = random_policy(tab.num_prompts, 3, seed=8)
    log = simulate_log(tab, lambda rows, w: policy[rows], seed=0, passes=2)
    res = by_key(estimate_policy(log, {0.4: policy[np.tile(np.arange(25), 2)]}, [0.4], TAU,
                                 estimators=["ips", "snips"], bootstrap=50))
    reward = 0.6 * log.score - 0.4 * np.minimum(log.cost / TAU, 1)
    for quantity, values in (("score", log.score), ("cost", log.cost), ("reward", reward)):
        assert res["snips", quantity].estimate == pytest.approx(values.mean())
        assert res["ips", quantity].estimate == pytest.approx(values.mean())
    assert res["snips", "score"].ess == pytest.approx(log.num_rows)


@pytest.mark.parametrize("features", [None, "random"])
def test_dr_is_exact_when_the_reward_model_is_exact(features):
    """Every model's outcome is the same on every prompt, so the cross-fitted per-model fit is exact: DR = truth."""
    tab = table(n=30, seed=9, constant=True)
    log = simulate(tab, "uniform", seed=2, passes=2)
    target = random_policy(log.num_rows, 3, seed=10)
    x = None if features is None else np.random.default_rng(0).normal(size=(log.num_rows, 6))
    res = by_key(estimate_policy(log, {0.5: target}, [0.5], TAU, x, bootstrap=20))
    truth = true_values(tab, target, 0.5, rows=np.tile(np.arange(30), 2))
    for quantity, value in truth.items():
        assert res["dr", quantity].estimate == pytest.approx(value, abs=1e-6)  # outcomes pulled as float32
    assert res["ips", "reward"].estimate != pytest.approx(truth["reward"], abs=1e-3)  # IPS is not exact here


def test_cross_fitting_never_predicts_a_row_from_a_fit_that_saw_it():
    rng = np.random.default_rng(11)
    n, k = 60, 3
    prompts = [f"p{i % 40}" for i in range(n)]  # 20 prompts requested twice
    x, actions, y = rng.normal(size=(n, 5)), rng.integers(0, k, n), rng.random((n, 2))
    fold = fold_of_rows(prompts, 2, seed=0)
    assert {frozenset(fold[[i for i in range(n) if prompts[i] == p]]) for p in set(prompts)} <= {
        frozenset({0}), frozenset({1})}  # one prompt's requests share a fold
    before = cross_fit_predictions(x, actions, y, k, fold)
    changed = y.copy()
    changed[7] += 100.0
    after = cross_fit_predictions(x, actions, changed, k, fold)
    np.testing.assert_array_equal(after[fold == fold[7]], before[fold == fold[7]])  # row 7's fold: untouched
    assert not np.allclose(after[fold != fold[7], actions[7]], before[fold != fold[7], actions[7]])


def test_bootstrap_intervals_are_seeded_and_contain_the_estimate():
    tab = table(n=40, seed=12)
    log = simulate(tab, "uniform", seed=3, passes=3)
    target = random_policy(log.num_rows, 3, seed=13)
    first = estimate_policy(log, {0.2: target}, [0.2], TAU, bootstrap=200, seed=5)
    again = estimate_policy(log, {0.2: target}, [0.2], TAU, bootstrap=200, seed=5)
    other = estimate_policy(log, {0.2: target}, [0.2], TAU, bootstrap=200, seed=6)
    assert [(r.ci_low, r.ci_high) for r in first] == [(r.ci_low, r.ci_high) for r in again]
    assert [(r.ci_low, r.ci_high) for r in first] != [(r.ci_low, r.ci_high) for r in other]
    assert all(r.ci_low <= r.estimate <= r.ci_high for r in first)


def test_poor_overlap_is_warned_about():
    tab = table(n=30, seed=14)
    log = simulate(tab, "epsilon_greedy", model="m0", epsilon=0.0, seed=0)  # only m0 is ever served
    target = np.tile([0.0, 0.0, 1.0], (log.num_rows, 1))
    with pytest.warns(UserWarning, match=r"never served: m2 \(100%\).*effective sample size 0.0"):
        res = estimate_policy(log, {0.5: target}, [0.5], TAU, bootstrap=10)
    assert all(r.warning for r in res) and by_key(res)["ips", "score"].estimate == 0.0


# ---------------------------------------------------------------------- the simulator
def test_simulator_reveals_only_the_served_outcome(monkeypatch):
    tab = table(n=15, seed=15)
    pulls = []
    original = BanditEnvironment.pull

    def recording_pull(self, rows, arms):
        pulls.append((rows.clone(), arms.clone()))
        return original(self, rows, arms)

    monkeypatch.setattr(BanditEnvironment, "pull", recording_pull)
    log = simulate(tab, "uniform", seed=0, passes=2)
    (rows, arms), = pulls  # one pull, one arm per request: no other cell is read
    np.testing.assert_array_equal(rows.numpy(), np.tile(np.arange(15), 2))
    np.testing.assert_array_equal(arms.numpy(), log.actions)
    np.testing.assert_allclose(log.score, tab.scores[rows.numpy(), log.actions], rtol=1e-6)
    np.testing.assert_allclose(log.cost, tab.costs[rows.numpy(), log.actions], rtol=1e-6)
    assert log.simulated and "uniform" in log.notes[0] and log.prompt_ids[15] == "p0"


def test_simulator_propensities_match_the_policy():
    tab = table(n=10, seed=16)
    uniform = simulate(tab, "uniform", seed=0)
    np.testing.assert_allclose(uniform.propensity, 1 / 3)
    greedy = simulate(tab, "epsilon_greedy", model="m1", epsilon=0.3, seed=0, passes=300)
    np.testing.assert_allclose(greedy.propensity, np.where(greedy.actions == 1, 0.8, 0.1))
    share = np.bincount(greedy.actions, minlength=3) / greedy.num_rows
    np.testing.assert_allclose(share, [0.1, 0.8, 0.1], atol=4 * np.sqrt(0.8 * 0.2 / greedy.num_rows))


def test_router_logging_policy_at_a_temperature():
    torch.manual_seed(0)
    tab = table(n=20, seed=17)
    module = BaRPModule(arms=Arms(tab.models, ["t"], 8)).eval()
    emb = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    log = simulate(tab, "router", module=module, embeddings=emb, temperature=0.5, epsilon=0.1, seed=1, passes=3)
    rows = np.tile(np.arange(20), 3)
    probs = router_probabilities(module, emb[rows], log.w_c, temperature=0.5, epsilon=0.1)
    np.testing.assert_allclose(log.propensity, probs[np.arange(60), log.actions], rtol=1e-6)
    assert probs.min() >= 0.1 / 3 - 1e-12 and len(set(np.round(log.w_c, 6))) == 60  # w_c drawn per request
    cold = router_probabilities(module, emb, np.full(20, 0.5), temperature=0.05)
    assert cold.max(1).mean() > router_probabilities(module, emb, np.full(20, 0.5)).max(1).mean()


def test_simulator_is_seeded():
    tab = table(n=30, seed=18)
    a, b, c = (simulate(tab, "uniform", seed=s, passes=2) for s in (4, 4, 5))
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.w_c, b.w_c)
    assert not np.array_equal(a.actions, c.actions)


# ---------------------------------------------------------------------- barp ope end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A BaRP trained for 10 epochs on a 600-prompt built-in benchmark (encoder cut at 64 tokens, for speed)."""
    from barp.cli import main

    out = tmp_path_factory.mktemp("ope")
    cli = main(["fit", "--config", RECIPE, "--data.init_args.synthetic.num_prompts", "600",
                "--data.init_args.encoder.max_length", "64",
                "--trainer.max_epochs", "10", "--trainer.check_val_every_n_epoch", "10",
                "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
                "--trainer.logger.init_args.save_dir", str(out), "--test_after_fit", "false"])
    return out, cli.trainer.checkpoint_callback.best_model_path, cli.datamodule


def test_dr_and_snips_intervals_contain_the_true_reward_of_a_trained_barp(trained, capsys):
    """Uniform logging on the test split (each prompt requested 10 times), greedy BaRP."""
    from barp.models.trained import TrainedRouter

    out, ckpt, dm = trained
    test = dm.table.subset(dm.splits.test)
    log = simulate(test, "uniform", seed=0, passes=10)
    log.write(out / "log.csv")
    results = run_ope_cli(["--log", str(out / "log.csv"), "--ckpt_path", ckpt, "--output", str(out / "ope")])
    printed = capsys.readouterr().out
    assert "SIMULATED" in printed and "snips" in printed
    module = TrainedRouter.from_checkpoint(ckpt).module
    emb, tau = dm.embeddings(dm.splits.test), module.tau_value
    found = by_key_wc(results)
    for w_c in (0.2, 0.5, 0.8):
        chosen = target_probabilities(module, emb, w_c).argmax(1)
        q, c = test.scores[np.arange(len(chosen)), chosen], test.costs[np.arange(len(chosen)), chosen]
        truth = float(np.mean((1 - w_c) * q - w_c * np.minimum(c / tau, 1)))
        for name in ("dr", "snips"):
            r = found[w_c, name, "reward"]
            print(f"w_c={w_c} {name}: {r.estimate:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}] "
                  f"truth {truth:.4f} ESS {r.ess:.1f}")
            assert r.ci_low <= truth <= r.ci_high, (w_c, name, r, truth)
    with open(out / "ope" / "ope.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 27 and {r["estimator"] for r in rows} == {"ips", "snips", "dr"}
    assert [p.name for p in (out / "ope").iterdir()] == ["ope.csv"]  # no temporary file left


def by_key_wc(results) -> dict[tuple[float, str, str], object]:
    return {(r.w_c, r.estimator, r.quantity): r for r in results}


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "nope.csv", "nope.csv: no such file"),
    (lambda d: (d / "bad.csv").write_text("prompt,model,propensity,score,cost\nhi,gpt-5,0.5,1,0\n") and d / "bad.csv",
     "column 'model', row 0: unknown model 'gpt-5'"),
])
def test_bad_input_is_one_error_and_exit_code_2(trained, tmp_path, capsys, make, message):
    _, ckpt, _ = trained
    with pytest.raises(SystemExit) as exit_:
        run_ope_cli(["--log", str(make(tmp_path)), "--ckpt_path", ckpt, "--output", str(tmp_path / "o")])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("barp ope: error:") and message in last and not (tmp_path / "o").exists()


def test_help_lists_every_option(capsys):
    from barp.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["ope", "--help"])  # the `barp ope` subcommand
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--log", "--ckpt_path", "--output", "--w_c", "--estimators", "--temperature", "--clip",
                   "--bootstrap", "--folds", "--min_ess", "--tau"):
        assert option in text
