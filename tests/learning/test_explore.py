"""BaRPModule(training=Training(explore=epsilon)): a share of the training pulls is uniform over the models,
importance-weighted."""

from __future__ import annotations

import pytest
import torch

from barp.data.datamodule import RoutingDataModule
from barp.data.parts import Batches, Split
from barp.errors import ConfigError
from barp.models.barp import BaRPModule
from barp.models.parts import Arms, Evaluation, Reward, Training
from tests.helpers import load_tool
from tests.helpers.tables import routing_problem


def _module(**kwargs) -> BaRPModule:
    dm = RoutingDataModule(split=Split(ood_tasks=[], val_fraction=0.1, test_fraction=0.3),
                           batches=Batches(batch_size=8, train_repeats=1))
    dm.use_table(routing_problem())
    return BaRPModule(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim), reward=Reward(tau=2e-3),
                      evaluation=Evaluation(0.5), **kwargs)


def test_exploring_pulls_reach_the_models_a_settled_policy_dropped_and_are_reweighted_to_it():
    torch.manual_seed(0)
    n, epsilon = 40_000, 0.3
    logits = torch.tensor([[6.0, 0.0, -2.0]]).expand(n, 3)  # a settled policy: model 0 has 99.7%
    pi = torch.softmax(logits[0], dim=-1)

    on_policy, rho, uniform = _module()._sample_actions(logits)
    assert rho is None and uniform is None
    assert (on_policy == 2).float().mean() < 0.002  # the policy alone almost never pulls model 2

    actions, rho, uniform = _module(training=Training(explore=epsilon))._sample_actions(logits)
    assert abs(uniform.float().mean() - epsilon) < 0.01
    mu = (1 - epsilon) * pi + epsilon / 3
    share = torch.bincount(actions, minlength=3).float() / n
    assert torch.allclose(share, mu, atol=0.01)  # model 2 now gets about epsilon / K of the pulls
    assert torch.allclose(rho, (pi / mu)[actions])
    # importance weighting recovers the policy's own expectations: E_mu[rho 1(a = k)] = pi_k
    recovered = torch.stack([(rho * (actions == k)).mean() for k in range(3)])
    assert torch.allclose(recovered, pi, atol=0.01)


@pytest.mark.parametrize("value", [1.0, -0.1, True, float("nan"), "0.1"])
def test_bad_explore_is_named(value):
    with pytest.raises(ConfigError, match="model.training.explore"):
        _module(training=Training(explore=value))


def test_uniform_pulls_are_counted_saved_and_pooled_by_the_guard(tmp_path):
    from barp.cli import main
    from barp.models.trained import TrainedRouter
    from tests.helpers.cli import tiny_args

    cli = main(["fit", *tiny_args(tmp_path, "--model.init_args.training.explore", "0.5",
                                  "--model.init_args.guard.quantile", "0.1", "--trainer.max_epochs", "2",
                                  "--test_after_fit", "false")])
    module, dm = cli.model, cli.datamodule
    pulls = module.explore_pulls
    steps = cli.trainer.global_step
    k = module.training_options.samples_per_prompt
    total = sum(min(dm.batches.batch_size, len(dm.splits.train) - i)
                for i in range(0, len(dm.splits.train), dm.batches.batch_size)) * 2 * k
    assert steps > 0 and 0.4 * total < float(pulls[0].sum()) < 0.6 * total  # about half the pulls were uniform
    assert bool((pulls[0] > 0).all())  # uniform: every model was pulled
    table = dm.table.subset(dm.splits.train)
    mean_score = torch.tensor(table.scores, dtype=torch.float64).mean(0)
    assert torch.allclose(pulls[1] / pulls[0], mean_score, atol=0.2)  # score sums of real outcomes, per model
    assert torch.all(pulls[2] <= pulls[0])  # normalised costs are at most 1 each
    assert torch.equal(module._guard().state()["pulls"], pulls)  # the guard's fallback pools them

    ckpt = cli.trainer.checkpoint_callback.last_model_path
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    router = TrainedRouter.from_checkpoint(ckpt)
    assert torch.equal(router.module.explore_pulls, saved["state_dict"]["explore_pulls"])
    assert torch.equal(router.module._guard().pulls, saved["state_dict"]["explore_pulls"])

    del saved["state_dict"]["explore_pulls"]  # a checkpoint written before explore existed still loads
    legacy = tmp_path / "legacy.ckpt"
    torch.save(saved, legacy)
    old = TrainedRouter.from_checkpoint(legacy)
    assert float(old.module.explore_pulls.abs().sum()) == 0 and old.module.fallback_pulls() is None

    # tools/critic_coverage.py reads the critic's memory back: every model pulled somewhere, shares as in the memory
    tool = load_tool("critic_coverage")
    report = tool.coverage(str(ckpt))
    memory = torch.load(ckpt, map_location="cpu", weights_only=True)["neighbour_critic"]
    assert report["pulled_share"] == pytest.approx(memory["seen"].double().mean(0).tolist())
    assert min(report["pulled_share"]) > 0 and 0 <= report["agree_at_wc0"] <= 1 and report["score_lost_at_wc0"] >= 0
    assert tool.main(["--ckpt_path", str(legacy)]) == 0  # the memory is still there
    del saved["neighbour_critic"]
    torch.save(saved, legacy)
    assert tool.main(["--ckpt_path", str(legacy)]) == 2  # no critic: one error line, exit 2
