"""Caption files: parse WebVTT and SubRip into cues, clean YouTube's markup, write WebVTT.

YouTube's automatic captions "roll": each cue repeats the previous cue's line and adds words, with
10 ms filler cues in between.  In a file laid out so, ``parse_captions`` drops each cue's carried-over
lines (and so the fillers) so the cue texts concatenate to the spoken text once.  Other files --
manual captions, SubRip -- keep every cue: "No." followed by "No." was said twice.
"""

from __future__ import annotations

import html
import itertools
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


@dataclass(frozen=True)
class _Block:
    """One timed cue as written: its cleaned, non-empty lines (bracketed sounds still in)."""

    start_s: float
    end_s: float
    lines: list[str]


def parse_captions(path: Path | str) -> list[Cue]:
    """Cues of a .vtt or .srt file, in time order, markup removed, rolling repeats dropped.

    Raises CaptionError when the file cannot be decoded or has no timed cue at all.
    """
    path = Path(path)
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptionError(f"cannot read captions {path.name}: {exc}") from exc
    blocks = _timed_blocks(raw)
    rolling = _is_rolling(blocks)
    cues: list[Cue] = []
    prev_lines: list[str] = []
    for b in blocks:
        # carry-overs are matched before "[Music]"-style lines go: YouTube rolls those over like words
        new_lines = b.lines[_carried_over(prev_lines, b.lines) :] if rolling else b.lines
        prev_lines = b.lines
        words = [t for t in new_lines if not _BRACKETED.match(t)]
        if b.end_s > b.start_s and words:
            cues.append(Cue(b.start_s, b.end_s, " ".join(words)))
    if not cues and "-->" not in raw:
        raise CaptionError(f"{path.name}: no timed cues (not a WebVTT/SubRip file?)")
    cues.sort(key=lambda c: (c.start_s, c.end_s))
    return cues


def _timed_blocks(raw: str) -> list[_Block]:
    """The cues with text, in file order (headers, NOTE/STYLE blocks and empty cues left out)."""
    text = raw.replace("\r\n", "\n")
    # YouTube's auto-captions put a line of only a space right after the timing line; it is part
    # of the cue, not the blank line that ends it (else the words lose their timing).
    text = re.sub(r"(?m)^([ \t]*\d[^\n]*-->[^\n]*)\n[ \t]+(?=\n[^\n]*\S)", r"\1", text)
    out: list[_Block] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        for i, line in enumerate(lines):
            m = _ARROW.match(line)
            if not m:
                continue
            start = _seconds(_TIME.match(m.group(1)))  # type: ignore[arg-type]
            end = _seconds(_TIME.match(m.group(6)))  # type: ignore[arg-type]
            text_lines = [t for t in (_clean(t) for t in lines[i + 1 :]) if t]
            if text_lines:
                out.append(_Block(start, end, text_lines))
            break
    return out


def _carried_over(prev: list[str], lines: list[str]) -> int:
    """How many leading ``lines`` repeat the last lines of the previous cue (a rolling carry-over)."""
    for k in range(min(len(prev), len(lines)), 0, -1):
        if lines[:k] == prev[-k:]:
            return k
    return 0


def _is_rolling(blocks: list[_Block]) -> bool:
    """True for rolling captions: some cue starts with the previous cue's last line(s) and goes on.

    Manual captions that repeat a whole cue ("No." then "No.") are not rolling: their repeats stay.
    """
    return any(0 < _carried_over(a.lines, b.lines) < len(b.lines) for a, b in itertools.pairwise(blocks))


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


def write_srt(path: Path | str, cues: list[Cue]) -> Path:
    """Write cues as a numbered SubRip file (atomically; comma before the milliseconds)."""

    def ts(x: float) -> str:
        ms = int(round(x * 1000))
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    return write_text(
        path, "".join(f"{n}\n{ts(c.start_s)} --> {ts(c.end_s)}\n{c.text}\n\n" for n, c in enumerate(cues, 1))
    )
