"""RouterDC (barp.models.baselines.routerdc): both contrastive losses against hand-computed values, the seeded
clustering, learning (oracle on an easy table, a task-dependent choice) and checkpoints through TrainedRouter."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from barp.data.datamodule import RoutingDataModule
from barp.data.parts import Batches, Split
from barp.data.table import OutcomeTable
from barp.encoders import EncoderSpec
from barp.errors import ConfigError
from barp.learning.rl import preference_tensor, reward
from barp.models.baselines.routerdc import (
    RouterDC,
    cluster_pairs,
    kmeans,
    sample_llm_loss,
    sample_sample_loss,
    training_prompts,
)
from barp.models.parts import Arms, Evaluation, Guard, Reward
from barp.models.registry import METHOD_CLASSES, train_method
from barp.models.trained import TrainedRouter
from tests.helpers.encoder import fake_encoder_spec

TAU = 1e-3
FAST = {"head_lr": 1e-2, "lr": 1e-2, "batch_size": 16, "select_every": 10}


def _datamodule(table: OutcomeTable, real_encoder: bool = False) -> RoutingDataModule:
    """The table embedded with the tiny fake encoder, or the real one where the test needs meaningful embeddings."""
    encoder = EncoderSpec() if real_encoder else fake_encoder_spec()
    dm = RoutingDataModule(encoder=encoder, split=Split(ood_tasks=[]), batches=Batches(batch_size=16))
    dm.use_table(table)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _score(module, dm, w_c: float) -> tuple[float, float, float]:
    """Mean reward of the router, of the best single model and of the oracle on the ID test split at w_c."""
    rows = dm.splits.test
    emb = torch.as_tensor(dm.embeddings(rows))
    s, c = torch.as_tensor(dm.table.scores[rows]).float(), torch.as_tensor(dm.table.costs[rows]).float()
    w = preference_tensor(w_c, len(rows))
    r = reward(s, c, w, TAU)
    with torch.no_grad():
        a = module.greedy(emb, w)
    return float(r.gather(1, a[:, None]).mean()), float(r.mean(0).max()), float(r.max(1).values.mean())


# ---------------------------------------------------------------------------------------------- losses
def test_sample_llm_loss_matches_the_hand_computed_value():
    s = torch.tensor([[0.5, 0.1, -0.2, 0.3]])
    r = torch.tensor([[1.0, 0.6, 0.0, 0.2]])  # positives 0, 1; negatives 2, 3
    e = math.exp
    expected = -math.log(e(0.5) / (e(0.5) + e(-0.2) + e(0.3))) - math.log(e(0.1) / (e(0.1) + e(-0.2) + e(0.3)))
    assert sample_llm_loss(s, r, 2, 2).item() == pytest.approx(expected, rel=1e-6)
    # a batch averages over queries; one positive against three negatives
    s2 = torch.tensor([[0.5, 0.1, -0.2, 0.3], [0.0, 0.0, 0.0, 0.0]])
    r2 = torch.tensor([[1.0, 0.6, 0.0, 0.2], [0.0, 0.0, 1.0, 0.0]])
    one = -math.log(e(0.5) / (e(0.5) + e(0.1) + e(-0.2) + e(0.3)))
    assert sample_llm_loss(s2, r2, 1, 3).item() == pytest.approx((one + math.log(4)) / 2, rel=1e-6)


def test_sample_llm_loss_skips_negatives_that_tie_with_the_positive():
    s = torch.tensor([[0.4, 0.4, -0.1, 0.2]])
    r = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # models 0 and 1 tie: the other one is no negative
    e = math.exp
    expected = -math.log(e(0.4) / (e(0.4) + e(-0.1) + e(0.2)))
    for tie_break in (False, True):
        assert sample_llm_loss(s, r, 1, 3, tie_break=tie_break).item() == pytest.approx(expected, rel=1e-6)
    # all models equal: no pair to contrast, no loss
    assert sample_llm_loss(s, torch.ones(1, 4), 3, 3).item() == 0.0


def test_sample_llm_loss_gradient_pulls_positives_up():
    s = torch.zeros(1, 4, requires_grad=True)
    sample_llm_loss(s, torch.tensor([[0.9, 0.1, 0.5, 0.0]]), 1, 1).backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 3] and s.grad[0, 1] == 0 and s.grad[0, 2] == 0


def test_sample_sample_loss_matches_the_hand_computed_value():
    h = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    positive = torch.tensor([1, 0, 2, 0])
    negatives = torch.tensor([[2, 3], [2, 3], [0, 3], [1, 2]])
    valid = torch.tensor([True, True, False, True])
    e = math.exp
    # cosine: 0~1 = 1, 0~2 = 0, 0~3 = -1, 3~1 = -1, 3~2 = 0
    q0 = -math.log(e(1) / (e(1) + e(0) + e(-1)))
    q3 = -math.log(e(-1) / (e(-1) + e(-1) + e(0)))
    assert sample_sample_loss(h, positive, negatives, valid).item() == pytest.approx((2 * q0 + q3) / 3, rel=1e-6)
    assert sample_sample_loss(h, positive, negatives, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_cluster_pairs_pick_own_cluster_positives_and_other_cluster_negatives():
    clusters = torch.tensor([0, 0, 1, 1, 1, 2])
    positive, negatives, valid = cluster_pairs(clusters, 3, torch.Generator().manual_seed(0))
    for i in range(6):
        assert clusters[positive[i]] == clusters[i]
        assert positive[i] != i or int((clusters == clusters[i]).sum()) == 1
        assert len(set(negatives[i].tolist())) == 3 if valid[i] else True
        if valid[i]:
            assert all(clusters[j] != clusters[i] for j in negatives[i].tolist())
    assert valid.tolist() == [True, True, True, True, True, True]
    _, _, few = cluster_pairs(torch.tensor([0, 0, 0, 1]), 2)
    assert few.tolist() == [False, False, False, True]  # a query with fewer than H others is skipped


def test_kmeans_is_seeded_and_finds_separated_groups():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    x = torch.cat([c + 0.3 * torch.randn(20, 2, generator=g) for c in centres])
    a, b = kmeans(x, 3, seed=7), kmeans(x, 3, seed=7)
    assert torch.equal(a, b)
    truth = torch.arange(3).repeat_interleave(20)
    for j in range(3):  # each true group is one cluster, and the clusters differ
        assert len(set(a[truth == j].tolist())) == 1
    assert len(set(a.tolist())) == 3
    assert len(set(kmeans(x[:2], 5).tolist())) <= 2  # capped at the number of points


# ---------------------------------------------------------------------------------------------- the router
def test_registered_and_options_checked():
    assert METHOD_CLASSES["routerdc"] is RouterDC
    names = ["a", "b"]
    m = RouterDC(arms=Arms(names, ["t"], 8))
    assert (m.top_k, m.last_k) == (1, 1)  # K+ = K- = 3 capped: positives and negatives never overlap
    assert (RouterDC(arms=Arms(list("abc"), ["t"], 8)).top_k,
            RouterDC(arms=Arms(list("abc"), ["t"], 8)).last_k) == (1, 2)
    assert m.hparams.lr == 5e-5 and m.hparams.batch_size == 64 and m.hparams.max_steps == 1000
    for bad in ({"encoder_mode": "other"}, {"top_k": 0}, {"temperature": 0.0}, {"cluster_loss_weight": -1.0},
                {"encoder_mode": "finetune", "guard": Guard(0.02)}):
        with pytest.raises(ConfigError):
            RouterDC(arms=Arms(names, ["t"], 8), **bad)


def _one_best_table(n: int = 60) -> OutcomeTable:
    """Model 2 is best and cheapest on every prompt: the oracle's choice at every preference."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 0.5, (n, 4))
    scores[:, 2] = 0.9
    costs = rng.uniform(5e-4, 1e-3, (n, 4))
    costs[:, 2] = 1e-5
    return OutcomeTable([f"p{i}" for i in range(n)], [f"prompt number {i}" for i in range(n)],
                        ["a" if i % 2 else "b" for i in range(n)], ["m0", "m1", "m2", "m3"], scores, costs, "onebest")


