"""Typed records of the data half and their Arrow schemas (the manifest contracts of DESIGN.md).

Each record type is a frozen dataclass; its ``SCHEMA`` is the Parquet schema of the manifest that
holds it.  ``write_records`` / ``read_records`` convert between lists of records and Parquet files,
writing atomically (temp name, then rename) so a killed run never leaves half a manifest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from llmasr.atomic import atomic_path

# Item statuses in items.parquet.
STATUS_OK = "ok"  # audio is in raw/, ready to segment
STATUS_FAILED = "failed"  # could not be fetched or decoded; `error` says why


@dataclass(frozen=True)
class Item:
    """One source item (a video, a local file): a row of ``manifests/items.parquet``."""

    item_id: str
    source: str  # the --source it came from (URL, folder or manifest path)
    url: str | None  # page URL for web items, None for local files
    path: str | None  # raw/<item_id>.flac (16 kHz mono) when status == ok
    duration_s: float | None
    caption_path: str | None  # raw/<item_id>.vtt when the item has captions
    status: str
    error: str | None = None
    title: str | None = None
    caption_kind: str | None = None  # "manual", "auto", "local" or None

    SCHEMA = pa.schema(
        [
            ("item_id", pa.string()),
            ("source", pa.string()),
            ("url", pa.string()),
            ("path", pa.string()),
            ("duration_s", pa.float64()),
            ("caption_path", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("title", pa.string()),
            ("caption_kind", pa.string()),
        ]
    )


@dataclass(frozen=True)
class Segment:
    """A stretch of one item, < max_segment_s long: a row of ``manifests/segments.parquet``."""

    segment_id: str  # "<item_id>-<start_ms:09d>", stable across reruns
    item_id: str
    start_s: float
    end_s: float
    duration_s: float
    caption_text: str | None  # the caption cues inside it, joined; None where cut by VAD
    cut_by: str = "captions"  # "captions" or "vad"

    SCHEMA = pa.schema(
        [
            ("segment_id", pa.string()),
            ("item_id", pa.string()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("duration_s", pa.float64()),
            ("caption_text", pa.string()),
            ("cut_by", pa.string()),
        ]
    )


@dataclass(frozen=True)
class Label:
    """A Whisper pseudo-label of one segment: a row of ``manifests/labels.parquet``."""

    segment_id: str
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    language: str
    language_prob: float
    model: str

    SCHEMA = pa.schema(
        [
            ("segment_id", pa.string()),
            ("text", pa.string()),
            ("avg_logprob", pa.float64()),
            ("no_speech_prob", pa.float64()),
            ("compression_ratio", pa.float64()),
            ("language", pa.string()),
            ("language_prob", pa.float64()),
            ("model", pa.string()),
        ]
    )


@dataclass(frozen=True)
class Decision:
    """The filter's verdict on one segment: a row of ``manifests/decisions.parquet``."""

    segment_id: str
    item_id: str
    kept: bool
    reasons: list[str] = field(default_factory=list)  # empty when kept
    caption_wer: float | None = None  # normalised WER of label vs caption; None without caption
    words: int = 0
    type_token_ratio: float | None = None
    duration_s: float = 0.0
    split: str = "train"  # "train" or "validation", by a stable hash of item_id

    SCHEMA = pa.schema(
        [
            ("segment_id", pa.string()),
            ("item_id", pa.string()),
            ("kept", pa.bool_()),
            ("reasons", pa.list_(pa.string())),
            ("caption_wer", pa.float64()),
            ("words", pa.int64()),
            ("type_token_ratio", pa.float64()),
            ("duration_s", pa.float64()),
            ("split", pa.string()),
        ]
    )


R = TypeVar("R")


def to_table(records: Sequence[Any], cls: type) -> pa.Table:
    """Records of one dataclass type -> Arrow table with that type's schema (empty list is fine)."""
    names = cls.SCHEMA.names
    columns = {n: [getattr(r, n) for r in records] for n in names}
    return pa.table(columns, schema=cls.SCHEMA)


def from_table(table: pa.Table, cls: type[R]) -> list[R]:
    """Arrow table -> records; columns the dataclass does not know are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    rows = table.select([n for n in table.column_names if n in names]).to_pylist()
    return [cls(**row) for row in rows]


def write_records(
    path: Path, records: Iterable[Any], cls: type, metadata: dict[str, str] | None = None
) -> Path:
    """Write records as Parquet atomically; ``metadata`` goes into the file's key-value metadata."""
    table = to_table(list(records), cls)
    if metadata:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
        )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_records(path: Path, cls: type[R]) -> list[R]:
    return from_table(pq.read_table(path), cls)


def read_metadata(path: Path) -> dict[str, str]:
    """The key-value metadata a Parquet file was written with ({} if none)."""
    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW")}
