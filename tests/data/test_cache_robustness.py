"""Data at risk: the embedding cache survives interruption and damaged shards; prepare_data never overwrites its input;
barp sweep checks --output before any work."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from barp.data.embedding_cache import EmbeddingCache, text_key
from barp.errors import ConfigError
from tests.helpers import load_tool


def fake(texts: list[str]) -> np.ndarray:
    return np.stack([np.full(4, float(len(t))) for t in texts]).astype(np.float32)


# ------------------------------------------------------------------ the embedding cache
def test_interrupted_embedding_keeps_finished_chunks(tmp_path):
    cache = EmbeddingCache(tmp_path, "enc", 8, "left", "float32")
    texts = [f"text {i}" for i in range(10)]
    calls = []

    def crash_on_third(chunk):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fake(chunk)

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute(texts, crash_on_third, chunk_size=4)
    assert len(list(tmp_path.rglob("shard-*.npz"))) == 2 and not list(tmp_path.rglob(".shard-*"))
    again = []
    emb, computed = cache.get_or_compute(texts, lambda t: again.append(list(t)) or fake(t), chunk_size=4)
    assert computed == 2 and again == [texts[8:]]  # only the chunk that never finished
    assert np.array_equal(emb, fake(texts))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape"])
def test_a_damaged_shard_is_named_set_aside_and_rebuilt(tmp_path, damage):
    cache = EmbeddingCache(tmp_path, "enc", 8, "left", "float32")
    texts = ["alpha", "beta", "gamma", "delta"]
    cache.get_or_compute(texts, fake, chunk_size=2)
    shard = sorted(tmp_path.rglob("shard-*.npz"))[0]
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:50])
    elif damage == "garbage":
        shard.write_text("not a zip file")
    else:
        np.savez(shard, keys=np.zeros((2, 20), np.uint8), vectors=np.zeros((3, 4), np.float32))
    with pytest.warns(UserWarning, match=f"shard {shard} is damaged"):
        emb, computed = cache.get_or_compute(texts, fake, chunk_size=2)
    assert computed == 2 and np.array_equal(emb, fake(texts))
    assert shard.with_name(shard.name + ".damaged").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next run is quiet and computes nothing
        assert cache.get_or_compute(texts, fake)[1] == 0


def test_a_shard_merged_away_while_read_is_not_damage(tmp_path, monkeypatch):
    """Another process may replace part shards by merged ones between listing the folder and reading a shard."""
    cache = EmbeddingCache(tmp_path, "enc", 8, "left", "float32")
    texts = ["alpha", "beta", "gamma", "delta"]
    cache.get_or_compute(texts[:2], fake)
    part = next(tmp_path.rglob("shard-*.npz"))
    real_read = EmbeddingCache._read_shard

    def merge_then_read(shard, dim):
        if shard == part and part.exists():  # the other process merges: writes the union, removes the part
            cache._write_shard([text_key(t) for t in texts], fake(texts))
            part.unlink()
        return real_read(shard, dim)

    monkeypatch.setattr(EmbeddingCache, "_read_shard", staticmethod(merge_then_read))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "damaged" warning
        emb, computed = cache.get_or_compute(texts, _no_compute)
    assert computed == 0 and np.array_equal(emb, fake(texts))
    assert not list(tmp_path.rglob("*.damaged"))


def _no_compute(texts):
    raise AssertionError(f"computed {texts}")


# ------------------------------------------------------------------ prepare_data
def _prepare_module():
    return load_tool("prepare_data")


def test_prepare_data_never_overwrites_its_input(tmp_path, capsys):
    from tests.helpers.tables import write_table

    tool = _prepare_module()
    data = write_table(tmp_path / "data.csv", n=6)
    before = data.read_bytes()
    for output, named in ((data, "is the input file"), (tmp_path, "is a folder")):
        assert tool.main(["--path", str(data), "--output", str(output)]) == 1
        err = capsys.readouterr().err
        assert named in err and str(output) in err
    assert tool.main(["--path", f"{tmp_path}/*.csv", "--output", str(data)]) == 1  # a glob naming the input too
    assert "is the input file" in capsys.readouterr().err
    assert data.read_bytes() == before and not list(tmp_path.glob("*.parquet"))
    with pytest.raises(ConfigError, match="is the input file"):
        tool.check_output(f"{tmp_path / 'other.csv'},{data}", str(data))


# ------------------------------------------------------------------ sweep output
def test_sweep_output_is_checked_before_any_work(tmp_path):
    from barp.sweep.harness import check_output

    as_file = tmp_path / "results.txt"
    as_file.write_text("keep me")
    with pytest.raises(ConfigError, match="is a file"):
        check_output(str(as_file))
    with pytest.raises(ConfigError, match="is a file, so the folder cannot be made"):
        check_output(str(as_file / "sub"))
    done = tmp_path / "done"
    done.mkdir()
    (done / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a sweep.*--overwrite true"):
        check_output(str(done))
    assert check_output(str(done), overwrite=True) == done
    assert check_output(str(tmp_path / "new" / "deeper")) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists() and as_file.read_text() == "keep me"


def test_barp_sweep_refuses_a_file_output_at_once(tmp_path, capsys):
    from barp.cli import main
    from tests.helpers import ROUTERBENCH_RECIPE as RECIPE
    from tests.helpers.tables import write_table

    data = write_table(tmp_path / "data.csv", n=6)
    as_file = tmp_path / "out.csv"
    as_file.write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--config", RECIPE, "--data.init_args.source.path", str(data), "--methods", "[oracle]",
              "--output", str(as_file)])
    assert info.value.code == 2 and "is a file" in capsys.readouterr().err
    assert as_file.read_text() == "x"
