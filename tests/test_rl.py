"""Reward, REINFORCE loss and preference handling against hand-computed values."""

import math

import pytest
import torch

from barp.errors import ConfigError
from barp.rl import check_w_c, entropy, preference_tensor, reinforce_loss, reward, sample_preferences


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


def test_edge_preference_sampling_puts_more_mass_near_the_ends():
    g = torch.Generator().manual_seed(1)
    uniform = sample_preferences(20000, generator=g)
    edge = sample_preferences(20000, generator=g, edge_weight=1.0)
    assert torch.allclose(edge.sum(-1), torch.ones(20000)) and (edge >= 0).all()
    near = lambda w: ((w[:, 1] < 0.05) | (w[:, 1] > 0.95)).float().mean().item()  # noqa: E731
    assert near(uniform) == pytest.approx(0.10, abs=0.01)
    # arcsine law: P(w < 0.05) = (2 / pi) asin(sqrt(0.05)) = 0.1436 per end
    assert near(edge) == pytest.approx(2 * 0.1436, abs=0.015)
