"""The policy's input dropout (``model.policy.dropout``): off by default without drawing a random number, active only
in training, and refused outside [0, 1)."""

from __future__ import annotations

import pytest
import torch

from barp.errors import ConfigError
from barp.learning.policy import BaRPPolicy
from barp.models.barp import BaRPModule
from barp.models.parts import Arms, Policy


def test_no_dropout_draws_no_random_number_and_changes_nothing():
    torch.manual_seed(0)
    policy = BaRPPolicy(8, 3).train()
    x, w = torch.randn(5, 8), torch.tensor([[0.7, 0.3]]).repeat(5, 1)
    state = torch.get_rng_state()
    first = policy(x, w)
    assert torch.equal(torch.get_rng_state(), state)  # a run without dropout draws exactly as before it existed
    assert torch.equal(policy(x, w), first)


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    policy = BaRPPolicy(8, 3, dropout=0.5)
    x, w = torch.randn(64, 8), torch.tensor([[0.5, 0.5]]).repeat(64, 1)
    policy.train()
    assert not torch.equal(policy(x, w), policy(x, w))
    policy.eval()
    assert torch.equal(policy(x, w), policy(x, w))


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_dropout_outside_zero_to_one_is_refused_naming_the_option(value):
    with pytest.raises(ConfigError, match=r"model\.policy: dropout must be a number in \[0, 1\)"):
        BaRPModule(arms=Arms(["a", "b"], ["t"], embed_dim=8), policy=Policy(dropout=value))
