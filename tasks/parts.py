"""Per-item partial results with the key they were computed from: the unit of "do no work twice".

A stage that works item by item (segment, label) writes ``parts/<stage>/<item_id>.parquet``
atomically, with its key (a hash of the inputs, the stage's settings and its code version) in the
Parquet metadata.  A rerun reads a part back only when the key matches; a killed run leaves either
a whole part or none.  The stage's manifest is then the concatenation of the current parts.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

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


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """``tree`` with the docstring of its module, classes and functions removed (in place)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:]
    return tree


def _dump(value: Any) -> str:
    """A syntax tree as text: node types, fields and constants; no positions.  Like ``ast.dump``
    with empty fields left out (as Python 3.13's does), so fields that newer Pythons add empty
    (``type_params``) do not change the text of unchanged code."""
    if isinstance(value, ast.AST):
        fields = ((name, _dump(getattr(value, name, None))) for name in value._fields)
        return (
            f"{type(value).__name__}({', '.join(f'{n}={v}' for n, v in fields if v not in ('None', '[]'))})"
        )
    if isinstance(value, list):
        return f"[{', '.join(_dump(v) for v in value)}]"
    return repr(value)


def source_meaning(source: str) -> str:
    """What a module's source does, as text: its syntax tree without docstrings, positions or
    comments, so a comment, a docstring or a reformat leaves it unchanged and any change to a name,
    a constant or an operator does not."""
    return _dump(_without_docstrings(ast.parse(source)))


def _module_sources(name: str) -> list[tuple[str, str]]:
    """(file name, source) of a module; of every .py file below it for a package, so a stage that
    names a package covers its submodules too."""
    module = importlib.import_module(name)
    if not hasattr(module, "__path__"):
        return [(name, inspect.getsource(module))]
    return [
        # relative: the same key on every machine
        (f"{name}/{f.relative_to(folder).as_posix()}", f.read_text(encoding="utf-8"))
        for folder in module.__path__
        for f in sorted(Path(folder).rglob("*.py"))
    ]


@functools.cache
def code_version(*modules: str) -> str:
    """The code part of a stage's cache keys: a hash of what the named modules do
    (``source_meaning``), so a change in a stage's logic invalidates its results, while a comment,
    a docstring, a reformat, or a change elsewhere (the CLI, another stage) does not.  Every cache
    key that covers code goes through this function."""
    h = hashlib.sha256()
    for name in modules:
        for label, source in _module_sources(name):
            h.update(label.encode("utf-8") + b"\0" + source_meaning(source).encode("utf-8") + b"\0")
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
