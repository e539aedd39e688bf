"""A trained stage's exports: the folders later stages and decoding load (DESIGN.md "Model").

* stage 1: ``whisper/`` (the trained Whisper, loadable whole: tokenizer and feature extractor
  beside it) and ``encoder/`` (its encoder alone, ``llmasr.model.save_encoder``).
* stage 2: ``adapter/``.
* stage 3: ``adapter/``, ``lora/`` (peft) and, with ``train.merge_lora``, ``merged_llm/`` (the LLM
  with LoRA folded in, and its tokenizer).

Trained weights come from DeepSpeed's fp32 master copies, frozen ones from the fp32 source
checkpoints.  Each folder is written under a temp name and swapped in whole (``export_folder``);
``clear_stage`` removes a stage's exports before a run, so none of an earlier run outlives it.
``stage_model_config`` is the ``LLMASRConfig`` that rebuilds the stage's model from its exports
(model.json).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("llmasr.train")

AUX_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "added_tokens.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)


def clear_stage(out_dir: Path, stage: int) -> None:
    """The stage is made again: its stage.json goes first (no longer complete), then model.json and
    every export folder of the stage (``tasks.checkpoints.STAGE_EXPORTS``), half-swapped ones
    included.  This run writes its own; an old one kept (say merged_llm/ from a run with
    train.merge_lora, now off) would be loaded with this run's adapter."""
    from tasks.checkpoints import STAGE_EXPORTS

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stage.json").unlink(missing_ok=True)
    (out_dir / "model.json").unlink(missing_ok=True)
    for name in STAGE_EXPORTS[stage]:
        for folder in (out_dir / name, out_dir / f".tmp-{name}", out_dir / f".old-{name}"):
            if folder.exists():
                log.info("removing %s: an export of an earlier run", folder)
                shutil.rmtree(folder)


@contextlib.contextmanager
def export_folder(out_dir: Path, name: str) -> Iterator[Path]:
    """Write a folder under a temp name, then swap it in for ``out_dir/name``."""
    final = out_dir / name
    tmp = out_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        old = out_dir / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_aux(src: Any, dst: Path) -> None:
    """Tokenizer and feature-extractor files of a Whisper checkpoint folder, copied beside an export."""
    if isinstance(src, str) and Path(src).is_dir():
        for name in AUX_FILES:
            if (Path(src) / name).is_file():
                shutil.copy2(Path(src) / name, dst / name)


def complete_whisper_folder(src: Any, dst: Path, num_mel_bins: int) -> None:
    """Make the stage-1 ``whisper/`` export a folder Whisper loaders take whole (the
    ``llmasr-stage1`` evaluation system, ``WhisperProcessor.from_pretrained``): the source's
    tokenizer when none was copied (a hub-name source has no files to copy), and Whisper's feature
    extractor settings for its mel bins when the source has no preprocessor_config.json."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    if not any((dst / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))
    if not (dst / "preprocessor_config.json").is_file():
        WhisperFeatureExtractor(feature_size=int(num_mel_bins)).save_pretrained(str(dst))


def trained_fp32(module: Any) -> dict[str, Any]:
    """Trainable parameters of a DeepSpeed engine's ``module`` as full fp32 tensors on CPU
    (DeepSpeed's fp32 master copies where it keeps them; a collective under ZeRO: every rank calls
    it)."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            full = safe_get_full_fp32_param(p)
            out[name] = (full if full is not None else p.detach()).float().cpu().clone()
    return out


def export_stage(
    module: Any, trained: dict[str, Any], model_cfg: Any, out_dir: Path, stage: int, merge_lora: bool
) -> list[str]:
    """Write the stage's export folders into ``out_dir``; returns their names.  ``module``: the
    trained WhisperStage1Head (stage 1) or LLMASR; ``trained``: ``trained_fp32(module)``;
    ``model_cfg``: the resolved ``LLMASRConfig`` it was built from."""
    if stage == 1:
        return _export_whisper(trained, model_cfg, out_dir)
    exports = _export_adapter(module, trained, out_dir)
    if stage == 3:
        exports += _export_lora(module, trained, model_cfg, out_dir, merge_lora)
    return exports


