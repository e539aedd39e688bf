"""Audio I/O: convert anything ffmpeg reads to 16 kHz mono FLAC, read it back as float32.

ffmpeg runs as a subprocess with an argument list (never a shell), so file names with spaces,
unicode or shell metacharacters are safe.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from llmasr.atomic import atomic_path

SAMPLE_RATE = 16_000


class AudioError(RuntimeError):
    """A file that is not decodable audio (zero bytes, truncated, not audio, no audio stream)."""


def ffmpeg_binary() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("ffmpeg is not on PATH: install it (Debian: apt-get install ffmpeg)")
    return exe


def convert_to_flac16k(src: Path | str, dst: Path | str, max_duration_s: float | None = None) -> float:
    """Decode ``src`` with ffmpeg to 16 kHz mono 16-bit FLAC at ``dst`` (atomically).

    Returns the duration in seconds.  Raises AudioError with ffmpeg's last message when the input
    is not audio, and when it is longer than ``max_duration_s`` (the rest is not decoded).
    """
    src = Path(src)
    if not src.is_file():
        raise AudioError(f"no such file: {src}")
    if src.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    with atomic_path(dst) as tmp:
        cmd = [
            ffmpeg_binary(),
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(src),
            "-vn",
            "-ac",
            "1",
            "-ar",
            str(SAMPLE_RATE),
            "-sample_fmt",
            "s16",
        ]
        if max_duration_s is not None:
            # decode one second past the limit so "too long" is detected without decoding hours
            cmd += ["-t", f"{max_duration_s + 1:.3f}"]
        cmd += ["-f", "flac", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            msg = (proc.stderr.strip().splitlines() or ["ffmpeg failed"])[-1]
            raise AudioError(f"not decodable audio: {msg}")
        try:
            info = sf.info(str(tmp))
        except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError
            raise AudioError(f"ffmpeg produced no readable audio: {exc}") from exc
        duration = info.frames / float(info.samplerate)
        # a FLAC of 0 samples stores total_samples 0 ("unknown"), which libsndfile reports as 2**63-1
        if info.frames == 0 or info.frames >= 2**63 - 1:
            raise AudioError("no audio samples (empty or truncated stream)")
        if max_duration_s is not None and duration > max_duration_s:
            raise AudioError(f"too long: more than {max_duration_s:.0f} s (ingest.max_item_duration_s)")
    return duration


def load_audio(path: Path | str, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """Read a 16 kHz mono file (as written by ``convert_to_flac16k``) as float32 in [-1, 1].

    Returns shape (samples,).  ``start_s``/``end_s`` read only that stretch.
    """
    info = sf.info(str(path))
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        raise AudioError(f"{path}: expected 16 kHz mono, got {info.samplerate} Hz x {info.channels}")
    start = int(round(start_s * SAMPLE_RATE))
    stop = None if end_s is None else int(round(end_s * SAMPLE_RATE))
    audio, _ = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=False)
    return audio


def duration_s(path: Path | str) -> float:
    info = sf.info(str(path))
    return info.frames / float(info.samplerate)


def _wav_declared_s(path: Path) -> float | None:
    """A RIFF/WAVE file's ``data`` chunk size over its ``fmt `` byte rate; None when it is not one, or
    the size is a streaming placeholder (0 or 0xFFFFFFFF)."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(size)
                if len(fmt) < 12:
                    return None
                byte_rate = struct.unpack("<I", fmt[8:12])[0]
                if size & 1:
                    f.seek(1, 1)
            elif cid == b"data":
                if not byte_rate or size in (0, 0xFFFFFFFF):
                    return None
                return size / byte_rate
            else:
                f.seek(size + (size & 1), 1)


def declared_duration_s(path: Path | str) -> float | None:
    """How long a file says it is, as opposed to what decodes: a WAV's data chunk size (ffmpeg would
    estimate a cut WAV's length from its size), else ffprobe's container duration (FLAC's
    STREAMINFO, an MP3's Xing/Info frame count, ...; for formats that declare nothing ffprobe
    estimates from the size, which then agrees with the decoded length).  None when neither tells,
    or ffprobe is not installed."""
    path = Path(path)
    try:
        wav = _wav_declared_s(path)
    except (OSError, struct.error):
        wav = None
    if wav is not None:
        return wav
    exe = shutil.which("ffprobe")
    if exe is None:
        return None
    cmd = [
        exe,
        "-v",
        "error",
        "-show_entries",
        "format=duration",
        "-of",
        "default=noprint_wrappers=1:nokey=1",
        str(path),
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.split()
        return float(out[0]) if out else None
    except (subprocess.TimeoutExpired, OSError, ValueError):
        return None
