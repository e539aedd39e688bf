"""shard: kept segments -> WebDataset tars (``shards/<split>-NNNNNN.tar``) and ``shards/index.json``.

Each sample is ``<key>.flac`` (16 kHz mono, 16-bit) and ``<key>.json`` (text, caption, item_id,
start_s, end_s, scores; with ``shard.transcript: caption`` "text" is the caption and the label is
in "label"); ``key`` is the segment id (no dots, as WebDataset needs).  Sharding is
incremental: segments already in a shard stay where they are (old tars are never rewritten), new
kept segments go into new shards numbered after the last one of their split.  A shard holding a
segment that is no longer kept (the filter settings changed) is removed and its other segments are
sharded again; so is a shard holding a segment whose sample would now differ (relabelled with
another model, caption corrected, segment re-cut with other times, item audio replaced): the
members manifest records each sample's content hash (``Sample.content_hash``).  Tars are
written under a temp name and renamed, with fixed mtimes and owners, so the same input gives
byte-identical shards and a killed run leaves no partial tar.

manifests/shard_members.parquet: one row per sharded segment: segment_id, shard, content (hash).

index.json: {"version": 1, "shards": [{"path", "split", "samples", "bytes", "sha256",
"audio_s"}], "splits": {split: {"shards", "samples", "audio_s"}}}; shard paths are relative to
the folder of index.json.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from llmasr.atomic import atomic_path, sweep_temp, write_json
from llmasr.audio import SAMPLE_RATE
from llmasr.config import ShardConfig
from llmasr.layout import WorkLayout
from llmasr.records import Decision, Item, Label, Segment
from tasks.parts import fingerprint
from tasks.segment import audio_stamp

log = logging.getLogger("llmasr.shard")

INDEX_VERSION = 1
MEMBERS_SCHEMA = pa.schema([("segment_id", pa.string()), ("shard", pa.string()), ("content", pa.string())])
_SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)-(?P<num>\d{6})\.tar$")


@dataclass(frozen=True)
class Sample:
    """What goes into one WebDataset sample (audio read at write time)."""

    segment: Segment
    label: Label
    decision: Decision
    audio_path: Path
    # the item's audio stamp (tasks.segment.audio_stamp): the .flac comes from that file
    audio: dict[str, int]
    transcript: str = "label"  # shard.transcript: what "text" holds

    def metadata(self) -> dict:
        s, lab, d = self.segment, self.label, self.decision
        extra = {}
        text = sample_text(s, lab, self.transcript)
        if self.transcript == "caption":
            extra = {
                "label": lab.text,
                "text_source": "caption" if (s.caption_text or "").strip() else "label",
            }
        return {
            "segment_id": s.segment_id,
            "item_id": s.item_id,
            "start_s": s.start_s,
            "end_s": s.end_s,
            "duration_s": s.duration_s,
            "text": text,
            "caption": s.caption_text,
            **extra,
            "language": lab.language,
            "split": d.split,
            "scores": {
                "avg_logprob": lab.avg_logprob,
                "no_speech_prob": lab.no_speech_prob,
                "compression_ratio": lab.compression_ratio,
                "caption_wer": d.caption_wer,
                "language_prob": lab.language_prob,
            },
            "model": lab.model,
        }

    def content_hash(self) -> str:
        """Hash of everything the sample's .json and .flac are made of: a shard whose members' hashes
        differ from the recorded ones holds stale samples and is written again."""
        return fingerprint(self.metadata(), self.audio)


def sample_text(segment: Segment, label: Label, transcript: str) -> str:
    """A sample's "text", the target every model trains on (``shard.transcript``): the label, or the
    segment's caption where it has one (a segment cut on VAD, or with a blank caption, keeps its label)."""
    caption = (segment.caption_text or "").strip() if transcript == "caption" else ""
    return caption or label.text


