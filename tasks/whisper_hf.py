"""Whisper through transformers as an evaluation system: stock checkpoints and the stage-1 model.

``transformers:<model>`` (``eval.baselines``): any Hugging Face Whisper checkpoint -- a local
folder, a hub name, or a bundled name (``bundled:whisper-base``, resolved to a converted folder by
``llmasr.bundled.resolve_hf``).  ``llmasr-stage1`` (``eval.stages`` holding 1): the stage-1 export
``checkpoints/stage1/whisper/`` -- the fine-tuned encoder with Whisper's decoder.  Both decode the
pieces every system decodes (at most 30 s), batched, with the settings every system uses: beam
``eval.num_beams``, no repeated ``eval.no_repeat_ngram_size``-grams, the new-token bound of the
piece (``tasks.decode.piece_bound``; each row stops at its own: ``llmasr.generation.RowBound``),
English, transcribe, no timestamps.

Decoding, all of it explicit (``llmasr.generation.explicit_config``; the checkpoint's
``generation_config.json`` is not read):

* decoder prompt ``<|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>`` (English-only
  checkpoints, vocabulary < 51865 as OpenAI's ``is_multilingual``: ``<|startoftranscript|>
  <|notimestamps|>``), given as ``decoder_input_ids`` -- the "forced decoder ids" of Whisper;
* ``suppress_tokens`` / ``begin_suppress_tokens``: Whisper's decoding rules, not a checkpoint's
  preference -- OpenAI's ``suppress_tokens="-1"`` (its non-speech symbols plus the task/start/
  no-speech specials) and ``suppress_blank`` (no space or end token first), computed from the
  checkpoint's tokenizer as ``openai/whisper`` and faster-whisper compute them
  (``suppress_tokens``), so a converted or fine-tuned folder gets the same rule whatever its
  generation_config.json says;
* no temperature fallback, no no-speech skipping, no previous-text conditioning (one window).

Features: Whisper's log-mel (``llmasr.model.log_mel``, the training loader's numbers).
``trim_padding`` False (stock checkpoints by default): each piece is zero-padded to 30 s of audio
before the log-mel, exactly what Whisper's feature extractor and faster-whisper do, and the stock
encoder runs on 3000 frames.  True (the stage-1 model by default when stage 1 trained trimmed):
the encoder runs on each piece's real length (``llmasr.model.encode_whisper``, padding masked) and
the decoder's cross-attention is masked past each piece's frames (``_cross_attention_mask``:
HF's Whisper decoder has no encoder mask), so a piece decodes the same alone or in a batch.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmasr.audio import SAMPLE_RATE
from llmasr.bundled import BUNDLED_PREFIX, resolve_hf
from llmasr.config import EvalConfig
from tasks.decode import TRANSFORMERS_PREFIX, System, piece_bound, torch_device

log = logging.getLogger("llmasr.decode")

CHUNK_SAMPLES = 30 * SAMPLE_RATE  # Whisper's window: 480,000 samples -> 3,000 mel frames
MULTILINGUAL_VOCAB = 51865  # OpenAI's is_multilingual: n_vocab >= 51865


def resolve_model(spec: str) -> str:
    """A ``transformers:`` spec (prefix optional) -> what ``from_pretrained`` takes: a bundled
    name through ``llmasr.bundled.resolve_hf`` (a converted local folder), a local folder as its
    absolute path, anything else as a hub name."""
    spec = spec[len(TRANSFORMERS_PREFIX) :] if spec.startswith(TRANSFORMERS_PREFIX) else spec
    if spec.startswith(BUNDLED_PREFIX):
        return str(resolve_hf(spec))
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _file_stamps(folder: Path) -> list[list[Any]]:
    """(name, size, mtime_ns) of a model folder's config and weights: a rewritten folder is a new key."""
    out = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.is_file() and (p.suffix in (".json", ".safetensors", ".bin") or p.name.endswith(".txt")):
            st = p.stat()
            out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


# ----------------------------------------------------------------------------- decoding rules


