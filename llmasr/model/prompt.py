"""The text around the speech: the tokenizer (``build_tokenizer``) and the prompt layout
``[prefix | speech | suffix | target + EOS]`` (``build_prompt``); labels are ``IGNORE_INDEX``
everywhere but the target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llmasr.model.config import DEFAULT_INSTRUCTION, local_source

SPEECH_PLACEHOLDER = "<speech>"
# Plain-text layout for tokenizers without a chat template (base LMs).
PLAIN_PROMPT = "{instruction}\nAudio: " + SPEECH_PLACEHOLDER + "\nTranscript:\n"
IGNORE_INDEX = -100


@dataclass(frozen=True)
class PromptLayout:
    """Token ids around the speech embeddings: [prefix | speech | suffix | target]."""

    prefix_ids: list[int]
    suffix_ids: list[int]
    text: str  # the rendered prompt, with SPEECH_PLACEHOLDER where the speech goes
    chat_template: bool


def build_tokenizer(source: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer with an EOS (required) and a pad token (falls back to EOS)."""
    tokenizer = AutoTokenizer.from_pretrained(str(local_source(source)), trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer at {source} has no eos_token: targets must end with one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_prompt(tokenizer: PreTrainedTokenizerBase, instruction: str = DEFAULT_INSTRUCTION) -> PromptLayout:
    """The prompt around the speech: the chat template's user turn "<instruction>\\n<speech>"
    with the generation prompt (assistant header) after it; or ``PLAIN_PROMPT`` (BOS first, where
    the tokenizer has one) for tokenizers without a chat template."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": f"{instruction}\n{SPEECH_PLACEHOLDER}"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        chat = True
    else:
        text = PLAIN_PROMPT.format(instruction=instruction)
        chat = False
    if text.count(SPEECH_PLACEHOLDER) != 1:
        raise ValueError(f"prompt must hold {SPEECH_PLACEHOLDER!r} exactly once, got {text!r}")
    before, after = text.split(SPEECH_PLACEHOLDER)
    # Chat templates write BOS etc. into the text; add no special tokens of our own there.
    prefix = tokenizer(before, add_special_tokens=False)["input_ids"]
    suffix = tokenizer(after, add_special_tokens=False)["input_ids"]
    if not chat and tokenizer.bos_token_id is not None:
        prefix = [tokenizer.bos_token_id] + prefix
    return PromptLayout(list(prefix), list(suffix), text, chat)
