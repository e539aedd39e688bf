"""Pieces: what every audio system decodes, planned from a test set's utterances.

An utterance no longer than ``max_piece_s`` is one piece; a longer one is cut by the data flow's own
segmentation code (Silero VAD regions merged by ``tasks.segment.merge_cues`` with the ``segment``
settings), and its pieces' hypotheses are later joined with a space (``tasks.decode.run_system``).
Utterances with ``start_s``/``end_s`` (Primock57) are cut from their audio file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from llmasr.audio import SAMPLE_RATE
from llmasr.config import SegmentConfig
from tasks.decode_audio import audio_duration, read_audio
from tasks.testsets import TestUtterance


@dataclass(frozen=True)
class Piece:
    """What one audio system call decodes: a stretch of a file (at most ``max_piece_s`` long)."""

    utt_id: str
    index: int  # position within its utterance
    audio_path: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def vad_pieces(audio: np.ndarray, offset_s: float, segment_cfg: SegmentConfig) -> list[tuple[float, float]]:
    """(start_s, end_s) pieces of a long stretch of audio, by the data flow's segmentation code:
    ``tasks.segment.vad_regions`` (Silero VAD) merged by ``tasks.segment.merge_cues``.  Times are
    shifted by ``offset_s`` (the stretch's start in its file)."""
    from tasks import segment

    duration = len(audio) / SAMPLE_RATE
    with tempfile.TemporaryDirectory(prefix="llmasr-vad-") as tmp:
        wav = Path(tmp) / "piece.flac"
        sf.write(str(wav), audio, SAMPLE_RATE, subtype="PCM_16")
        regions = segment.vad_regions(wav, segment_cfg)
    runs = segment.merge_cues(regions, segment_cfg, duration)
    return [(offset_s + run[0].start_s, offset_s + max(c.end_s for c in run)) for run in runs]


def plan_pieces(
    utts: Sequence[TestUtterance], max_piece_s: float, segment_cfg: SegmentConfig, problems: list[str]
) -> tuple[list[TestUtterance], list[Piece], dict[str, float]]:
    """Pieces of every utterance; returns (utterances kept, pieces, utterance durations in s).

    An utterance whose audio cannot be read, or whose times are outside its audio, is reported in
    ``problems`` and left out (no system scores it).  One where VAD finds no speech keeps no pieces:
    its hypothesis is empty.
    """
    kept: list[TestUtterance] = []
    pieces: list[Piece] = []
    durations: dict[str, float] = {}
    for utt in utts:
        try:
            file_s = audio_duration(utt.audio_path)
        except Exception as exc:
            problems.append(f"{utt.utt_id}: audio not readable ({utt.audio_path}): {exc}")
            continue
        start = utt.start_s or 0.0
        end = file_s if utt.end_s is None else min(utt.end_s, file_s)
        if start < 0 or end - start <= 0:
            problems.append(
                f"{utt.utt_id}: empty stretch {start:.2f}-{end:.2f} s of {utt.audio_path} ({file_s:.2f} s "
                "long)"
            )
            continue
        durations[utt.utt_id] = end - start
        kept.append(utt)
        if end - start <= max_piece_s:
            pieces.append(Piece(utt.utt_id, 0, utt.audio_path, start, end))
            continue
        try:
            spans = vad_pieces(read_audio(utt.audio_path, start, end), start, segment_cfg)
        except Exception as exc:  # noqa: BLE001 -- one unreadable long file is that utterance's problem, not the set's
            problems.append(
                f"{utt.utt_id}: audio not readable ({utt.audio_path}, {start:.1f}-{end:.1f} s): {exc}"
            )
            kept.pop()
            del durations[utt.utt_id]
            continue
        if not spans:
            problems.append(
                f"{utt.utt_id}: VAD found no speech in {end - start:.1f} s of audio; hypothesis left empty"
            )
        pieces += [Piece(utt.utt_id, i, utt.audio_path, s, e) for i, (s, e) in enumerate(spans)]
    return kept, pieces, durations