def test_reaches_the_oracle_when_one_model_is_always_best(_barp_cache):
    dm = _datamodule(_one_best_table())
    module = train_method("routerdc", dm, TAU, seed=0, max_epochs=10, init_args=FAST)
    assert module.global_step == 30  # 42 training prompts, batches of 16: 3 steps per epoch
    for w_c in (0.0, 0.5, 1.0):
        got, _, oracle = _score(module, dm, w_c)
        assert got == pytest.approx(oracle, abs=1e-6), w_c


def _task_table(n: int = 80) -> OutcomeTable:
    """Math prompts: model 0 answers, model 1 fails; poems: the reverse; model 2 is mediocre on both."""
    rng = np.random.default_rng(3)
    animals = ["cat", "owl", "fox", "whale", "horse", "crow", "bear", "moth", "frog", "hare"]
    prompts, tasks, scores = [], [], []
    for i in range(n):
        if i % 2:
            prompts.append(f"Compute {i} times {i + 7} and add {3 * i}. Give the number only.")
            tasks.append("math")
            scores.append([1.0, 0.0, 0.5])
        else:
            prompts.append(f"Write a four-line rhyming poem about a {animals[i % 10]} at dawn, number {i}.")
            tasks.append("poem")
            scores.append([0.0, 1.0, 0.5])
    costs = np.full((n, 3), 1e-4) * rng.uniform(0.9, 1.1, (n, 3))
    return OutcomeTable([f"q{i}" for i in range(n)], prompts, tasks, ["m0", "m1", "m2"], np.array(scores), costs,
                        "tasks")


