"""llmasr train (cli/train.py) runs this flow: stage 1 (encoder) -> stage 2 (adapter) -> stage 3
(LoRA + adapter).

    llmasr train --work-dir runs/mine                      # stages 1 -> 2 -> 3 on the shards there
    llmasr train --profile demo                            # tiny models, CPU, minutes
    llmasr train ... --stages 2,3 --set train.stage3.lr=2e-6

Each stage is one Prefect task that launches the one training entry point (tasks/train.py) under
torchrun or deepspeed as a subprocess, streams its log, and is cached: it reruns only when its
inputs change (the shard index, the previous stage's checkpoint, its own settings, the training
code).  A stage killed mid-way resumes from its last DeepSpeed checkpoint when rerun.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows import train_artifacts
from flows.caching import by_key, cache_options
from flows.config import flow_config
from llmasr import preflight
from llmasr.config import STAGES, ConfigError, PipelineConfig, cache_settings
from llmasr.layout import WorkLayout
from llmasr.lock import work_dir_lock
from tasks import checkpoints, launch
from tasks.parts import code_version, fingerprint

TRAIN_CODE = (
    "tasks.train",
    "tasks.run_file",
    "tasks.export",
    "tasks.train_ckpt",
    "tasks.train_log",
    "tasks.train_data",
    "llmasr.model",
    "llmasr.config.model",
    "tasks.checkpoints",
    "llmasr.bundled",
    "llmasr.ct2_whisper",
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundled_folders(*settings: Any) -> dict[str, str]:
    """Each ``bundled:`` name in the settings -> the cache folder name it resolves to for training
    (the package versions and the converter version are in it): an upgrade retrains."""
    from llmasr.bundled import cache_name, is_bundled

    found: dict[str, str] = {}

    def walk(value: Any) -> None:
        if is_bundled(value):
            found[value] = cache_name(value, "hf")
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    for s in settings:
        walk(s)
    return dict(sorted(found.items()))


def _deepspeed_settings(path: str) -> Any:
    """The DeepSpeed config as the trainer reads it (its "_" keys are comments), not where it lies: a
    checkout elsewhere keeps the stages cached, an edit of the file reruns them.  A missing or
    broken file stays its path; the stage's own checks name the problem."""
    from tasks.launch import resolve_repo_path

    try:
        return {
            k: v
            for k, v in json.loads(resolve_repo_path(path).read_text(encoding="utf-8")).items()
            if not k.startswith("_")
        }
    except (OSError, ValueError, AttributeError):
        return path


def stage_key(cfg: PipelineConfig, layout: WorkLayout, stage: int) -> str:
    """What a stage's result depends on: the shard index, the stage before (none for stage 2 with
    train.skip_stage1), the settings it reads (with the cache folders of their bundled: names), the
    code.  A setting only later stages read leaves the earlier stages' keys alone."""
    after_stage1 = stage > 2 or (stage == 2 and not cfg.train.skip_stage1)
    prev = checkpoints.read_stage(checkpoints.stage_dir(layout.root, stage - 1)) if after_stage1 else None
    # the settings this stage reads, less the runtime ones (both marked in llmasr/config/)
    settings = cache_settings(cfg.train, stage)
    stage_cfg = settings.pop(f"stage{stage}")
    settings["deepspeed_config"] = _deepspeed_settings(cfg.train.deepspeed_config)
    bundled = bundled_folders(settings, stage_cfg)
    return fingerprint(
        "train",
        stage,
        _sha256(layout.shard_index),
        prev and prev.get("key"),
        settings,
        stage_cfg,
        bundled,
        code_version(*TRAIN_CODE),
    )


def stages_to_train(cfg: PipelineConfig, stages: list[int]) -> list[int]:
    """``stages`` less stage 1 under train.skip_stage1 (stages 2-3 then read the stock encoder)."""
    if not cfg.train.skip_stage1:
        return stages
    if stages == [1]:
        raise ConfigError(
            "--stages 1 with train.skip_stage1=true trains nothing; "
            "set train.skip_stage1=false to train stage 1"
        )
    return [s for s in stages if s != 1]


