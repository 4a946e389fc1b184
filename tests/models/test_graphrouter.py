"""GraphRouter: its message passing by hand, the oracle where one model always wins, a task-dependent choice, and a
checkpoint that loads through TrainedRouter and routes raw prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from barp.cli import main
from barp.data.datamodule import RoutingDataModule
from barp.data.parts import Batches, Split
from barp.data.table import OutcomeTable
from barp.errors import ConfigError
from barp.learning.rl import preference_tensor
from barp.models.baselines.graphrouter import (
    AUTO_LINK_MIN_RECOVERY,
    GraphRouter,
    GraphRouterNet,
    RelationConv,
    nearest_recovery,
    read_descriptions,
)
from barp.models.parts import Arms, Reward
from barp.models.registry import train_method
from barp.models.trained import TrainedRouter
from tests.helpers import ROOT

FAST = {"lr": 1e-2, "steps_per_batch": 4}  # tiny tables: more steps per batch than the shipped config
TASKS = {
    "math": "Compute {i} times {j} and show every arithmetic step.",
    "poem": "Write a short rhyming poem about autumn leaf number {i} in {j} lines.",
    "code": "Write a Python function that returns the {i}-th Fibonacci number, with {j} tests.",
}


def test_message_passing_by_hand():
    """Nodes a, b -> c with 1-d edge features: h_c' = AGG(W_msg h_u + b_msg + W_e e_uc + b_e) + h_c."""
    conv = RelationConv(2, edge_dim=1, aggr="mean")
    with torch.no_grad():
        conv.lin_msg.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        conv.lin_msg.bias.copy_(torch.tensor([0.5, 0.0]))
        conv.lin_edge.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        conv.lin_edge.bias.zero_()
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    src, dst, edge = torch.tensor([0, 1]), torch.tensor([2, 2]), torch.tensor([[1.0], [2.0]])
    # messages: a -> c = [1.5, 4] + [1, -1] = [2.5, 3]; b -> c = [3.5, -2] + [2, -2] = [5.5, -4]
    out = conv(x, x, src, dst, edge)
    assert torch.allclose(out, torch.tensor([[1.0, 2.0], [3.0, -1.0], [4.5, 0.0]]))  # mean [4, -0.5] + h_c
    conv.aggr = "add"
    assert torch.allclose(conv(x, x, src, dst, edge)[2], torch.tensor([8.5, -0.5]))  # sum [8, -1] + h_c


def _quiet_net(query_state: str) -> GraphRouterNet:
    """A 2-d net whose layers pass no messages (zero weights) and whose projections are the identity, in eval mode:
    every state after the layers is its input state divided by BatchNorm's sqrt(1 + eps)."""
    net = GraphRouterNet(2, hidden_dim=2, num_layers=1, pref_film=False, query_state=query_state)  # type: ignore
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.zero_()
                module.bias.zero_()
        for proj in (net.query_proj, net.task_proj, net.llm_proj):
            proj.weight.copy_(torch.eye(2))
    return net.eval()


def test_edge_score_by_hand():
    """query_state input (the official code's): mean((q_in + mean of linked task inputs) * h_llm); final: the
    query's state after the layers (here its input / sqrt(1 + eps), the tasks sending nothing)."""
    task_x = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    query_x = torch.tensor([[5.0, 5.0], [2.0, -1.0]])  # a training query, then the predicted one
    llm_x = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    pref = torch.tensor([[1.0, 0.0]])
    task_query = (torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))  # the predicted query joins both tasks
    query_task = (torch.tensor([0]), torch.tensor([0]))
    query_llm = (torch.tensor([0, 0]), torch.tensor([0, 1]))
    edge = torch.zeros(2, 2)
    bn = (1 + 1e-5) ** 0.5
    h_llm = llm_x / bn
    got = _quiet_net("input")(task_x, query_x, llm_x, pref, query_task, task_query, query_llm, edge)
    q = torch.tensor([2.0, -1.0]) + torch.tensor([0.5, 1.5])  # its input + the mean of tasks [1, 0] and [0, 3]
    assert torch.allclose(got, (q * h_llm).mean(-1, keepdim=True).T)  # [[(2.5 + 0.5) / 2, 5 / 2] / bn]
    got = _quiet_net("final")(task_x, query_x, llm_x, pref, query_task, task_query, query_llm, edge)
    assert torch.allclose(got, ((torch.tensor([2.0, -1.0]) / bn) * h_llm).mean(-1, keepdim=True).T)