def test_learns_a_task_dependent_choice(_barp_cache):
    dm = _datamodule(_task_table(), real_encoder=True)  # the task shows in the prompts' meaning only
    module = train_method("routerdc", dm, TAU, seed=0, max_epochs=10, init_args=FAST)
    got, best_single, oracle = _score(module, dm, 0.0)
    assert best_single <= 0.7 and got > best_single + 0.2, (got, best_single, oracle)
    assert module.train_data is not None and len(module._clusters) == len(dm.splits.train)
    assert training_prompts(dm) == [dm.table.prompts[i] for i in dm.splits.train]


def test_step_budget_stops_training_and_selection_keeps_the_best(_barp_cache):
    dm = _datamodule(_one_best_table())
    args = {**FAST, "max_steps": 7, "select_every": 2}
    module = train_method("routerdc", dm, TAU, seed=0, max_epochs=50, init_args=args)
    assert module.global_step == 7
    for tower, (score, step, params), now in zip(module.towers, module._best, module.training_scores()):
        assert step in (2, 4, 6, 7) and score == pytest.approx(now, abs=1e-6)
        assert all(torch.equal(p, params[n]) for n, p in tower.named_parameters())
    big = train_method("routerdc", dm, TAU, seed=0, max_epochs=2, init_args={**FAST, "batch_size": 4})
    assert big.global_step == 2 * 11  # 42 rows in batches of 16 -> chunks of 4: 4 + 4 + 3 steps per epoch


def _save(trainer, path) -> None:
    """A checkpoint as ``barp fit`` writes it (LightningCLI records the module's class path)."""
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    ckpt["hyper_parameters"].update(_class_path="barp.models.baselines.routerdc.RouterDC",
                                    _instantiator="lightning.pytorch.cli.instantiate_module")
    torch.save(ckpt, path)


