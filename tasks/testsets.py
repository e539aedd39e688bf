"""Test-set readers: manifests, folders of audio + .txt, Primock57 (Praat TextGrids) and Kincaid46 (tsv).

Every reader returns ``list[TestUtterance]``.  Problems with single entries (audio without a
transcript, a transcript whose audio is missing, an unreadable row, a duplicate id) never abort the
read: with a ``problems`` list they are appended to it as one line each and the entry is skipped;
without one (``problems=None``) the first problem raises ``TestSetError``.  ``load_test_set`` picks
the reader from what the path is and returns ``(utterances, problems)``.

Layouts:

- manifest (``.jsonl``/``.ndjson``/``.json``, ``.csv``, ``.parquet``): columns ``audio`` (or
  ``audio_path``/``path``) and ``text`` (or ``transcript``); optional ``id``/``utt_id``, ``start_s``/
  ``start``, ``end_s``/``end``, ``speaker``.  Relative audio paths are resolved against the
  manifest's folder.  Without an id column the id is the audio file's stem (``<stem>-<start_ms:08d>``
  when the row has a start time, so several segments of one file stay distinct).
- folder: audio files (wav, flac, mp3, m4a, ogg, opus, webm; searched recursively) each with a
  ``.txt`` transcript of the same stem beside it; the id is the path relative to the folder without
  the extension (``clip`` or ``sub/clip``).
- Primock57: ``<consultation>_<doctor|patient>.TextGrid`` (in the folder or ``transcripts/``) with
  ``<consultation>_<doctor|patient>.wav`` (beside it, in the folder or in ``audio/``).  Each
  non-empty interval is one utterance on that channel's wav, id ``<stem>-<start_ms:08d>``, text
  cleaned by ``clean_primock_text``.
- Kincaid46: a ``.tsv`` (or a folder holding one) of audio and text, paths relative to the tsv.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".webm")
MANIFEST_EXTENSIONS: tuple[str, ...] = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")

AUDIO_COLUMNS = ("audio", "audio_path", "path")
TEXT_COLUMNS = ("text", "transcript")
ID_COLUMNS = ("id", "utt_id")
START_COLUMNS = ("start_s", "start")
END_COLUMNS = ("end_s", "end")
SPEAKER_COLUMNS = ("speaker",)

# an interval may end this much after the end of its audio file before it is reported
_DURATION_TOLERANCE_S = 0.5

# csv's default field limit, 131,072 characters, is shorter than a long-form transcript (a Kincaid46
# row holds a whole video's text).  The limit is one setting for the whole process: it is only ever
# raised, to this, before a csv or tsv is read.
_CSV_FIELD_LIMIT = 2**31 - 1


def _allow_long_fields() -> None:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)


class TestSetError(ValueError):
    """A test set (or one entry of it) that cannot be read."""

    __test__ = False  # not a pytest test class


@dataclass
class TestUtterance:
    """One reference utterance: audio file (or a stretch of it, ``start_s``..``end_s``) and its text."""

    __test__ = False  # not a pytest test class

    utt_id: str
    audio_path: str
    text: str
    start_s: float | None = None
    end_s: float | None = None
    speaker: str | None = None


@dataclass
class _Sink:
    """Collects problems, or raises on the first one when the caller gave no list."""

    problems: list[str] | None
    seen_ids: set[str] = field(default_factory=set)

    def report(self, message: str) -> None:
        if self.problems is None:
            raise TestSetError(message)
        self.problems.append(message)

    def add(self, out: list[TestUtterance], utt: TestUtterance, where: str) -> None:
        if utt.utt_id in self.seen_ids:
            self.report(f"{where}: duplicate utterance id {utt.utt_id!r} (skipped)")
            return
        self.seen_ids.add(utt.utt_id)
        out.append(utt)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _start_id(stem: str, start_s: float) -> str:
    return f"{stem}-{int(round(start_s * 1000)):08d}"


# --------------------------------------------------------------------------------------------------
# manifests


def _pick(row: Mapping[str, Any], names: Iterable[str]) -> Any:
    """The value of the first of ``names`` present in ``row`` (keys compared case-insensitively)."""
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _has_column(columns: Iterable[str], names: Iterable[str]) -> bool:
    lowered = {str(c).strip().lower() for c in columns}
    return any(n in lowered for n in names)


def _optional_float(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    return None if number != number else number  # NaN -> None


def _rows_to_utterances(
    rows: Iterable[tuple[str, Mapping[str, Any]]], base: Path, sink: _Sink
) -> list[TestUtterance]:
    """Manifest rows (with a location for messages) -> utterances; audio resolved against ``base``."""
    out: list[TestUtterance] = []
    for where, row in rows:
        audio = _pick(row, AUDIO_COLUMNS)
        text = _pick(row, TEXT_COLUMNS)
        if audio is None or not str(audio).strip():
            sink.report(f"{where}: no audio path (expected a column {'/'.join(AUDIO_COLUMNS)})")
            continue
        if text is None or (isinstance(text, float) and text != text):
            sink.report(f"{where}: no transcript (expected a column {'/'.join(TEXT_COLUMNS)})")
            continue
        audio_path = Path(str(audio).strip()).expanduser()
        if not audio_path.is_absolute():
            audio_path = base / audio_path
        if not audio_path.is_file():
            sink.report(f"{where}: audio file not found: {audio_path}")
            continue
        try:
            start_s = _optional_float(_pick(row, START_COLUMNS))
            end_s = _optional_float(_pick(row, END_COLUMNS))
        except (TypeError, ValueError) as exc:
            sink.report(f"{where}: bad start/end time: {exc}")
            continue
        utt_id = _pick(row, ID_COLUMNS)
        if utt_id is None or not str(utt_id).strip():
            utt_id = audio_path.stem if start_s is None else _start_id(audio_path.stem, start_s)
        speaker = _pick(row, SPEAKER_COLUMNS)
        utt = TestUtterance(
            utt_id=str(utt_id).strip(),
            audio_path=str(audio_path),
            text=_one_line(str(text)),
            start_s=start_s,
            end_s=end_s,
            speaker=None if speaker is None else str(speaker),
        )
        sink.add(out, utt, where)
    return out


def _jsonl_rows(path: Path, sink: _Sink) -> Iterator[tuple[str, Mapping[str, Any]]]:
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TestSetError(f"{path}: not valid JSON: {exc}") from None
        for i, row in enumerate(data, 1):
            if isinstance(row, Mapping):
                yield f"{path}: item {i}", row
            else:
                sink.report(f"{path}: item {i}: not a JSON object")
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            sink.report(f"{where}: not valid JSON: {exc}")
            continue
        if not isinstance(row, Mapping):
            sink.report(f"{where}: not a JSON object")
            continue
        yield where, row


def _csv_rows(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    _allow_long_fields()
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                yield f"{path}:{reader.line_num}", row
        except csv.Error as exc:
            raise TestSetError(f"{path}:{reader.line_num}: cannot read this csv row: {exc}") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path}: row {i}", row


def read_manifest(path: str | Path, problems: list[str] | None = None) -> list[TestUtterance]:
    """A jsonl/json, csv or parquet manifest (see the module docstring for the columns)."""
    path = Path(path).expanduser()
    sink = _Sink(problems)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows: Iterable[tuple[str, Mapping[str, Any]]] = _jsonl_rows(path, sink)
    elif suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix == ".parquet":
        rows = _parquet_rows(path)
    elif suffix == ".tsv":
        return read_kincaid46(path, problems)
    else:
        raise TestSetError(
            f"{path}: unknown manifest type {suffix!r} (expected one of {', '.join(MANIFEST_EXTENSIONS)}, "
            ".tsv)"
        )
    import pyarrow as pa

    try:
        return _rows_to_utterances(rows, path.parent, sink)
    except (UnicodeDecodeError, csv.Error, pa.ArrowException) as exc:  # the file as a whole cannot be read
        raise TestSetError(f"{path}: cannot read this {suffix} manifest: {exc}") from None


# --------------------------------------------------------------------------------------------------
# folder of audio + .txt


def _is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS


def read_folder(path: str | Path, problems: list[str] | None = None) -> list[TestUtterance]:
    """Audio files (searched recursively) each with a same-stem ``.txt`` transcript beside it."""
    root = Path(path).expanduser()
    sink = _Sink(problems)
    out: list[TestUtterance] = []
    used_txt: set[Path] = set()
    for audio in sorted(p for p in root.rglob("*") if _is_audio(p)):
        txt = audio.with_suffix(".txt")
        if not txt.is_file():
            sink.report(f"{audio}: no transcript ({txt.name} not found beside it)")
            continue
        used_txt.add(txt)
        utt_id = audio.relative_to(root).with_suffix("").as_posix()
        text = _one_line(txt.read_text(encoding="utf-8-sig"))
        sink.add(out, TestUtterance(utt_id=utt_id, audio_path=str(audio), text=text), str(audio))
    for txt in sorted(p for p in root.rglob("*.txt") if p.is_file() and p not in used_txt):
        sink.report(
            f"{txt}: transcript without audio (no {'/'.join(AUDIO_EXTENSIONS)} file of the same stem)"
        )
    return out


# --------------------------------------------------------------------------------------------------
# Praat TextGrid


@dataclass(frozen=True)
class Tier:
    """One TextGrid tier: intervals as (start_s, end_s, text); a TextTier's points have start == end."""

    name: str
    kind: str  # "IntervalTier" or "TextTier"
    xmin: float
    xmax: float
    items: list[tuple[float, float, str]]


