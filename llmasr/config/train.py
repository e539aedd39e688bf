"""The model and its training: the LLM-ASR's settings, its three stages, and the
Zipformer-Transducer baseline."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from llmasr.config.fields import CHECKOUT, Section, for_stages, runtime


class LoraConfig(Section):
    """peft LoRA on the LLM, stage 3 (``llmasr.model.apply_lora``)."""

    rank: int = Field(8, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )


class StageConfig(Section):
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(1e-4, gt=0)
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimizer steps (None: epochs)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)


# the training stages: 1 the encoder (under Whisper's decoder), 2 the adapter, 3 LoRA + adapter
STAGES = (1, 2, 3)
# the stages that build the LLM-ASR (the adapter, the prompt, the LLM); stage 1 trains the encoder under
# Whisper's own decoder
LLM_STAGES = (2, 3)
DEFAULT_INSTRUCTION = "Transcribe the audio."
# ``train.*`` keys an earlier version named otherwise: former name -> name now.  A config (file,
# profile, --set, an ablation variant) that still names one fails before any work, naming both
# (``llmasr.config.load``); a model.json or RUN.json an earlier version wrote reads as written now.
RENAMED_TRAIN_KEYS = {"projector": "adapter", "projector_hidden": "adapter_hidden"}
# model.json (``llmasr.model.LLMASRConfig``) keys earlier versions wrote -> their names now
FORMER_MODEL_KEYS = {"k": "downsample_k", **RENAMED_TRAIN_KEYS, "projector_path": "adapter_path"}


def current_names(data: Any, former: dict[str, str]) -> Any:
    """A dict an earlier version wrote with its ``former`` keys under their names now (a key
    written under both names keeps the new one's value); anything else unchanged."""
    if not isinstance(data, dict) or not any(old in data for old in former):
        return data
    data = dict(data)
    for old, new in former.items():
        if old in data:
            data.setdefault(new, data.pop(old))
    return data


class ModelSettings(Section):
    """The settings that shape the LLM-ASR model: the ``train.*`` keys of these names, and the fields
    of each stage's ``model.json`` (``llmasr.model.LLMASRConfig`` and ``TrainConfig`` both derive
    from this class, and ``tasks.checkpoints.model_config`` copies them by name). A model knob is
    added here, once."""

    trust_remote_code: bool = for_stages(LLM_STAGES, False)
    # the adapter: Linear -> activation -> Linear, or one Linear
    adapter: Literal["mlp", "linear"] = for_stages(LLM_STAGES, "mlp")
    adapter_hidden: int = for_stages(LLM_STAGES, 2048, ge=1)
    downsample_k: int = for_stages(LLM_STAGES, 2, ge=1)  # encoder frames stacked into one LLM embedding
    activation: Literal["gelu", "relu", "silu", "tanh"] = for_stages(LLM_STAGES, "gelu")
    trim_padding: bool = True  # the encoder runs on the real length, not Whisper's 30 s of padding
    # adapter outputs scaled to the LLM's mean token-embedding norm
    adapter_norm: bool = for_stages(LLM_STAGES, False)
    # adapter CTC head over the LLM's token embeddings; the LLM reads non-blank frames only
    ctc_compress: bool = for_stages(LLM_STAGES, False)
    instruction: str = for_stages(LLM_STAGES, DEFAULT_INSTRUCTION)
    lora: LoraConfig = for_stages((3,), default_factory=LoraConfig)  # stage 2 trains no LoRA
    # random: the LLM's architecture, fresh weights from train.seed
    llm_init: Literal["pretrained", "random"] = for_stages(LLM_STAGES, "pretrained")


class TrainConfig(ModelSettings):
    """The three training stages (tasks/train.py): the model's settings (``ModelSettings``), its
    sources and how it is trained. Fields marked ``runtime`` are left out of the stages' cache keys,
    fields marked ``for_stages`` out of the other stages' keys (``cache_settings``)."""

    encoder: str = "openai/whisper-large-v2"
    llm: str = for_stages(LLM_STAGES, "Qwen/Qwen2-7B-Instruct")
    tokenizer: str | None = for_stages(LLM_STAGES, None)
    # stages 2-3: keep the frozen encoder's outputs in memory (tasks/encoder_cache.py)
    cache_encoder_outputs: bool = runtime(False)
    # CTC loss beside the LLM loss in stages 2-3 (with ctc_compress)
    ctc_weight: float = for_stages(LLM_STAGES, 0.5, ge=0)
    # stage 2's first steps: CTC loss only, no LLM forward
    ctc_align_steps: int = for_stages(LLM_STAGES, 0, ge=0)
    # the CTC head spells every LLM token, or only the shards' transcripts' tokens
    ctc_vocab: Literal["llm", "transcripts"] = for_stages(LLM_STAGES, "llm")
    launcher: Literal["deepspeed", "torchrun"] = runtime("deepspeed")
    nproc_per_node: int = runtime(8, ge=1)
    hostfile: str | None = runtime(None)
    node_launcher: Literal["pdsh", "openmpi", "slurm"] = runtime("pdsh")
    master_addr: str | None = runtime(None)
    master_port: int = runtime(29500, ge=1, le=65535)
    deepspeed_config: str = str(CHECKOUT / "infra/deepspeed/zero2.json")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    cudnn_attention: bool = runtime(False)
    batch_max_audio_s: float = Field(400.0, gt=0)
    max_batch_size: int = Field(64, ge=1)
    num_workers: int = runtime(6, ge=0)
    # OpenMP threads per training process on the CPU; 0: the node's cores over nproc_per_node
    cpu_threads: int = runtime(0, ge=0)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float = Field(1.0, ge=0)
    log_every: int = runtime(10, ge=1)
    val_every: int = runtime(500, ge=1)
    val_max_batches: int = runtime(50, ge=1)
    ckpt_every: int = runtime(1000, ge=1)
    timeout_s: float = runtime(7 * 24 * 3600.0, gt=0)
    seed: int = 0
    # stages 2-3 on the stock train.encoder; stage 1 is not trained
    skip_stage1: bool = for_stages(LLM_STAGES, False)
    merge_lora: bool = for_stages((3,), False)  # stage 3's exports: merged_llm/ besides the adapters
    stage1: StageConfig = for_stages((1,), default_factory=lambda: StageConfig(lr=1e-4))
    stage2: StageConfig = for_stages((2,), default_factory=lambda: StageConfig(lr=1e-4))
    stage3: StageConfig = for_stages((3,), default_factory=lambda: StageConfig(lr=1e-6))

    @model_validator(mode="after")
    def _ctc_needs_head(self) -> TrainConfig:
        if self.ctc_align_steps and not self.ctc_compress:
            raise ValueError(
                f"ctc_align_steps={self.ctc_align_steps} trains the adapter's CTC head, "
                "which train.ctc_compress=false "
                "does not build; set train.ctc_compress=true or train.ctc_align_steps=0"
            )
        if self.ctc_vocab != "llm" and not self.ctc_compress:
            raise ValueError(
                f"ctc_vocab={self.ctc_vocab!r} sets the vocabulary of the adapter's CTC head, "
                "which train.ctc_compress=false "
                "does not build; set train.ctc_compress=true or train.ctc_vocab=llm"
            )
        return self


class ZipformerConfig(Section):
    """The Zipformer-Transducer baseline (llmasr/zipformer/, tasks/zipformer_train.py): sizes default
    to icefall's Zipformer-M; per-stack lists have one entry per encoder stack. Fields marked
    ``runtime`` change how a run is watched or decoded, not what it learns: the training key leaves
    them out."""

    enabled: bool = runtime(True)
    downsampling_factor: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 4, 2], min_length=1)
    num_encoder_layers: list[int] = Field(default_factory=lambda: [2, 2, 3, 4, 3, 2], min_length=1)
    encoder_dim: list[int] = Field(default_factory=lambda: [192, 256, 384, 512, 384, 256], min_length=1)
    encoder_unmasked_dim: list[int] = Field(
        default_factory=lambda: [192, 192, 256, 256, 256, 192], min_length=1
    )
    feedforward_dim: list[int] = Field(
        default_factory=lambda: [512, 768, 1024, 1536, 1024, 768], min_length=1
    )
    num_heads: list[int] = Field(default_factory=lambda: [4, 4, 4, 8, 4, 4], min_length=1)
    cnn_module_kernel: list[int] = Field(default_factory=lambda: [31, 31, 15, 15, 15, 31], min_length=1)
    query_head_dim: int = Field(32, ge=1)
    pos_head_dim: int = Field(4, ge=1)
    value_head_dim: int = Field(12, ge=1)
    pos_dim: int = Field(48, ge=1)
    decoder_dim: int = Field(512, ge=4)
    joiner_dim: int = Field(512, ge=1)
    context_size: int = Field(2, ge=1)
    warmup_batches: float = Field(4000.0, gt=0)
    schedule_scale: float = Field(1.0, gt=0)  # batches the encoder's built-in schedules count per step
    ctc_loss_scale: float = Field(
        0.0, ge=0
    )  # > 0: an encoder CTC head, its loss x this beside the RNN-T loss
    vocab_size: int = Field(500, ge=8)
    loss: Literal["torch", "warp"] = "torch"
    epochs: int = Field(50, ge=1)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(0.045, gt=0)
    lr_batches: float = Field(7500.0, gt=0)
    lr_epochs: float = Field(3.5, gt=0)
    lr_warmup_batches: float = Field(500.0, ge=0)
    batch_max_audio_s: float = Field(1000.0, gt=0)
    max_batch_size: int = Field(64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = runtime("auto")
    log_every: int = runtime(50, ge=1)
    val_every: int = runtime(1000, ge=1)
    val_max_batches: int = runtime(50, ge=1)
    ckpt_every: int = runtime(1000, ge=1)
    seed: int = 0
    beam: int = runtime(4, ge=1)  # decoding's, in the evaluate stage

    # training processes torchrun starts on this node (one per GPU with device cuda): the global batch
    # is this many ranks' batches, so it changes what is learned (it is part of the cache key)
    nproc_per_node: int = Field(1, ge=1)
    cpu_threads: int = runtime(0, ge=0)  # OpenMP threads per process on the CPU; 0: cores / nproc_per_node
    timeout_s: float = runtime(7 * 24 * 3600.0, gt=0)  # the launcher kills training after this long

    @model_validator(mode="after")
    def _stacks_agree(self) -> ZipformerConfig:
        stacks = len(self.downsampling_factor)
        for name in (
            "num_encoder_layers",
            "encoder_dim",
            "encoder_unmasked_dim",
            "feedforward_dim",
            "num_heads",
            "cnn_module_kernel",
        ):
            if len(getattr(self, name)) != stacks:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries, downsampling_factor {stacks}: one per "
                    "encoder stack"
                )
        if any(u > d for u, d in zip(self.encoder_unmasked_dim, self.encoder_dim)):
            raise ValueError("encoder_unmasked_dim must not exceed encoder_dim in any stack")
        return self