def test_a_checkpoint_routes_through_trained_router(tiny_datamodule, tmp_path, served_models):
    dm = tiny_datamodule
    L.seed_everything(0, verbose=False)
    module = RouterDC(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim), reward=Reward(tau=TAU), **FAST)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "routerdc.ckpt"
    _save(trainer, path)
    router = TrainedRouter.from_checkpoint(path)
    assert isinstance(router.module, RouterDC)
    emb = torch.as_tensor(dm.embeddings(dm.splits.test))
    w = preference_tensor(0.3, len(emb))
    with torch.no_grad():
        assert torch.allclose(router.module.route(emb, w), module.eval().route(emb, w), atol=1e-6)
    decisions = router.route(["prompt number 3", "prompt number 40"], w_c=0.3)
    assert [d.model in dm.model_names for d in decisions] == [True, True]
    # barp serve routes with it as TrainedRouter does
    assert served_models(path, tmp_path / "serve", ["prompt number 3", "prompt number 40"], 0.3) == \
        [d.model for d in decisions]


def test_finetune_mode_trains_the_encoder_and_checkpoints_it(tiny_datamodule, tmp_path):
    dm = tiny_datamodule
    L.seed_everything(0, verbose=False)
    module = RouterDC(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim), reward=Reward(tau=TAU),
                            encoder_mode="finetune", preference_grid=[0.0], lr=1e-4, batch_size=16, max_steps=3,
                            select_every=0)
    before = module.towers[0].text_encoder.embeddings.word_embeddings.weight.detach().clone()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert module.global_step == 3
    assert not torch.equal(before, module.towers[0].text_encoder.embeddings.word_embeddings.weight)
    path = tmp_path / "routerdc-ft.ckpt"
    _save(trainer, path)
    assert any(k.startswith("towers.0.text_encoder.") for k in torch.load(path, weights_only=False)["state_dict"])
    router = TrainedRouter.from_checkpoint(path)
    prompts = [dm.table.prompts[i] for i in dm.splits.test[:4]]
    probs = router.probabilities(prompts, w_c=0.0)
    module.eval()
    with torch.no_grad():
        expected = torch.softmax(module.scores(module.encode_texts(prompts), preference_tensor(0.0, 4)), -1)
    assert torch.allclose(probs, expected, atol=1e-5)


def test_finetuned_encoding_in_length_buckets_equals_one_padded_batch(monkeypatch):
    """Encoding sorted length buckets (each padded to its own longest prompt) gives, in the input order, the same
    E(x) as one batch padded to the longest prompt: the speed-up changes no number."""
    import barp.models.baselines.routerdc as rdc

    monkeypatch.setattr(rdc, "LENGTH_BUCKET", 2)
    tower = rdc.FinetunedTower(384, 8, 3, EncoderSpec().name).eval()
    texts = ["short", "a much longer prompt " * 30, "mid length prompt about rivers and rain", "x",
             "another long one " * 12]
    settings = {"max_length": 64, "truncation_side": "left"}
    with torch.no_grad():
        got = tower.encode_texts(texts, settings)
        tok = tower._tokenizer
        enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        assert enc["attention_mask"].sum(1).tolist()[:2] != [enc["input_ids"].shape[1]] * 2  # padding differs
        hidden = tower.text_encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1)
    assert got.shape == (5, 384)
    assert torch.allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------- per preference
def _tradeoff_table(n: int = 60) -> OutcomeTable:
    """Model 0 is best and expensive, model 1 fair and nearly free, models 2 and 3 poor: at w_c = 0 the oracle
    takes model 0, at w_c = 1 model 1 (the best model differs by preference)."""
    rng = np.random.default_rng(5)
    scores = np.column_stack([np.full(n, 0.95), np.full(n, 0.6), rng.uniform(0.0, 0.3, (n, 2))])
    costs = np.column_stack([np.full(n, 2e-3), np.full(n, 1e-6), rng.uniform(1e-3, 2e-3, (n, 2))])
    return OutcomeTable([f"p{i}" for i in range(n)], [f"prompt number {i}" for i in range(n)],
                        ["a" if i % 2 else "b" for i in range(n)], ["m0", "m1", "m2", "m3"], scores, costs, "tradeoff")


