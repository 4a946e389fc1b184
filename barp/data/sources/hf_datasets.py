"""Routing tables stored as Hugging Face ``datasets``: a local ``save_to_disk`` folder or a hub dataset by name.

- **Local folder**: a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (Arrow files,
  memory-mapped when read). Give the folder as the path; for a ``DatasetDict`` name the split after ``#``:
  ``data/sprout#train``. A dict with a single split needs no ``#``.
- **Hub dataset**: ``hf-dataset://OWNER/NAME@REVISION#SPLIT``. The revision is required (a commit hash or tag),
  so a run always reads the same data. The repository is fetched with ``huggingface_hub.snapshot_download`` into
  ``<cache_dir>/hub/datasets/OWNER/NAME@REVISION/`` and read with ``datasets.load_dataset`` from there; a
  snapshot already in that folder is used as is, so a machine without network reads a copy put there by hand.

Either way the rows become a table (or JSON-like records when a ``scores`` column holds dicts) and go through the
same layout detection, column mapping and validation as files; messages name the folder (and split) and the row.
"""

from __future__ import annotations

from pathlib import Path

from barp.data.sources.files import RawFile
from barp.data.sources.hub import hub_offline
from barp.errors import DataValidationError
from barp.paths import cache_root

DATASET_PREFIX = "hf-dataset://"
SPLIT_SEPARATOR = "#"
#: Files ``save_to_disk`` writes: a Dataset folder has the first two, a DatasetDict folder the third.
DATASET_MARKERS = ("state.json", "dataset_info.json")
DICT_MARKER = "dataset_dict.json"


def split_suffix(path: str) -> tuple[str, str | None]:
    """Split ``PATH#SPLIT`` into the path and the split name (None without ``#``)."""
    base, sep, split = path.rpartition(SPLIT_SEPARATOR)
    return (base, split or None) if sep else (path, None)


def is_dataset_path(path: str) -> bool:
    """Whether ``path`` names a hub dataset or a ``save_to_disk`` folder (with an optional ``#SPLIT``)."""
    if path.startswith(DATASET_PREFIX):
        return True
    folder = Path(split_suffix(path)[0]).expanduser()
    return folder.is_dir() and (
        (folder / DICT_MARKER).is_file() or all((folder / m).is_file() for m in DATASET_MARKERS)
    )


def _pick_split(data, split: str | None, where: str):
    """The requested split of a DatasetDict (or the Dataset itself)."""
    from datasets import DatasetDict

    if not isinstance(data, DatasetDict):
        if split is not None:
            raise DataValidationError(f"{where}: holds a single dataset with no splits; drop '#{split}'")
        return data
    names = list(data)
    if split is None:
        if len(names) == 1:
            return data[names[0]]
        raise DataValidationError(f"{where}: holds the splits {names}; name one as {where}#SPLIT")
    if split not in data:
        raise DataValidationError(f"{where}: has no split {split!r}; its splits are {names}")
    return data[split]


def _raw(dataset, where: str) -> RawFile:
    """The rows as a :class:`RawFile` (records when a ``scores`` column holds dicts, else a DataFrame)."""
    if len(dataset) == 0:
        raise DataValidationError(f"{where}: has no rows")
    raw = RawFile(path=Path(split_suffix(where)[0]), container="datasets", name=where)
    if "scores" in dataset.column_names and isinstance(dataset[0]["scores"], dict):
        raw.objects = dataset.to_list()
    else:
        raw.frame = dataset.to_pandas()
    return raw


def read_local(path: str) -> RawFile:
    """Read a ``save_to_disk`` folder (``DIR`` or ``DIR#SPLIT``).

    Raises:
        DataValidationError: The folder cannot be read by ``datasets``, or the split is missing or ambiguous.
    """
    from datasets import load_from_disk

    folder, split = split_suffix(path)
    try:
        data = load_from_disk(str(Path(folder).expanduser()))
    except Exception as exc:  # corrupt Arrow files, version mismatches
        raise DataValidationError(
            f"{folder}: cannot be read as a datasets folder ({type(exc).__name__}: {exc})"
        ) from exc
    return _raw(_pick_split(data, split, folder), path)


def _parse(url: str) -> tuple[str, str, str | None]:
    spec, split = split_suffix(url[len(DATASET_PREFIX) :])
    repo, _, revision = spec.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")) or not revision:
        raise DataValidationError(
            f"{url}: expected {DATASET_PREFIX}OWNER/NAME@REVISION[#SPLIT] (the revision, a commit hash or tag, "
            "is required so that every run reads the same data)"
        )
    return repo, revision, split


def snapshot_dir(url: str, cache_dir: str | None = None) -> Path:
    """Where the hub dataset ``url`` is (or would be) kept locally."""
    repo, revision, _ = _parse(url)
    root = cache_root(cache_dir)
    return root / "hub" / "datasets" / f"{repo}@{revision}"


def read_hub(url: str, cache_dir: str | None = None) -> RawFile:
    """Read ``hf-dataset://OWNER/NAME@REVISION[#SPLIT]``, fetching the snapshot only when online and missing.

    Raises:
        DataValidationError: Offline without a local snapshot, a failed download, or an unreadable dataset.
    """
    repo, revision, split = _parse(url)
    local = snapshot_dir(url, cache_dir)
    if not (local.is_dir() and any(local.iterdir())):
        manual = (
            f"On a machine with network access, download the dataset repository {repo} at revision {revision} "
            f"(for example `huggingface-cli download {repo} --repo-type dataset --revision {revision} "
            f"--local-dir {local}`) and put its files in {local}; or save it with "
            f"`datasets.load_dataset('{repo}', revision='{revision}').save_to_disk(DIR)` and pass DIR as the path."
        )
        if hub_offline():
            raise DataValidationError(
                f"{url}: the hub is offline (HF_HUB_OFFLINE is set) and {local} is empty. {manual}"
            )
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=repo, repo_type="dataset", revision=revision, local_dir=local)
        except Exception as exc:  # network, auth, unknown repo or revision
            raise DataValidationError(f"{url}: download failed ({type(exc).__name__}: {exc}). {manual}") from exc
    from datasets import load_dataset

    try:
        data = load_dataset(str(local), cache_dir=str(local.parent / ".arrow"))
    except Exception as exc:  # a snapshot datasets cannot read
        raise DataValidationError(f"{url}: the files in {local} cannot be read by datasets ({type(exc).__name__}: "
                                  f"{exc})") from exc
    return _raw(_pick_split(data, split, url), url)


def read_dataset(path: str, cache_dir: str | None = None) -> RawFile:
    """Read a hub dataset or a local ``save_to_disk`` folder (see the module docstring)."""
    return read_hub(path, cache_dir) if path.startswith(DATASET_PREFIX) else read_local(path)


__all__ = ["DATASET_PREFIX", "is_dataset_path", "read_dataset", "snapshot_dir", "split_suffix"]
