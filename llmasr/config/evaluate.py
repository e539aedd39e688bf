"""The evaluate stage's section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from llmasr.config.fields import Section


class EvalConfig(Section):
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
