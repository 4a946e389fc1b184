"""Reward, REINFORCE loss and preference handling against hand-computed values."""

import math

import pytest
import torch

from barp.errors import ConfigError
from barp.learning.policy import PreferenceEncoder, log_ratio
from barp.learning.rl import (
    check_w_c,
    entropy,
    leave_one_out_baseline,
    preference_tensor,
    reinforce_loss,
    reward,
    sample_preferences,
)


def test_reward_matches_hand_values():
    score = torch.tensor([1.0, 0.5, 0.0])
    cost = torch.tensor([0.001, 0.004, 0.002])
    w = torch.tensor([[0.5, 0.5], [0.8, 0.2], [0.0, 1.0]])
    r = reward(score, cost, w, tau=0.002)
    # 0.5*1 - 0.5*0.5 ; 0.8*0.5 - 0.2*min(2, 1) ; 0 - 1*1
    assert torch.allclose(r, torch.tensor([0.25, 0.2, -1.0]))


def test_reward_broadcasts_over_all_models():
    scores = torch.tensor([[1.0, 0.0]])
    costs = torch.tensor([[0.004, 0.001]])
    r = reward(scores, costs, torch.tensor([[0.3, 0.7]]), tau=0.002)
    assert torch.allclose(r, torch.tensor([[0.3 - 0.7, -0.7 * 0.5]]))


def test_reward_rejects_nonpositive_tau():
    with pytest.raises(ConfigError, match="tau"):
        reward(torch.zeros(1), torch.zeros(1), torch.tensor([[0.5, 0.5]]), tau=0.0)


def test_reinforce_loss_hand_values():
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    actions = torch.tensor([1, 0])
    rewards = torch.tensor([1.0, 0.0])
    terms = reinforce_loss(logits, actions, rewards, baseline=0.5, beta=0.1)
    # advantages 0.5, -0.5; log pi(a) = log .75, log .5
    pg = -(0.5 * math.log(0.75) + (-0.5) * math.log(0.5)) / 2
    h = (-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + math.log(2)) / 2
    assert terms.policy_loss.item() == pytest.approx(pg, rel=1e-6)
    assert terms.entropy.item() == pytest.approx(h, rel=1e-6)
    assert terms.loss.item() == pytest.approx(pg - 0.1 * h, rel=1e-6)


def test_reinforce_gradient_raises_probability_of_good_action():
    logits = torch.zeros(1, 3, requires_grad=True)
    terms = reinforce_loss(logits, torch.tensor([2]), torch.tensor([1.0]), baseline=0.0, beta=0.0)
    terms.loss.backward()
    # descending the loss must increase logit 2 and decrease the others
    assert logits.grad[0, 2] < 0 and (logits.grad[0, :2] > 0).all()


def test_baseline_is_not_differentiated():
    logits = torch.zeros(2, 2, requires_grad=True)
    rewards = torch.tensor([1.0, 0.0], requires_grad=True)
    terms = reinforce_loss(logits, torch.tensor([0, 1]), rewards, baseline=rewards.mean(), beta=0.0)
    terms.loss.backward()
    assert rewards.grad is None


def test_entropy_of_uniform_is_log_k():
    assert entropy(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))


def test_sampled_preferences_lie_on_simplex_and_cover_it():
    g = torch.Generator().manual_seed(0)
    w = sample_preferences(5000, generator=g)
    assert torch.allclose(w.sum(-1), torch.ones(5000))
    assert (w >= 0).all()
    assert w[:, 0].mean().item() == pytest.approx(0.5, abs=0.02)
    assert w[:, 0].min() < 0.01 and w[:, 0].max() > 0.99


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "x"])
def test_invalid_preferences_are_rejected(bad):
    with pytest.raises(ConfigError, match="model.eval_w_c"):
        check_w_c(bad, "model.eval_w_c")


def test_preference_tensor():
    assert torch.allclose(preference_tensor(0.25, 2), torch.tensor([[0.75, 0.25], [0.75, 0.25]]))


def test_cost_power_concentrates_training_preferences_at_low_cost_weight():
    g = torch.Generator().manual_seed(2)
    w = sample_preferences(40000, generator=g, cost_power=3.0)
    assert torch.allclose(w.sum(-1), torch.ones(40000)) and (w >= 0).all()
    # w_c = u^3: E[w_c] = 1/4 and P(w_c < 0.05) = 0.05^(1/3) = 0.368
    assert w[:, 1].mean().item() == pytest.approx(0.25, abs=0.01)
    assert (w[:, 1] < 0.05).float().mean().item() == pytest.approx(0.05 ** (1 / 3), abs=0.01)


