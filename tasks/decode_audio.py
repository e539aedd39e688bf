"""Audio for decoding: 16 kHz mono samples of a stretch of a file, and a batch of its features.

``read_audio`` reads any format (libsndfile in part at 16 kHz, else PyAV decodes the whole file once,
cached); ``pad_features`` stacks a batch of features (``llmasr.model.log_mel``) with zero frames and
the real lengths.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from llmasr.audio import SAMPLE_RATE


@functools.lru_cache(maxsize=4)
def _decode_whole(path: str, mtime_ns: int) -> np.ndarray:  # noqa: ARG001 - mtime is part of the cache key
    """A whole file decoded by PyAV (any format, any rate) to 16 kHz mono float32, (samples,)."""
    from faster_whisper.audio import decode_audio

    return np.asarray(decode_audio(path, sampling_rate=SAMPLE_RATE), dtype=np.float32)


def read_audio(path: str | Path, start_s: float | None = None, end_s: float | None = None) -> np.ndarray:
    """16 kHz mono float32 samples (samples,) of ``path`` from ``start_s`` to ``end_s`` (None: the
    start / the end of the file).  16 kHz files that libsndfile reads are read in part; anything
    else is decoded whole by PyAV (resampled, downmixed) and cached, so many utterances of one long
    recording decode it once."""
    path = str(path)
    try:
        info = sf.info(path)
    except RuntimeError:  # soundfile.LibsndfileError: not a libsndfile format (m4a, webm, ...)
        info = None
    if info is not None and info.samplerate == SAMPLE_RATE:
        start = int(round((start_s or 0.0) * SAMPLE_RATE))
        stop = None if end_s is None else int(round(end_s * SAMPLE_RATE))
        # (samples, channels)
        audio, _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
        return audio.mean(axis=1).astype(np.float32) if audio.shape[1] > 1 else audio[:, 0]
    whole = _decode_whole(path, Path(path).stat().st_mtime_ns)
    start = int(round((start_s or 0.0) * SAMPLE_RATE))
    stop = len(whole) if end_s is None else int(round(end_s * SAMPLE_RATE))
    return whole[start:stop]


def audio_duration(path: str | Path) -> float:
    """Seconds of audio in ``path`` (header for libsndfile formats, else a full decode)."""
    try:
        info = sf.info(str(path))
        if info.samplerate and info.frames > 0:
            return info.frames / float(info.samplerate)
    except RuntimeError:  # soundfile.LibsndfileError: not a libsndfile format; decode it instead
        pass
    return len(_decode_whole(str(path), Path(path).stat().st_mtime_ns)) / SAMPLE_RATE


def pad_features(feats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack (M, T_i) features into (B, M, max T) with zero frames after each; lengths (B,): the
    training loader's ``pad_features``, as arrays (no copy)."""
    from tasks.train_data import pad_features as pad

    x, lengths = pad(feats)  # (B, M, T_max), (B,) torch
    return x.numpy(), lengths.numpy()