def test_task_link_auto():
    """auto: nearest where the nearest task centroid recovers the training prompts' own tasks, else all."""
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert nearest_recovery(emb, torch.tensor([0, 0, 1, 1]), 2) == 1.0
    assert nearest_recovery(emb, torch.tensor([0, 1, 0, 1]), 2) == 0.5  # tasks not recognisable from the embedding
    module = GraphRouter(arms=Arms(["a", "b"], ["t", "u"], 2, "unused"), reward=Reward(tau=1e-3))
    assert module.hparams.task_link == "auto"
    module.query_emb, module.query_task = emb, torch.tensor([0, 0, 1, 1])
    assert module.task_link == "nearest"
    assert module.link_tasks(torch.tensor([[0.2, 1.0]]))[1].tolist() == [1]
    module.query_task, module._link = torch.tensor([0, 1, 0, 1]), None  # (fit and loading reset it)
    assert AUTO_LINK_MIN_RECOVERY > 0.5 and module.task_link == "all"
    assert module.link_tasks(torch.tensor([[0.2, 1.0]]))[1].tolist() == [0, 1]
    with pytest.raises(ConfigError, match="query_state"):
        GraphRouter(arms=Arms(["a", "b"], ["t"], 2, "unused"), reward=Reward(tau=1e-3), query_state="last")


def test_descriptions_file(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("tasks: {math: Grade-school arithmetic word problems}\nmodels: {big: A large model}\n")
    texts = read_descriptions(str(path), ["math", "poem"], ["big", "small"])
    assert texts == {"tasks": {"math": "Grade-school arithmetic word problems", "poem": "Task: poem"},
                     "models": {"big": "A large model", "small": "Language model: small"}}
    path.write_text("models: {big: 3}\n")
    with pytest.raises(ConfigError, match=r"models\.big"):
        read_descriptions(str(path), ["math"], ["big"])


def test_descriptions_from_llmrouter_candidates(tmp_path):
    """An LLMRouter llm_candidates table: each model's ``feature`` text; the development set's own file reads."""
    path = tmp_path / "llm_candidates.json"
    path.write_text('{"big": {"size": "70B", "feature": "A large model.", "input_price": 0.9}, '
                    '"other": {"feature": "Not in the data."}}')
    texts = read_descriptions(str(path), ["math"], ["big", "small"])
    assert texts["models"] == {"big": "A large model.", "small": "Language model: small"}
    assert texts["tasks"] == {"math": "Task: math"}
    path.write_text('{"big": {"size": "70B"}}')
    with pytest.raises(ConfigError, match="model 'big'.*'feature'"):
        read_descriptions(str(path), ["math"], ["big"])
    published = ROOT.parent / "shared" / "data" / "llmrouter-dcrouter" / "llm_candidates.json"
    if published.is_file():  # the real file, where the development set is at hand
        texts = read_descriptions(str(published), ["cluster-0"], ["gemma-2-9b-it", "codegemma-7b"])
        assert texts["models"]["codegemma-7b"].startswith("CodeGemma-7B is a specialized variant")


def test_edge_targets_by_hand(monkeypatch):
    """effect: BCE against w_q q + w_c (1 - min(c / tau, 1)); best: against the one-hot best model (ties: all)."""
    import torch.nn.functional as F

    import barp.models.baselines.graphrouter as gr

    module = GraphRouter(arms=Arms(["a", "b"], ["t"], 4, "unused"), reward=Reward(tau=1e-3))
    module.query_emb, module.query_task = torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)
    module.edge_scores = torch.tensor([[1.0, 0.5], [0.0, 0.0]])
    module.edge_costs = torch.tensor([[2e-3, 5e-4], [1e-4, 1e-4]])  # normalised: [[1, 0.5], [0.1, 0.1]]
    w = torch.tensor([[0.75, 0.25], [1.0, 0.0]])
    logits = torch.tensor([[0.3, -0.2], [1.0, 2.0]])
    monkeypatch.setattr(gr, "sample_preferences", lambda n, device=None, cost_power=1.0: w)
    monkeypatch.setattr(module, "_forward", lambda *args, **kwargs: logits)
    rows = torch.arange(2)
    # row 0: 0.75 * [1, 0.5] + 0.25 * (1 - [1, 0.5]) = [0.75, 0.5]; row 1 (w_c = 0): the scores
    loss, hit = module._edge_loss(torch.zeros(2, 4), rows)
    target = torch.tensor([[0.75, 0.5], [0.0, 0.0]])
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, target))
    assert hit == 1.0  # row 0: a (reward 0.5 vs 0.25) is best and top-scored; row 1: a tie, both best
    module.hparams.target = "best"
    loss, _ = module._edge_loss(torch.zeros(2, 4), rows)
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 0.0], [1.0, 1.0]])))


