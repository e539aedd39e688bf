"""One run per work dir: an exclusive lock on ``<work_dir>/.llmasr.lock`` held for a flow's run.

Two runs on the same work dir would write the same manifests and shards; the second one waits up
to ``wait_s`` for the first to finish, then fails with a clear error naming the holder.  The lock
is an ``flock`` on an open file: the kernel releases it when the holder exits, even on ``kill -9``,
so a crashed run never leaves the work dir locked.

The file names its holder (pid, host, flow, start time).  A run that ends removes it, still holding
the lock; a process killed before that leaves it behind, and the next run takes it over and logs
whose lock it was.  Since a run that waited may end up holding the flock of a file the previous
holder has just removed, a run holds the lock only once the flock is on the file that is at the
path (same inode); otherwise it opens the path again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".llmasr.lock"

log = logging.getLogger("llmasr.lock")


class WorkDirBusy(RuntimeError):
    """Another run holds the work dir."""


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger inside a Prefect run (terminal and UI), else this module's."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow or task run
        return log


def _takeover_note(text: str, path: Path) -> str | None:
    """What to log when the lock file we now hold still names another holder, or None."""
    if not text.strip():
        return None
    try:
        info = json.loads(text)
        pid, host = int(info["pid"]), str(info.get("host", ""))
    except (ValueError, KeyError, TypeError):
        return f"took over {path}, left behind unreadable ({text[:80]!r})"
    who = (
        f"pid {pid} ({info.get('what', 'run')} on {host or 'an unknown host'} since {info.get('since', '?')})"
    )
    if host == socket.gethostname() and not _pid_runs(pid):
        return f"took over {path} left by {who}, which no longer runs"
    return f"took over {path} left by {who}, which no longer holds it"


def _open_locked(path: Path, deadline: float, poll_s: float, root: Path):
    """The open lock file at ``path``, flocked by us; WorkDirBusy once ``deadline`` passes."""
    while True:
        fh = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            if time.monotonic() >= deadline:
                raise WorkDirBusy(
                    f"work dir {root} is in use by another run ({holder}); wait for it to finish or use "
                    "another --work-dir (runner.lock_wait_s sets how long to wait)"
                ) from None
            time.sleep(poll_s)
            continue
        try:
            same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fh
        fh.close()  # the holder we waited for removed this file: lock the one at the path now


@contextlib.contextmanager
def work_dir_lock(root: Path, wait_s: float = 0.0, poll_s: float = 0.5, what: str = "run") -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fh = _open_locked(path, time.monotonic() + wait_s, poll_s, root)
    try:
        fh.seek(0)
        note = _takeover_note(fh.read(), path)
        if note:
            _logger().warning(note)
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "what": what,
                    "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
            )
        )
        fh.flush()
        yield
    finally:
        # removed while still held, so no ended run's file stays behind (unless someone replaced it)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                path.unlink()
        fh.close()  # releases the flock
