"""Pickle safety: unpickle only the pinned official RouterBench files, or files the user says they trust.

Loading a pickle runs whatever code the file tells Python to run, so a pickle from an unknown source is as
dangerous as a script from one. barp checks the file's SHA-256 against the official RouterBench pickles before
loading it; any other pickle needs an explicit ``trust_pickle=True`` (``--data.source.trust_pickle true``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from barp.errors import DataValidationError

#: SHA-256 of the official RouterBench pickles at the pinned hub revision (docs/data.md, RouterBench).
PINNED_PICKLES: dict[str, str] = {
    "routerbench_0shot.pkl": "ba4f77f19517610a707c374e99322d7750c30fc4ae7ff5527888595a1e65d36d",
    "routerbench_5shot.pkl": "fbd7d3d16fba2759a18fa0ad44409d3e0e92ba80d03d90827eed1a6d084c9ffe",
}

#: File name suffixes treated as pickles even when the first byte is not the pickle protocol marker.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pk")

CONVERT_HINT = (
    "If you trust this file, pass trust_pickle=True (--data.source.trust_pickle true), or convert it once to a safe "
    "parquet file and use that from then on: "
    "python tools/prepare_data.py --path {path} --trust_pickle true --output {path}.parquet"
)


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 digest of a file.

    Args:
        path: The file to hash.
        chunk_size: Bytes read at a time.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def check_pickle(path: Path, trust_pickle: bool) -> None:
    """Raise unless ``path`` may be unpickled: its hash is pinned, or the user trusts it.

    Args:
        path: The pickle file.
        trust_pickle: The user's explicit permission to unpickle a file whose hash is not pinned.

    Raises:
        DataValidationError: The file is not a pinned official pickle and ``trust_pickle`` is false. The message
            says why pickles are refused and how to convert the file to parquet.
    """
    if trust_pickle:
        return
    digest = sha256_of(path)
    if digest in PINNED_PICKLES.values():
        return
    hint = CONVERT_HINT.format(path=path)
    expected = PINNED_PICKLES.get(path.name)
    if expected is not None:
        raise DataValidationError(
            f"{path}: SHA-256 hash mismatch: the file is named like the official "
            f"{path.name} but its SHA-256 is {digest}, not the pinned {expected}. It may be truncated, "
            "a different revision, or tampered with, and unpickling a file can run arbitrary code, so barp "
            f"refuses to load it. Download it again, or: {hint}"
        )
    raise DataValidationError(
        f"{path}: refusing to unpickle: its SHA-256 {digest} matches none of the pinned official "
        "RouterBench pickles (0-shot, 5-shot), and loading a pickle can run arbitrary code. " + hint
    )