def _table(best_of_task: dict[str, int], n: int = 90, seed: int = 0) -> OutcomeTable:
    """Prompts of 3 recognisable tasks; on each task the model ``best_of_task[task]`` scores ~0.9, others ~0.2."""
    rng = np.random.default_rng(seed)
    names = list(TASKS)
    tasks = [names[i % 3] for i in range(n)]
    scores = np.full((n, 3), 0.2) + rng.normal(0, 0.03, (n, 3))
    for i, t in enumerate(tasks):
        scores[i, best_of_task[t]] = 0.9 + rng.normal(0, 0.03)
    costs = np.array([1e-4, 2e-4, 3e-4]) * rng.uniform(0.9, 1.1, (n, 3))
    return OutcomeTable([f"p{i}" for i in range(n)], [TASKS[t].format(i=i, j=i % 5 + 2) for i, t in enumerate(tasks)],
                        tasks, ["m0", "m1", "m2"], np.clip(scores, 0, 1), costs, "tasks")


def _dm(table: OutcomeTable) -> RoutingDataModule:
    """The table embedded with the real encoder: GraphRouter's learning tests need meaningful embeddings."""
    dm = RoutingDataModule(split=Split(ood_tasks=[]), batches=Batches(batch_size=16))
    dm.use_table(table)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _test_score(module, dm, w_c: float = 0.0) -> tuple[float, float]:
    """The router's mean score on the test split, and the best single model's."""
    rows = dm.splits.test
    emb, scores = torch.as_tensor(dm.embeddings(rows)), torch.as_tensor(dm.table.scores[rows])
    with torch.no_grad():
        action = module.eval().greedy(emb, preference_tensor(w_c, len(emb)))
    return float(scores.gather(1, action[:, None]).mean()), float(scores.mean(0).max())


def test_reaches_the_oracle_when_one_model_always_wins(_barp_cache):
    dm = _dm(_table({"math": 1, "poem": 1, "code": 1}))  # m1: best score everywhere (and mid-priced)
    # 8 epochs: at 5, seed 0 sends 2 of 18 prompts to m1 at w_c = 1 (seeds 0-2 all reach m0 from 8 on)
    module = train_method("graphrouter", dm, tau=1e-3, seed=0, max_epochs=8, init_args=FAST)
    rows = dm.splits.test
    emb = torch.as_tensor(dm.embeddings(rows))
    with torch.no_grad():
        for w_c in (0.0, 0.1):  # m1's score margin outweighs its cost margin up to w_c ~ 0.4
            assert module.greedy(emb, preference_tensor(w_c, len(emb))).eq(1).all(), w_c
        # cost only: the cheapest model (m0), from the same trained model
        assert module.greedy(emb, preference_tensor(1.0, len(emb))).eq(0).float().mean() >= 0.9


