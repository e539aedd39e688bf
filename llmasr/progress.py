"""Terminal progress bars (rich) that stage code can report to without knowing about the terminal.

The CLI opens ``terminal_progress()`` around a flow run; inside it, ``start(stage, total)`` shows a bar
and ``advance(stage, n)`` moves it, from any thread.  Outside it (tests, the Prefect UI, a worker)
both do nothing, so stage code never needs to check.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_lock = threading.Lock()
_progress: Progress | None = None
_tasks: dict[str, int] = {}


@contextlib.contextmanager
def terminal_progress(console: Console | None = None) -> Iterator[None]:
    global _progress
    prog = Progress(
        TextColumn("[bold]{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    with prog:
        _progress = prog
        try:
            yield
        finally:
            _progress = None
            _tasks.clear()


def start(stage: str, total: int, unit: str = "items") -> None:
    """Show a bar for ``stage`` with ``total`` units of work."""
    with _lock:
        if _progress is not None and stage not in _tasks:
            _tasks[stage] = _progress.add_task(stage, total=total, unit=unit)


def advance(stage: str, n: int = 1) -> None:
    """Advance ``stage``'s bar by ``n`` (no-op without a terminal or a started bar)."""
    with _lock:
        if _progress is not None and stage in _tasks:
            _progress.advance(_tasks[stage], n)


def complete(stage: str) -> None:
    """Fill ``stage``'s bar (work that was cached never advanced it)."""
    with _lock:
        if _progress is not None and stage in _tasks:
            task = _progress.tasks[_tasks[stage]]
            _progress.update(task.id, completed=task.total)
