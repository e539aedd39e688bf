"""Task-run states of a flow run as the Prefect API reports them, once they have settled.

The API records task-run states from events, a moment after the flow itself returns: read right
away, a task that finished can still show Pending.  ``settled_task_states`` polls until every task
run of the flow run is in a final state (or the deadline passes, leaving the assertion to say which
is not).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


def settled_task_states(read_runs: Callable[[], Sequence[Any]], timeout_s: float = 60.0, poll_s: float = 0.5) -> dict[str, list[str]]:
    """{task name without its suffix ("label-a29" -> "label"): [state names]} of ``read_runs()``."""
    deadline = time.monotonic() + timeout_s
    runs = read_runs()
    while not all(tr.state is not None and tr.state.is_final() for tr in runs) and time.monotonic() < deadline:
        time.sleep(poll_s)
        runs = read_runs()
    states: dict[str, list[str]] = {}
    for tr in runs:
        states.setdefault(tr.name.rsplit("-", 1)[0], []).append(tr.state.name if tr.state else "None")
    return states