def check_stages(cfg: PipelineConfig, layout: WorkLayout, stages: list[int]) -> None:
    """Fail before any compute: no shards, unknown stages, a stage without its predecessor, a
    hostfile that cannot launch."""
    preflight.check_stage_numbers(stages)
    stages = stages_to_train(cfg, stages)
    if not layout.shard_index.is_file():
        raise ConfigError(
            f"no shard index at {layout.shard_index}: run `llmasr data` for this work_dir first"
        )
    first = stages[0]
    needs_prev = first > 2 or (first == 2 and not cfg.train.skip_stage1)
    if needs_prev and checkpoints.read_stage(checkpoints.stage_dir(layout.root, first - 1)) is None:
        raise ConfigError(
            f"stage {first} needs the checkpoint of stage {first - 1} in "
            f"{checkpoints.stage_dir(layout.root, first - 1)}: run --stages {first - 1},{first} (or from 1)"
        )
    problem = launch.hostfile_problem(cfg.train)
    if problem:
        raise ConfigError(problem)


@task(name="train-stage", cache_key_fn=by_key, persist_result=True)
def train_stage_task(stage: int, cfg: PipelineConfig, key: str) -> dict[str, Any]:
    """Launch tasks/train.py for one stage; returns the stage's stage.json."""
    from tasks import run_file

    logger = get_run_logger()
    layout = WorkLayout(Path(cfg.work_dir))
    out_dir = checkpoints.stage_dir(layout.root, stage)
    done = checkpoints.read_stage(out_dir)
    if done and done.get("key") == key:
        logger.info("stage %d already complete for this key; nothing to do", stage)
        return done
    logs = layout.root / "logs"
    run = run_file.run_config_for(cfg, stage, key, work_dir=layout.root)
    run_file.check_run(run)  # paths, hidden sizes, predecessor exports: fail before any compute
    run_json = run_file.write_run_config(logs / f"stage{stage}.run.json", **run.to_dict())
    logger.info("stage %d: %s", stage, " ".join(launch.launch_command(run_json, cfg.train)))
    launch.launch_stage(
        run_json,
        cfg.train,
        logs / f"stage{stage}.log",
        on_line=lambda line: logger.info("[stage%d] %s", stage, line),
    )
    result = checkpoints.read_stage(out_dir)
    if result is None:
        raise launch.TrainingProcessError(
            f"stage {stage} exited 0 but wrote no complete {out_dir / 'stage.json'}"
        )
    return result


@flow(name="llmasr-train", log_prints=True)
def train_flow(
    profile: str | None = None,
    work_dir: str | None = None,
    overrides: list[str] | None = None,
    config_file: str | None = None,
    stages: list[int] | None = None,
    config: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Train the LLM-ASR model in three DeepSpeed stages on the work dir's shards.

    Args:
        profile: a profile of pipeline_config.yaml, e.g. "demo" (tiny models on the CPU).
        work_dir: the work dir whose shards/index.json is trained on (default: the config's).
        overrides: config overrides as key=value, e.g. ["train.stage3.lr=2e-6"].
        config_file: another pipeline_config.yaml.
        stages: which stages to run, in order (default [1, 2, 3]); a stage needs its predecessor's
            checkpoint.
        config: the run's whole configuration, as the caller loaded and checked it (``llmasr
            train``, the pipeline flow); profile, work_dir, overrides and config_file are then empty.
    """
    stages = sorted(stages or STAGES)
    address = dict(profile=profile, work_dir=work_dir, overrides=overrides, config_file=config_file)
    cfg = flow_config(config, **address, train_stages=stages)
    layout = WorkLayout(Path(cfg.work_dir))
    if cfg.demo is not None and cfg.demo.kind == "demo":  # the small profile trains pretrained models
        from llmasr.tiny_models import build_demo_models

        build_demo_models(Path(cfg.train.encoder).parent)
    check_stages(cfg, layout, stages)
    stages = stages_to_train(cfg, stages)
    from tasks.run_file import no_validation_message

    no_val = no_validation_message(layout.shard_index, cfg.shard.validation_fraction)
    if no_val:  # once per flow run; each stage's trainer says it in its own log too
        get_run_logger().warning(no_val)
    results = {}
    with work_dir_lock(layout.root, cfg.runner.lock_wait_s, what="llmasr-train"):
        stage_task = train_stage_task.with_options(**cache_options(layout))
        for stage in stages:
            results[stage] = stage_task(stage, cfg, key=stage_key(cfg, layout, stage))
    if 3 in results:  # the full model now reflects this shard index
        checkpoints.record_trained_on(layout.root, json.loads(layout.shard_index.read_text(encoding="utf-8")))
    train_artifacts.publish(layout, results)
    return {f"stage{s}": r for s, r in results.items()}
