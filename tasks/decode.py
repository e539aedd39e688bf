"""Decoding for evaluation: test-set audio -> hypotheses, for every kind of system.

Systems (``System``):

* ``LLMASRSystem`` -- the LLM-ASR model of a stage checkpoint (``tasks.checkpoints.load_llmasr``),
  batched, beam search (``num_beams``, default 8) with no repeated n-grams (``no_repeat_ngram_size``,
  default 6); ``num_beams=1`` is greedy.  Features are Whisper log-mel of each piece *as long as it
  is* (``log_mel``: ``WhisperFeatureExtractor`` with the encoder's ``num_mel_bins``, no padding to
  30 s), padded with zero frames to the longest piece of the batch and passed with their lengths:
  the model runs the encoder on the real length and masks the padding (``llmasr.model``).
* ``FasterWhisperSystem`` -- any faster-whisper model as a baseline (``faster-whisper:<spec>``,
  spec as ``tasks.label.resolve_model`` takes it), one piece at a time, same beam width,
  no-repeat n-gram size and new-token bound, every other transcribe option given explicitly
  (``FASTER_WHISPER_OPTIONS``: temperature 0 with no fallback, no no-speech skipping, ...).
* ``tasks.whisper_hf.TransformersWhisperSystem`` -- a Hugging Face Whisper checkpoint through
  transformers (``transformers:<model>``) and the stage-1 model (``llmasr-stage1``), batched, same
  settings, Whisper's prompt and suppression rules.

Every transformers ``generate`` gets a complete generation configuration of ours
(``llmasr.generation.explicit_config``; nothing from a checkpoint's ``generation_config.json``),
and each row of a batch stops at its own new-token bound and end token (``RowBound``): a piece's
hypothesis does not depend on the pieces batched with it.
* ``HypFileSystem`` -- an external hypothesis file (jsonl/json, tsv, Kaldi ``text``, or icefall's
  ``recogs-*.txt``), looked up by utterance id.

Every audio system decodes the same *pieces*: an utterance no longer than ``max_piece_s`` is one
piece; a longer one is cut by the data flow's own segmentation code (Silero VAD regions merged by
``tasks.segment.merge_cues`` with the ``segment`` settings) and the hypotheses of its pieces are
joined with a space.  Utterances with ``start_s``/``end_s`` (Primock57) are cut from their audio file.

The number of new tokens is bounded per piece by its length (``max_new_tokens_for``), so a
repetition loop stops after a few seconds' worth of tokens.  A batch that raises is retried piece by
piece; a piece that still raises fails its utterance and the rest goes on: the failure is recorded
in ``DecodeResult.failures`` and the evaluation scores that utterance as an empty hypothesis (its
reference words are deletions; ``tasks.evaluate.score_result``).
RTF = decode wall time (features + generation, not audio reading or model loading) / audio seconds.
"""

from __future__ import annotations

import ast
import functools
import gc
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from llmasr.audio import SAMPLE_RATE
from llmasr.config import EvalConfig, SegmentConfig
from tasks.testsets import TestUtterance

log = logging.getLogger("llmasr.decode")

FASTER_WHISPER_PREFIX = "faster-whisper:"
TRANSFORMERS_PREFIX = "transformers:"  # tasks.whisper_hf, tasks.evaluate
HOP_LENGTH = 160  # Whisper's feature hop: 100 mel frames per second
CHUNK_PIECES = 256  # pieces whose audio is held in memory at once (read in file order)


# ------------------------------------------------------------------------------------ settings


def max_new_tokens_for(duration_s: float, tokens_per_second: float, min_new_tokens: int, cap: int) -> int:
    """The new-token bound of a piece: ``ceil(tokens_per_second * duration_s) + min_new_tokens``,
    at most ``cap`` (and at least 1)."""
    wanted = math.ceil(tokens_per_second * max(0.0, float(duration_s))) + int(min_new_tokens)
    return max(1, min(int(cap), wanted))


