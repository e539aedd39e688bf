"""What an ``LLMASR`` is built from: ``LLMASRConfig`` and ``local_source`` (defined torch-free in
``llmasr.config.model``, re-exported here; its model settings are ``llmasr.config.ModelSettings``,
the ``train.*`` keys of the same names; its LoRA settings ``llmasr.config.LoraConfig``) and its dtype
names (``torch_dtype``)."""

from __future__ import annotations

import torch

from llmasr.config import DEFAULT_INSTRUCTION, LLMASRConfig, LoraConfig, local_source

__all__ = ["DEFAULT_INSTRUCTION", "LLMASRConfig", "LoraConfig", "local_source", "torch_dtype"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]
