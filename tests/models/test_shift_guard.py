"""The distribution-shift guard: familiarity, the validation-set threshold, the fallback, and its use in barp."""

from __future__ import annotations

import pytest
import torch

from barp.cli import main
from barp.errors import ConfigError
from barp.learning.rl import preference_tensor
from barp.models.shift import ShiftGuard
from tests.helpers.cli import tiny_args


def unit(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows.float(), dim=-1)


def clustered(n: int, centre: torch.Tensor, spread: float, gen: torch.Generator) -> torch.Tensor:
    return unit(centre + spread * torch.randn(n, len(centre), generator=gen))


@pytest.fixture
def guard() -> ShiftGuard:
    gen = torch.Generator().manual_seed(0)
    home = torch.zeros(16)
    home[0] = 1.0
    train, val = clustered(200, home, 0.3, gen), clustered(100, home, 0.3, gen)
    # model 0: good and dear; model 1: poor and cheap; model 2: mid
    scores = torch.tensor([[0.9, 0.3, 0.7]]).expand(100, 3)
    costs = torch.tensor([[1.0, 0.01, 0.2]]).expand(100, 3)
    return ShiftGuard.build(train, val, scores, costs, tau=1.0, quantile=0.05, neighbours=5)


def test_threshold_is_the_validation_quantile_and_unfamiliar_prompts_fall_back(guard):
    gen = torch.Generator().manual_seed(1)
    home, away = torch.zeros(16), torch.zeros(16)
    home[0], away[1] = 1.0, 1.0
    same, other = clustered(400, home, 0.3, gen), clustered(400, away, 0.3, gen)
    fired_same = (guard.familiarity(same) < guard.threshold).float().mean()
    fired_other = (guard.familiarity(other) < guard.threshold).float().mean()
    assert fired_same < 0.15  # about the 5% it was set to fire on in distribution
    assert fired_other > 0.95  # and on nearly every prompt of an unseen cluster
    w = preference_tensor(0.0, 400)
    router_choice = torch.ones(400, dtype=torch.long)  # the router would pick the cheap, poor model everywhere
    action, novel = guard.apply(router_choice, other, w)
    assert torch.equal(novel, guard.familiarity(other) < guard.threshold)
    assert torch.all(action[novel] == 0) and torch.all(action[~novel] == 1)


def test_fallback_is_the_best_mean_validation_reward_at_each_preference(guard):
    # reward = w_q * score - w_c * min(cost / tau, 1): model 0 at w_c = 0, model 2 at 0.3, model 1 at 0.9
    w = torch.cat([preference_tensor(0.0, 1), preference_tensor(0.3, 1), preference_tensor(0.9, 1)])
    assert guard.fallback(w).tolist() == [0, 2, 1]


def test_state_round_trip_and_bad_knobs(guard):
    again = ShiftGuard.from_state(guard.state())
    probe = unit(torch.randn(7, 16, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(again.familiarity(probe), guard.familiarity(probe)) and again.threshold == guard.threshold
    with pytest.raises(ConfigError, match=r"model.guard.quantile must be in \(0, 1\)"):
        ShiftGuard.build(guard.reference, guard.reference, torch.zeros(3, 3), torch.zeros(3, 3), 1.0, 1.5)
    with pytest.raises(ConfigError, match="validation split, which is empty"):
        ShiftGuard.build(guard.reference, guard.reference[:0], torch.zeros(0, 3), torch.zeros(0, 3), 1.0, 0.1)


def test_guard_in_fit_test_and_the_checkpoint(tmp_path, capsys):
    """Fit with the guard (set from the data's validation split), test it, and route raw prompts with the
    checkpoint's guard; an unseen family falls back far more often than the held-in test prompts (the real encoder:
    familiarity needs meaningful embeddings)."""
    from barp.models.checkpoints import GUARD_KEY
    from barp.models.trained import TrainedRouter

    cli = main(["fit", *tiny_args(tmp_path, "--model.init_args.guard.quantile", "0.1",
                                  "--trainer.max_epochs", "2", "--test_after_fit", "true", real_encoder=True)])
    module, dm = cli.model, cli.datamodule
    assert module.guard is not None and module.guard.quantile == 0.1
    assert float(cli.trainer.callback_metrics["test/id/reward"]) > float(cli.trainer.callback_metrics[
        "test/id/random_reward"])
    emb = torch.as_tensor(dm.embeddings(), dtype=torch.float32).to(module.device)
    fired = {name: float((module.guard.familiarity(emb[rows]) < module.guard.threshold).float().mean())
             for name, rows in (("test", dm.splits.test), ("ood", dm.splits.ood))}
    assert fired["ood"] > fired["test"] + 0.2, fired
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    assert GUARD_KEY in torch.load(ckpt, map_location="cpu", weights_only=True)
    router = TrainedRouter.from_checkpoint(ckpt)
    prompts = [dm.table.prompts[i] for i in dm.splits.ood[:20]]
    decisions = router.route(prompts, w_c=0.0)
    novel = router.module.guard.familiarity(router.module.embed(prompts)) < router.module.guard.threshold
    fallback = router.module.model_names[int(router.module.guard.fallback(preference_tensor(0.0, 1))[0])]
    assert novel.any() and all(d.model == fallback for d, n in zip(decisions, novel.tolist()) if n)


def test_exploration_pulls_pool_into_the_fallback(guard):
    # validation (100 prompts): model 0 scores 0.9 at cost 1.0, model 2 0.7 at 0.2; 900 uniform pulls of model 2
    # say it scores 0.95 (and 100 of model 1 that it scores 0.3 at cost 0.01)
    w0 = preference_tensor(0.0, 1)
    assert guard.fallback(w0).tolist() == [0]
    guard.pulls = torch.tensor([[0.0, 100.0, 900.0], [0.0, 30.0, 855.0], [0.0, 1.0, 180.0]], dtype=torch.float64)
    quality, cost = guard.estimates()
    assert quality.tolist() == pytest.approx([0.9, 0.3, (100 * 0.7 + 855) / 1000])
    assert cost.tolist() == pytest.approx([1.0, 0.01, 0.2])
    assert guard.fallback(w0).tolist() == [2]  # the pooled evidence outweighs the 100 validation prompts
    again = ShiftGuard.from_state(guard.state())
    assert again.count == 100 and torch.equal(again.pulls, guard.pulls) and again.fallback(w0).tolist() == [2]
    legacy = {k: v for k, v in guard.state().items() if k not in ("count", "pulls")}  # written before pooling
    assert ShiftGuard.from_state(legacy).fallback(w0).tolist() == [0]
