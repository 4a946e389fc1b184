"""The encoder's ``auto`` dtype (probed once per machine, remembered, agreeing with float32) and the embedding of
uncached prompts shared among DDP processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import barp.encoders as encoders
from barp.data.embedding_cache import EmbeddingCache, text_key
from barp.data.parts import Split, Synthetic
from barp.encoders import (
    EncoderSpec,
    SentenceEncoder,
    default_dtype_file,
    encoder_identity,
    probe_prompts,
    resolve_dtype,
)

ROOT = Path(__file__).resolve().parents[1]


def _no_probe(*args, **kwargs):
    raise AssertionError("the probe ran again")


# ------------------------------------------------------------------ auto dtype
def test_auto_dtype_agrees_with_float32_and_is_remembered(monkeypatch):
    chosen = resolve_dtype("auto")  # probes unless an earlier test of this session did (same cache, same machine)
    choices = json.loads(default_dtype_file().read_text())
    entries = [choices[encoders.choice_key()]]
    assert entries[0]["dtype"] == chosen
    assert set(entries[0]["speeds"]) == {"float32", "bfloat16"}  # CPU: nothing else is timed
    assert entries[0]["min_cosine"]["float32"] == pytest.approx(1.0, abs=1e-6)
    if chosen != "float32":
        assert entries[0]["min_cosine"][chosen] >= encoders.AGREEMENT

    monkeypatch.setattr(encoders, "probe_dtypes", _no_probe)  # remembered: no second probe
    auto = SentenceEncoder(dtype="auto", batch_size=16)
    assert auto.compute_dtype == chosen == str(next(auto.model.parameters()).dtype).removeprefix("torch.")
    fp32 = SentenceEncoder(dtype="float32", batch_size=16)  # explicit float32 stays float32
    assert fp32.compute_dtype == "float32" and next(fp32.model.parameters()).dtype == torch.float32
    # the probe compared every probe prompt; check a few others here (short, few-shot, truncated)
    prompts = ["route me to a cheap model", "Solve 3x + 5 = 20 for x.", probe_prompts()[20] + " Answer: B", "x " * 600]
    cosine = np.sum(auto.encode(prompts) * fp32.encode(prompts), axis=1)
    assert cosine.min() >= 0.999, cosine.min()


def test_probe_choice_rules_and_store(tmp_path, monkeypatch):
    store = tmp_path / "encoder_dtype.json"
    results = iter([
        {"dtype": "bfloat16", "speeds": {"float32": 10.0, "bfloat16": 30.0}, "min_cosine": {"float32": 1.0,
                                                                                           "bfloat16": 0.9999}},
    ])
    calls = []

    def fake_probe(*args, **kwargs):
        calls.append(args)
        return next(results)

    monkeypatch.setattr(encoders, "probe_dtypes", fake_probe)
    assert resolve_dtype("auto", store=store) == "bfloat16"
    assert resolve_dtype("auto", store=store) == "bfloat16" and len(calls) == 1
    (entry,) = json.loads(store.read_text()).values()
    assert entry["speeds"] == {"float32": 10.0, "bfloat16": 30.0} and "probed" in entry
    # another machine (here: another thread count) is probed on its own
    monkeypatch.setattr(encoders, "encoder_threads", lambda: 97)
    monkeypatch.setattr(encoders, "probe_dtypes", lambda *a, **k: {"dtype": "float32", "speeds": {},
                                                                   "min_cosine": {}})
    assert resolve_dtype("auto", store=store) == "float32"
    assert len(json.loads(store.read_text())) == 2
    assert resolve_dtype("float32", store=tmp_path / "never") == "float32" and not (tmp_path / "never").exists()
    with pytest.raises(Exception, match="encoder dtype must be auto or one of"):
        resolve_dtype("float64")


def test_threads_never_exceed_usable_cpus(monkeypatch):
    monkeypatch.setattr(encoders, "usable_cpus", lambda: 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with encoders.capped_threads() as threads:
            assert threads == 1 == torch.get_num_threads()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_datamodule_keys_cache_and_checkpoint_record_by_resolved_dtype(tmp_path):
    from barp.data.datamodule import RoutingDataModule
    from barp.models.checkpoints import encoder_record
    from tests.helpers.tables import make_table

    dm = RoutingDataModule(split=Split(ood_tasks=[]), cache_dir=str(tmp_path))
    assert dm.encoder_spec.dtype == "auto" and dm.hparams.encoder["dtype"] == "auto"
    dm.use_table(make_table(n=12, seed=3))
    store = tmp_path / "embeddings" / encoders.DTYPE_FILE
    store.parent.mkdir(parents=True)
    store.write_text(default_dtype_file().read_text() if default_dtype_file().exists() else "{}")
    dm.prepare_data()
    dm.setup("fit")
    resolved = dm.encoder_spec.dtype
    assert resolved in encoders.ENCODER_DTYPES
    assert dm.hparams.encoder["dtype"] == resolved  # saved with the data's hyperparameters
    assert encoder_record(dm.encoder_spec)["dtype"] == resolved  # what a checkpoint records
    (setting,) = [json.loads(p.read_text()) for p in (tmp_path / "embeddings").glob("*/setting.json")]
    assert setting["dtype"] == resolved
    explicit = RoutingDataModule(split=Split(ood_tasks=[]), encoder=EncoderSpec(dtype=resolved),
                                 cache_dir=str(tmp_path))
    explicit.use_table(dm.table)
    assert explicit._cache().folder == dm._cache().folder  # same dtype, same cache
    if resolved != "float32":
        fp32 = RoutingDataModule(split=Split(ood_tasks=[]), encoder=EncoderSpec(dtype="float32"),
                                 cache_dir=str(tmp_path))
        assert fp32._cache().folder != dm._cache().folder  # embeddings of two dtypes never mix


# ------------------------------------------------------------------ sharded embedding
class ThreadGroup:
    """A process group of threads (for the sharded path without torch.distributed)."""

    def __init__(self, rank: int, world_size: int, shared: dict, local_leader: bool | None = None) -> None:
        self.rank, self.world_size, self.shared = rank, world_size, shared
        self.local_leader = rank == 0 if local_leader is None else local_leader

    def _exchange(self, value):
        self.shared["barrier"].wait()
        self.shared.setdefault("round", {})[self.rank] = value
        self.shared["barrier"].wait()
        out = [self.shared["round"][r] for r in range(self.world_size)]
        self.shared["barrier"].wait()
        return out

    def broadcast(self, value):
        return self._exchange(value)[0]

    def all_gather(self, value):
        return self._exchange(value)

    def barrier(self):
        self._exchange(None)


def fake(texts):
    return np.stack([np.full(4, float(len(t))) + np.arange(4) for t in texts]).astype(np.float32)


def test_sharded_fill_equals_single_process_fill(tmp_path):
    texts = [f"prompt {i}" * (1 + i % 5) for i in range(23)] + ["prompt 0"]  # a repeated text
    single = EmbeddingCache(tmp_path / "single", "enc", 8, "left", "float32")
    expected, n = single.get_or_compute(texts, fake, chunk_size=5)
    sharded = EmbeddingCache(tmp_path / "sharded", "enc", 8, "left", "float32")
    sharded.get_or_compute(texts[:3], fake, chunk_size=5)  # already cached: not embedded again
    shared = {"barrier": threading.Barrier(2)}
    seen: dict[int, list[str]] = {0: [], 1: []}
    out: dict[int, tuple] = {}

    def rank(r):
        def compute(chunk):
            seen[r].extend(chunk)
            return fake(chunk)
        out[r] = sharded.get_or_compute(texts, compute, chunk_size=5, group=ThreadGroup(r, 2, shared))

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])  # each rank embedded its own share
    assert sorted(seen[0] + seen[1]) == sorted(set(texts) - set(texts[:3]))
    for r in (0, 1):
        assert np.array_equal(out[r][0], expected) and out[r][1] == n - 3
    # the part shards are merged away into the shards one process would have written after the same history
    reference = EmbeddingCache(tmp_path / "reference", "enc", 8, "left", "float32")
    reference.get_or_compute(texts[:3], fake, chunk_size=5)
    reference.get_or_compute(texts, fake, chunk_size=5)
    names = sorted(p.name for p in sharded.folder.iterdir())
    assert names == sorted(p.name for p in reference.folder.iterdir()) and len(names) == 1 + 1 + 4
    assert np.array_equal(sharded.get_or_compute(texts, _no_probe)[0], expected)


def run_ranks(caches: list[EmbeddingCache], leaders: list[bool], texts: list[str], chunk_size: int = 5):
    """``get_or_compute`` on one thread per rank (rank r uses ``caches[r]``); the texts each rank embedded, and each
    rank's result."""
    shared = {"barrier": threading.Barrier(len(caches))}
    seen: dict[int, list[str]] = {r: [] for r in range(len(caches))}
    out: dict[int, tuple] = {}

    def rank(r):
        def compute(chunk):
            seen[r].extend(chunk)
            return fake(chunk)
        group = ThreadGroup(r, len(caches), shared, local_leader=leaders[r])
        out[r] = caches[r].get_or_compute(texts, compute, chunk_size=chunk_size, group=group)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(caches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(out) == len(caches), "a rank did not finish"
    return seen, out


def test_nodes_with_their_own_caches_embed_each_prompt_once_and_fill_both(tmp_path):
    """Two nodes on local disks (node A: ranks 0-1, node B: rank 2) whose caches hold different prompts: a prompt
    cached nowhere is embedded by one process of the three, one cached on a single node is sent from there, and each
    node's cache ends as a single process would have left it."""
    texts = [f"prompt {i}" * (1 + i % 5) for i in range(24)] + ["prompt 0"]
    expected, _ = EmbeddingCache(tmp_path / "single", "enc", 8, "left", "float32").get_or_compute(texts, fake, 5)
    node_a = EmbeddingCache(tmp_path / "node-a", "enc", 8, "left", "float32")
    node_b = EmbeddingCache(tmp_path / "node-b", "enc", 8, "left", "float32")
    node_a.get_or_compute(texts[:6], fake, chunk_size=5)
    node_b.get_or_compute(texts[4:10], fake, chunk_size=5)
    seen, out = run_ranks([node_a, node_a, node_b], [True, False, True], texts)
    embedded = seen[0] + seen[1] + seen[2]
    assert sorted(embedded) == sorted(set(texts) - set(texts[:10]))  # each uncached prompt once, by one process
    assert all(seen.values())  # ... shared among all three, across both nodes
    for r in range(3):
        assert np.array_equal(out[r][0], expected) and out[r][1] == len(set(texts)) - 10
    for node, cached in ((node_a, texts[:6]), (node_b, texts[4:10])):
        reference = EmbeddingCache(tmp_path / f"reference-{node.folder.parent.name}", "enc", 8, "left", "float32")
        reference.get_or_compute(cached, fake, chunk_size=5)
        reference.get_or_compute(texts, fake, chunk_size=5)
        names = sorted(p.name for p in node.folder.iterdir())  # no part shards, no writer marks left
        assert names == sorted(p.name for p in reference.folder.iterdir())
        assert np.array_equal(node.get_or_compute(texts, _no_probe)[0], expected)


def test_node_leaders_on_a_shared_file_system_write_the_cache_once(tmp_path):
    texts = [f"prompt {i}" for i in range(12)]
    caches = [EmbeddingCache(tmp_path / "shared", "enc", 8, "left", "float32") for _ in range(2)]
    writes: dict[int, list[str]] = {0: [], 1: []}
    for r, cache in enumerate(caches):
        def write(keys, vectors, tag="", r=r, original=cache._write_shard):
            writes[r].append(tag)
            return original(keys, vectors, tag)
        cache._write_shard = write
    seen, out = run_ranks(caches, [True, True], texts)  # two nodes, one process each, one shared folder
    assert len(seen[0]) == len(seen[1]) == 6
    assert writes[0] == ["-r0"] * 2 + [""] * 3 and writes[1] == ["-r1"] * 2  # the merged shards: by rank 0 only
    reference = EmbeddingCache(tmp_path / "reference", "enc", 8, "left", "float32")
    reference.get_or_compute(texts, fake, chunk_size=5)
    assert sorted(p.name for p in caches[0].folder.iterdir()) == sorted(p.name for p in reference.folder.iterdir())


FILL = """
import sys, time
import numpy as np
from barp.data.embedding_cache import EmbeddingCache
root, start = sys.argv[1], float(sys.argv[2])
texts = [f"text number {i}" for i in range(200)]
def compute(chunk):
    time.sleep(0.02)
    return np.stack([np.full(8, float(len(t))) + np.arange(8) for t in chunk]).astype(np.float32)
while time.time() < start:
    time.sleep(0.005)
emb, n = EmbeddingCache(root, "enc", 8, "left", "float32").get_or_compute(texts, compute, chunk_size=16)
np.save(sys.argv[3], emb)
"""


def test_two_runs_filling_one_cache_at_once_leave_one_valid_cache(tmp_path):
    import time

    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", FILL, str(tmp_path / "cache"), str(start),
                               str(tmp_path / f"out{i}.npy")]) for i in range(2)]
    assert all(p.wait(60) == 0 for p in procs)
    single = EmbeddingCache(tmp_path / "single", "enc", 8, "left", "float32")
    texts = [f"text number {i}" for i in range(200)]
    expected, _ = single.get_or_compute(
        texts, lambda c: np.stack([np.full(8, float(len(t))) + np.arange(8) for t in c]).astype(np.float32), 16)
    for i in range(2):
        assert np.array_equal(np.load(tmp_path / f"out{i}.npy"), expected)
    cache = EmbeddingCache(tmp_path / "cache", "enc", 8, "left", "float32")
    assert sorted(p.name for p in cache.folder.iterdir()) == sorted(p.name for p in single.folder.iterdir())
    emb, computed = cache.get_or_compute(texts, _no_probe)
    assert computed == 0 and np.array_equal(emb, expected)


