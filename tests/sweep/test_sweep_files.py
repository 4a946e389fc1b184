"""``barp sweep --overwrite`` replaces the earlier sweep's files as one set: a run killed at any point while writing
them leaves the earlier sweep, the new one, or a set that the next run (and readers) recognise as incomplete, never
earlier files beside new ones."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from barp.cli import main
from barp.errors import ConfigError
from barp.sweep import harness
from barp.sweep.harness import OUTPUT_FILES, check_output, inspect_sweep_folder, is_complete_sweep, write_outputs
from tests.helpers.cli import small_benchmark


def old_sweep() -> list[str]:
    """The earlier sweep's options: two methods at two preferences, no bootstrap."""
    return [*small_benchmark(), "--bootstrap", "0", "--progress", "false", "--methods", "[oracle, random]",
            "--w_c", "[0.0, 1.0]"]


def new_sweep() -> list[str]:
    """The later sweep's options: other methods at other preferences."""
    return [*small_benchmark(), "--bootstrap", "0", "--progress", "false", "--methods", "[oracle, cheapest]",
            "--w_c", "[0.0, 0.5, 1.0]"]


KEEP = "notes.txt"  # a user's file beside the sweep: never touched


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """An earlier sweep (``old``, with a user's file beside it), a different later one (``new``), and the later
    one's rows and summary as handed to ``write_outputs``."""
    root = tmp_path_factory.mktemp("sweep_files")
    main(["sweep", *old_sweep(), "--output", str(root / "old")])
    (root / "old" / KEEP).write_text("mine")
    captured = {}
    real = harness.write_outputs

    def capture(rows, summary, output, stale=None):
        captured.update(rows=rows, summary=summary)
        return real(rows, summary, output, stale)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "write_outputs", capture)
        main(["sweep", *new_sweep(), "--output", str(root / "new")])
    return root, captured["rows"], captured["summary"]


def _contents(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in OUTPUT_FILES if (folder / f).is_file()}


def _killed_at(k: int, folder: Path, rows: list[dict], summary: dict) -> bool:
    """Write the new sweep into ``folder`` in a child process that SIGKILLs itself right after its ``k``-th rename or
    removal of a file under ``folder``; whether it was killed (False: it finished first)."""
    pid = os.fork()
    if pid == 0:  # the child: no cleanup of any kind runs after the kill, as with kill -9
        code = 1
        try:
            count = 0
            real_replace, real_unlink = os.replace, os.unlink

            def tick(path):
                nonlocal count
                if str(path).startswith(str(folder)):
                    count += 1
                    if count == k:
                        os.kill(os.getpid(), signal.SIGKILL)

            def replace(src, dst, **kw):
                real_replace(src, dst, **kw)
                tick(dst)

            def unlink(path, **kw):
                real_unlink(path, **kw)
                tick(path)

            os.replace, os.unlink = replace, unlink
            write_outputs(rows, summary, folder)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0
    return False


def test_a_kill_at_any_point_never_leaves_old_files_beside_new_ones(sweeps, tmp_path):
    root, rows, summary = sweeps
    old, new = _contents(root / "old"), _contents(root / "new")
    assert set(old) == set(new) == set(OUTPUT_FILES) and all(old[f] != new[f] for f in OUTPUT_FILES)
    states = []
    for k in range(1, 40):
        folder = tmp_path / f"k{k}"
        shutil.copytree(root / "old", folder)
        killed = _killed_at(k, folder, rows, summary)
        now = _contents(folder)
        kinds = {"old" if data == old[f] else "new" if data == new[f] else "other" for f, data in now.items()}
        assert kinds in ({"old"}, {"new"}, set()), f"killed at step {k}: {sorted(now)} are {kinds}"
        assert (folder / KEEP).read_text() == "mine"
        state = inspect_sweep_folder(folder)
        assert state.complete == (now in (old, new)), k  # a partial set is never taken for a finished sweep
        if not killed:
            assert now == new and not state.leftovers and sorted(p.name for p in folder.iterdir()) == sorted(
                [*OUTPUT_FILES, KEEP])
            break
        states.append(("complete" if state.complete else "incomplete", "leftover" * bool(state.leftovers)))
        with pytest.raises(ConfigError, match="already holds .*--overwrite true") as info:
            check_output(str(folder))
        if state.problem is not None:
            assert "left incomplete by an interrupted run" in str(info.value)
        else:  # the earlier sweep intact, or none of its files left: a killed run's staging folder either way
            assert state.leftovers and "staging folder .sweep-staging-" in str(info.value)
    else:
        pytest.fail("the writer never finished")
    # the kill points covered both windows: while staging (earlier sweep intact) and while replacing (incomplete)
    assert ("complete", "leftover") in states and ("incomplete", "leftover") in states


def test_next_run_names_the_incomplete_sweep_and_overwrite_replaces_it(sweeps, tmp_path, capsys):
    root, rows, summary = sweeps
    folder = tmp_path / "out"
    shutil.copytree(root / "old", folder)
    k = 1
    while _contents(folder).get("sweep.csv") != _contents(root / "new")["sweep.csv"]:  # killed once the new
        shutil.rmtree(folder)                                                        # sweep.csv is in place
        shutil.copytree(root / "old", folder)
        assert _killed_at(k, folder, rows, summary)
        k += 1
    assert not is_complete_sweep(folder) and "summary.json" not in _contents(folder)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["sweep", *new_sweep(), "--output", str(folder)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "left incomplete by an interrupted run" in err[0] and "summary.json" in err[0]
    assert "staging folder .sweep-staging-" in err[0] and "--overwrite true" in err[0]

    main(["sweep", *new_sweep(), "--output", str(folder), "--overwrite", "true"])
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "left incomplete by an interrupted run" in warning[0]
    assert _contents(folder) == _contents(root / "new") and is_complete_sweep(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*OUTPUT_FILES, KEEP])  # staging leftovers removed
    assert (folder / KEEP).read_text() == "mine"


def test_a_failure_while_writing_leaves_the_earlier_sweep_and_no_staging(sweeps, tmp_path, monkeypatch):
    root, rows, summary = sweeps
    folder = tmp_path / "out"
    shutil.copytree(root / "old", folder)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "plot_pareto", interrupted)  # sweep.csv is already written by then
    with pytest.raises(KeyboardInterrupt):
        write_outputs(rows, summary, folder)
    assert _contents(folder) == _contents(root / "old") and is_complete_sweep(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*OUTPUT_FILES, KEEP])


def test_summary_lists_the_files_and_a_changed_or_missing_one_is_incomplete(sweeps, tmp_path):
    root, _, _ = sweeps
    listed = json.loads((root / "new" / "summary.json").read_text())["files"]
    assert sorted(listed) == ["pareto.png", "sweep.csv"] and all(len(v["sha256"]) == 64 for v in listed.values())
    assert is_complete_sweep(root / "new") and not is_complete_sweep(tmp_path / "nothing")
    changed = tmp_path / "changed"
    shutil.copytree(root / "new", changed)
    shutil.copy(root / "old" / "pareto.png", changed / "pareto.png")  # an earlier sweep's plot beside the new files
    assert inspect_sweep_folder(changed).problem == "pareto.png not the file(s) summary.json lists"
    (changed / "sweep.csv").unlink()
    assert "sweep.csv missing" in inspect_sweep_folder(changed).problem
    with pytest.raises(ConfigError, match="left incomplete by an interrupted run"):
        check_output(str(changed))