def _export_whisper(trained: dict[str, Any], model_cfg: Any, out_dir: Path) -> list[str]:
    import torch
    from transformers import WhisperForConditionalGeneration

    from llmasr.model import SpeechEncoder, save_encoder

    # frozen parts from the fp32 source checkpoint, trained ones from the fp32 masters
    whisper = WhisperForConditionalGeneration.from_pretrained(str(model_cfg.encoder), dtype=torch.float32)
    own = dict(whisper.named_parameters())
    with torch.no_grad():
        for name, value in trained.items():
            own[name[len("whisper.") :]].copy_(value)
    with export_folder(out_dir, "whisper") as tmp:
        whisper.save_pretrained(str(tmp))
        copy_aux(model_cfg.encoder, tmp)
        complete_whisper_folder(model_cfg.encoder, tmp, whisper.config.num_mel_bins)
    with export_folder(out_dir, "encoder") as tmp:
        save_encoder(SpeechEncoder(whisper.get_encoder()), tmp)
        copy_aux(model_cfg.encoder, tmp)
    return ["encoder", "whisper"]


def _export_adapter(module: Any, trained: dict[str, Any], out_dir: Path) -> list[str]:
    from llmasr.model import Adapter, save_adapter

    adapter = Adapter(**module.adapter.config_dict())
    buffers = {k: v.detach().cpu() for k, v in module.adapter.named_buffers()}  # the CTC head's token ids
    weights = {k[len("adapter.") :]: v for k, v in trained.items() if k.startswith("adapter.")}
    adapter.load_state_dict({**buffers, **weights})
    with export_folder(out_dir, "adapter") as tmp:
        save_adapter(adapter, tmp)
    return ["adapter"]


def _export_lora(
    module: Any, trained: dict[str, Any], model_cfg: Any, out_dir: Path, merge_lora: bool
) -> list[str]:
    """``lora/``, and with ``merge_lora`` the LLM with it folded in (``merged_llm/``, from the fp32
    source LLM)."""
    lora = {k[len("llm.") :]: v for k, v in trained.items() if "lora_" in k}
    with export_folder(out_dir, "lora") as tmp:
        module.llm.save_pretrained(str(tmp), state_dict=lora)
    if not merge_lora:
        return ["lora"]
    from peft import PeftModel

    from llmasr.model import build_llm, build_tokenizer

    base = build_llm(
        model_cfg.llm, "float32", model_cfg.trust_remote_code, model_cfg.llm_init, model_cfg.llm_seed
    )
    merged = PeftModel.from_pretrained(base, str(out_dir / "lora")).merge_and_unload()
    with export_folder(out_dir, "merged_llm") as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer = build_tokenizer(model_cfg.tokenizer or model_cfg.llm, model_cfg.trust_remote_code)
        tokenizer.save_pretrained(str(tmp))
    return ["lora", "merged_llm"]


def _abs_if_local(value: Any) -> Any:
    if isinstance(value, str) and value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def stage_model_config(model_cfg: Any, out_dir: Path, stage: int) -> Any:
    """The ``LLMASRConfig`` of model.json: ``model_cfg`` with local sources made absolute and the
    stage's own export in place (stage 1's encoder, stage 2 and 3's adapter)."""
    from llmasr.model import LLMASRConfig

    d = model_cfg.to_dict()
    d.update(
        encoder=_abs_if_local(d["encoder"]),
        llm=_abs_if_local(d["llm"]),
        tokenizer=_abs_if_local(d["tokenizer"]),
    )
    if stage == 1:
        d["encoder"] = str((out_dir / "encoder").resolve())
    else:
        d["adapter_path"] = str((out_dir / "adapter").resolve())
    return LLMASRConfig.from_dict(d)
