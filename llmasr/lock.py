"""One run per work dir: an exclusive lock on ``<work_dir>/.llmasr.lock`` held for a flow's run.

Two runs on the same work dir would write the same manifests and shards; the second one waits up
to ``wait_s`` for the first to finish, then fails with a clear error naming the holder.  The lock
is an ``flock`` on an open file: the kernel releases it when the holder exits, even on ``kill -9``,
so a crashed run never leaves the work dir locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator


class WorkDirBusy(RuntimeError):
    """Another run holds the work dir."""


@contextlib.contextmanager
def work_dir_lock(root: Path, wait_s: float = 0.0, poll_s: float = 0.5, what: str = "run") -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".llmasr.lock"
    fh = open(path, "a+", encoding="utf-8")
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    raise WorkDirBusy(f"work dir {root} is in use by another run ({holder}); wait for it to finish or use another --work-dir (runner.lock_wait_s sets how long to wait)") from None
                time.sleep(poll_s)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        fh.flush()
        yield
    finally:
        fh.close()  # releases the flock
