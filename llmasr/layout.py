"""Where each stage's files live under ``work_dir`` (the file contract of DESIGN.md), and safe ids.

Every path under the work dir is built here from a sanitised id, so a video id such as
``../../etc`` or a file name with spaces and unicode can never escape or break the layout.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")  # no dots: WebDataset splits sample keys at the first dot


def safe_id(raw: str, max_len: int = 80) -> str:
    """A file-name-safe id: ASCII letters, digits, '_' and '-' only; never empty.

    Ids that had to be changed get a short hash of the original appended, so two different raw ids
    never collide after sanitising ("a b" and "a_b" stay distinct).
    """
    ascii_ = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    cleaned = _UNSAFE.sub("_", ascii_).strip("_-")[:max_len]
    if cleaned != raw or not cleaned:
        digest = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}" if cleaned else digest
    return cleaned


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` alone (sha1), for splits that never move."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


@dataclass(frozen=True)
class WorkLayout:
    """Paths of every stage's outputs under one work dir."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    # ingest
    @property
    def raw(self) -> Path:
        return self.root / "raw"

    def audio(self, item_id: str) -> Path:
        return self.raw / f"{safe_id(item_id)}.flac"

    def captions(self, item_id: str) -> Path:
        return self.raw / f"{safe_id(item_id)}.vtt"

    def item_record(self, item_id: str) -> Path:
        return self.raw / f"{safe_id(item_id)}.item.json"

    @property
    def ytdlp_archive(self) -> Path:
        return self.raw / "ytdlp-archive.txt"

    # manifests
    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def items(self) -> Path:
        return self.manifests / "items.parquet"

    @property
    def segments(self) -> Path:
        return self.manifests / "segments.parquet"

    @property
    def labels(self) -> Path:
        return self.manifests / "labels.parquet"

    @property
    def decisions(self) -> Path:
        return self.manifests / "decisions.parquet"

    @property
    def parts(self) -> Path:
        """Per-item partial results (segments, labels) that the manifests are merged from."""
        return self.root / "parts"

    def part(self, stage: str, item_id: str) -> Path:
        return self.parts / stage / f"{safe_id(item_id)}.parquet"

    # shards
    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def shard_index(self) -> Path:
        return self.shards / "index.json"

    @property
    def shard_members(self) -> Path:
        """segment_id -> (shard name, content hash of the sample), so a rerun knows what is sharded
        and current."""
        return self.manifests / "shard_members.parquet"

    def sweep_temp(self) -> int:
        """Remove temp files a killed run left in any stage folder. Returns how many."""
        from llmasr.atomic import sweep_temp

        folders = [self.raw, self.manifests, self.shards, self.root / "reports"]
        folders += [p for p in self.parts.iterdir() if p.is_dir()] if self.parts.is_dir() else []
        return sum(sweep_temp(f) for f in folders)

    def rel(self, path: Path) -> str:
        """``path`` relative to the work dir, as stored in manifests (work dirs can move)."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def abs(self, rel_path: str) -> Path:
        p = (self.root / rel_path).resolve()
        if self.root not in p.parents and p != self.root:
            raise ValueError(f"path {rel_path!r} escapes the work dir {self.root}")
        return p
