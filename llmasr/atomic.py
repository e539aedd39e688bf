"""Atomic file writes: write to a temp name in the same folder, fsync, then rename.

A killed process leaves at most a ``.tmp-*`` file behind (swept by ``sweep_temp``), never a
half-written final file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def _read_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status, 4.7+).

    Elsewhere it can only be read by setting it (``os.umask``) and setting it back, which changes
    the process umask for an instant (were it set to 0, a file another thread created then would be
    world-writable).  So it is read once, here at import, before tasks run in threads -- never per
    write -- and set to 0o022 meanwhile, not 0.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass  # no /proc (macOS, a locked-down container): fall back to the set-and-restore below
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


# The mode of final files: what open() would give, 0o666 less the umask.  A process that changes
# its umask after this import keeps the old one here (this project never does).
_FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on clean exit it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _FILE_MODE)  # mkstemp makes 0600; final files get the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path | str, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def sweep_temp(folder: Path | str) -> int:
    """Delete temp files a killed run left in ``folder`` (not recursive). Returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.glob(TMP_PREFIX + "*"):
        p.unlink(missing_ok=True)
        n += 1
    return n
