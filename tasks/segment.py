"""segment: cut each item into segments shorter than ``segment.max_segment_s``.

With captions, segments are runs of consecutive caption cues (never split inside a cue): a run
grows while the next cue starts within ``max_gap_s`` of the previous one's end, the run stays
below ``max_segment_s`` and has not yet reached ``target_segment_s``.  A single cue of 20 s or more
becomes a segment of its own, which the filter then drops as too long (every cue is accounted for).
Without captions, the same merging runs over speech regions found by the Silero VAD that
faster-whisper ships.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from llmasr import progress
from llmasr.audio import SAMPLE_RATE, load_audio
from llmasr.audio import duration_s as audio_duration_s
from llmasr.config import SegmentConfig, cache_settings
from llmasr.layout import WorkLayout
from llmasr.records import Item, Segment
from tasks.captions import Cue, parse_captions
from tasks.parts import code_version, fingerprint, read_part, write_part

log = logging.getLogger("llmasr.segment")


def segment_id(item_id: str, start_s: float) -> str:
    """Stable segment id: the item id and the start in milliseconds."""
    return f"{item_id}-{int(round(start_s * 1000)):09d}"


def merge_cues(
    cues: Sequence[Cue], cfg: SegmentConfig, item_duration_s: float | None = None
) -> list[list[Cue]]:
    """Group time-ordered cues into runs that become segments (see the module docstring).

    Cues are first clipped to [0, item_duration_s]; cues left empty by clipping are dropped.
    """
    clipped: list[Cue] = []
    for c in cues:
        start, end = max(0.0, c.start_s), c.end_s
        if item_duration_s is not None:
            end = min(end, item_duration_s)
        if end > start:
            clipped.append(Cue(start, end, c.text))
    runs: list[list[Cue]] = []
    for cue in clipped:
        if runs:
            run = runs[-1]
            run_start, run_end = run[0].start_s, max(c.end_s for c in run)
            fits = max(run_end, cue.end_s) - run_start < cfg.max_segment_s
            close = cue.start_s - run_end <= cfg.max_gap_s
            growing = run_end - run_start < cfg.target_segment_s
            if fits and close and growing:
                run.append(cue)
                continue
        runs.append([cue])
    return runs


def segments_from_runs(item_id: str, runs: list[list[Cue]], cut_by: str) -> list[Segment]:
    out: list[Segment] = []
    seen: set[str] = set()
    for run in runs:
        start = run[0].start_s
        end = max(c.end_s for c in run)
        sid = segment_id(item_id, start)
        while sid in seen:  # overlapping cues that start in the same millisecond
            sid += "b"
        seen.add(sid)
        text = " ".join(c.text for c in run if c.text) if cut_by == "captions" else None
        out.append(Segment(sid, item_id, round(start, 3), round(end, 3), round(end - start, 3), text, cut_by))
    return out


def vad_regions(audio_path: Path, cfg: SegmentConfig) -> list[Cue]:
    """Speech regions of a 16 kHz mono file by Silero VAD, as text-less cues."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    audio = load_audio(audio_path)  # (samples,) float32
    opts = VadOptions(
        threshold=cfg.vad_threshold,
        min_silence_duration_ms=cfg.vad_min_silence_ms,
        speech_pad_ms=cfg.vad_speech_pad_ms,
        # leave room below the cap so padding never pushes a region to max_segment_s
        max_speech_duration_s=max(1.0, cfg.max_segment_s - 1.0),
    )
    stamps = get_speech_timestamps(audio, opts, sampling_rate=SAMPLE_RATE)  # sample offsets
    return [Cue(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE, "") for s in stamps]


