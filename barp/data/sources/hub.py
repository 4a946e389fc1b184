"""``hf://`` paths: fetch a dataset file from the Hugging Face hub at a pinned revision, or find it locally.

``hf://withmartian/routerbench/routerbench_0shot.pkl`` resolves to
``<cache_dir>/hub/withmartian/routerbench/routerbench_0shot.pkl`` (``cache_dir`` defaults to ``$BARP_CACHE`` or
``~/.cache/barp``). A file already there is used as is (its hash is
checked when it is loaded, see :mod:`barp.data.sources.safety`); otherwise it is downloaded with
``huggingface_hub`` at the pinned revision, but only when the hub is not disabled (``HF_HUB_OFFLINE`` unset).
Offline, or when the download fails, loading stops at once with a message saying where to put the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from barp.errors import DataValidationError
from barp.paths import cache_root

HUB_PREFIX = "hf://"
ROUTERBENCH_REPO = "withmartian/routerbench"
#: The revision whose pickles have the hashes pinned in :data:`barp.data.sources.safety.PINNED_PICKLES`.
ROUTERBENCH_REVISION = "784021482c3f320c6619ed4b3bb3b41a21424fcb"
_FALSE = {"", "0", "false", "no", "off"}


def is_hub_path(path: str) -> bool:
    """Whether ``path`` names a hub file (``hf://owner/name/file``)."""
    return path.startswith(HUB_PREFIX)


def hub_offline() -> bool:
    """Whether the user disabled the hub (``HF_HUB_OFFLINE`` set to a true value)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in _FALSE


def _parse(url: str) -> tuple[str, str, str]:
    """Split ``hf://owner/name[@revision]/file`` into repo id, revision and file name."""
    parts = url[len(HUB_PREFIX) :].split("/")
    if len(parts) < 3 or not all(parts):
        raise DataValidationError(
            f"{url}: not a hub path; expected hf://OWNER/DATASET/FILE, "
            "e.g. hf://withmartian/routerbench/routerbench_0shot.pkl"
        )
    owner, name, filename = parts[0], parts[1], "/".join(parts[2:])
    name, _, revision = name.partition("@")
    repo = f"{owner}/{name}"
    if not revision:
        if repo != ROUTERBENCH_REPO:
            raise DataValidationError(
                f"{url}: give a pinned revision for datasets other than {ROUTERBENCH_REPO}: "
                f"hf://{repo}@REVISION/{filename}"
            )
        revision = ROUTERBENCH_REVISION
    return repo, revision, filename


def resolve_hub_path(url: str, cache_dir: str | None = None) -> Path:
    """Return a local copy of the hub file ``url``, downloading it if allowed and needed.

    Args:
        url: ``hf://OWNER/DATASET[@REVISION]/FILE``; RouterBench files default to the pinned revision.
        cache_dir: barp's cache folder (default ``$BARP_CACHE``, else ``~/.cache/barp``); the file lives at
            ``<cache_dir>/hub/OWNER/DATASET/FILE``.

    Raises:
        DataValidationError: The file is not there and the hub is offline, unreachable or refuses the download.
    """
    repo, revision, filename = _parse(url)
    root = cache_root(cache_dir)
    local_dir = root / "hub" / repo
    target = local_dir / filename
    if target.is_file():
        return target
    manual = (
        f"Download {filename} (revision {revision}) from https://huggingface.co/datasets/{repo} on a machine "
        f"with network access and put it at {target} (or pass its local path as --data.source.path)."
    )
    if hub_offline():
        raise DataValidationError(
            f"{url}: the hub is offline (HF_HUB_OFFLINE is set) and {target} does not exist. {manual}"
        )
    try:
        from huggingface_hub import hf_hub_download

        downloaded = hf_hub_download(
            repo_id=repo, filename=filename, repo_type="dataset", revision=revision, local_dir=local_dir
        )
    except Exception as exc:  # network, auth, missing file: all end in the same advice
        raise DataValidationError(f"{url}: download failed ({type(exc).__name__}: {exc}). {manual}") from exc
    return Path(downloaded)
