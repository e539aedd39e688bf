"""Stage checkpoint folders: what each training stage exports, and how the model is loaded back.

Under ``<work_dir>/checkpoints/``:

    stage1/encoder/      the fine-tuned Whisper encoder (``WhisperModel.from_pretrained`` loads it)
    stage1/whisper/      encoder + Whisper's decoder, the stage-1 training head (set aside after)
    stage2/adapter/      the adapter: adapter.safetensors + adapter.json
    stage3/lora/         the LLM's LoRA adapter (``PeftModel.from_pretrained(llm, dir)``)
    stage3/adapter/      the adapter as trained further in stage 3
    stage3/merged_llm/   the LLM with LoRA merged (only with train.merge_lora)
    stageN/model.json    the ``LLMASRConfig`` that rebuilds the stage's model from the exports
    stageN/stage.json    {"stage", "key", "steps", "samples", "complete": true, ...}, written last
    stageN/deepspeed/    resumable DeepSpeed state while the stage runs (not an export)

A stage is complete only when its ``stage.json`` says so; it is written after every export.
Earlier versions called the adapter the projector: their stage 2 and 3 folders hold
``projector/`` (``projector.safetensors`` + ``projector.json``) and a model.json naming it
(``projector_path``); these still load (``load_llmasr``, ``adapter_folder``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmasr.atomic import write_json
from llmasr.config import STAGES, ModelSettings, TrainConfig
from llmasr.model import LLMASRConfig

# the export folders a stage may write (the listing above); a new run of the stage removes them first
# (and the folder an earlier version wrote for the adapter, ``FORMER_ADAPTER``)
FORMER_ADAPTER = "projector"
STAGE_EXPORTS = {
    1: ("encoder", "whisper"),
    2: ("adapter", FORMER_ADAPTER),
    3: ("lora", "adapter", FORMER_ADAPTER, "merged_llm"),
}


def stage_dir(work_dir: Path | str, stage: int) -> Path:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage}")
    return Path(work_dir) / "checkpoints" / f"stage{stage}"


def adapter_folder(folder: Path | str) -> Path:
    """The adapter export of stage folder ``folder`` (stage 2 or 3): ``adapter/``, or
    ``projector/`` where only that is there (a stage an earlier version trained)."""
    folder = Path(folder)
    if not (folder / "adapter").exists() and (folder / FORMER_ADAPTER).is_dir():
        return folder / FORMER_ADAPTER
    return folder / "adapter"


def read_stage(folder: Path) -> dict[str, Any] | None:
    """The stage.json of a complete stage, else None."""
    meta = folder / "stage.json"
    if not meta.is_file():
        return None
    data = json.loads(meta.read_text(encoding="utf-8"))
    return data if data.get("complete") else None


def write_stage(folder: Path, **info: Any) -> Path:
    return write_json(folder / "stage.json", {**info, "complete": True})


def model_config(train: TrainConfig, work_dir: Path | str, stage: int) -> LLMASRConfig:
    """The LLMASRConfig a stage starts from: ``train``'s model settings (every ``ModelSettings``
    field, by name), its base checkpoints, with the exports of the stages before it (the stage-1
    encoder when stage 1 ran and ``train.skip_stage1`` is off, the stage-2 adapter for stage 3),
    and ``train.seed`` as the seed of a random LLM."""
    enc1 = stage_dir(work_dir, 1) / "encoder"
    encoder = (
        str(enc1)
        if stage > 1 and not train.skip_stage1 and read_stage(stage_dir(work_dir, 1))
        else train.encoder
    )
    adapter = None
    if stage == 3:
        adapter = str(adapter_folder(stage_dir(work_dir, 2)))
    return LLMASRConfig(
        **train.model_dump(include=set(ModelSettings.model_fields)),
        encoder=encoder,
        llm=train.llm,
        tokenizer=train.tokenizer,
        adapter_path=adapter,
        llm_seed=train.seed,
    )


def write_model_json(folder: Path, cfg: LLMASRConfig) -> Path:
    return write_json(folder / "model.json", cfg.to_dict())


def load_llmasr(folder: Path | str, device: str = "cpu", merged: bool = False):
    """Rebuild the LLM-ASR model a stage exported (stage 2 or 3), ready for ``generate``.

    Stage 3 attaches its LoRA adapter (or loads ``merged_llm/`` with ``merged=True``).
    """
    from llmasr.model import LLMASRConfig, build_model, load_lora

    folder = Path(folder)
    if read_stage(folder) is None:
        raise FileNotFoundError(
            f"{folder} is not a complete stage checkpoint (no stage.json with complete=true)"
        )
    cfg = LLMASRConfig.from_dict(json.loads((folder / "model.json").read_text(encoding="utf-8")))
    if merged:
        # its weights are the merged ones, random init or not
        cfg.llm, cfg.llm_init = str(folder / "merged_llm"), "pretrained"
    model = build_model(cfg)
    if not merged and (folder / "lora").is_dir():
        load_lora(model, folder / "lora")
    return model.to(device).eval()


def trained_on_path(work_dir: Path | str) -> Path:
    return Path(work_dir) / "checkpoints" / "trained_on.json"


def train_audio_s(index: dict) -> float:
    """Seconds of kept audio in the train split of a shard index."""
    return float(index.get("splits", {}).get("train", {}).get("audio_s", 0.0))


def record_trained_on(work_dir: Path | str, index: dict) -> Path:
    """Remember how much train audio the last full training (through stage 3) saw."""
    return write_json(trained_on_path(work_dir), {"train_audio_s": train_audio_s(index)})


def new_train_hours(work_dir: Path | str, index: dict) -> float:
    """Hours of train audio in ``index`` beyond what the last full training saw (all of it if none)."""
    path = trained_on_path(work_dir)
    seen = json.loads(path.read_text(encoding="utf-8"))["train_audio_s"] if path.is_file() else 0.0
    return max(0.0, train_audio_s(index) - seen) / 3600.0
