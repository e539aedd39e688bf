"""Decoding for evaluation: test-set pieces -> hypotheses, for every kind of system.

``run_system`` decodes a test set's pieces (``tasks.pieces.plan_pieces``) with one ``System`` and
joins each utterance's pieces' hypotheses with a space; ``make_system`` builds a system of a kind:

* ``llmasr`` -- the LLM-ASR of a stage checkpoint (``tasks.llmasr_decode.LLMASRSystem``);
* ``faster-whisper`` -- a faster-whisper baseline (``tasks.faster_whisper_decode``);
* ``transformers`` -- a Hugging Face Whisper checkpoint, or the stage-1 model (``tasks.whisper_hf``);
* ``zipformer`` -- the run's Zipformer-Transducer (``tasks.zipformer_decode``);
* ``hyps`` -- an external hypothesis file, looked up by utterance id (``tasks.hyp_files``).

Every audio system decodes with the config's ``eval`` section (``EvalConfig``: beam width, no-repeat
n-gram size, new-token bound, device, ...).  Every transformers ``generate`` gets a complete
generation configuration of ours (``llmasr.generation.explicit_config``; nothing from a checkpoint's
``generation_config.json``), and each row of a batch stops at its own new-token bound and end token
(``RowBound``): a piece's hypothesis does not depend on the pieces batched with it.

The number of new tokens is bounded per piece by its length (``piece_bound``), so a repetition loop
stops after a few seconds' worth of tokens.  A batch that raises is retried piece by piece; a piece
that still raises fails its utterance and the rest goes on: the failure is recorded in
``DecodeResult.failures`` and the evaluation scores that utterance as an empty hypothesis (its
reference words are deletions; ``tasks.scoring.score_result``).
RTF = decode wall time (features + generation, not audio reading or model loading) / audio seconds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmasr.config import EvalConfig
from tasks.decode_audio import read_audio
from tasks.pieces import Piece
from tasks.testsets import TestUtterance

log = logging.getLogger("llmasr.decode")

FASTER_WHISPER_PREFIX = "faster-whisper:"
TRANSFORMERS_PREFIX = "transformers:"  # tasks.whisper_hf, tasks.evaluate
CHUNK_PIECES = 256  # pieces whose audio is held in memory at once (read in file order)
# The modules whose logic a hypothesis depends on: the code part of the decode cache key
# (tasks.evaluate.decode_key).  A module that decodes for a system belongs here.
DECODE_CODE = (
    "tasks.decode",
    "tasks.decode_audio",
    "tasks.pieces",
    "tasks.llmasr_decode",
    "tasks.faster_whisper_decode",
    "tasks.whisper_hf",
    "tasks.zipformer_decode",
    "llmasr.model",
    "llmasr.config.model",
    "llmasr.generation",
)


# ------------------------------------------------------------------------------------ settings


def max_new_tokens_for(duration_s: float, tokens_per_second: float, min_new_tokens: int, cap: int) -> int:
    """The new-token bound of a piece: ``ceil(tokens_per_second * duration_s) + min_new_tokens``,
    at most ``cap`` (and at least 1)."""
    wanted = math.ceil(tokens_per_second * max(0.0, float(duration_s))) + int(min_new_tokens)
    return max(1, min(int(cap), wanted))


def piece_bound(settings: EvalConfig, duration_s: float) -> int:
    """The new-token bound of a piece of ``duration_s`` seconds under ``eval.tokens_per_second``,
    ``eval.min_new_tokens`` and ``eval.max_new_tokens``."""
    return max_new_tokens_for(
        duration_s, settings.tokens_per_second, settings.min_new_tokens, settings.max_new_tokens
    )


def torch_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -------------------------------------------------------------------------------------- systems


class System:
    """A named recogniser: ``decode`` audio pieces (audio systems) or ``lookup`` ids (hyp files)."""

    needs_audio = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.tokens = 0  # new tokens generated so far (audio systems)

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load weights (called once before decoding; decode time excludes it)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model."""

    def decode(self, audios: Sequence[np.ndarray]) -> list[str]:
        """Hypotheses of a batch of 16 kHz pieces (one per piece)."""
        raise NotImplementedError

    def lookup(self, utt_id: str) -> str:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What the system's hypotheses depend on besides the audio (for the decode cache key)."""
        return {"name": self.name}


def make_system(kind: str, name: str, target: str, settings: EvalConfig) -> System:
    """``kind``: 'llmasr' (target: a stage folder), 'faster-whisper' (target: a model spec),
    'transformers' (target: a Whisper model spec, or the stage-1 checkpoint folder), 'hyps'
    (target: a hypothesis file) or 'zipformer' (target: the trained Zipformer-Transducer's folder)."""
    if kind == "llmasr":
        from tasks.llmasr_decode import LLMASRSystem

        return LLMASRSystem(name, target, settings)
    if kind == "faster-whisper":
        from tasks.faster_whisper_decode import FasterWhisperSystem

        return FasterWhisperSystem(name, target, settings)
    if kind == "transformers":
        from tasks.whisper_hf import TransformersWhisperSystem

        return TransformersWhisperSystem(name, target, settings)
    if kind == "hyps":
        from tasks.hyp_files import HypFileSystem

        return HypFileSystem(name, target)
    if kind == "zipformer":
        from tasks.zipformer_decode import ZipformerSystem

        return ZipformerSystem(name, target, settings)
    raise ValueError(f"unknown system kind {kind!r}")


