"""Caching shared by the flows: tasks keyed by a ``key`` argument, results stored in the work dir.

A task's key is computed by the flow from its inputs' content, its settings and its code version
(tasks/parts.py); Prefect finds a Cached result for it only in the same work dir's
``.prefect-results`` -- so two work dirs with the same inputs never share results, and deleting a
work dir resets its cache.
"""

from __future__ import annotations

from typing import Any

from prefect.filesystems import LocalFileSystem

from llmasr.layout import WorkLayout
from tasks.parts import fingerprint


def by_key(context: Any, parameters: dict[str, Any]) -> str:
    """cache_key_fn of a stage task: the ``key`` argument the flow computed for it."""
    return parameters["key"]


def result_storage(layout: WorkLayout) -> LocalFileSystem:
    """Prefect needs the storage block saved server-side; its name comes from the work dir path."""
    block = LocalFileSystem(basepath=str(layout.root / ".prefect-results"))
    block.save(f"llmasr-results-{fingerprint(str(layout.root))[:12]}", overwrite=True)
    return block


def cache_options(layout: WorkLayout, refresh: bool = False) -> dict:
    """``task.with_options(**cache_options(...))`` for every cached task of a run."""
    return {"result_storage": result_storage(layout), "refresh_cache": refresh or None}
