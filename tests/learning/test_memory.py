"""The repeat memory (barp.learning.memory, ``BaRPModule(memory=True)``): the switching rule by hand, and a fitted
router whose memory recalls training prompts' pulled outcomes, leaves unseen prompts alone and travels through
checkpoints and router folders."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from barp.learning.memory import recall
from barp.learning.neighbours import NeighbourIndex
from barp.models.trained import TrainedRouter
from tests.helpers import SYNTHETIC_RECIPE
from tests.helpers.encoder import fake_encoder_args


def by_hand():
    keys = torch.eye(4)[:3]  # three training prompts, orthogonal
    #                      model 0     1     2
    score = torch.tensor([[0.0, 1.0, 0.0],
                          [0.0, 1.0, 0.0],
                          [1.0, 1.0, 0.0]])
    cost = torch.tensor([[0.9, 0.5, 0.1],
                         [0.9, 0.5, 0.1],
                         [0.9, 0.2, 0.1]])
    seen = torch.tensor([[True, True, False],
                         [False, True, False],
                         [True, True, False]])
    return NeighbourIndex.build(keys), score, cost, seen


def test_the_rule_by_hand():
    index, score, cost, seen = by_hand()
    emb = torch.cat([torch.eye(4)[:3], F.normalize(torch.ones(1, 4), dim=-1)])  # the 3 keys, then an unseen prompt
    w0 = torch.tensor([[1.0, 0.0]]).expand(4, 2)
    # prompt 0: the policy's model 0 was pulled (score 0), model 1 scored 1: switch
    # prompt 1: model 2 was never pulled there; model 1's reward 1 reaches the best model 2 could: switch
    # prompt 2: models 0 and 1 tie at score 1: the cheaper, model 1
    # prompt 3: unseen: untouched
    out, changed = recall(torch.tensor([0, 2, 0, 0]), emb, w0, index, score, cost, seen)
    assert out.tolist() == [1, 1, 1, 0] and changed.tolist() == [True, True, True, False]
    # with a cost weight the unpulled model 2 could beat model 1 (its mean cost 0.1 < 0.5): no switch on prompt 1;
    # prompt 0: model 1's reward 0.5 - 0.25 beats model 0's 0 - 0.45: switch
    w = torch.tensor([[0.5, 0.5]]).expand(4, 2)
    out, _ = recall(torch.tensor([0, 2, 0, 0]), emb, w, index, score, cost, seen)
    assert out.tolist() == [1, 2, 1, 0]
    # a pulled choice that is already the best stays
    out, changed = recall(torch.tensor([1, 1, 1, 2]), emb, w0, index, score, cost, seen)
    assert out.tolist() == [1, 1, 1, 2] and not changed.any()
    # a near copy (re-embedding noise) is the same prompt; a different prompt is not
    near = F.normalize(torch.eye(4)[:1] + 1e-4 * torch.tensor([[0.0, 1.0, 0.0, 0.0]]), dim=-1)
    far = F.normalize(torch.eye(4)[:1] + 0.1 * torch.tensor([[0.0, 1.0, 0.0, 0.0]]), dim=-1)
    assert recall(torch.tensor([0, 0]), torch.cat([near, far]), w0[:2], index, score, cost, seen)[0].tolist() == [1, 0]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """BaRP with the repeat memory, 2 epochs on the 200-prompt built-in benchmark with the fake encoder: the
    checkpoint, training prompts and prompts it never trained on."""
    from barp.cli import main

    out = tmp_path_factory.mktemp("memory")
    cli = main(["fit", "--config", SYNTHETIC_RECIPE, *fake_encoder_args(), "--data.init_args.synthetic.num_prompts",
                "200", "--data.init_args.encoder.max_length", "64", "--trainer.max_epochs", "2",
                "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
                "--model.init_args.memory", "true", "--test_after_fit", "false"])
    dm = cli.datamodule
    train = [dm.table.prompts[i] for i in dm.splits.train]
    unseen = [dm.table.prompts[i] for i in dm.splits.test if dm.table.prompts[i] not in set(train)]
    return cli.trainer.checkpoint_callback.best_model_path, train, unseen


def test_a_fitted_memory_recalls_training_prompts_only(fitted):
    ckpt, train, unseen = fitted
    router = TrainedRouter.from_checkpoint(ckpt)
    m = router.module
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["neighbour_critic"]
    assert m.memory_keys.shape == (len(train), m.embed_dim) and torch.equal(m.memory_seen, saved["seen"])
    assert torch.equal(m.memory_score, saved["score"].float()) and int(m.memory_seen.sum()) > len(train)
    emb = router.module.embed(train)
    changes = 0
    for w_c in (0.0, 0.5):
        w = torch.tensor([[1 - w_c, w_c]]).expand(len(emb), 2)
        with torch.no_grad():
            m.memory = False
            policy = m.greedy(emb, w)  # the policy (and the shift guard's fallback) alone
            m.memory = True
            routed = m.greedy(emb, w)
        assert [d.model for d in router.route(train, w_c)] == [m.model_names[a] for a in routed.tolist()]
        moved = (routed != policy).nonzero().flatten()
        changes += len(moved)
        for i in moved.tolist():  # each change goes to a pulled model at least as good as the policy's pulled one
            j, a, b = i, int(policy[i]), int(routed[i])
            assert bool(m.memory_seen[j, b])
            r = (1 - w_c) * m.memory_score[j] - w_c * m.memory_cost[j]
            if m.memory_seen[j, a]:  # better, or as good and cheaper
                assert r[b] > r[a] or (r[b] == r[a] and m.memory_cost[j, b] < m.memory_cost[j, a])
        m.memory = False  # the same module without its memory: unseen prompts route alike
        plain = router.route(unseen, w_c)
        m.memory = True
        assert router.route(unseen, w_c) == plain
    assert changes > 0  # the rule did fire on this fit


def test_the_memory_travels_through_a_router_folder(fitted, tmp_path):
    ckpt, train, unseen = fitted
    router = TrainedRouter.from_checkpoint(ckpt)
    loaded = TrainedRouter.from_pretrained(router.save_pretrained(tmp_path / "router"))
    assert loaded.module.memory and loaded.module.memory_keys.shape == router.module.memory_keys.shape
    for w_c in (0.0, 0.3, 1.0):
        assert loaded.route(train, w_c) == router.route(train, w_c)
        assert loaded.route(unseen, w_c) == router.route(unseen, w_c)


def test_memory_needs_the_critic(tmp_path, capsys):
    from barp.cli import main

    base = ["fit", "--config", SYNTHETIC_RECIPE, *fake_encoder_args(), "--data.init_args.synthetic.num_prompts", "60",
            "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--test_after_fit", "false"]
    with pytest.raises(SystemExit) as stop:
        main([*base, "--model.init_args.critic", "null", "--model.init_args.memory", "true"])
    assert stop.value.code != 0 and "model.memory: true needs model.critic" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))