def test_new_prompts_do_not_change_each_other(_barp_cache):
    """Inductive: a prompt's scores are the same alone or in a batch (it joins the graph with incoming edges only)."""
    dm = _dm(_table({"math": 0, "poem": 1, "code": 2}))
    module = train_method("graphrouter", dm, tau=1e-3, seed=0, max_epochs=1, init_args=FAST)
    emb = torch.as_tensor(dm.embeddings(dm.splits.test))
    w = preference_tensor(0.3, len(emb))
    with torch.no_grad():
        together = module.route(emb, w)
        alone = torch.cat([module.route(emb[i:i + 1], w[i:i + 1]) for i in range(len(emb))])
    assert torch.allclose(together, alone, atol=1e-5)


def _write_csv(table: OutcomeTable, path: Path) -> Path:
    """The table as a barp CSV (one score and one total-cost column per model)."""
    import pandas as pd

    frame = pd.DataFrame({"prompt_id": table.prompt_ids, "prompt": table.prompts, "task": table.tasks})
    for j, m in enumerate(table.models):
        frame[m] = table.scores[:, j]
        frame[f"{m}|total_cost"] = table.costs[:, j]
    frame.to_csv(path, index=False)
    return path


def test_bad_descriptions_file_stops_fit_before_anything_is_written(tmp_path):
    data = _write_csv(_table({"math": 0, "poem": 1, "code": 2}, n=30), tmp_path / "data.csv")
    (tmp_path / "llm_candidates.json").write_text('{"m0": {"size": "7B"}}')
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(ROOT / "configs/experiments/routerbench.yaml"),
              "--config", str(ROOT / "configs/model/graphrouter.yaml"),
              "--data.init_args.source.path", str(data), "--data.init_args.split.ood_tasks", "[]",
              "--model.init_args.descriptions", str(tmp_path / "llm_candidates.json"),
              "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out)])
    assert stop.value.code == 2
    assert not out.exists() or not any(out.rglob("*"))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``barp fit`` of GraphRouter on a CSV whose best model depends on the task (m0: math, m1: poem, m2: code)."""
    out = tmp_path_factory.mktemp("graphrouter")
    _write_csv(_table({"math": 0, "poem": 1, "code": 2}, n=120), out / "data.csv")
    cli = main(["fit", "--config", str(ROOT / "configs/experiments/routerbench.yaml"),
                "--config", str(ROOT / "configs/model/graphrouter.yaml"),
                "--data.init_args.source.path", str(out / "data.csv"), "--data.init_args.split.ood_tasks", "[]",
                "--data.init_args.batches.batch_size", "16", "--model.init_args.lr", "0.01",
                "--model.init_args.steps_per_batch", "4", "--trainer.max_epochs", "8",
                "--trainer.check_val_every_n_epoch", "8", "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
                "--test_after_fit", "false"])
    return cli, Path(cli.trainer.checkpoint_callback.last_model_path)


@pytest.mark.slow
def test_learns_a_task_dependent_choice(fitted):
    cli, _ = fitted
    score, best_single = _test_score(cli.model, cli.datamodule)
    assert best_single < 0.5 and score > best_single + 0.3, (score, best_single)


@pytest.mark.slow
def test_checkpoint_loads_and_routes_raw_prompts(fitted, served_models):
    cli, ckpt = fitted
    router = TrainedRouter.from_checkpoint(ckpt)
    assert isinstance(router.module, GraphRouter) and len(router.module.query_emb) > 0
    assert router.module.hparams.query_state == "input" and router.module.task_link == cli.model.task_link == "nearest"
    assert torch.equal(router.module.task_features, cli.model.task_features)  # descriptions are not re-embedded
    dm = cli.datamodule
    rows = dm.splits.test
    prompts = [dm.table.prompts[i] for i in rows]
    decisions = router.route(prompts, w_c=0.0)  # raw text, embedded by the checkpoint's own encoder
    chosen = [router.models.index(d.model) for d in decisions]
    score = float(np.mean(dm.table.scores[rows, chosen]))
    assert score > float(dm.table.scores[rows].mean(0).max()) + 0.3, score
    assert decisions == TrainedRouter(cli.model).route(prompts, w_c=0.0)
    assert served_models(ckpt, Path(ckpt).parent / "serve", prompts[:8], 0.0) == [d.model for d in decisions[:8]]
