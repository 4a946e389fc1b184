"""``best_fixed``: at each preference, the single model with the highest mean TRAINING reward, for every prompt; it
never reads a test outcome."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from barp.data.parts import Batches, Split
from barp.learning.rl import preference_tensor
from barp.sweep.contenders import BestFixed, Outcomes
from barp.sweep.harness import ALL_METHODS, build_routers

TAU = 1e-3
# Three models on four training rows. Mean scores 0.9, 0.6, 0.3; mean costs 2e-3 (capped at tau: 1), 2e-4 (0.2),
# 0 (0). Mean reward w_q * q - w_c * min(c / tau, 1): model 0: 0.9 w_q - w_c, model 1: 0.6 w_q - 0.2 w_c,
# model 2: 0.3 w_q.
SCORES = np.array([[1.0, 0.7, 0.2], [0.8, 0.5, 0.4], [0.9, 0.6, 0.3], [0.9, 0.6, 0.3]])
COSTS = np.array([[2e-3, 1e-4, 0.0], [3e-3, 3e-4, 0.0], [1e-3, 2e-4, 0.0], [2e-3, 2e-4, 0.0]])


def expected(w_c: float) -> int:
    """The hand-computed best model at w_c."""
    w_q = 1 - w_c
    return int(np.argmax([0.9 * w_q - w_c, 0.6 * w_q - 0.2 * w_c, 0.3 * w_q]))


@pytest.mark.parametrize("w_c", [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
def test_best_fixed_is_the_best_single_model_on_training_data(w_c):
    router = BestFixed(SCORES, COSTS, TAU)
    emb = torch.zeros(5, 8)
    action = router.choose(emb, preference_tensor(w_c, 5))
    assert action.dtype == torch.long and action.shape == (5,)
    assert action.tolist() == [expected(w_c)] * 5
    means = router.mean_rewards(w_c).numpy()
    assert means == pytest.approx([0.9 * (1 - w_c) - w_c, 0.6 * (1 - w_c) - 0.2 * w_c, 0.3 * (1 - w_c)])


def test_ends_of_the_grid_are_the_best_scorer_and_the_cheapest():
    router = BestFixed(SCORES, COSTS, TAU)
    assert router.best_model(0.0) == 0  # highest mean score
    assert router.best_model(1.0) == 2  # cheapest: only cost counts
    assert [router.best_model(w) for w in (0.1, 0.3, 0.7)] == [0, 1, 2]  # 0.3: 0.36 > 0.21; 0.7: 0.09 > 0.04


def test_mixed_preferences_in_one_batch_get_their_own_model():
    router = BestFixed(SCORES, COSTS, TAU)
    w = torch.cat([preference_tensor(0.0, 2), preference_tensor(0.3, 2), preference_tensor(1.0, 2)])
    assert router.choose(torch.zeros(6, 4), w).tolist() == [0, 0, 1, 1, 2, 2]


def test_ties_go_to_the_cheaper_model():
    scores = np.array([[0.5, 0.5], [0.5, 0.5]])
    costs = np.array([[2e-4, 1e-4], [2e-4, 1e-4]])
    assert BestFixed(scores, costs, TAU).best_model(0.0) == 1


def test_never_reads_test_outcomes():
    """Built from a datamodule, it sees the training rows only: test rows that favour another model change nothing,
    and it refuses the outcome rows at evaluation."""
    test_scores = np.array([[0.0, 0.0, 1.0]] * 3)  # on the test rows model 2 is best at every preference
    test_costs = np.array([[5e-3, 5e-3, 0.0]] * 3)
    table = SimpleNamespace(scores=np.concatenate([SCORES, test_scores]), costs=np.concatenate([COSTS, test_costs]),
                            models=["a", "b", "c"])
    dm = SimpleNamespace(table=table, splits=SimpleNamespace(train=np.arange(4), test=np.arange(4, 7),
                                                             ood=np.array([], dtype=int)))
    router = BestFixed.from_datamodule(dm, TAU)
    assert not router.needs_outcomes
    np.testing.assert_array_equal(router.scores.numpy(), SCORES)
    np.testing.assert_array_equal(router.costs.numpy(), COSTS)
    table.scores[4:] = np.nan  # anything read from the test rows would now show
    assert [router.best_model(w) for w in (0.0, 0.3, 1.0)] == [0, 1, 2]
    w = preference_tensor(0.0, 3)
    assert router.choose(torch.zeros(3, 4), w).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="must not receive"):
        router.choose(torch.zeros(3, 4), w, Outcomes(torch.as_tensor(test_scores), torch.as_tensor(test_costs)))
    # and through Contender.outcome, as evaluation calls it: the outcome rows stay with the harness
    rewards = torch.zeros(3, 3)
    out = router.outcome(torch.zeros(3, 4), w, torch.as_tensor(test_scores), torch.as_tensor(test_costs), rewards)
    assert out.action.tolist() == [0, 0, 0]


def test_sweep_builds_it_from_the_training_split(_barp_cache):
    from barp.data.datamodule import RoutingDataModule
    from tests.helpers.encoder import fake_encoder_spec
    from tests.helpers.tables import structured_table

    assert "best_fixed" in ALL_METHODS
    dm = RoutingDataModule(encoder=fake_encoder_spec(), split=Split(ood_tasks=[]), batches=Batches(batch_size=16))
    dm.use_table(structured_table())
    dm.prepare_data()
    dm.setup("fit")
    (router,) = build_routers(["best_fixed"], None, dm, TAU, seed=0, max_epochs=1, progress=False)
    assert isinstance(router, BestFixed) and router.name == "best_fixed" and router.tau == TAU
    train = np.asarray(dm.splits.train)
    np.testing.assert_allclose(router.scores.numpy(), dm.table.scores[train])
    np.testing.assert_allclose(router.costs.numpy(), dm.table.costs[train])
    # 'big' (0.9, 1e-3) wins at w_c = 0, 'small' (0.6, 1e-5) once cost counts, never the dominated 'bad'
    assert router.best_model(0.0) == 0 and router.best_model(0.5) == 1 and router.best_model(1.0) == 1
