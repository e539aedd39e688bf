"""Every path of the configuration made absolute, once, before validation.

A relative path written in a config file is relative to that file's folder; one given on the
command line or in code, to the current folder.  A path may start with ``${work_dir}`` or
``${demo.corpus_dir}`` (those keys' resolved values).  Hub names, size names and ``bundled:`` names
are not paths and are kept as written (``_is_model_path`` says which is which).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from llmasr.config.data import DEMO_KIND_DEFAULTS
from llmasr.config.fields import WORK_DIR_REF, ConfigError

DEFAULT_WORK_DIR = "runs/paper"
PATH_REFS = ("work_dir", "demo.corpus_dir")  # keys a path may start with, as ${key}

# Every key whose value names a file or folder, by how its value is read:
#   path: a path; model: a path, or a hub / size / bundled: name; sources: a path or a URL;
#   named: name=path items; baseline: faster-whisper:MODEL / transformers:MODEL items (MODEL as model)
PATH_KEYS: dict[str, str] = {
    "work_dir": "path",
    "sources": "sources",
    "demo.corpus_dir": "path",
    "label.model": "model",
    "train.encoder": "model",
    "train.llm": "model",
    "train.tokenizer": "model",
    "train.deepspeed_config": "path",
    "train.hostfile": "path",
    "eval.test_sets": "named",
    "eval.hyps": "named",
    "eval.baselines": "baseline",
    "eval.word_list": "path",
}
_BASELINE_KINDS = ("faster-whisper:", "transformers:")


def _is_model_path(value: str, base: Path) -> bool:
    """A model key's value is a path when it starts with /, ~, ./, ../ or ${...}, has more than one
    '/' (a hub name is ``org/name``), or names something that exists under ``base``; else it is a
    hub or size name (``openai/whisper-large-v2``, ``large-v3``), kept as written."""
    if value.startswith(("/", "~", "./", "../", "${")) or value in (".", "..") or value.count("/") > 1:
        return True
    return (base / value).exists()


def _absolute(value: str, base: Path, refs: dict[str, str] | None, key: str) -> str:
    """One path made absolute: a leading ``${name}`` replaced by ``refs[name]`` (left as is while
    ``refs`` is None), ``~`` expanded, a relative path joined to ``base``."""
    if "${" in value:
        name = value[2 : value.find("}")] if value.startswith("${") and "}" in value else ""
        if name not in PATH_REFS or "${" in value[len(name) + 3 :]:
            known = " or ".join("${" + r + "}" for r in PATH_REFS)
            raise ConfigError(
                f"{key}: {value!r}: a path may only start with {known}; write e.g. {WORK_DIR_REF}/demo-corpus"
            )
        if refs is None:
            return value
        if name not in refs:
            raise ConfigError(
                f"{key}: {value!r} needs {name}, which is not set here (no demo: section); "
                "write the path itself"
            )
        value = refs[name] + value[len(name) + 3 :]
    path = Path(value).expanduser()
    return str((path if path.is_absolute() else base / path).resolve())


def _resolve_value(kind: str, value: Any, base: Path, refs: dict[str, str] | None, key: str) -> Any:
    """``value`` of a ``PATH_KEYS`` key with its paths absolute; what is malformed is left to the
    validators."""
    if kind in ("path", "model"):
        if not isinstance(value, str) or not value.strip() or value.startswith("bundled:"):
            return value
        if kind == "model" and not _is_model_path(value, base):
            return value
        return _absolute(value, base, refs, key)
    if not isinstance(value, list):
        return value
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            out.append(item)
        elif kind == "sources":
            out.append(item if "://" in item else _absolute(item.strip(), base, refs, key))
        elif kind == "named":
            name, sep, path = item.partition("=")
            out.append(
                f"{name}={_absolute(path.strip(), base, refs, key)}"
                if sep and name.strip() and path.strip()
                else item
            )
        else:  # baseline
            prefix = next((k for k in _BASELINE_KINDS if item.startswith(k)), None)
            out.append(
                item
                if prefix is None
                else prefix + _resolve_value("model", item[len(prefix) :].strip(), base, refs, key)
            )
    return out


def resolve_paths(data: dict, base: Path, refs: dict[str, str] | None = None) -> dict:
    """A copy of raw config ``data`` with every ``PATH_KEYS`` value present made absolute against
    ``base`` (a leading ``${name}`` expanded from ``refs``, or left for later when it is None)."""
    out = copy.deepcopy(data)
    for key, kind in PATH_KEYS.items():
        *sections, leaf = key.split(".")
        node: Any = out
        for name in sections:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] is not None:
            node[leaf] = _resolve_value(kind, node[leaf], base, refs, key)
    return out


def absolute_paths(data: dict, base: Path) -> dict:
    """Raw config ``data`` with every path absolute: relative ones against ``base``, ``${work_dir}``
    and ``${demo.corpus_dir}`` expanded with those keys' absolute values; the demo corpus's default
    folder filled in."""
    out = copy.deepcopy(data)
    demo = out.get("demo")
    if isinstance(demo, dict) and demo.get("corpus_dir") in (None, ""):
        default = DEMO_KIND_DEFAULTS.get(demo.get("kind", "demo"), {}).get("corpus_dir")
        if default:
            out["demo"] = {**demo, "corpus_dir": default}
    work = out.get("work_dir", DEFAULT_WORK_DIR)
    if not isinstance(work, str) or not work.strip():
        return out  # the work_dir validator names the problem
    if work.startswith("${"):
        raise ConfigError(
            f"work_dir: {work!r}: the work dir cannot start with a ${{...}} reference; write a folder, "
            "e.g. --work-dir runs/mine"
        )
    refs = {"work_dir": _absolute(work, base, None, "work_dir")}
    out["work_dir"] = refs["work_dir"]
    corpus = out["demo"].get("corpus_dir") if isinstance(out.get("demo"), dict) else None
    if isinstance(corpus, str) and corpus.strip():
        if corpus.startswith("${demo.corpus_dir}"):
            raise ConfigError(
                f"demo.corpus_dir: {corpus!r} refers to itself; write a folder, "
                f"e.g. {WORK_DIR_REF}/demo-corpus"
            )
        refs["demo.corpus_dir"] = out["demo"]["corpus_dir"] = _absolute(corpus, base, refs, "demo.corpus_dir")
    return resolve_paths(out, base, refs)
