"""The whole configuration: every section, and the rules across sections."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from llmasr.config.data import (
    DemoConfig,
    FilterConfig,
    IngestConfig,
    LabelConfig,
    RunnerConfig,
    ScheduleConfig,
    SegmentConfig,
    ShardConfig,
)
from llmasr.config.evaluate import EvalConfig
from llmasr.config.fields import Section
from llmasr.config.paths import DEFAULT_WORK_DIR, absolute_paths
from llmasr.config.train import TrainConfig, ZipformerConfig


class PipelineConfig(Section):
    work_dir: str = DEFAULT_WORK_DIR
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
