"""One run per work dir: a second run fails clearly, or waits for the first when told to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmasr.lock import WorkDirBusy, work_dir_lock

HOLD = """
import sys, time
from pathlib import Path
from llmasr.lock import work_dir_lock
with work_dir_lock(Path(sys.argv[1]), what="holder"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    (Path(sys.argv[1]) / "holder-finished").touch()  # still under the lock
"""


def _holder(root: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_fails_clearly_while_the_first_holds_the_work_dir(tmp_path: Path):
    proc = _holder(tmp_path, 30)
    try:
        with pytest.raises(WorkDirBusy, match="in use by another run") as err:
            with work_dir_lock(tmp_path):
                pass
        assert "holder" in str(err.value) and str(proc.pid) in str(err.value)
    finally:
        proc.kill()
        proc.wait()


def test_second_run_waits_when_asked_and_then_proceeds(tmp_path: Path):
    proc = _holder(tmp_path, 1.0)
    try:
        with work_dir_lock(tmp_path, wait_s=60, poll_s=0.05):
            assert (tmp_path / "holder-finished").exists()  # it only got the lock after the holder's work
    finally:
        proc.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path):
    proc = _holder(tmp_path, 60)
    proc.kill()  # SIGKILL: the kernel drops the flock
    proc.wait()
    with work_dir_lock(tmp_path):
        pass


def test_lock_file_names_the_current_holder(tmp_path: Path):
    import json
    import os

    for what in ("llmasr-data", "llmasr-train"):
        with work_dir_lock(tmp_path, what=what):
            info = json.loads((tmp_path / ".llmasr.lock").read_text())
            assert info["what"] == what and info["pid"] == os.getpid()


def test_the_cli_reports_a_busy_work_dir_as_an_error_not_a_traceback(tmp_path: Path, capsys):
    from cli import main

    work, src = tmp_path / "work", tmp_path / "audio"
    work.mkdir()
    src.mkdir()
    proc = _holder(work, 120)
    try:
        # a labeller that ships with llmasr: the default large-v3 may not be here (preflight checks it)
        assert (
            main(
                [
                    "data",
                    "--work-dir",
                    str(work),
                    "--source",
                    str(src),
                    "--set",
                    "label.model=bundled:tiny.en",
                ]
            )
            == 2
        )
    finally:
        proc.kill()
        proc.wait()
    err = " ".join(capsys.readouterr().err.split())
    assert "error:" in err and "is in use by another run" in err and str(proc.pid) in err


def test_an_ended_run_leaves_no_lock_file_and_a_killed_ones_is_taken_over_and_logged(tmp_path: Path, caplog):
    import json
    import logging

    with work_dir_lock(tmp_path, what="llmasr-data"):
        pass
    assert not (tmp_path / ".llmasr.lock").exists()  # removed by the run that held it

    proc = _holder(tmp_path, 60)
    proc.kill()  # kill -9: no chance to remove the file
    proc.wait()
    assert json.loads((tmp_path / ".llmasr.lock").read_text())["pid"] == proc.pid  # left behind
    with caplog.at_level(logging.WARNING, logger="llmasr.lock"):
        with work_dir_lock(tmp_path, what="llmasr-train"):
            assert json.loads((tmp_path / ".llmasr.lock").read_text())["what"] == "llmasr-train"
    assert f"left by pid {proc.pid} (holder on " in caplog.text and "which no longer runs" in caplog.text
    assert not (tmp_path / ".llmasr.lock").exists()


TURN = """
import os, sys, time
from pathlib import Path
from llmasr.lock import work_dir_lock
root = Path(sys.argv[1])
for _ in range(30):
    with work_dir_lock(root, wait_s=300, poll_s=0.01, what="turn"):
        with open(root / "turns.log", "a") as f:
            f.write(f"in {os.getpid()}\\n")
        time.sleep(0.001)
        with open(root / "turns.log", "a") as f:
            f.write(f"out {os.getpid()}\\n")
"""


def test_runs_that_wait_for_each_other_never_overlap_while_lock_files_come_and_go(tmp_path: Path):
    # each release removes the lock file, which another waiter may have opened already: a waiter
    # that then gets the flock of the removed file must not run (it locks the file at the path).
    # Locking whatever file was opened let two of these six overlap in about every other try.
    procs = [
        subprocess.Popen([sys.executable, "-c", TURN, str(tmp_path)], stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errs
    assert not any("took over" in e for e in errs)  # every holder removed its own file
    lines = (tmp_path / "turns.log").read_text().split("\n")[:-1]
    assert len(lines) == 2 * 6 * 30
    for enter, leave in zip(lines[::2], lines[1::2]):
        assert enter.startswith("in ") and leave == "out " + enter[3:], lines
    assert not (tmp_path / ".llmasr.lock").exists()
