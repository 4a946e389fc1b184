"""Atomic file writes: write under a temporary name in the target's folder, then rename over the target.

A reader (or a run that was killed mid-write) sees either the old file or the complete new one, never a part.
Every file barp writes for a user (results, sweeps, plots, canonical parquet, logs, cache shards) goes through here.
A set of files that belong together (a sweep's results) is written into a staging folder first and then replaced as
one unit, as far as a file system allows, by :func:`replace_file_set`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from barp.errors import ConfigError


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path next to ``path``; on a clean exit rename it to ``path``, else delete it.

    Args:
        path: The file to write (its folder is created).
        suffix: Suffix of the temporary name (e.g. ``.tmp.png`` when a writer infers the format from it).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_folder(output: str, command: str, writes: str) -> Path:
    """Check, before any work, that ``output`` is a folder a command can write its results in; nothing is created.

    Args:
        output: The ``--output`` value.
        command: The command, for the message (``barp sweep``).
        writes: What it writes there, for the message (``sweep.csv, summary.json``).

    Raises:
        ConfigError: ``output`` is a file, lies under a file, or its nearest existing folder is not writable.
    """
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {output!r} is a file; {command} writes a folder ({writes})")
    base = out
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"--output {output!r}: {str(base)!r} is a file, so the folder cannot be made")
    try:
        tempfile.TemporaryFile(dir=base).close()
    except OSError as err:
        raise ConfigError(f"--output {output!r}: cannot write in {str(base)!r} ({err.strerror or err})") from None
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    Args:
        path: The file to write.
        data: Its whole content.
        durable: Also flush the data to disk before the rename and the folder after it, so that the new content
            survives a power loss once this returns (logs that must not lose acknowledged work).
    """
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    if durable:
        fsync_path(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk where the platform allows it (folders: POSIX only)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_file_set(staging: str | os.PathLike, folder: str | os.PathLike, names: Sequence[str], marker: str,
                     earlier: Sequence[str] = ()) -> None:
    """Replace a set of files in ``folder`` by the complete new set written in ``staging``, as one unit as far as a
    file system allows.

    No file system renames several files at once, so the set carries a marker: the file (one of ``names``) whose
    presence says the set is complete. The earlier marker is removed first, then the earlier files, then the new
    files are moved in (``os.replace``, so ``staging`` must be on the same file system, e.g. inside ``folder``), the
    new marker last; files and folder are flushed to disk between the steps. A run killed at any point therefore
    leaves the earlier complete set, the new complete set, or a set without its marker (recognisably incomplete),
    never earlier files beside new ones. ``staging`` itself is left in place (empty of ``names``).

    Args:
        staging: Folder holding every file of ``names``, completely written.
        folder: Folder receiving them (created if needed).
        names: File names of the new set; ``marker`` is one of them.
        marker: The completion marker, moved in last.
        earlier: File names of the earlier set to remove from ``folder`` first (missing ones are skipped); only
            these and ``names`` are ever touched.
    """
    staging, folder = Path(staging), Path(folder)
    if marker not in names:
        raise ValueError(f"replace_file_set: marker {marker!r} is not one of {list(names)}")
    missing = [n for n in names if not (staging / n).is_file()]
    if missing:
        raise FileNotFoundError(f"replace_file_set: {missing} not written in {staging}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        fsync_path(staging / name)
    old = [marker, *(n for n in dict.fromkeys([*earlier, *names]) if n != marker)]  # the marker goes first
    if any((folder / n).exists() for n in old):
        for name in old:
            (folder / name).unlink(missing_ok=True)
        fsync_path(folder)
    for name in names:
        if name != marker:
            os.replace(staging / name, folder / name)
    fsync_path(folder)
    os.replace(staging / marker, folder / marker)
    fsync_path(folder)
