"""The ``hyps`` evaluation system: hypotheses decoded elsewhere, read from a file and looked up by id.

Formats (``read_hyp_file``): jsonl/json rows, tsv or Kaldi ``text`` lines, icefall's
``recogs-*.txt``.  An utterance the file lacks fails (scored as an empty hypothesis).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from tasks.decode import System

_ID_KEYS = ("utt_id", "id", "key", "cut_id", "utterance_id")
_TEXT_KEYS = ("text", "hyp", "hypothesis", "transcript")
_ICEFALL = re.compile(r"^(?P<id>\S(?:.*?\S)?):\s*(?P<kind>hyp|ref)=(?P<value>.*)$")


def _icefall_text(value: str) -> str:
    value = value.strip()
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    if isinstance(parsed, (list, tuple)):
        return " ".join(str(w) for w in parsed)
    return str(parsed)


def read_hyp_file(path: str | Path, problems: list[str] | None = None) -> dict[str, str]:
    """utt_id -> hypothesis text from a hypothesis file.

    Formats: ``.jsonl``/``.json`` rows with an id (utt_id/id/key/cut_id) and a text (text/hyp/
    hypothesis); icefall's ``recogs-*.txt`` (``<utt_id>:\\thyp=['w1', 'w2']``, ``ref=`` lines
    ignored); otherwise one ``utt_id<TAB>text`` (or Kaldi ``utt_id text``) per line, an optional header
    row ``utt_id<TAB>text`` skipped.  Unreadable lines and duplicate ids go to ``problems``.
    """
    path = Path(path).expanduser()
    problems = problems if problems is not None else []
    out: dict[str, str] = {}

    def add(utt_id: str, text: str, where: str) -> None:
        utt_id = utt_id.strip()
        if utt_id in out:
            problems.append(f"{where}: duplicate id {utt_id!r} (first kept)")
            return
        out[utt_id] = " ".join(str(text).split())

    raw = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        stripped = raw.lstrip()
        rows = json.loads(raw) if stripped.startswith("[") else None
        items = (
            enumerate(rows, 1)
            if rows is not None
            else ((n, line) for n, line in enumerate(raw.splitlines(), 1) if line.strip())
        )
        for n, row in items:
            where = f"{path}:{n}"
            if isinstance(row, str):
                try:
                    row = json.loads(row)
                except json.JSONDecodeError as exc:
                    problems.append(f"{where}: not valid JSON ({exc})")
                    continue
            if not isinstance(row, dict):
                problems.append(f"{where}: not a JSON object")
                continue
            utt_id = next((row[k] for k in _ID_KEYS if k in row), None)
            text = next((row[k] for k in _TEXT_KEYS if k in row), None)
            if utt_id is None or text is None:
                problems.append(
                    f"{where}: needs an id ({'/'.join(_ID_KEYS)}) and a text ({'/'.join(_TEXT_KEYS)})"
                )
                continue
            if isinstance(text, list):
                text = " ".join(map(str, text))
            add(str(utt_id), "" if text is None else str(text), where)
        return out

    lines = [(n, line) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
    if any(_ICEFALL.match(line) for _, line in lines[:20]):
        for n, line in lines:
            m = _ICEFALL.match(line)
            if m is None:
                problems.append(f"{path}:{n}: not an icefall recogs line (<id>:\\thyp=[...])")
            elif m.group("kind") == "hyp":
                add(m.group("id"), _icefall_text(m.group("value")), f"{path}:{n}")
        return out
    for k, (n, line) in enumerate(lines):
        sep = "\t" if "\t" in line else None
        parts = line.split(sep, 1)
        utt_id, text = parts[0].strip(), (parts[1] if len(parts) > 1 else "")
        if k == 0 and utt_id.lower() in _ID_KEYS and text.strip().lower() in _TEXT_KEYS:
            continue  # header row
        add(utt_id, text, f"{path}:{n}")
    return out


class HypFileSystem(System):
    """Hypotheses decoded elsewhere (e.g. a Zipformer-Transducer by icefall), scored the same way."""

    needs_audio = False

    def __init__(self, name: str, path: str | Path) -> None:
        super().__init__(name)
        self.path = Path(path).expanduser()
        self.hyps: dict[str, str] | None = None
        self.problems: list[str] = []

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "hyps", "path": str(self.path)}

    def load(self) -> None:
        if self.hyps is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"hypothesis file not found: {self.path}")
            self.hyps = read_hyp_file(self.path, self.problems)

    def lookup(self, utt_id: str) -> str:
        self.load()
        assert self.hyps is not None
        if utt_id not in self.hyps:
            raise KeyError(f"no hypothesis for {utt_id!r} in {self.path}")
        return self.hyps[utt_id]
