"""The ``faster-whisper`` evaluation system: any faster-whisper model as a baseline.

``faster-whisper:<spec>`` (``eval.baselines``; spec as ``tasks.label.resolve_model`` takes it:
``large-v2``, ``bundled:tiny.en``, a CTranslate2 folder), one piece at a time, with the beam width,
no-repeat n-gram size and new-token bound every system uses, and every other transcribe option
given explicitly (``FASTER_WHISPER_OPTIONS``: temperature 0 with no fallback, no no-speech
skipping, ...).  The model is shared with labelling (``tasks.label._load``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmasr.audio import SAMPLE_RATE
from llmasr.config import EvalConfig
from tasks.decode import FASTER_WHISPER_PREFIX, System, piece_bound

# faster-whisper's transcribe options besides language, beam_size, no_repeat_ngram_size and
# max_new_tokens (from EvalConfig), each set to what every other system does:
FASTER_WHISPER_OPTIONS: dict[str, Any] = {
    "task": "transcribe",
    "best_of": 1,  # candidates when sampling: there is no sampling
    "patience": 1.0,  # beam search ends with num_beams finished hypotheses (HF: early_stopping=True)
    "length_penalty": 1.0,  # hypotheses ranked by summed log-probability / length, as HF's 1.0
    "repetition_penalty": 1.0,  # no penalty: a word that truly repeats is not penalised
    "temperature": 0.0,  # one deterministic pass: no temperature fallback list
    "compression_ratio_threshold": None,  # no fallback triggers (nothing to fall back to) ...
    "log_prob_threshold": None,
    "no_speech_threshold": None,  # ... and no "silence" skipping: every piece gets its hypothesis
    "condition_on_previous_text": False,  # each piece on its own (a piece is at most one 30 s window)
    "prompt_reset_on_temperature": 0.5,  # unused without conditioning; given for completeness
    "initial_prompt": None,
    "prefix": None,
    "hotwords": None,
    # Whisper's decoding rule: no space or end token first (HF: begin_suppress_tokens)
    "suppress_blank": True,
    "suppress_tokens": [-1],  # Whisper's non-speech symbols + specials (HF: tasks.whisper_hf.suppress_tokens)
    "without_timestamps": True,
    "max_initial_timestamp": 1.0,  # unused without timestamps
    "word_timestamps": False,
    "prepend_punctuations": "\"'“¿([{-",  # word timestamps only (off): faster-whisper's values
    "append_punctuations": "\"'.。,，!！?？:：”)]}、",
    "multilingual": False,  # one language per piece (eval.language)
    "vad_filter": False,  # pieces are already cut (tasks.pieces.plan_pieces)
    "chunk_length": None,  # the model's 30 s window
    "clip_timestamps": "0",  # the whole piece
    "hallucination_silence_threshold": None,
    "language_detection_threshold": 0.5,  # only read when eval.language is null
    "language_detection_segments": 1,
}


@functools.lru_cache(maxsize=2)
def _faster_whisper(model: str, device: str, compute_type: str, cpu_threads: int):
    from tasks.label import _load

    return _load(model, device, compute_type, cpu_threads).model  # the WhisperModel, shared with labelling


class FasterWhisperSystem(System):
    """A faster-whisper model as a baseline: ``faster-whisper:<spec>`` (``large-v2``,
    ``bundled:tiny.en``, a CTranslate2 folder)."""

    def __init__(self, name: str, spec: str, settings: EvalConfig) -> None:
        super().__init__(name)
        self.spec = spec[len(FASTER_WHISPER_PREFIX) :] if spec.startswith(FASTER_WHISPER_PREFIX) else spec
        self.settings = settings
        self.model = None

    def identity(self) -> dict[str, Any]:
        from llmasr.bundled import resolve_ct2
        from tasks.whisper_hf import _file_stamps

        s = self.settings
        source = resolve_ct2(self.spec)  # a bundled name's folder names its package versions
        return {
            "name": self.name,
            "kind": "faster-whisper",
            "spec": self.spec,
            "source": source,
            "files": _file_stamps(Path(source)),  # a rewritten model folder is another system
            "runtime": [s.device, s.compute_type, s.language],
            "decode": [
                s.num_beams,
                s.no_repeat_ngram_size,
                s.tokens_per_second,
                s.min_new_tokens,
                s.max_new_tokens,
            ],
        }

    def load(self) -> None:
        s = self.settings
        self.model = _faster_whisper(self.spec, s.device, s.compute_type, s.cpu_threads)

    def close(self) -> None:
        self.model = None

    def decode(self, audios: Sequence[np.ndarray]) -> list[str]:
        if self.model is None:
            self.load()
        s = self.settings
        out = []
        for audio in audios:
            # Every option of faster-whisper 1.2's WhisperModel.transcribe that shapes the tokens is
            # given, none left to its defaults (FASTER_WHISPER_OPTIONS says what each is and why).
            segments, _ = self.model.transcribe(  # type: ignore[union-attr]
                audio,
                language=s.language,
                beam_size=s.num_beams,
                no_repeat_ngram_size=s.no_repeat_ngram_size,
                # Whisper's context holds 448
                max_new_tokens=min(piece_bound(s, len(audio) / SAMPLE_RATE), 440),
                **FASTER_WHISPER_OPTIONS,
            )
            segments = list(segments)
            self.tokens += sum(len(seg.tokens) for seg in segments)
            out.append(" ".join(seg.text.strip() for seg in segments if seg.text.strip()))
        return out
