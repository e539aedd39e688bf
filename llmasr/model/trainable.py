"""Which parameters each training stage trains (``set_trainable``); the rest are frozen."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from llmasr.model.llmasr import LLMASR
from llmasr.model.lora import has_lora
from llmasr.model.stage1 import WhisperStage1Head


def _stage_predicate(model: nn.Module, stage: int) -> Callable[[str], bool]:
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    # Whisper's sinusoidal position table stays frozen, as HF's WhisperEncoder keeps it.
    if isinstance(model, WhisperStage1Head):
        if stage != 1:
            raise ValueError("WhisperStage1Head is for stage 1 only; stages 2 and 3 train an LLMASR")
        return lambda n: n.startswith("whisper.model.encoder.") and ".embed_positions." not in n
    if not isinstance(model, LLMASR):
        raise TypeError(f"set_trainable takes an LLMASR or WhisperStage1Head, got {type(model).__name__}")
    if stage == 1:
        return lambda n: n.startswith("encoder.") and ".embed_positions." not in n
    if stage == 2:
        return lambda n: n.startswith("adapter.")
    if not has_lora(model):
        raise ValueError("stage 3 trains LoRA adapters: call apply_lora(model, cfg) first")
    return lambda n: n.startswith("adapter.") or (n.startswith("llm.") and "lora_" in n)


def set_trainable(model: nn.Module, stage: int) -> list[str]:
    """Freeze everything but the stage's parameters; returns the trainable names.

    1: encoder (with Whisper's decoder as head: pass a WhisperStage1Head; an LLMASR's encoder
    works too); 2: the adapter only; 3: LoRA + the adapter.
    """
    wanted = _stage_predicate(model, stage)
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(wanted(name))
        if param.requires_grad:
            names.append(name)
    if not names:
        raise ValueError(f"stage {stage}: no parameters to train")
    return names