def _token_id(tokenizer: Any, token: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    return (
        None if tid is None or (unk is not None and tid == unk and token != tokenizer.unk_token) else int(tid)
    )


def non_speech_tokens(tokenizer: Any) -> list[int]:
    """OpenAI Whisper's ``Tokenizer.non_speech_tokens`` (faster-whisper's too) on an HF tokenizer:
    symbols that only occur in speaker tags and non-speech annotations ("♪♪♪", "( SPEAKING FOREIGN
    LANGUAGE )", "[DAVID]"), single tokens with and without a leading space; " -" and " '" too
    (hyphens and apostrophes stay allowed inside words)."""

    def enc(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
    symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
    miscellaneous = set("♩♪♫♬♭♮♯")  # U+2640-267F: multi-token ones share the first token
    result = {enc(" -")[0], enc(" '")[0]}
    for symbol in symbols + sorted(miscellaneous):
        for tokens in (enc(symbol), enc(" " + symbol)):
            if len(tokens) == 1 or (symbol in miscellaneous and tokens):
                result.add(tokens[0])
    return sorted(result)


def suppress_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(suppress_tokens, begin_suppress_tokens) of Whisper's decoding, from the tokenizer.

    ``suppress_tokens``: OpenAI's ``suppress_tokens="-1"`` -- the non-speech symbols plus
    <|transcribe|>, <|translate|>, <|startoftranscript|>, <|startofprev|>, <|startoflm|> and the
    no-speech token (<|nospeech|> or <|nocaptions|>), as ``faster_whisper.transcribe.
    get_suppressed_tokens`` builds them.  ``begin_suppress_tokens``: ``suppress_blank`` -- a space or
    the end token cannot be the first new token."""
    specials = [
        "<|transcribe|>",
        "<|translate|>",
        "<|startoftranscript|>",
        "<|startofprev|>",
        "<|startoflm|>",
    ]
    no_speech = next(
        (t for t in ("<|nospeech|>", "<|nocaptions|>") if _token_id(tokenizer, t) is not None), None
    )
    ids = set(non_speech_tokens(tokenizer))
    ids.update(
        i
        for i in (_token_id(tokenizer, t) for t in [*specials, *([no_speech] if no_speech else [])])
        if i is not None
    )
    eot = _token_id(tokenizer, "<|endoftext|>")
    begin = [*tokenizer.encode(" ", add_special_tokens=False), *([eot] if eot is not None else [])]
    return sorted(ids), begin


def decoder_prompt(tokenizer: Any, multilingual: bool, language: str | None) -> list[int]:
    """Whisper's start of a transcription without timestamps (the "forced decoder ids")."""
    names = ["<|startoftranscript|>"]
    if multilingual:
        if not language:
            raise ValueError(
                "a multilingual Whisper through transformers needs eval.language (language detection is not "
                "run): e.g. eval.language=en"
            )
        names += [f"<|{language}|>", "<|transcribe|>"]
    names.append("<|notimestamps|>")
    ids = [_token_id(tokenizer, t) for t in names]
    missing = [t for t, i in zip(names, ids) if i is None]
    if missing:
        raise ValueError(
            f"the tokenizer has no {missing}: not a Whisper tokenizer (or language {language!r} unknown)"
        )
    return [int(i) for i in ids]  # type: ignore[arg-type]


@contextlib.contextmanager
def _cross_attention_mask(model: Any, lengths: Any) -> Iterator[None]:
    """While inside, every decoder layer of ``model`` cross-attends only to the first
    ``lengths[i]`` encoder frames of input i (an additive mask (rows, 1, 1, S), rows = B or B x
    beams in input order).  HF's ``WhisperDecoder`` passes ``encoder_attention_mask=None`` to its
    layers; a forward pre-hook on each layer supplies ours."""
    import torch

    lengths = torch.as_tensor(lengths)  # (B,)

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]  # (rows, Q, D)
        encoder_states = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")  # (rows, S, D)
        if encoder_states is None:
            return None
        rows, steps = hidden.shape[0], encoder_states.shape[1]
        per_row = lengths.to(hidden.device).repeat_interleave(rows // lengths.numel())  # (rows,)
        keep = torch.arange(steps, device=hidden.device)[None, :] < per_row[:, None]  # (rows, S)
        mask = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(~keep, torch.finfo(hidden.dtype).min)[:, None, None, :]  # (rows, 1, 1, S)
        kwargs["encoder_attention_mask"] = mask
        return args, kwargs

    handles = [
        layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in model.model.decoder.layers
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------- the system


def _read_stage_model(stage_dir: Path) -> tuple[Path, dict[str, Any] | None, bool]:
    """(the Whisper folder, stage.json, trained trimmed) of a stage-1 checkpoint folder."""
    from tasks.checkpoints import read_stage

    info = read_stage(stage_dir)
    trimmed = True
    meta = stage_dir / "model.json"
    if meta.is_file():
        trimmed = bool(json.loads(meta.read_text(encoding="utf-8")).get("trim_padding", True))
    return stage_dir / "whisper", info, trimmed


def is_stage_dir(target: str | Path) -> bool:
    return (Path(target) / "stage.json").is_file()


class TransformersWhisperSystem(System):
    """A Whisper checkpoint decoded by transformers (see the module docstring).

    ``target``: a ``transformers:`` model spec, or a stage-1 checkpoint folder (``checkpoints/
    stage1``, the ``llmasr-stage1`` system).  ``settings.whisper_trim_padding``: None = stock
    checkpoints padded to 30 s, the stage-1 model as stage 1 trained (its model.json); a bool
    forces it for every Whisper system.
    """

    def __init__(self, name: str, target: str, settings: EvalConfig) -> None:
        super().__init__(name)
        self.settings = settings
        self.stage_info: dict[str, Any] | None = None
        trained_trimmed = False
        if is_stage_dir(target):
            folder, self.stage_info, trained_trimmed = _read_stage_model(Path(target))
            self.spec = str(Path(target).resolve())
            self.source = str(folder.resolve())
        else:
            self.spec = (
                target[len(TRANSFORMERS_PREFIX) :] if target.startswith(TRANSFORMERS_PREFIX) else target
            )
            self.source = None  # resolved at load (a bundled name may need converting first)
        forced = settings.whisper_trim_padding
        self.trim_padding = trained_trimmed if forced is None else bool(forced)
        self.model = None

    def identity(self) -> dict[str, Any]:
        s = self.settings
        source = self.source or resolve_model(self.spec)
        # a stage-1 checkpoint: what was trained and its files, not where they lie (a stage adopted
        # into an ablation's store, hard links, is the same system)
        where = {} if self.stage_info is not None else {"spec": self.spec, "source": source}
        return {
            "name": self.name,
            "kind": "transformers-whisper",
            **where,
            "files": _file_stamps(Path(source)),
            "stage": self.stage_info,
            "trim_padding": self.trim_padding,
            "runtime": [s.device, s.language],
            "decode": [
                s.num_beams,
                s.no_repeat_ngram_size,
                s.tokens_per_second,
                s.min_new_tokens,
                s.max_new_tokens,
            ],
        }

    def load(self) -> None:
        import torch
        from transformers import AutoTokenizer, WhisperForConditionalGeneration

        t0 = time.perf_counter()
        if self.source is None:
            self.source = resolve_model(self.spec)
        folder = Path(self.source)
        if folder.is_dir() and not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            raise FileNotFoundError(
                f"{folder}: no Whisper tokenizer (tokenizer.json or vocab.json) beside the weights"
            )
        self.device = torch_device(self.settings.device)
        model = WhisperForConditionalGeneration.from_pretrained(self.source, dtype=torch.float32)
        self.model = model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.source)
        cfg = self.model.config
        self.multilingual = int(cfg.vocab_size) >= MULTILINGUAL_VOCAB
        self.prompt = decoder_prompt(self.tokenizer, self.multilingual, self.settings.language)
        self.eot = _token_id(self.tokenizer, "<|endoftext|>")
        if self.eot is None:
            raise ValueError(f"{self.source}: the tokenizer has no <|endoftext|>")
        self.suppress, self.begin_suppress = suppress_tokens(self.tokenizer)
        # the decoder's positions hold prompt + new tokens + the forced end token
        self.token_cap = int(cfg.max_target_positions) - len(self.prompt) - 1
        self.num_mel_bins = int(cfg.num_mel_bins)
        self.max_frames = 2 * int(cfg.max_source_positions)
        log.info(
            "%s: loaded %s on %s in %.1f s (%s, %s)",
            self.name,
            self.source,
            self.device,
            time.perf_counter() - t0,
            "multilingual" if self.multilingual else "English-only",
            "trimmed to each piece" if self.trim_padding else "padded to 30 s",
        )

    def close(self) -> None:
        self.model = None
        gc.collect()
        if getattr(self, "device", "cpu") == "cuda":
            import torch

            torch.cuda.empty_cache()

    def bounds(self, audios: Sequence[np.ndarray]) -> list[int]:
        """Each piece's new-token bound, within the decoder's context."""
        return [max(1, min(piece_bound(self.settings, len(a) / SAMPLE_RATE), self.token_cap)) for a in audios]

    def decode(self, audios: Sequence[np.ndarray]) -> list[str]:
        import torch
        from transformers import GenerationMixin, LogitsProcessorList
        from transformers.modeling_outputs import BaseModelOutput

        from llmasr.generation import checkpoint_defaults_off, explicit_config, generate_kwargs_for
        from llmasr.model import encode_whisper, log_mel
        from tasks.decode_audio import pad_features

        if self.model is None:
            self.load()
        model = self.model
        s = self.settings
        bounds = self.bounds(audios)
        with torch.no_grad():
            if self.trim_padding:
                feats = [log_mel(a, self.num_mel_bins, self.max_frames) for a in audios]  # (M, T_i) each
                x, lengths = pad_features(feats)  # (B, M, T), (B,)
                hidden, out_lengths = encode_whisper(
                    model.get_encoder(),
                    torch.from_numpy(x).to(self.device),
                    torch.from_numpy(lengths).to(self.device),
                    trim_padding=True,
                )  # (B, ceil(T/2), D), (B,)
                masked = _cross_attention_mask(model, out_lengths)
            else:
                # as WhisperFeatureExtractor / faster-whisper: the samples zero-padded to 30 s, then log-mel
                padded = [np.pad(a[:CHUNK_SAMPLES], (0, max(0, CHUNK_SAMPLES - len(a)))) for a in audios]
                x = np.stack([log_mel(a, self.num_mel_bins, self.max_frames) for a in padded])  # (B, M, 3000)
                # (B, 1500, D)
                hidden, _ = encode_whisper(
                    model.get_encoder(), torch.from_numpy(x).to(self.device), None, trim_padding=False
                )
                masked = contextlib.nullcontext()
            # max(bounds) + 1
            steps, row_bound = generate_kwargs_for(bounds, self.eot, prompt_len=len(self.prompt))
            config = explicit_config(
                max_new_tokens=steps,
                num_beams=s.num_beams,
                no_repeat_ngram_size=s.no_repeat_ngram_size,
                eos_token_id=self.eot,
                pad_token_id=self.eot,
                decoder_start_token_id=self.prompt[0],
                suppress_tokens=self.suppress,
                begin_suppress_tokens=self.begin_suppress,
            )
            prompt = torch.tensor([self.prompt] * len(audios), dtype=torch.long, device=self.device)  # (B, P)
            with masked, checkpoint_defaults_off(model):
                # GenerationMixin's generate, not WhisperGenerationMixin's: that one reads lang/task/
                # suppression from the checkpoint's generation config and insists on 3000 frames.
                out = GenerationMixin.generate(
                    model,
                    encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                    decoder_input_ids=prompt,
                    generation_config=config,
                    logits_processor=LogitsProcessorList([row_bound]),
                )  # (B, P + N), N <= max(bounds) + 1
        rows = []
        for row, bound in zip(out[:, len(self.prompt) :].tolist(), bounds):
            row = row[:bound]  # past it: the forced end token, then pads
            n = next((i for i, t in enumerate(row) if t == self.eot), len(row))
            rows.append(row[:n])
            self.tokens += n
        return [t.strip() for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]
