"""Task-run states of a flow run as the Prefect API reports them, once they have settled.

The API records task runs and their states from events, a moment after the flow itself returns:
read right away, a task that finished can still show Pending, or not be listed at all yet.
``settled_task_states`` polls until every task run of the flow run is in a final state and every
name in ``expect`` is listed (or the deadline passes, leaving the assertion to say which is not).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def _name(task_run: Any) -> str:
    return task_run.name.rsplit("-", 1)[0]


def settled_task_states(
    read_runs: Callable[[], Sequence[Any]],
    expect: Iterable[str] = (),
    timeout_s: float = 60.0,
    poll_s: float = 0.5,
) -> dict[str, list[str]]:
    """{task name without its suffix ("label-a29" -> "label"): [state names]} of ``read_runs()``;
    ``expect``: task names (without suffix) that must be listed before the states count as settled."""
    expect = set(expect)
    deadline = time.monotonic() + timeout_s

    def settled(runs: Sequence[Any]) -> bool:
        return expect <= {_name(tr) for tr in runs} and all(
            tr.state is not None and tr.state.is_final() for tr in runs
        )

    runs = read_runs()
    while not settled(runs) and time.monotonic() < deadline:
        time.sleep(poll_s)
        runs = read_runs()
    states: dict[str, list[str]] = {}
    for tr in runs:
        states.setdefault(_name(tr), []).append(tr.state.name if tr.state else "None")
    return states