def test_per_preference_reaches_the_oracle_at_both_ends(_barp_cache):
    dm = _datamodule(_tradeoff_table(), real_encoder=True)  # the trade-off follows the prompts' meaning
    args = {**FAST, "preference_mode": "per_preference", "preference_grid": [0.0, 1.0]}
    module = train_method("routerdc", dm, TAU, seed=0, max_epochs=10, init_args=args)
    assert module.grid == [0.0, 1.0] and len(module.towers) == 2 and module.condition is None
    rows = dm.splits.test
    emb = torch.as_tensor(dm.embeddings(rows))
    for w_c, best in ((0.0, 0), (1.0, 1)):
        got, _, oracle = _score(module, dm, w_c)
        assert got == pytest.approx(oracle, abs=1e-6), w_c
        with torch.no_grad():
            assert module.greedy(emb, preference_tensor(w_c, len(rows))).tolist() == [best] * len(rows)


def test_per_preference_routes_with_the_nearest_grid_point(_barp_cache):
    names = ["a", "b", "c"]
    m = RouterDC(arms=Arms(names, ["t"], 8), preference_grid=[1.0, 0.0, 0.5, 0.5])
    assert m.hparams.preference_mode == "per_preference" and m.grid == [0.0, 0.5, 1.0] and len(m.towers) == 3
    w = torch.tensor([[1.0, 0.0], [0.8, 0.2], [0.75, 0.25], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.0, 1.0]])
    assert m.tower_of(w).tolist() == [0, 0, 0, 1, 1, 2, 2]  # 0.25: a tie, the lower grid point
    emb = torch.randn(len(w), 8)
    with torch.no_grad():
        got = m.route(emb, w)
        for i, j in enumerate(m.tower_of(w).tolist()):
            alone = m.scores(m.towers[j].projection(emb[i:i + 1]), w[i:i + 1], j)
            assert torch.allclose(got[i:i + 1], alone, atol=1e-6)
    # default grid: the module's evaluation preferences
    assert RouterDC(arms=Arms(names, ["t"], 8), evaluation=Evaluation(0.3, [0.0, 1.0])).grid == [0.0, 0.3, 1.0]
    cond = RouterDC(arms=Arms(names, ["t"], 8), preference_mode="conditioned")
    assert len(cond.towers) == 1 and cond.condition is not None and cond.tower_of(w).tolist() == [0] * len(w)
    for bad in ({"preference_mode": "other"}, {"preference_grid": []}, {"preference_grid": [1.5]},
                {"select_prompts": 0}):
        with pytest.raises(ConfigError):
            RouterDC(arms=Arms(names, ["t"], 8), **bad)


def test_per_preference_checkpoint_routes_through_trained_router(tiny_datamodule, tmp_path):
    dm = tiny_datamodule
    L.seed_everything(0, verbose=False)
    module = RouterDC(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim), reward=Reward(tau=TAU),
                      evaluation=Evaluation(0.3, [0.0, 0.8]), select_prompts=20, **FAST)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert len(module._select_rows) == 20
    path = tmp_path / "routerdc-pp.ckpt"
    _save(trainer, path)
    router = TrainedRouter.from_checkpoint(path)
    assert router.module.grid == [0.0, 0.3, 0.8]
    emb = torch.as_tensor(dm.embeddings(dm.splits.test))
    w = torch.stack([torch.linspace(1, 0, len(emb)), torch.linspace(0, 1, len(emb))], dim=1)
    with torch.no_grad():
        assert torch.allclose(router.module.route(emb, w), module.eval().route(emb, w), atol=1e-6)