# Praat's text reader keeps only numbers, "strings" ("" inside a string is one ") and <flags>;
# labels such as `xmin =`, `intervals [3]:` (anything in [...]) and `! comments` are skipped.
# The long and the short text formats therefore give the same token stream.
_TOKEN = re.compile(
    r'"(?P<str>(?:[^"]|"")*)"'
    r"|(?P<bracket>\[[^\]]*\])"
    r"|(?P<comment>![^\n]*)"
    r"|<(?P<flag>[A-Za-z]+)>"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_?]*)"
    r"|(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<other>\S)",
    re.DOTALL,
)


def _decode(data: bytes) -> str:
    """TextGrid bytes -> text: UTF-16 (by BOM, or by NUL bytes), else UTF-8, else Latin-1."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    head = data[:200]
    if head.count(b"\x00") > len(head) // 4:
        return data.decode("utf-16-be" if head[:1] == b"\x00" else "utf-16-le")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class _Flag(str):
    """An enumerated value such as <exists> (kept apart from a string that starts with "<")."""


def _tokens(text: str) -> Iterator[str | float]:
    """Values of a Praat text file: str for "strings", _Flag for <flags> (with their <>), float for
    numbers."""
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "str":
            yield m.group("str").replace('""', '"')
        elif kind == "flag":
            yield _Flag(f"<{m.group('flag')}>")
        elif kind == "num":
            yield float(m.group("num"))


class _Stream:
    def __init__(self, values: Iterator[str | float], source: str) -> None:
        self._values = values
        self._source = source

    def _next(self, what: str) -> str | float:
        try:
            return next(self._values)
        except StopIteration:
            raise TestSetError(f"{self._source}: TextGrid ends early (looking for {what})") from None

    def number(self, what: str) -> float:
        value = self._next(what)
        if not isinstance(value, float):
            raise TestSetError(f"{self._source}: expected a number for {what}, found {value!r}")
        return value

    def string(self, what: str) -> str:
        value = self._next(what)
        if not isinstance(value, str) or isinstance(value, _Flag):
            raise TestSetError(f"{self._source}: expected a string for {what}, found {value!r}")
        return value

    def flag(self, what: str) -> str:
        value = self._next(what)
        if not isinstance(value, _Flag):
            raise TestSetError(f"{self._source}: expected <exists>/<absent> for {what}, found {value!r}")
        return value


def parse_textgrid(text: str, source: str = "<text>") -> list[Tier]:
    """All tiers of a Praat TextGrid in the long or the short text format."""
    if text.startswith("ooBinaryFile"):
        raise TestSetError(f"{source}: binary TextGrid files are not supported (save as text in Praat)")
    stream = _Stream(_tokens(text), source)
    file_type = stream.string("the file type")
    object_class = stream.string("the object class")
    if not file_type.startswith("ooTextFile") or object_class != "TextGrid":
        raise TestSetError(
            f"{source}: not a Praat TextGrid (file type {file_type!r}, object class {object_class!r})"
        )
    stream.number("xmin")
    stream.number("xmax")
    if stream.flag("tiers?") != "<exists>":
        return []
    tiers: list[Tier] = []
    for t in range(int(stream.number("the number of tiers"))):
        kind = stream.string(f"tier {t + 1} class")
        name = stream.string(f"tier {t + 1} name")
        xmin = stream.number(f"tier {t + 1} xmin")
        xmax = stream.number(f"tier {t + 1} xmax")
        count = int(stream.number(f"tier {t + 1} size"))
        items: list[tuple[float, float, str]] = []
        for i in range(count):
            what = f"tier {t + 1} item {i + 1}"
            if kind == "IntervalTier":
                start, end = stream.number(what), stream.number(what)
                items.append((start, end, stream.string(what)))
            elif kind == "TextTier":
                time = stream.number(what)
                items.append((time, time, stream.string(what)))
            else:
                raise TestSetError(f"{source}: unknown tier class {kind!r}")
        tiers.append(Tier(name=name, kind=kind, xmin=xmin, xmax=xmax, items=items))
    return tiers


def read_textgrid(path: str | Path, tier: str | int | None = None) -> list[tuple[float, float, str]]:
    """Non-empty intervals ``(start_s, end_s, text)`` of one interval tier of a TextGrid file.

    ``tier``: a tier name, a 1-based index among all tiers, or None for the first interval tier.
    Texts are stripped; intervals whose text is empty or whitespace are skipped.  Long and short
    text formats, UTF-8 (with or without BOM) and UTF-16 files are read.
    """
    path = Path(path)
    tiers = parse_textgrid(_decode(path.read_bytes()), str(path))
    if isinstance(tier, int):
        if not 1 <= tier <= len(tiers):
            raise TestSetError(f"{path}: no tier {tier} (the file has {len(tiers)})")
        chosen = tiers[tier - 1]
    elif isinstance(tier, str):
        named = [t for t in tiers if t.name == tier]
        if not named:
            raise TestSetError(f"{path}: no tier named {tier!r} (tiers: {[t.name for t in tiers]})")
        chosen = named[0]
    else:
        interval_tiers = [t for t in tiers if t.kind == "IntervalTier"]
        if not interval_tiers:
            raise TestSetError(f"{path}: no interval tier")
        chosen = interval_tiers[0]
    if chosen.kind != "IntervalTier":
        raise TestSetError(f"{path}: tier {chosen.name!r} is a {chosen.kind}, not an IntervalTier")
    return [(start, end, text.strip()) for start, end, text in chosen.items if text.strip()]


# --------------------------------------------------------------------------------------------------
# Primock57

# Self-closing tags mark non-speech or speech that could not be transcribed: <UNIN/> (unintelligible),
# <INAUDIBLE_SPEECH/>.  Paired tags wrap words that were spoken: <UNSURE>...</UNSURE> (the transcriber
# was unsure of them) -- the tags go, the words stay.  Any other <TAG> / </TAG> (e.g. <INAUDIBLE>)
# is removed as a tag.  [...], {...} and (...) groups are annotations ([laughs], {noise}, (inaudible),
# (...)) and go with their content.
_MARKUP = re.compile(r"<[^<>]*>|\[[^\[\]]*\]|\{[^{}]*\}|\([^()]*\)")
_MARK = "\x00"
_PUNCT = ",.;:!?"


def clean_primock_text(text: str) -> str:
    """Reference text of a Primock57 interval without its transcription markup.

    - ``<UNIN/>``, ``<INAUDIBLE_SPEECH/>`` (any ``<.../>``), ``<INAUDIBLE>`` (any other lone tag),
      ``[laughs]``, ``{noise}``, ``(inaudible)``, ``(...)``: removed with their content;
    - ``<UNSURE>words</UNSURE>`` (any paired tag): the tags removed, the words kept;
    - where something was removed: no space is left before following punctuation ("Doctor
      <INAUDIBLE_SPEECH/>." -> "Doctor."; "I <UNIN/>,would" -> "I, would"), punctuation left at
      the very start goes ("<UNIN/>, so" -> "so"), and a doubled separator collapses ("yes, <UNIN/>,
      so" -> "yes, so");
    - whitespace is collapsed; a text left without any letter or digit becomes "" (markup only).

    Everything else (case, punctuation, fillers, "--") is kept as written: O-WER scores it.
    """
    s = _MARKUP.sub(_MARK, text)
    if _MARK not in s:
        return _one_line(s)
    mark = re.escape(_MARK)
    punct = re.escape(_PUNCT)
    # markup at the start, and the punctuation right after it
    s = re.sub(rf"^[\s{mark}]*{mark}[\s{mark}]*[{punct}]*", "", s)
    # "yes, <UNIN/>, so" -> "yes, so"
    s = re.sub(rf"([{punct}])[\s{mark}]*{mark}[\s{mark}]*[{punct}]", r"\1", s)
    # "I <X/>,would" -> "I, would"; "Doctor <X/>." -> "Doctor."
    s = re.sub(rf"\s*{mark}[\s{mark}]*([{punct}]+)(?=\w)", r"\1 ", s)
    s = re.sub(rf"\s*{mark}[\s{mark}]*(?=[{punct}])", "", s)
    s = _one_line(s.replace(_MARK, " "))
    return s if re.search(r"\w", s) else ""


_ROLE = re.compile(r"_(doctor|patient)$", re.IGNORECASE)


def _find_audio(stem: str, folders: Iterable[Path]) -> Path | None:
    for folder in folders:
        for ext in AUDIO_EXTENSIONS:  # .wav first
            candidate = folder / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _audio_duration(path: Path) -> float | None:
    try:
        info = sf.info(str(path))
    except RuntimeError:  # soundfile.LibsndfileError: not every format (m4a, webm); the check is skipped
        return None
    return info.frames / float(info.samplerate) if info.samplerate else None


def read_primock57(folder: str | Path, problems: list[str] | None = None) -> list[TestUtterance]:
    """The Primock57 layout: one utterance per non-empty TextGrid interval on that channel's wav.

    TextGrids are taken from ``folder`` and ``folder/transcripts``; the audio of ``<stem>.TextGrid``
    is ``<stem>.wav`` (or another audio extension) beside it, in ``folder`` or in ``folder/audio``.
    The speaker is the ``doctor``/``patient`` suffix of the stem.  Intervals that are markup only
    (``<UNIN/>``) are skipped: their reference text is empty.  Problems: a TextGrid without audio, an
    audio file without a TextGrid, an unreadable TextGrid, intervals ending after the audio does.
    """
    root = Path(folder).expanduser()
    sink = _Sink(problems)
    grid_dirs = [d for d in (root, root / "transcripts") if d.is_dir()]
    audio_dirs = [root / "audio", root]
    grids = sorted(
        {p for d in grid_dirs for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".textgrid"}
    )
    out: list[TestUtterance] = []
    stems: set[str] = set()
    for grid in grids:
        stem = grid.stem
        stems.add(stem)
        audio = _find_audio(stem, [grid.parent, *audio_dirs])
        if audio is None:
            # each folder once
            searched = dict.fromkeys(str(d) for d in [grid.parent, *audio_dirs] if d.is_dir())
            sink.report(f"{grid}: audio not found ({stem}.wav in {', '.join(searched)})")
            continue
        try:
            intervals = read_textgrid(grid)
        except (TestSetError, OSError) as exc:
            sink.report(f"{grid}: {exc}")
            continue
        role = _ROLE.search(stem)
        speaker = role.group(1).lower() if role else None
        duration = _audio_duration(audio)
        too_long = 0
        for start, end, raw in intervals:
            text = clean_primock_text(raw)
            if not text:
                continue
            if duration is not None and end > duration + _DURATION_TOLERANCE_S:
                too_long += 1
                continue
            utt = TestUtterance(_start_id(stem, start), str(audio), text, start, end, speaker)
            sink.add(out, utt, str(grid))
        if too_long:
            sink.report(
                f"{grid}: {too_long} interval(s) end after the audio ({audio.name}: {duration:.2f} s); "
                "skipped"
            )
    for audio_dir in audio_dirs:
        if not audio_dir.is_dir():
            continue
        for audio in sorted(p for p in audio_dir.iterdir() if _is_audio(p)):
            if audio.stem not in stems:
                sink.report(f"{audio}: no transcript ({audio.stem}.TextGrid not found)")
    return out


# --------------------------------------------------------------------------------------------------
# Kincaid46 (tsv)


def _find_tsv(folder: Path) -> Path:
    tsvs = sorted(p for p in folder.glob("*.tsv") if p.is_file())
    if len(tsvs) != 1:
        raise TestSetError(f"{folder}: expected exactly one .tsv manifest, found {len(tsvs)}")
    return tsvs[0]


def read_kincaid46(folder_or_tsv: str | Path, problems: list[str] | None = None) -> list[TestUtterance]:
    """A tsv of audio and text (Kincaid46), paths relative to the tsv.

    With a header row (a column named audio/audio_path/path and one named text/transcript; optional
    id/utt_id, start_s, end_s, speaker) the columns are taken by name; without one each row is
    ``audio<TAB>text``.  Quotes are not special (a transcript may contain ").
    """
    path = Path(folder_or_tsv).expanduser()
    if path.is_dir():
        path = _find_tsv(path)
    sink = _Sink(problems)
    _allow_long_fields()
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            lines = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
        except csv.Error as exc:
            raise TestSetError(f"{path}:{reader.line_num}: cannot read this tsv row: {exc}") from None
    if not lines:
        return []
    header = lines[0][1]
    rows: list[tuple[str, Mapping[str, Any]]] = []
    if _has_column(header, AUDIO_COLUMNS) and _has_column(header, TEXT_COLUMNS):
        names = [c.strip() for c in header]
        for lineno, row in lines[1:]:
            if len(row) != len(names):
                sink.report(f"{path}:{lineno}: {len(row)} columns, the header has {len(names)}")
                continue
            rows.append((f"{path}:{lineno}", dict(zip(names, row, strict=True))))
    else:
        for lineno, row in lines:
            if len(row) != 2:
                sink.report(
                    f"{path}:{lineno}: expected 2 tab-separated columns (audio, text), found {len(row)}"
                )
                continue
            rows.append((f"{path}:{lineno}", {"audio": row[0], "text": row[1]}))
    return _rows_to_utterances(rows, path.parent, sink)


# --------------------------------------------------------------------------------------------------
# dispatch


def _has_textgrids(folder: Path) -> bool:
    return any(
        p.suffix.lower() == ".textgrid"
        for d in (folder, folder / "transcripts")
        if d.is_dir()
        for p in d.iterdir()
    )


def _folder_manifest(folder: Path) -> Path | None:
    for ext in MANIFEST_EXTENSIONS:
        candidate = folder / f"manifest{ext}"
        if candidate.is_file():
            return candidate
    return None


def load_test_set(spec: str | Path) -> tuple[list[TestUtterance], list[str]]:
    """Read a test set from a path, choosing the reader from what it is; returns (utterances, problems).

    - a ``.tsv`` file -> ``read_kincaid46``
    - a ``.jsonl``/``.ndjson``/``.json``/``.csv``/``.parquet`` file -> ``read_manifest``
    - a folder, the first that applies:
      with ``.TextGrid`` files (or a ``transcripts/`` subfolder of them) -> ``read_primock57``;
      holding exactly one ``.tsv`` -> ``read_kincaid46``;
      with a ``manifest.<jsonl|ndjson|json|csv|parquet>`` -> ``read_manifest`` on it;
      otherwise -> ``read_folder`` (audio files with ``.txt`` transcripts)

    Raises FileNotFoundError when the path does not exist, TestSetError for an unknown file type.
    """
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"test set not found: {spec} (expected a manifest file (.jsonl, .csv, .parquet, .tsv), "
            "a Primock57 folder of .TextGrid transcripts, or a folder of audio files with .txt transcripts)"
        )
    problems: list[str] = []
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".tsv":
            utts = read_kincaid46(path, problems)
        elif suffix in MANIFEST_EXTENSIONS:
            utts = read_manifest(path, problems)
        else:
            raise TestSetError(
                f"{path}: not a test set file (expected .tsv or one of {', '.join(MANIFEST_EXTENSIONS)})"
            )
    elif _has_textgrids(path):
        utts = read_primock57(path, problems)
    elif len(list(path.glob("*.tsv"))) == 1:
        utts = read_kincaid46(path, problems)
    elif (manifest := _folder_manifest(path)) is not None:
        utts = read_manifest(manifest, problems)
    else:
        utts = read_folder(path, problems)
    return utts, problems
