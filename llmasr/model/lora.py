"""LoRA on the LLM of an ``LLMASR`` (stage 3), via peft: apply, save, load, merge."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmasr.config import LoraConfig, ModelSettings
from llmasr.model.errors import ModelSettingError, setting

if TYPE_CHECKING:
    from llmasr.model.llmasr import LLMASR


def _lora_config(settings: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType

    return PeftLoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type=TaskType.CAUSAL_LM,
    )


def has_lora(model: LLMASR) -> bool:
    from peft import PeftModel

    return isinstance(model.llm, PeftModel)


def apply_lora(model: LLMASR, settings: LoraConfig | ModelSettings) -> LLMASR:
    """Wrap ``model.llm`` with ``peft.get_peft_model`` (in place; returns ``model``); ``settings``:
    the LoRA settings, or a model's (an ``LLMASRConfig``, a ``TrainConfig``)."""
    from peft import get_peft_model

    if isinstance(settings, ModelSettings):
        settings = settings.lora
    if has_lora(model):
        raise ValueError("the LLM already has LoRA adapters")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.llm.named_modules()}
    missing = [m for m in settings.target_modules if m not in names]
    if missing:
        raise ModelSettingError(
            "lora.target_modules", f"LoRA target_modules {missing} are not module names of this LLM"
        )
    with setting("lora.target_modules"):  # peft refuses a module type it cannot wrap
        model.llm = get_peft_model(model.llm, _lora_config(settings))
    return model


def save_lora(model: LLMASR, path: str | Path) -> Path:
    """peft ``save_pretrained``: adapter_config.json + adapter_model.safetensors."""
    if not has_lora(model):
        raise ValueError("the LLM has no LoRA adapters to save (call apply_lora first)")
    model.llm.save_pretrained(str(path))
    return Path(path)


def load_lora(model: LLMASR, path: str | Path, trainable: bool = False) -> LLMASR:
    """Attach a saved adapter to the (plain) LLM with ``PeftModel.from_pretrained``."""
    from peft import PeftModel

    if has_lora(model):
        raise ValueError("the LLM already has LoRA adapters")
    model.llm = PeftModel.from_pretrained(model.llm, str(path), is_trainable=trainable)
    return model


def merge_lora(model: LLMASR) -> LLMASR:
    """Fold the adapters into the LLM weights (``merge_and_unload``); ``model.llm`` is plain again."""
    if not has_lora(model):
        raise ValueError("the LLM has no LoRA adapters to merge")
    model.llm = model.llm.merge_and_unload()
    return model
