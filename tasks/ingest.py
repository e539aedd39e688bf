"""ingest: sources -> 16 kHz mono FLAC (+ WebVTT captions) under ``raw/`` and their Item records.

Sources are checked before any work (``resolve_sources``): an ``http(s)`` URL goes to yt-dlp
(tasks/youtube.py); a folder is searched for audio files with optional ``<stem>.vtt``/``.srt``
captions beside them; a manifest (``.jsonl``, ``.csv``, ``.txt``) lists audio paths or URLs.
Every local file becomes an Item: ``ok`` with its converted audio, or ``failed`` with the reason
(zero bytes, not audio, too long, ...).  A truncated file whose first part decodes (a WAV whose
header declares 12 s and that holds 0.09 s) is ``ok`` with what decodes, and a note in ``error``
giving the declared and the decoded length.  A file already ingested with the same size and mtime
is not converted again.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from llmasr.atomic import write_json
from llmasr.audio import AudioError, convert_to_flac16k, declared_duration_s
from llmasr.config import IngestConfig
from llmasr.layout import WorkLayout, safe_id
from llmasr.records import STATUS_FAILED, STATUS_OK, Item
from tasks.captions import CaptionError, parse_captions, write_vtt
from tasks.parts import fingerprint

log = logging.getLogger("llmasr.ingest")

AUDIO_EXTENSIONS = {
    ".wav",
    ".flac",
    ".mp3",
    ".m4a",
    ".aac",
    ".ogg",
    ".oga",
    ".opus",
    ".webm",
    ".mp4",
    ".mkv",
    ".mov",
    ".wma",
    ".aiff",
    ".aif",
}
CAPTION_EXTENSIONS = (".vtt", ".srt")
MANIFEST_EXTENSIONS = {".jsonl", ".csv", ".txt"}

# a file decoding this much shorter than its header declares (and by more than 1 %) is noted as
# truncated: encoder padding and rounding stay well below it
TRUNCATION_TOLERANCE_S = 0.5


class SourceError(ValueError):
    """A --source that is neither an http(s) URL nor an existing folder, audio file or manifest."""


@dataclass(frozen=True)
class Source:
    kind: str  # "web" | "folder" | "manifest" | "file"
    value: str  # the URL, or the absolute path


@dataclass(frozen=True)
class LocalFile:
    """One local audio file to ingest, with its captions if any."""

    item_id: str
    source: str
    path: str
    caption_path: str | None


def is_url(s: str) -> bool:
    p = urlparse(s)
    return p.scheme in ("http", "https") and bool(p.netloc)


def resolve_sources(sources: Iterable[str]) -> list[Source]:
    """Validate every source before any work; raises SourceError naming each bad one."""
    out, bad = [], []
    for raw in sources:
        s = str(raw).strip()
        if not s:
            continue
        if "://" in s:
            if is_url(s):
                out.append(Source("web", s))
            else:
                bad.append(f"{s!r}: only http(s) URLs are supported")
            continue
        p = Path(s).expanduser()
        if p.is_dir():
            out.append(Source("folder", str(p.resolve())))
        elif p.is_file() and p.suffix.lower() in MANIFEST_EXTENSIONS:
            out.append(Source("manifest", str(p.resolve())))
            bad += manifest_problems(p.resolve())
        elif p.is_file():
            out.append(Source("file", str(p.resolve())))
        else:
            bad.append(f"{s!r}: no such file or folder")
    if bad:
        raise SourceError("bad --source: " + "; ".join(bad))  # one line: the CLI's one error: line
    if not out:
        raise SourceError(
            "no sources: pass --source (a URL, folder or manifest) or set sources: in the config"
        )
    return out


def local_item_id(path: Path) -> str:
    """Stable id of a local file: its sanitised stem and a hash of its absolute path."""
    return f"{safe_id(path.stem, 60)}-{fingerprint(str(path.resolve()))[:8]}"


def find_captions(audio: Path) -> Path | None:
    """``<stem>.vtt``/``.srt`` or ``<stem>.<lang>.vtt``/``.srt`` beside the audio file."""
    for ext in CAPTION_EXTENSIONS:
        direct = audio.with_suffix(ext)
        if direct.is_file():
            return direct
    for ext in CAPTION_EXTENSIONS:
        for cand in sorted(audio.parent.glob(f"{glob.escape(audio.stem)}.*{ext}")):  # "Title [id].en.vtt"
            return cand
    return None


def expand_source(src: Source) -> tuple[list[LocalFile], list[str]]:
    """Local files of a folder/file/manifest source, and the web URLs a manifest lists."""
    files: list[LocalFile] = []
    urls: list[str] = []

    def add(path: Path, captions: Path | None = None) -> None:
        files.append(
            LocalFile(
                local_item_id(path),
                src.value,
                str(path),
                str(captions) if captions else (str(c) if (c := find_captions(path)) else None),
            )
        )

    if src.kind == "file":
        add(Path(src.value))
    elif src.kind == "folder":
        for p in sorted(Path(src.value).rglob("*")):
            if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith("."):
                add(p)
    elif src.kind == "manifest":
        base = Path(src.value).parent
        for entry in read_manifest(Path(src.value)):
            target = entry["audio"]
            if is_url(target):
                urls.append(target)
                continue
            cap = entry.get("captions")
            add(_manifest_path(base, target), _manifest_path(base, cap) if cap else None)
    return files, urls


def _manifest_path(base: Path, value: str) -> Path:
    """A manifest's path: absolute, ``~``, or relative to the manifest's folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def manifest_problems(path: Path) -> list[str]:
    """What makes manifest ``path`` fail before any work: it cannot be read (no audio column, bad
    JSON), or rows name local audio files that do not exist (the first such row, and how many)."""
    try:
        rows = read_manifest(path)
    except SourceError as exc:
        return [str(exc)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [f"{path}: cannot read this manifest ({exc})"]
    missing = []
    for n, row in enumerate(rows, 1):
        if not is_url(row["audio"]) and not (p := _manifest_path(path.parent, row["audio"])).is_file():
            missing.append(f"{path}: row {n}: audio file {p} does not exist")
    if not missing:
        return []
    more = f" (and {len(missing) - 1} more rows whose audio is missing)" if len(missing) > 1 else ""
    return [f"{missing[0]}{more}; relative paths are read from the manifest's folder"]


def read_manifest(path: Path) -> list[dict]:
    """Rows with ``audio`` (path or URL) and optional ``captions`` from .jsonl, .csv or .txt
    (UTF-8, with or without the byte-order mark spreadsheets write)."""
    suffix = path.suffix.lower()
    rows: list[dict] = []
    if suffix == ".txt":
        rows = [
            {"audio": ln.strip()}
            for ln in path.read_text(encoding="utf-8-sig").splitlines()
            if ln.strip() and not ln.startswith("#")
        ]
    elif suffix == ".jsonl":
        for n, ln in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if ln.strip():
                try:
                    rows.append(json.loads(ln))
                except json.JSONDecodeError as exc:
                    raise SourceError(f"{path}:{n}: not JSON ({exc.msg})") from exc
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    for n, row in enumerate(rows, 1):
        audio = row.get("audio") or row.get("url") or row.get("path")
        if not audio:
            raise SourceError(f"{path}: row {n} has no 'audio' (or 'url'/'path') field")
        row["audio"] = str(audio)
    return rows


def _file_stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def ingest_local_file(f: LocalFile, layout: WorkLayout, cfg: IngestConfig) -> Item:
    """Convert one local file to raw/<id>.flac (and its captions to raw/<id>.vtt). Never raises
    for a bad file: the Item says ``failed`` and why."""
    src = Path(f.path)
    record_path = layout.item_record(f.item_id)
    base = dict(item_id=f.item_id, source=f.source, url=None, title=src.name)
    if not src.is_file():
        return Item(
            **base,
            path=None,
            duration_s=None,
            caption_path=None,
            status=STATUS_FAILED,
            error="file disappeared before ingest",
        )
    # a captions path that does not exist (a manifest's typo) is noted on the item, never raised;
    # its stamp is None, so the item is ingested again once the file appears
    captions = Path(f.caption_path) if f.caption_path else None
    captions_found = captions is not None and captions.is_file()
    stamp = fingerprint(
        _file_stamp(src), _file_stamp(captions) if captions_found else None, cfg.max_item_duration_s
    )
    if record_path.is_file():
        prev = json.loads(record_path.read_text(encoding="utf-8"))
        if prev.pop("_stamp", None) == stamp and (
            prev["status"] != STATUS_OK or layout.abs(prev["path"]).is_file()
        ):
            return Item(**prev)
    try:
        duration = convert_to_flac16k(src, layout.audio(f.item_id), max_duration_s=cfg.max_item_duration_s)
        item = Item(
            **base,
            path=layout.rel(layout.audio(f.item_id)),
            duration_s=round(duration, 3),
            caption_path=None,
            status=STATUS_OK,
            error=truncation_note(src, duration),
        )
    except AudioError as exc:
        layout.audio(f.item_id).unlink(missing_ok=True)
        item = Item(
            **base, path=None, duration_s=None, caption_path=None, status=STATUS_FAILED, error=str(exc)
        )
    if item.status == STATUS_OK and captions is not None:
        item = _with_captions(item, captions, captions_found, layout)
    write_json(record_path, {**dataclasses.asdict(item), "_stamp": stamp})
    return item


def truncation_note(src: Path, decoded_s: float) -> str | None:
    """A note when ``src`` decodes to less than its header declares (a cut download or copy); None
    otherwise.  What decodes is kept: it is real audio, and segment and filter judge it like any."""
    declared = declared_duration_s(src)
    if declared is None or declared - decoded_s <= max(TRUNCATION_TOLERANCE_S, 0.01 * declared):
        return None
    log.warning("%s: truncated, the header declares %.2f s, %.2f s decoded", src, declared, decoded_s)
    return f"truncated: the header declares {declared:.2f} s, {decoded_s:.2f} s decoded (kept)"


def _add_note(item: Item, note: str) -> Item:
    return dataclasses.replace(item, error=f"{item.error}; {note}" if item.error else note)


def _with_captions(item: Item, captions: Path, found: bool, layout: WorkLayout) -> Item:
    """``item`` with its captions converted to raw/<id>.vtt; or, where they are missing or
    unreadable, without captions (segment then cuts by VAD) and a note in ``error`` saying so."""
    if not found:
        return _add_note(item, f"captions {captions} not found; segmented by VAD")
    try:
        write_vtt(layout.captions(item.item_id), parse_captions(captions))
    except CaptionError as exc:
        return _add_note(item, f"captions ignored ({exc}); segmented by VAD")
    return dataclasses.replace(
        item, caption_path=layout.rel(layout.captions(item.item_id)), caption_kind="local"
    )


def ingest_local(
    files: list[LocalFile],
    layout: WorkLayout,
    cfg: IngestConfig,
    progress: Callable[[int], None] | None = None,
) -> list[Item]:
    items = []
    for f in files:
        items.append(ingest_local_file(f, layout, cfg))
        if progress:
            progress(1)
    return items


def merge_items(batches: Iterable[list[Item]]) -> list[Item]:
    """One Item per item_id (the first seen wins), sorted by item_id."""
    merged: dict[str, Item] = {}
    for batch in batches:
        for it in batch:
            merged.setdefault(it.item_id, it)
    return [merged[k] for k in sorted(merged)]