@dataclass(frozen=True)
class Member:
    """A sharded segment: the shard holding it and its sample's content hash (None: written before
    hashes were recorded, treated as stale)."""

    shard: str
    content: str | None


def encode_flac(audio_path: Path, start_s: float, end_s: float) -> bytes:
    """The stretch [start_s, end_s) of a 16 kHz mono file as FLAC bytes (16-bit)."""
    start, stop = int(round(start_s * SAMPLE_RATE)), int(round(end_s * SAMPLE_RATE))
    pcm, sr = sf.read(str(audio_path), start=start, stop=stop, dtype="int16", always_2d=False)  # (samples,)
    buf = io.BytesIO()
    sf.write(buf, pcm, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_index(layout: WorkLayout) -> tuple[list[dict], dict[str, Member]]:
    """(shard entries, segment_id -> Member) of the last run; empty when there is none."""
    if not layout.shard_index.is_file() or not layout.shard_members.is_file():
        return [], {}
    entries = json.loads(layout.shard_index.read_text(encoding="utf-8"))["shards"]
    members = pq.read_table(layout.shard_members).to_pydict()
    # a members file from before content hashes has no "content" column: every hash is None, so
    # every shard counts as stale and is written once more (the old tars cannot be trusted to
    # match the current labels and segments, and hashing their contents back is not worth it)
    contents = members.get("content", [None] * len(members["segment_id"]))
    return entries, {
        sid: Member(shard, c) for sid, shard, c in zip(members["segment_id"], members["shard"], contents)
    }


def save_index(layout: WorkLayout, entries: list[dict], members: dict[str, Member]) -> dict:
    entries = sorted(entries, key=lambda e: e["path"])
    splits: dict[str, dict] = defaultdict(lambda: {"shards": 0, "samples": 0, "audio_s": 0.0, "bytes": 0})
    for e in entries:
        agg = splits[e["split"]]
        agg["shards"] += 1
        agg["samples"] += e["samples"]
        agg["audio_s"] = round(agg["audio_s"] + e["audio_s"], 3)
        agg["bytes"] += e["bytes"]
    index = {"version": INDEX_VERSION, "shards": entries, "splits": dict(sorted(splits.items()))}
    ids = sorted(members)
    table = pa.table(
        {
            "segment_id": ids,
            "shard": [members[i].shard for i in ids],
            "content": [members[i].content for i in ids],
        },
        schema=MEMBERS_SCHEMA,
    )
    with atomic_path(layout.shard_members) as tmp:
        pq.write_table(table, tmp)
    write_json(layout.shard_index, index)
    return index


def write_shard(path: Path, samples: Sequence[tuple[Sample, bytes]]) -> dict:
    """Write one tar atomically; returns its index entry (path relative to the shards folder)."""
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            for sample, flac in samples:
                key = sample.segment.segment_id
                _add(tar, f"{key}.flac", flac)
                _add(
                    tar,
                    f"{key}.json",
                    json.dumps(sample.metadata(), sort_keys=True, ensure_ascii=False).encode("utf-8"),
                )
        entry = {
            "path": path.name,
            "split": samples[0][0].decision.split,
            "samples": len(samples),
            "bytes": tmp.stat().st_size,
            "sha256": _sha256(tmp),
            "audio_s": round(sum(s.segment.duration_s for s, _ in samples), 3),
        }
    return entry


def plan_pending(
    layout: WorkLayout, wanted: dict[str, str]
) -> tuple[list[dict], dict[str, Member], set[str]]:
    """Drop shards that hold a segment not in ``wanted`` (kept segment id -> its sample's content
    hash) or whose recorded hash differs, and tars the index does not know (left by a killed run).
    Returns (entries kept, members kept, wanted segment ids still to shard)."""
    sweep_temp(layout.shards)
    entries, members = load_index(layout)
    stale = {m.shard for sid, m in members.items() if m.content is None or wanted.get(sid) != m.content}
    stale |= {e["path"] for e in entries if not (layout.shards / e["path"]).is_file()}
    for name in sorted(stale):
        if (layout.shards / name).is_file():
            log.info(
                "removing shard %s: it holds segments the filter no longer keeps or whose sample changed",
                name,
            )
        (layout.shards / name).unlink(missing_ok=True)
    entries = [e for e in entries if e["path"] not in stale]
    known = {e["path"] for e in entries}
    # index.json is written after shard_members.parquet: a run killed between the two leaves
    # members of a shard the index does not list; that shard is an orphan and its segments pending
    members = {sid: m for sid, m in members.items() if m.shard in known}
    for tar in layout.shards.glob("*.tar") if layout.shards.is_dir() else []:
        if tar.name not in known:
            log.info("removing %s: not in the index (left by an interrupted run)", tar.name)
            tar.unlink()
    return entries, members, set(wanted) - set(members)


def next_number(entries: list[dict], split: str) -> int:
    nums = [int(m["num"]) for e in entries if (m := _SHARD_NAME.match(e["path"])) and m["split"] == split]
    return max(nums, default=-1) + 1


def write_shards(
    layout: WorkLayout,
    items: Sequence[Item],
    segments: Sequence[Segment],
    labels: Sequence[Label],
    decisions: Sequence[Decision],
    cfg: ShardConfig,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Shard every kept segment not yet in a shard with its current content; returns the new index."""
    layout.shards.mkdir(parents=True, exist_ok=True)
    kept = {d.segment_id: d for d in decisions if d.kept}
    seg_by_id = {s.segment_id: s for s in segments}
    lab_by_id = {lab.segment_id: lab for lab in labels}
    kept_items = {seg_by_id[sid].item_id for sid in kept}
    item_by_id = {it.item_id: it for it in items if it.item_id in kept_items}
    stamps = {iid: audio_stamp(layout, it) for iid, it in item_by_id.items()}
    samples = {}
    for sid, d in kept.items():
        seg = seg_by_id[sid]
        samples[sid] = Sample(
            seg,
            lab_by_id[sid],
            d,
            layout.abs(item_by_id[seg.item_id].path),
            stamps[seg.item_id],
            cfg.transcript,
        )  # type: ignore[arg-type]
    # the hash covers the split too: a segment whose split changed (shard.validation_fraction
    # changed) leaves its old shard like one relabelled or re-cut
    entries, members, pending = plan_pending(layout, {sid: s.content_hash() for sid, s in samples.items()})
    todo: dict[str, list[Sample]] = defaultdict(list)
    for sid in sorted(pending, key=lambda s: (seg_by_id[s].item_id, seg_by_id[s].start_s, s)):
        todo[kept[sid].split].append(samples[sid])
    limit = int(cfg.target_mb * 1024 * 1024)
    for split in sorted(todo):
        number = next_number(entries, split)
        batch: list[tuple[Sample, bytes]] = []
        size = 0

        def flush(split: str) -> None:
            nonlocal batch, size, number
            name = f"{split}-{number:06d}.tar"
            entry = write_shard(layout.shards / name, batch)
            entries.append(entry)
            members.update({s.segment.segment_id: Member(name, s.content_hash()) for s, _ in batch})
            save_index(layout, entries, members)  # after every shard: a kill loses one shard at most
            log.info("wrote %s: %d samples, %.1f MB", name, entry["samples"], entry["bytes"] / 1e6)
            batch, size, number = [], 0, number + 1

        for sample in todo[split]:
            flac = encode_flac(sample.audio_path, sample.segment.start_s, sample.segment.end_s)
            if batch and (size + len(flac) > limit or len(batch) >= cfg.max_samples):
                flush(split)
            batch.append((sample, flac))
            size += len(flac) + 2048  # two tar headers and the json
            if progress:
                progress(1)
        if batch:
            flush(split)
    return save_index(layout, entries, members)