@pytest.mark.slow
def test_ddp_processes_share_the_embedding_and_leave_one_cache(tmp_path):
    cache_dir = tmp_path / "cache"
    args = [
        sys.executable, "-m", "barp", "fit",
        "--config", str(ROOT / "configs" / "experiments" / "synthetic.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.init_args.synthetic.num_prompts", "120", "--model.init_args.critic.init_args.neighbours", "5",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", BARP_CACHE=str(cache_dir))
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stderr + proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    shares = {int(r): int(k) for r, k in
              __import__("re").findall(r"process (\d) of 2 embeds (\d+) of the \d+ uncached prompts", log)}
    assert set(shares) == {0, 1} and all(shares.values()), log[-3000:]
    assert log.count("encoder dtype auto -> ") == 1  # probed once (before the other process waited)
    from barp.data.datamodule import RoutingDataModule

    dm = RoutingDataModule(synthetic=Synthetic(num_prompts=120),
                           split=Split(ood_tasks=["arc-challenge", "summarization"]), cache_dir=str(cache_dir))
    cache = dm._cache()  # resolves auto from the run's remembered choice (same machine, same thread count)
    names = sorted(p.name for p in cache.folder.glob("shard-*"))
    prompts = list(dict.fromkeys(dm.table.prompts))
    assert sum(shares.values()) == len(prompts)
    assert names == [f"shard-{__import__('hashlib').sha1(b''.join(map(text_key, prompts))).hexdigest()[:16]}.npz"]
    merged, computed = cache.get_or_compute(prompts, _no_probe)
    single = SentenceEncoder(dtype=dm.encoder_spec.dtype).encode(prompts)
    cosine = np.sum(merged * single, axis=1)
    assert computed == 0 and cosine.min() > 0.9999, cosine.min()
    assert encoder_identity("all-MiniLM-L6-v2") in json.loads((cache.folder / "setting.json").read_text())["encoder"]