def segment_item(
    item_id: str, audio_path: Path, caption_path: Path | None, duration_s: float, cfg: SegmentConfig
) -> tuple[list[Segment], str | None]:
    """Segments of one item, and a note when captions were present but unusable (VAD used).

    Captions are unusable when they cannot be read, hold no text cue, or no cue survives clipping
    to [0, duration_s] (captions of another, longer video): VAD then cuts the item instead.
    """
    note = None
    if caption_path is not None:
        try:
            cues = parse_captions(caption_path)
        except (OSError, ValueError) as exc:
            cues, note = [], f"captions unusable ({exc}); segmented by VAD"
        runs = merge_cues(cues, cfg, duration_s)
        if runs:
            return segments_from_runs(item_id, runs, "captions"), None
        if cues:  # cues exist, but none overlaps [0, duration_s]: captions of something else
            note = f"no caption cue lies within the audio ({duration_s:.3f} s); segmented by VAD"
        elif note is None:
            note = "captions have no text cues; segmented by VAD"
    regions = vad_regions(audio_path, cfg)
    return segments_from_runs(item_id, merge_cues(regions, cfg, duration_s), "vad"), note


def audio_stamp(layout: WorkLayout, item: Item) -> dict:
    """What identifies an item's audio file without reading it: size and mtime (ingest writes a new
    file when its source changed).  Keys of later stages (label, shard) include it too."""
    st = layout.abs(item.path).stat()  # type: ignore[arg-type]
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def item_key(layout: WorkLayout, item: Item, cfg: SegmentConfig) -> str:
    """What an item's segments are computed from: its audio and captions, the settings (less those
    marked ``runtime``, such as ``items_per_task``: ``cache_settings``), the code."""
    caption = layout.abs(item.caption_path).read_bytes() if item.caption_path else b""
    return fingerprint(
        item.item_id,
        audio_stamp(layout, item),
        fingerprint(caption.decode("utf-8", "replace")),
        cache_settings(cfg),
        code_version("tasks.segment", "tasks.captions"),
    )


def item_keys(layout: WorkLayout, items: Sequence[Item], cfg: SegmentConfig) -> dict[str, str]:
    """item_id -> ``item_key``: a run computes them once and passes them to every step that needs them."""
    return {item.item_id: item_key(layout, item, cfg) for item in items}


def item_duration_s(layout: WorkLayout, item: Item) -> float:
    """The item's duration: from its record, or (a record without one) from its audio file's header.

    Caption cues are clipped to this duration, so a guess (0, or none) would drop or keep cues
    wrongly; the FLAC header written by ingest holds the exact frame count."""
    if item.duration_s is not None:
        return item.duration_s
    duration = audio_duration_s(layout.abs(item.path))  # type: ignore[arg-type]
    log.warning(
        "%s: no duration_s in its item record; %.3f s read from %s", item.item_id, duration, item.path
    )
    return duration


def segment_batch(
    layout: WorkLayout, items: Sequence[Item], cfg: SegmentConfig, keys: Mapping[str, str] | None = None
) -> int:
    """Segment the items whose part is missing or stale; returns how many were (re)computed.
    ``keys``: the items' ``item_keys`` when the caller has them."""
    keys = keys if keys is not None else item_keys(layout, items, cfg)
    done = 0
    for item in items:
        key = keys[item.item_id]
        part = layout.part("segments", item.item_id)
        if read_part(part, Segment, key) is None:
            caption = layout.abs(item.caption_path) if item.caption_path else None
            segs, note = segment_item(
                item.item_id, layout.abs(item.path), caption, item_duration_s(layout, item), cfg
            )  # type: ignore[arg-type]
            if note:
                log.warning("%s: %s", item.item_id, note)
            write_part(part, segs, Segment, key)
            done += 1
        progress.advance("segment")
    return done


def read_segments(
    layout: WorkLayout, items: Sequence[Item], cfg: SegmentConfig, keys: Mapping[str, str] | None = None
) -> dict[str, list[Segment]]:
    """Each item's current segments, from its part; raises if a part is missing or stale.
    ``keys``: the items' ``item_keys`` when the caller has them."""
    keys = keys if keys is not None else item_keys(layout, items, cfg)
    out = {}
    for item in items:
        segs = read_part(layout.part("segments", item.item_id), Segment, keys[item.item_id])
        if segs is None:
            raise RuntimeError(f"segments of {item.item_id} are missing or stale: run the segment stage")
        out[item.item_id] = segs
    return out