def test_cost_power_must_be_positive():
    with pytest.raises(ConfigError, match="cost_power"):
        sample_preferences(4, cost_power=0.0)


def test_leave_one_out_baseline_hand_values():
    # one prompt, three pulls; pull i's baseline is the mean reward of the other two outcomes at w_i
    score = torch.tensor([1.0, 0.0, 0.5])
    cost = torch.tensor([0.004, 0.001, 0.002])  # tau = 0.002: normalised costs 1, 0.5, 1
    w = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    b = leave_one_out_baseline(score, cost, w, tau=0.002, group_size=3)
    expected = [
        (0.0 + 0.5) / 2,                              # w = (1, 0): scores of pulls 1 and 2
        (0.5 * 1.0 - 0.5 * 1.0 + 0.5 * 0.5 - 0.5 * 1.0) / 2,  # w = (.5, .5): outcomes of pulls 0 and 2
        (-1.0 - 0.5) / 2,                             # w = (0, 1): costs of pulls 0 and 1
    ]
    assert torch.allclose(b, torch.tensor(expected))


def test_leave_one_out_baseline_ignores_its_own_outcome_and_other_prompts():
    score = torch.tensor([0.2, 0.9, 0.4, 0.7])
    cost = torch.full((4,), 0.001)
    w = torch.tensor([[0.7, 0.3]]).expand(4, 2)
    b = leave_one_out_baseline(score, cost, w, tau=0.002, group_size=2)
    changed = leave_one_out_baseline(torch.tensor([0.0, 0.9, 0.4, 0.0]), cost, w, tau=0.002, group_size=2)
    # groups (0, 1) and (2, 3); pulls 0 and 3 changed: their own baselines did not, their group-mates' did
    same = torch.isclose(changed, b, atol=1e-6)
    assert same.tolist() == [True, False, False, True]
    with pytest.raises(ConfigError, match="2 pulls"):
        leave_one_out_baseline(score, cost, w, tau=0.002, group_size=1)


def test_leave_one_out_policy_gradient_is_unbiased():
    """Averaged over many sampled groups, -(r - b) grad log pi equals the exact gradient of E_pi[r]."""
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    q = torch.tensor([0.9, 0.4, 0.6])
    c = torch.tensor([0.002, 0.0001, 0.0005])
    w = torch.tensor([[0.8, 0.2]])
    exact = torch.autograd.grad((torch.softmax(logits, -1) * reward(q, c, w.expand(3, 2), 0.002)).sum(), logits)[0]
    k, groups = 4, 20000
    actions = torch.multinomial(torch.softmax(logits, -1).detach(), groups * k, replacement=True, generator=g)
    r = reward(q[actions], c[actions], w.expand(groups * k, 2), 0.002)
    b = leave_one_out_baseline(q[actions], c[actions], w.expand(groups * k, 2), 0.002, k)
    terms = reinforce_loss(logits.expand(groups * k, 3), actions, r, b, beta=0.0)
    estimate = -torch.autograd.grad(terms.policy_loss, logits)[0]
    assert torch.allclose(estimate, exact, atol=2e-3)
    assert exact.abs().max() > 0.02  # the check is not trivially met by a zero gradient


def test_log_ratio_feature_spreads_small_cost_weights():
    w_c = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.5, 0.9, 1.0])
    f = log_ratio(torch.stack([1 - w_c, w_c], dim=-1))
    assert torch.all(f[1:] > f[:-1])  # monotone in w_c
    assert f[0] == pytest.approx(-1.0, abs=1e-3) and f[-1] == pytest.approx(1.0, abs=1e-3) and f[4] == 0
    # w_c from 0 to 0.1 spans over a third of the feature's range; on the raw scale it spans a tenth
    assert (f[3] - f[0]) / (f[-1] - f[0]) > 0.3


def test_preference_encoder_features():
    w = sample_preferences(5, generator=torch.Generator().manual_seed(0))
    raw, logr = PreferenceEncoder(8), PreferenceEncoder(8, "log_ratio")
    assert raw.net[0].in_features == 2 and logr.net[0].in_features == 3
    assert raw(w).shape == logr(w).shape == (5, 8)
    with pytest.raises(ValueError, match="log_ratio"):
        PreferenceEncoder(8, "sqrt")