# -------------------------------------------------------------------------------------- running


@dataclass
class DecodeResult:
    """One system on one test set: a hypothesis per utterance, or why there is none."""

    system: str
    hyps: dict[str, str] = field(default_factory=dict)  # utt_id -> hypothesis (pieces joined)
    failures: dict[str, str] = field(default_factory=dict)  # utt_id -> error
    audio_s: float = 0.0  # seconds of the utterances decoded
    decode_s: float | None = None  # wall time of decoding (None: hypothesis file)
    tokens: int | None = None  # new tokens generated
    pieces: int = 0
    key: str | None = None  # the decode cache key
    cached: bool = False
    # about the system's input (e.g. bad hypothesis-file lines)
    problems: list[str] = field(default_factory=list)

    @property
    def rtf(self) -> float | None:
        if self.decode_s is None or self.audio_s <= 0:
            return None
        return self.decode_s / self.audio_s

    @property
    def tokens_per_s(self) -> float | None:
        if self.tokens is None or not self.decode_s:
            return None
        return self.tokens / self.decode_s

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("system", "hyps", "failures", "audio_s", "decode_s", "tokens", "pieces", "key")
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecodeResult:
        return cls(
            **{
                k: d[k]
                for k in ("system", "hyps", "failures", "audio_s", "decode_s", "tokens", "pieces", "key")
            }
        )


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def decode_pieces(
    system: System,
    pieces: Sequence[Piece],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[Piece, str], dict[Piece, str], float]:
    """Decode every piece; returns (hypothesis per piece, error per failed piece, decode seconds).

    Audio is read ``CHUNK_PIECES`` at a time in file order (a long recording is decoded once per
    chunk), then batched longest first.  A batch that raises is retried one piece at a time.
    """
    hyps: dict[Piece, str] = {}
    errors: dict[Piece, str] = {}
    decode_s = 0.0
    ordered = sorted(pieces, key=lambda p: (p.audio_path, p.start_s))
    for c in range(0, len(ordered), CHUNK_PIECES):
        chunk: list[tuple[Piece, np.ndarray]] = []
        for p in ordered[c : c + CHUNK_PIECES]:
            try:
                chunk.append((p, read_audio(p.audio_path, p.start_s, p.end_s)))
            except Exception as exc:
                errors[p] = f"audio not readable: {_error(exc)}"
        chunk.sort(key=lambda pa: -len(pa[1]))
        for b in range(0, len(chunk), batch_size):
            batch = chunk[b : b + batch_size]
            t0 = time.perf_counter()
            try:
                texts = system.decode([a for _, a in batch])
                if len(texts) != len(batch):
                    raise RuntimeError(f"{len(texts)} hypotheses for {len(batch)} pieces")
                hyps.update({p: t for (p, _), t in zip(batch, texts)})
            except Exception as exc:
                if len(batch) == 1:
                    errors[batch[0][0]] = _error(exc)
                else:
                    log.warning(
                        "%s: a batch of %d failed (%s); decoding its pieces one by one",
                        system.name,
                        len(batch),
                        _error(exc),
                    )
                    for p, a in batch:
                        try:
                            hyps[p] = system.decode([a])[0]
                        except Exception as one:
                            errors[p] = _error(one)
            decode_s += time.perf_counter() - t0
            if progress:
                progress(len(batch))
    return hyps, errors, decode_s


def run_system(
    system: System,
    utts: Sequence[TestUtterance],
    pieces: Sequence[Piece],
    durations: dict[str, float],
    settings: EvalConfig,
    progress: Callable[[int], None] | None = None,
) -> DecodeResult:
    """A hypothesis for every utterance of a test set (pieces joined in time order), or its failure."""
    result = DecodeResult(system=system.name, audio_s=float(sum(durations.get(u.utt_id, 0.0) for u in utts)))
    if not system.needs_audio:
        system.load()
        result.problems = list(getattr(system, "problems", []))
        for u in utts:
            try:
                result.hyps[u.utt_id] = system.lookup(u.utt_id)
            except Exception as exc:
                result.failures[u.utt_id] = (
                    str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else _error(exc)
                )
        return result
    tokens0 = system.tokens
    hyps, errors, decode_s = decode_pieces(system, pieces, settings.batch_size, progress)
    by_utt: dict[str, list[Piece]] = {}
    for p in pieces:
        by_utt.setdefault(p.utt_id, []).append(p)
    for u in utts:
        mine = sorted(by_utt.get(u.utt_id, []), key=lambda p: p.index)
        failed = [p for p in mine if p in errors]
        if failed:
            where = (
                f" (piece {failed[0].index + 1} of {len(mine)}, "
                f"{failed[0].start_s:.1f}-{failed[0].end_s:.1f} s)"
                if len(mine) > 1
                else ""
            )
            result.failures[u.utt_id] = f"{errors[failed[0]]}{where}"
            continue
        result.hyps[u.utt_id] = " ".join(t for t in (hyps[p] for p in mine) if t)
    result.decode_s = decode_s
    result.tokens = system.tokens - tokens0
    result.pieces = len(pieces)
    if result.tokens_per_s is not None:
        log.info(
            "%s: %d pieces, %.1f s audio in %.1f s (RTF %.3f), %.1f tokens/s",
            system.name,
            len(pieces),
            result.audio_s,
            decode_s,
            result.rtf or 0.0,
            result.tokens_per_s,
        )
    return result