@dataclass(frozen=True)
class DecodeSettings:
    """How audio systems decode (from ``EvalConfig``)."""

    num_beams: int = 8
    no_repeat_ngram_size: int = 6
    ctc_weight: float = 0.0  # LLM-ASR with a CTC head: joint CTC/LLM decoding (llmasr.ctc_prefix)
    batch_size: int = 8
    merge_lora: bool = True  # fold a stage-3 LoRA into the LLM weights in memory before decoding
    cudnn_attention: bool = False  # llmasr.model.allow_cudnn_attention (process-wide, set at load)
    tokens_per_second: float = 8.0
    min_new_tokens: int = 16
    max_new_tokens: int = 448
    device: str = "auto"
    compute_type: str = "default"
    cpu_threads: int = 0
    language: str | None = "en"
    # transformers Whisper systems: None = stock padded to 30 s, stage 1 as trained
    whisper_trim_padding: bool | None = None

    @classmethod
    def from_config(cls, cfg: EvalConfig, **changes: Any) -> DecodeSettings:
        names = cls.__dataclass_fields__
        values = {k: v for k, v in cfg.model_dump().items() if k in names}
        return cls(**{**values, **changes})

    def bound(self, duration_s: float) -> int:
        return max_new_tokens_for(
            duration_s, self.tokens_per_second, self.min_new_tokens, self.max_new_tokens
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def torch_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------- audio


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


# -------------------------------------------------------------------------------------- pieces


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


# -------------------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=4)
def feature_extractor(num_mel_bins: int):
    """Whisper's log-mel features for an encoder of ``num_mel_bins`` (80: large-v2, 128: large-v3):
    the training loader's ``LogMel``, so training and decoding compute the same numbers."""
    from tasks.train_data import LogMel

    return LogMel(num_mel_bins)


def log_mel(audio: np.ndarray, num_mel_bins: int, max_frames: int | None = None) -> np.ndarray:
    """Whisper log-mel features of one piece as long as it is: (num_mel_bins, len(audio) // 160),
    at most ``max_frames`` frames.  Not padded to 30 s (the model's encoder runs on the real length)."""
    import torch

    from tasks.train_data import N_FFT

    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))  # (n,)
    n_frames = len(x) // HOP_LENGTH
    if len(x) <= N_FFT // 2:  # the STFT's reflect padding needs more than half a window
        x = torch.nn.functional.pad(x, (0, N_FFT // 2 + 1 - len(x)))
    feats = feature_extractor(num_mel_bins)(x)[:, :n_frames].numpy()  # (M, T)
    return feats[:, :max_frames] if max_frames else feats


def pad_features(feats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack (M, T_i) features into (B, M, max T) with zero frames after each; lengths (B,): the
    training loader's ``pad_features``, as arrays (no copy)."""
    from tasks.train_data import pad_features as pad

    x, lengths = pad(feats)  # (B, M, T_max), (B,) torch
    return x.numpy(), lengths.numpy()


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


class LLMASRSystem(System):
    """The LLM-ASR model of one stage checkpoint folder (stage 2 or 3)."""

    def __init__(self, name: str, stage_dir: str | Path, settings: DecodeSettings) -> None:
        super().__init__(name)
        self.stage_dir = Path(stage_dir)
        self.settings = settings
        self.model = None

    def identity(self) -> dict[str, Any]:
        from tasks.checkpoints import read_stage

        s = self.settings
        return {
            "name": self.name,
            "kind": "llmasr",
            "stage": read_stage(self.stage_dir),
            "stage_dir": str(self.stage_dir.resolve()),
            "decode": [
                s.num_beams,
                s.no_repeat_ngram_size,
                s.tokens_per_second,
                s.min_new_tokens,
                s.max_new_tokens,
            ],
            "merge_lora": s.merge_lora,
            **({"ctc_weight": s.ctc_weight} if s.ctc_weight else {}),  # only when on
        }

    def load(self) -> None:
        from llmasr.model import allow_cudnn_attention, has_lora, merge_lora
        from tasks.checkpoints import load_llmasr

        t0 = time.perf_counter()
        allow_cudnn_attention(self.settings.cudnn_attention)
        self.device = torch_device(self.settings.device)
        self.model = load_llmasr(self.stage_dir, device=self.device)
        merged = ""
        if self.settings.merge_lora and has_lora(self.model):
            merge_lora(self.model)  # the adapters' B A folded into W: one matmul per projection, not three
            merged = ", LoRA merged in memory"
        log.info(
            "%s: loaded %s on %s in %.1f s%s",
            self.name,
            self.stage_dir,
            self.device,
            time.perf_counter() - t0,
            merged,
        )

    def close(self) -> None:
        self.model = None
        gc.collect()
        if getattr(self, "device", "cpu") == "cuda":
            import torch

            torch.cuda.empty_cache()

    def decode(self, audios: Sequence[np.ndarray]) -> list[str]:
        import torch

        if self.model is None:
            self.load()
        model = self.model
        enc = model.encoder
        feats = [log_mel(a, enc.num_mel_bins, enc.max_frames) for a in audios]
        x, lengths = pad_features(feats)  # (B, M, T), (B,)
        bounds = [self.settings.bound(len(a) / SAMPLE_RATE) for a in audios]
        dtype = next(model.projector.parameters()).dtype
        ids = model.generate_ids(
            torch.from_numpy(x).to(self.device, dtype),
            torch.from_numpy(lengths).to(self.device),
            max_new_tokens=bounds,  # one per piece: each row ends at its own bound (RowBound)
            num_beams=self.settings.num_beams,
            no_repeat_ngram_size=self.settings.no_repeat_ngram_size,
            ctc_weight=self.settings.ctc_weight,
        )  # (B, N) new tokens only, N <= max(bounds) + 1
        stop = {model.eos_id, model.pad_id}
        rows = []
        for row, bound in zip(ids.tolist(), bounds):
            row = row[:bound]  # the forced end token after `bound` tokens, and pads past it
            n = next((i for i, t in enumerate(row) if t in stop), len(row))
            rows.append(row[:n])
            self.tokens += n
        return [t.strip() for t in model.tokenizer.batch_decode(rows, skip_special_tokens=True)]


# faster-whisper's transcribe options besides language, beam_size, no_repeat_ngram_size and
# max_new_tokens (from DecodeSettings), each set to what every other system does:
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
    "vad_filter": False,  # pieces are already cut (tasks.decode.plan_pieces)
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

    def __init__(self, name: str, spec: str, settings: DecodeSettings) -> None:
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
                max_new_tokens=min(s.bound(len(audio) / SAMPLE_RATE), 440),  # Whisper's context holds 448
                **FASTER_WHISPER_OPTIONS,
            )
            segments = list(segments)
            self.tokens += sum(len(seg.tokens) for seg in segments)
            out.append(" ".join(seg.text.strip() for seg in segments if seg.text.strip()))
        return out


# ------------------------------------------------------------------------------ hypothesis files

_ID_KEYS = ("utt_id", "id", "key", "cut_id", "utterance_id")
_TEXT_KEYS = ("text", "hyp", "hypothesis", "transcript")
_ICEFALL = re.compile(r"^(?P<id>\S(?:.*?\S)?):\s*(?P<kind>hyp|ref)=(?P<value>.*)$")


def _icefall_text(value: str) -> str:
    value = value.strip()
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    if isinstance(parsed, (list, tuple)):
        return " ".join(str(w) for w in parsed)
    return str(parsed)


def read_hyp_file(path: str | Path, problems: list[str] | None = None) -> dict[str, str]:
    """utt_id -> hypothesis text from a hypothesis file.

    Formats: ``.jsonl``/``.json`` rows with an id (utt_id/id/key/cut_id) and a text (text/hyp/
    hypothesis); icefall's ``recogs-*.txt`` (``<utt_id>:\\thyp=['w1', 'w2']``, ``ref=`` lines
    ignored); otherwise one ``utt_id<TAB>text`` (or Kaldi ``utt_id text``) per line, an optional header
    row ``utt_id<TAB>text`` skipped.  Unreadable lines and duplicate ids go to ``problems``.
    """
    path = Path(path).expanduser()
    problems = problems if problems is not None else []
    out: dict[str, str] = {}

    def add(utt_id: str, text: str, where: str) -> None:
        utt_id = utt_id.strip()
        if utt_id in out:
            problems.append(f"{where}: duplicate id {utt_id!r} (first kept)")
            return
        out[utt_id] = " ".join(str(text).split())

    raw = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        stripped = raw.lstrip()
        rows = json.loads(raw) if stripped.startswith("[") else None
        items = (
            enumerate(rows, 1)
            if rows is not None
            else ((n, line) for n, line in enumerate(raw.splitlines(), 1) if line.strip())
        )
        for n, row in items:
            where = f"{path}:{n}"
            if isinstance(row, str):
                try:
                    row = json.loads(row)
                except json.JSONDecodeError as exc:
                    problems.append(f"{where}: not valid JSON ({exc})")
                    continue
            if not isinstance(row, dict):
                problems.append(f"{where}: not a JSON object")
                continue
            utt_id = next((row[k] for k in _ID_KEYS if k in row), None)
            text = next((row[k] for k in _TEXT_KEYS if k in row), None)
            if utt_id is None or text is None:
                problems.append(
                    f"{where}: needs an id ({'/'.join(_ID_KEYS)}) and a text ({'/'.join(_TEXT_KEYS)})"
                )
                continue
            if isinstance(text, list):
                text = " ".join(map(str, text))
            add(str(utt_id), "" if text is None else str(text), where)
        return out

    lines = [(n, line) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
    if any(_ICEFALL.match(line) for _, line in lines[:20]):
        for n, line in lines:
            m = _ICEFALL.match(line)
            if m is None:
                problems.append(f"{path}:{n}: not an icefall recogs line (<id>:\\thyp=[...])")
            elif m.group("kind") == "hyp":
                add(m.group("id"), _icefall_text(m.group("value")), f"{path}:{n}")
        return out
    for k, (n, line) in enumerate(lines):
        sep = "\t" if "\t" in line else None
        parts = line.split(sep, 1)
        utt_id, text = parts[0].strip(), (parts[1] if len(parts) > 1 else "")
        if k == 0 and utt_id.lower() in _ID_KEYS and text.strip().lower() in _TEXT_KEYS:
            continue  # header row
        add(utt_id, text, f"{path}:{n}")
    return out


class HypFileSystem(System):
    """Hypotheses decoded elsewhere (e.g. a Zipformer-Transducer by icefall), scored the same way."""

    needs_audio = False

    def __init__(self, name: str, path: str | Path) -> None:
        super().__init__(name)
        self.path = Path(path).expanduser()
        self.hyps: dict[str, str] | None = None
        self.problems: list[str] = []

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "hyps", "path": str(self.path)}

    def load(self) -> None:
        if self.hyps is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"hypothesis file not found: {self.path}")
            self.hyps = read_hyp_file(self.path, self.problems)

    def lookup(self, utt_id: str) -> str:
        self.load()
        assert self.hyps is not None
        if utt_id not in self.hyps:
            raise KeyError(f"no hypothesis for {utt_id!r} in {self.path}")
        return self.hyps[utt_id]


def make_system(kind: str, name: str, target: str, settings: DecodeSettings) -> System:
    """``kind``: 'llmasr' (target: a stage folder), 'faster-whisper' (target: a model spec),
    'transformers' (target: a Whisper model spec, or the stage-1 checkpoint folder), 'hyps'
    (target: a hypothesis file) or 'zipformer' (target: the trained Zipformer-Transducer's folder)."""
    if kind == "llmasr":
        return LLMASRSystem(name, target, settings)
    if kind == "faster-whisper":
        return FasterWhisperSystem(name, target, settings)
    if kind == "transformers":
        from tasks.whisper_hf import TransformersWhisperSystem

        return TransformersWhisperSystem(name, target, settings)
    if kind == "hyps":
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
    settings: DecodeSettings,
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
