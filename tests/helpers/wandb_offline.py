"""Read what an offline W&B run wrote: its folder's media files and the records of its ``run-<id>.wandb`` file.

The ``.wandb`` file is W&B's own transaction log: a 7-byte header (``:W&B``, a magic number, a version) and then
LevelDB-log records (32 KiB blocks; per record a CRC, a length and a kind: full, first, middle or last piece) whose
payloads are ``wandb.proto.wandb_internal_pb2.Record`` protobufs, the objects ``wandb sync`` uploads. wandb (0.31)
ships no Python reader of it any more, so these few lines read it with wandb's own protobuf classes.
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32768
HEADER = 7


def offline_run(root: Path, timeout: float = 60.0) -> Path:
    """The one offline run folder under ``root`` (``<root>/**/wandb/offline-run-*``), once its transaction log is
    complete: ``run.finish()`` can return before W&B's service process has written the last records, so this waits
    (up to ``timeout`` seconds) for the log's ``exit`` record."""
    runs = sorted(root.rglob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {root}, found {runs}"
    deadline = time.monotonic() + timeout
    while not any(r.WhichOneof("record_type") == "exit" for r in records(runs[0])):
        assert time.monotonic() < deadline, f"{runs[0]}: the run's log has no exit record after {timeout} s"
        time.sleep(0.1)
    return runs[0]


def records(run_dir: Path) -> Iterator:
    """The protobuf records of a run folder's ``run-*.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B transaction log"
    pos, payload = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        payload = chunk if kind in (1, 2) else payload + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(payload)
            yield record


def history_keys(run_dir: Path) -> set[str]:
    """Every top-level key the run logged with ``run.log`` (a media object's nested fields folded into its key)."""
    keys = set()
    for r in records(run_dir):
        if r.WhichOneof("record_type") == "history":
            keys |= {(item.key or item.nested_key[0]) for item in r.history.item}
    return keys


def charts(run_dir: Path) -> dict[str, dict]:
    """The custom charts (``wandb.plot.*``) the run registered: key -> panel config."""
    found = {}
    for r in records(run_dir):
        if r.WhichOneof("record_type") == "config":
            for u in r.config.update:
                keys = list(u.nested_key) or [u.key]
                if keys[:2] == ["_wandb", "visualize"] and len(keys) == 3:
                    found[keys[2]] = json.loads(u.value_json)
                elif keys == ["_wandb"] and "visualize" in u.value_json:
                    found.update(json.loads(u.value_json).get("visualize") or {})
    return found


def artifacts(run_dir: Path) -> list:
    """The artifacts the run logged (``ArtifactRecord``: type, name, JSON ``metadata``, manifest)."""
    return [r.artifact for r in records(run_dir) if r.WhichOneof("record_type") == "artifact"]


def media(run_dir: Path, kind: str, key: str) -> list[Path]:
    """The media files of a logged key: ``kind`` is ``table`` or ``images``; ``key`` e.g. ``test/results``."""
    folder = run_dir / "files" / "media" / kind / Path(key).parent
    name = re.compile(re.escape(Path(key).name) + r"_\d+_[0-9a-f]+\..+")  # <name>_<step>_<hash>.<suffix>
    return sorted(p for p in folder.glob("*") if name.fullmatch(p.name))
