"""Per-item partial results with the key they were computed from: the unit of "do no work twice".

A stage that works item by item (segment, label) writes ``parts/<stage>/<item_id>.parquet``
atomically, with its key (a hash of the inputs, the stage's settings and its code version) in the
Parquet metadata.  A rerun reads a part back only when the key matches; a killed run leaves either
a whole part or none.  The stage's manifest is then the concatenation of the current parts.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Sequence, TypeVar

import pyarrow.parquet as pq

from llmasr.records import from_table, read_metadata, write_records

R = TypeVar("R")
log = logging.getLogger("llmasr.parts")
KEY_FIELD = "llmasr_key"


def fingerprint(*parts: Any) -> str:
    """sha256 of the JSON of ``parts`` (dataclasses and pydantic models as dicts)."""

    def default(o: Any) -> Any:
        if hasattr(o, "model_dump"):
            return o.model_dump(mode="json")
        if hasattr(o, "__dataclass_fields__"):
            return {k: getattr(o, k) for k in o.__dataclass_fields__}
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot fingerprint {type(o).__name__}")

    blob = json.dumps(parts, sort_keys=True, default=default, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=None)
def code_version(*modules: str) -> str:
    """Hash of the source of the named modules: a change in a stage's code invalidates its results,
    a change elsewhere (the CLI, another stage) does not."""
    h = hashlib.sha256()
    for name in modules:
        h.update(inspect.getsource(importlib.import_module(name)).encode("utf-8"))
    return h.hexdigest()[:16]


def read_part(path: Path, cls: type[R], key: str) -> list[R] | None:
    """The records of a part if it exists and was computed with ``key``; else None."""
    if not path.is_file():
        return None
    try:
        if read_metadata(path).get(KEY_FIELD) != key:
            return None
        return from_table(pq.read_table(path), cls)
    except (OSError, ValueError) as exc:  # unreadable part (writes are atomic, so: disk trouble) -> recompute
        log.warning("recomputing unreadable part %s: %s", path, exc)
        return None


def write_part(path: Path, records: Sequence[Any], cls: type, key: str) -> Path:
    return write_records(path, records, cls, metadata={KEY_FIELD: key})
