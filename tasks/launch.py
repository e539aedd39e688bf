"""Run the training launcher (tasks.train.launch_command) as a subprocess: stream its log,
enforce a timeout.

The launcher runs in its own process group; on timeout (a hung stage, a lost rank) or when the
caller is interrupted, the whole group gets SIGTERM, then SIGKILL, so no rank outlives the task.
Failures raise ``TrainingProcessError`` with the log's tail in the message.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

TAIL_LINES = 60


class TrainingProcessError(RuntimeError):
    """The training process failed or timed out; the message ends with its log's tail."""


def run_process(cmd: list[str], env: dict[str, str], log_path: Path, timeout_s: float, on_line: Callable[[str], None] | None = None, cwd: Path | None = None) -> None:
    """Run ``cmd`` in a new process group, tee its output to ``log_path`` and ``on_line``.

    Raises TrainingProcessError on a non-zero exit or after ``timeout_s`` (the group is killed).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                log.write(line + "\n")
                log.flush()
                if on_line:
                    on_line(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout_s
        timed_out = False
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                kill_group(proc)
            reader.join(timeout=10)
    if timed_out:
        raise TrainingProcessError(f"training exceeded train.timeout_s={timeout_s:.0f} s and was killed; last lines:\n" + "\n".join(tail))
    if proc.returncode != 0:
        raise TrainingProcessError(f"training failed (exit {proc.returncode}); last lines:\n" + "\n".join(tail))


def kill_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace_s``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # ranks that ignored SIGTERM, and their children
    except ProcessLookupError:
        pass
    proc.wait()
