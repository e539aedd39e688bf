"""tasks.segment: merging caption cues into segments, stable ids, and the VAD path on real audio."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmasr.audio import convert_to_flac16k
from llmasr.config import FilterConfig, SegmentConfig
from llmasr.layout import WorkLayout
from llmasr.records import STATUS_OK, Item, Segment
from tasks.captions import Cue, parse_captions, write_vtt
from tasks.filter import duration_reasons
from tasks.parts import read_part
from tasks.segment import (
    item_key,
    merge_cues,
    read_segments,
    segment_batch,
    segment_id,
    segment_item,
    segments_from_runs,
)

CFG = SegmentConfig()  # max 20 s, target 15 s, gap 1 s


def _spans(runs: list[list[Cue]]) -> list[tuple[float, float]]:
    return [(run[0].start_s, max(c.end_s for c in run)) for run in runs]


def _texts(runs: list[list[Cue]]) -> list[list[str]]:
    return [[c.text for c in run] for run in runs]


# --------------------------------------------------------------------------------------------------
# merge_cues


def test_close_cues_merge_until_the_target_is_reached() -> None:
    cues = [Cue(i * 4.0, i * 4.0 + 3.5, f"c{i}") for i in range(8)]  # 0.5 s gaps, 3.5 s cues
    runs = merge_cues(cues, CFG)
    # c0..c3 span 0..15.5: the run reached 15 s (target) after c3, so c4 starts a new run
    assert _texts(runs) == [["c0", "c1", "c2", "c3"], ["c4", "c5", "c6", "c7"]]
    assert _spans(runs) == [(0.0, 15.5), (16.0, 31.5)]


def test_a_gap_longer_than_max_gap_splits() -> None:
    cues = [Cue(0.0, 2.0, "a"), Cue(3.0, 5.0, "b"), Cue(6.01, 8.0, "c")]  # gaps 1.0 (kept), 1.01 (split)
    assert _texts(merge_cues(cues, CFG)) == [["a", "b"], ["c"]]


def test_max_gap_zero_never_merges_across_a_pause() -> None:
    cfg = SegmentConfig(max_gap_s=0.0)
    cues = [Cue(0.0, 1.0, "a"), Cue(1.0, 2.0, "b"), Cue(2.5, 3.0, "c")]
    assert _texts(merge_cues(cues, cfg)) == [["a", "b"], ["c"]]


def test_a_run_stops_before_it_would_reach_max_segment() -> None:
    # 14 s then a 6 s cue: together 20.0 s, not < 20, so the 6 s cue starts its own run
    cues = [Cue(0.0, 14.0, "long"), Cue(14.0, 20.0, "six")]
    runs = merge_cues(cues, CFG)
    assert _texts(runs) == [["long"], ["six"]]
    # 14 s then a 5.9 s cue fits (19.9 s)
    runs = merge_cues([Cue(0.0, 14.0, "long"), Cue(14.0, 19.9, "fits")], CFG)
    assert _texts(runs) == [["long", "fits"]]


def test_a_single_cue_of_exactly_20_s_is_its_own_segment_and_the_filter_drops_it() -> None:
    cues = [Cue(0.0, 2.0, "before"), Cue(2.0, 22.0, "twenty"), Cue(22.0, 23.0, "after")]
    runs = merge_cues(cues, CFG)
    assert _texts(runs) == [["before"], ["twenty"], ["after"]]
    segs = segments_from_runs("vid", runs, "captions")
    twenty = segs[1]
    assert twenty.duration_s == 20.0
    assert twenty.caption_text == "twenty"
    assert duration_reasons(twenty.duration_s, FilterConfig()) == ["too_long"]
    assert duration_reasons(segs[0].duration_s, FilterConfig()) == []


def test_a_25_s_cue_is_its_own_segment_and_too_long() -> None:
    runs = merge_cues([Cue(10.0, 35.0, "monologue")], CFG)
    segs = segments_from_runs("vid", runs, "captions")
    assert [(s.start_s, s.end_s, s.duration_s) for s in segs] == [(10.0, 35.0, 25.0)]
    assert "too_long" in duration_reasons(segs[0].duration_s, FilterConfig())


def test_no_cue_is_ever_split_or_lost_and_runs_stay_below_max() -> None:
    rng = random.Random(7)
    for trial in range(200):
        t, cues = 0.0, []
        for i in range(rng.randrange(1, 40)):
            t += rng.choice([0.0, 0.2, 0.9, 1.0, 1.5, 4.0]) if cues else rng.uniform(0, 3)
            length = rng.choice([0.3, 1.0, 2.5, 5.0, 9.0, 19.99, 20.0, 24.0]) * rng.uniform(0.5, 1.0)
            if rng.random() < 0.1 and cues:  # an overlapping cue
                t = max(0.0, t - length / 2)
            cues.append(Cue(round(t, 3), round(t + length, 3), f"w{i}"))
            t += length
        cues.sort(key=lambda c: (c.start_s, c.end_s))
        cfg = SegmentConfig(
            max_segment_s=20.0,
            target_segment_s=rng.choice([5.0, 15.0, 20.0]),
            max_gap_s=rng.choice([0.0, 1.0, 3.0]),
        )
        runs = merge_cues(cues, cfg)
        assert [c for run in runs for c in run] == cues, trial  # every cue once, in order, whole
        for run in runs:
            start, end = run[0].start_s, max(c.end_s for c in run)
            if len(run) > 1:
                assert end - start < cfg.max_segment_s, (trial, run)
            for i, nxt in enumerate(run[1:], 1):
                assert nxt.start_s - max(c.end_s for c in run[:i]) <= cfg.max_gap_s


def test_cues_past_the_end_of_the_item_are_clipped_or_dropped() -> None:
    cues = [Cue(0.0, 4.0, "a"), Cue(8.0, 12.0, "b"), Cue(12.5, 14.0, "c"), Cue(10.0, 10.0, "empty")]
    runs = merge_cues(sorted(cues, key=lambda c: c.start_s), CFG, item_duration_s=10.0)
    flat = [c for run in runs for c in run]
    assert [c.text for c in flat] == ["a", "b"]
    assert flat[-1].end_s == 10.0  # clipped to the item's end
    segs = segments_from_runs("vid", runs, "captions")
    assert max(s.end_s for s in segs) == 10.0


def test_negative_start_is_clipped_to_zero() -> None:
    runs = merge_cues([Cue(-1.0, 2.0, "a")], CFG)
    assert _spans(runs) == [(0.0, 2.0)]


def test_overlapping_cues_merge_and_the_segment_spans_them_all() -> None:
    cues = [Cue(0.0, 6.0, "a"), Cue(2.0, 3.0, "b"), Cue(5.0, 7.0, "c")]
    runs = merge_cues(cues, CFG)
    assert _texts(runs) == [["a", "b", "c"]]
    seg = segments_from_runs("vid", runs, "captions")[0]
    assert (seg.start_s, seg.end_s, seg.duration_s) == (0.0, 7.0, 7.0)
    assert seg.caption_text == "a b c"


def test_parse_captions_sorts_unsorted_cues_before_merging(tmp_path: Path) -> None:
    p = tmp_path / "u.vtt"
    p.write_text(
        "WEBVTT\n\n00:00:03.000 --> 00:00:04.000\nsecond\n\n00:00:01.000 --> 00:00:02.500\nfirst\n",
        encoding="utf-8",
    )
    runs = merge_cues(parse_captions(p), CFG)
    assert _texts(runs) == [["first", "second"]]


# --------------------------------------------------------------------------------------------------
# segment ids


def test_segment_ids_are_item_and_start_ms() -> None:
    assert segment_id("abc", 0.0) == "abc-000000000"
    assert segment_id("abc", 12.3456) == "abc-000012346"
    assert segment_id("abc", 3723.456) == "abc-003723456"


def test_segments_from_runs_ids_are_unique_and_stable() -> None:
    cues = [
        Cue(0.0, 19.5, "long"),
        Cue(0.0, 3.0, "same start"),
        Cue(30.0, 31.0, "x"),
        Cue(30.0002, 31.0, "same ms"),
    ]
    runs = merge_cues(cues, SegmentConfig(max_gap_s=0.0))
    a = segments_from_runs("item_1", runs, "captions")
    b = segments_from_runs("item_1", merge_cues(list(cues), SegmentConfig(max_gap_s=0.0)), "captions")
    assert a == b
    ids = [s.segment_id for s in a]
    assert len(set(ids)) == len(ids)
    for sid in ids:
        assert re.fullmatch(r"item_1-\d{9}b*", sid), sid
        assert "." not in sid
    assert ids[0] == "item_1-000000000"
    assert [s.cut_by for s in a] == ["captions"] * len(a)


def test_vad_segments_have_no_caption_text() -> None:
    segs = segments_from_runs("v", [[Cue(1.0, 2.0, "")]], "vad")
    assert segs[0].caption_text is None and segs[0].cut_by == "vad"


# --------------------------------------------------------------------------------------------------
# segment_item: captions, VAD on generated speech, fallbacks

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

SILENCE_S = 3.0


def _speak(text: str, out: Path) -> tuple[np.ndarray, int]:
    subprocess.run(["espeak-ng", "-s", "160", "-w", str(out), text], check=True, capture_output=True)
    audio, sr = sf.read(str(out), dtype="float32")
    return audio, sr


@pytest.fixture(scope="module")
def speech_silence_speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, float, float]:
    """16 kHz FLAC: sentence, 3 s of digital silence, sentence. Returns (path, silence start, end,
    duration)."""
    d = tmp_path_factory.mktemp("vad")
    a, sr = _speak("The committee approved the budget for the new library on Tuesday.", d / "a.wav")
    b, sr_b = _speak("Afterwards everyone walked down to the harbour to watch the boats.", d / "b.wav")
    assert sr == sr_b
    gap = np.zeros(int(SILENCE_S * sr), dtype=np.float32)
    sf.write(str(d / "mix.wav"), np.concatenate([a, gap, b]), sr)
    duration = convert_to_flac16k(d / "mix.wav", d / "mix.flac")
    return d / "mix.flac", len(a) / sr, (len(a) + len(gap)) / sr, duration


@needs_espeak
def test_vad_cuts_speech_around_the_silence(speech_silence_speech) -> None:
    flac, sil_start, sil_end, duration = speech_silence_speech
    cfg = SegmentConfig()
    segs, note = segment_item("gen", flac, None, duration, cfg)
    assert note is None
    assert len(segs) >= 2
    assert all(s.cut_by == "vad" and s.caption_text is None for s in segs)
    for s in segs:
        assert 0.0 <= s.start_s < s.end_s <= duration + 0.0005  # ends are rounded to ms
        assert s.duration_s < cfg.max_segment_s
        # nothing covers the middle of the silence (padding may reach a little way into it)
        assert s.end_s <= sil_start + 0.5 or s.start_s >= sil_end - 0.5, (s, sil_start, sil_end)
    assert any(s.end_s <= sil_start + 0.5 for s in segs)
    assert any(s.start_s >= sil_end - 0.5 for s in segs)
    speech_s = sum(s.duration_s for s in segs)
    assert speech_s > 0.6 * (duration - SILENCE_S)  # the speech itself is found


@needs_espeak
def test_malformed_captions_fall_back_to_vad_with_a_note(speech_silence_speech, tmp_path: Path) -> None:
    flac, _, _, duration = speech_silence_speech
    bad = tmp_path / "bad.vtt"
    bad.write_bytes(b"\xff\xfe not utf-8 \x80\x81")
    segs, note = segment_item("gen", flac, bad, duration, SegmentConfig())
    assert note is not None and "captions" in note and "VAD" in note
    assert len(segs) >= 2 and all(s.cut_by == "vad" for s in segs)

    no_cues = tmp_path / "nocues.vtt"
    no_cues.write_text("just words, no timing\n", encoding="utf-8")
    segs2, note2 = segment_item("gen", flac, no_cues, duration, SegmentConfig())
    assert note2 is not None and segs2 == segs


@needs_espeak
def test_captions_with_only_music_fall_back_to_vad(speech_silence_speech, tmp_path: Path) -> None:
    flac, _, _, duration = speech_silence_speech
    music = tmp_path / "music.vtt"
    music.write_text("WEBVTT\n\n00:00:00.000 --> 00:00:05.000\n[Music]\n", encoding="utf-8")
    segs, note = segment_item("gen", flac, music, duration, SegmentConfig())
    assert note is not None and "VAD" in note
    assert segs and all(s.cut_by == "vad" for s in segs)


@needs_espeak
def test_captions_are_used_when_present(speech_silence_speech, tmp_path: Path) -> None:
    flac, _, _, duration = speech_silence_speech
    cap = tmp_path / "ok.srt"
    cap.write_text(
        "1\n"
        "00:00:00,100 --> 00:00:03,000\n"
        "the committee approved\n"
        "\n"
        "2\n"
        "00:00:50,000 --> 00:00:55,000\n"
        "beyond the end\n",
        encoding="utf-8",
    )
    segs, note = segment_item("gen", flac, cap, duration, SegmentConfig())
    assert note is None
    assert [(s.segment_id, s.caption_text, s.cut_by) for s in segs] == [
        ("gen-000000100", "the committee approved", "captions")
    ]


def test_pure_silence_gives_no_segments(tmp_path: Path) -> None:
    wav = tmp_path / "silence.wav"
    sf.write(str(wav), np.zeros(16000 * 5, dtype=np.float32), 16000)
    duration = convert_to_flac16k(wav, tmp_path / "silence.flac")
    segs, note = segment_item("quiet", tmp_path / "silence.flac", None, duration, SegmentConfig())
    assert segs == [] and note is None


@needs_espeak
def test_captions_entirely_past_the_end_fall_back_to_vad_with_a_note(
    speech_silence_speech, tmp_path: Path
) -> None:
    """Captions of another, longer video: every cue lies past the end of the audio.  The item is cut
    by VAD (as for captions without text cues), with a note, instead of yielding no segment."""
    flac, _, _, duration = speech_silence_speech
    cap = tmp_path / "other_video.vtt"
    cap.write_text(
        "WEBVTT\n"
        "\n"
        "00:01:40.000 --> 00:01:45.000\n"
        "something said much later\n"
        "\n"
        "00:01:50.000 --> 00:01:52.000\n"
        "and more\n",
        encoding="utf-8",
    )
    assert parse_captions(cap) and duration < 100.0
    segs, note = segment_item("gen", flac, cap, duration, SegmentConfig())
    assert note is not None and "VAD" in note and "within the audio" in note
    vad_only, _ = segment_item("gen", flac, None, duration, SegmentConfig())
    assert segs == vad_only and len(segs) >= 2
    assert all(s.cut_by == "vad" and s.caption_text is None for s in segs)


# --------------------------------------------------------------------------------------------------
# segment_batch: the item record, the part key


def _captioned_item(layout: WorkLayout, item_id: str, duration_s: float | None, cues: list[Cue]) -> Item:
    """A noise 'video' of 10 s in raw/ with WebVTT captions beside it (no speech needed)."""
    audio = layout.audio(item_id)
    audio.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sf.write(
        str(audio),
        (0.1 * rng.standard_normal(10 * 16000)).astype(np.float32),
        16000,
        format="FLAC",
        subtype="PCM_16",
    )
    write_vtt(layout.captions(item_id), cues)
    return Item(
        item_id, "/src", None, layout.rel(audio), duration_s, layout.rel(layout.captions(item_id)), STATUS_OK
    )


def test_an_item_without_duration_is_clipped_to_its_audio_not_to_zero(tmp_path: Path) -> None:
    """An ok item whose record lacks duration_s: cues are clipped to the audio file's own length
    (read from its header), not to 0 s (which dropped every cue and gave no segment)."""
    layout = WorkLayout(tmp_path / "work")
    cues = [Cue(1.0, 3.0, "first words"), Cue(8.0, 12.0, "runs past the end"), Cue(30.0, 31.0, "beyond")]
    item = _captioned_item(layout, "nodur", None, cues)
    assert segment_batch(layout, [item], SegmentConfig(max_gap_s=0.0)) == 1
    [segs] = read_segments(layout, [item], SegmentConfig(max_gap_s=0.0)).values()
    assert [(s.start_s, s.end_s, s.caption_text, s.cut_by) for s in segs] == [
        (1.0, 3.0, "first words", "captions"),
        (8.0, 10.0, "runs past the end", "captions"),
    ]


def test_items_per_task_is_not_part_of_the_segment_key(tmp_path: Path) -> None:
    """items_per_task only batches items into Prefect tasks: changing it re-segments nothing."""
    layout = WorkLayout(tmp_path / "work")
    item = _captioned_item(layout, "vid", 10.0, [Cue(1.0, 3.0, "first words"), Cue(4.0, 6.0, "second words")])
    cfg = SegmentConfig()
    assert segment_batch(layout, [item], cfg) == 1
    part = layout.part("segments", item.item_id)
    mtime = part.stat().st_mtime_ns
    rebatched = cfg.model_copy(update={"items_per_task": cfg.items_per_task + 7})
    assert item_key(layout, item, rebatched) == item_key(layout, item, cfg)
    assert segment_batch(layout, [item], rebatched) == 0
    assert (
        part.stat().st_mtime_ns == mtime
        and read_part(part, Segment, item_key(layout, item, rebatched)) is not None
    )
    # a setting that does change the cut still does
    assert item_key(layout, item, cfg.model_copy(update={"max_gap_s": 0.0})) != item_key(layout, item, cfg)
