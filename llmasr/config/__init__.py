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
profiles keep their corpus and models under the work dir with them.

The modules, by job:

- ``fields``: ``Section``, ``ConfigError``, the field marks ``runtime`` / ``for_stages`` and
  ``cache_settings``, which reads them for cache keys
- ``data``, ``train``, ``evaluate``: the sections of each flow (a new key goes on its section there)
- ``pipeline``: ``PipelineConfig``, all sections and the rules across them
- ``model``: ``LLMASRConfig``, what a model is built from (a stage's model.json), and
  ``local_source`` (``bundled:`` names -> folders); torch-free, ``llmasr.model`` re-exports them
- ``paths``: making paths absolute (``PATH_KEYS``)
- ``load``: the file, profiles, ``--set`` overrides and the error messages (``load_config``); a
  loaded config with more settings (``with_overrides``)
"""

from llmasr.config.data import (
    DEMO_KIND_DEFAULTS,
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
from llmasr.config.fields import (
    CHECKOUT,
    WORK_DIR_REF,
    ConfigError,
    Section,
    cache_settings,
    for_stages,
    runtime,
)
from llmasr.config.load import (
    CONFIG_ENV,
    CONFIG_NAME,
    apply_override,
    deep_merge,
    find_config_file,
    format_validation_error,
    load_config,
    with_overrides,
)
from llmasr.config.model import LLMASRConfig, local_source
from llmasr.config.paths import DEFAULT_WORK_DIR, PATH_KEYS, PATH_REFS, absolute_paths, resolve_paths
from llmasr.config.pipeline import PipelineConfig
from llmasr.config.train import (
    DEFAULT_INSTRUCTION,
    FORMER_MODEL_KEYS,
    LLM_STAGES,
    RENAMED_TRAIN_KEYS,
    STAGES,
    LoraConfig,
    ModelSettings,
    StageConfig,
    TrainConfig,
    ZipformerConfig,
    current_names,
)

__all__ = [
    "CHECKOUT",
    "CONFIG_ENV",
    "CONFIG_NAME",
    "DEFAULT_INSTRUCTION",
    "DEFAULT_WORK_DIR",
    "DEMO_KIND_DEFAULTS",
    "FORMER_MODEL_KEYS",
    "LLMASRConfig",
    "LLM_STAGES",
    "PATH_KEYS",
    "PATH_REFS",
    "RENAMED_TRAIN_KEYS",
    "STAGES",
    "WORK_DIR_REF",
    "ConfigError",
    "DemoConfig",
    "EvalConfig",
    "FilterConfig",
    "IngestConfig",
    "LabelConfig",
    "LoraConfig",
    "ModelSettings",
    "PipelineConfig",
    "RunnerConfig",
    "ScheduleConfig",
    "Section",
    "SegmentConfig",
    "ShardConfig",
    "StageConfig",
    "TrainConfig",
    "ZipformerConfig",
    "absolute_paths",
    "apply_override",
    "cache_settings",
    "current_names",
    "deep_merge",
    "find_config_file",
    "for_stages",
    "format_validation_error",
    "load_config",
    "local_source",
    "resolve_paths",
    "runtime",
    "with_overrides",
]
