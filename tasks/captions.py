"""Caption files: parse WebVTT and SubRip into cues, clean YouTube's markup, write WebVTT.

YouTube's automatic captions "roll": each cue repeats the previous cue's line and adds words, with
10 ms filler cues in between.  ``parse_captions`` drops the repeated lines and the empty fillers so
the cue texts concatenate to the spoken text once.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

from llmasr.atomic import write_text


class CaptionError(ValueError):
    """An unreadable or malformed caption file."""


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str


_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")
_ARROW = re.compile(rf"^\s*({_TIME.pattern})\s*-->\s*({_TIME.pattern})")
_TAG = re.compile(r"<[^>]*>")  # <c>, <00:00:01.000>, <v Speaker>, <i>
_BRACKETED = re.compile(r"^\s*[\[(][^\])]*[\])]\s*$")  # a line that is only "[Music]" or "(applause)"


def _seconds(match: re.Match[str]) -> float:
    h, m, s, frac = match.groups()
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000.0


def _clean(line: str) -> str:
    return " ".join(html.unescape(_TAG.sub("", line)).split())


def parse_captions(path: Path | str) -> list[Cue]:
    """Cues of a .vtt or .srt file, in time order, markup removed, rolling repeats dropped.

    Raises CaptionError when the file cannot be decoded or has no timed cue at all.
    """
    path = Path(path)
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptionError(f"cannot read captions {path.name}: {exc}") from exc
    text = raw.replace("\r\n", "\n")
    # YouTube's auto-captions put a line of only a space right after the timing line; it is part
    # of the cue, not the blank line that ends it (else the words lose their timing).
    text = re.sub(r"(?m)^([ \t]*\d[^\n]*-->[^\n]*)\n[ \t]+(?=\n[^\n]*\S)", r"\1", text)
    blocks = re.split(r"\n\s*\n", text)
    cues: list[Cue] = []
    prev_lines: list[str] = []
    for block in blocks:
        lines = [ln for ln in block.split("\n") if ln.strip()]
        for i, line in enumerate(lines):
            m = _ARROW.match(line)
            if not m:
                continue
            start = _seconds(_TIME.match(m.group(1)))  # type: ignore[arg-type]
            end = _seconds(_TIME.match(m.group(6)))  # type: ignore[arg-type]
            text_lines = [_clean(t) for t in lines[i + 1 :]]
            text_lines = [t for t in text_lines if t and not _BRACKETED.match(t)]
            new_lines = [t for t in text_lines if t not in prev_lines]
            if text_lines:
                prev_lines = text_lines
            if end > start and new_lines:
                cues.append(Cue(start, end, " ".join(new_lines)))
            break
    if not cues and "-->" not in raw:
        raise CaptionError(f"{path.name}: no timed cues (not a WebVTT/SubRip file?)")
    cues.sort(key=lambda c: (c.start_s, c.end_s))
    return cues


def _ts(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def write_vtt(path: Path | str, cues: list[Cue]) -> Path:
    """Write cues as a plain WebVTT file (atomically)."""
    body = "".join(f"{_ts(c.start_s)} --> {_ts(c.end_s)}\n{c.text}\n\n" for c in cues)
    return write_text(path, "WEBVTT\n\n" + body)
