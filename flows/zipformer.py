"""llmasr run (flows/pipeline.py, with zipformer.enabled) runs this flow, the Zipformer-Transducer
baseline's: train it on the run's shards (the same split as the LLM-ASR), cached like the LLM-ASR
stages; evaluation then scores it as the ``zipformer`` system.

    llmasr run --profile demo                  # the pipeline runs it after the data flow (zipformer.enabled)
    .venv/bin/python -c "from flows.zipformer import zipformer_flow; zipformer_flow(profile='demo')"

Training runs under torchrun (``zipformer.nproc_per_node`` processes; tasks/zipformer_train.py
``launch_zipformer``).  Writes ``<work_dir>/checkpoints/zipformer/``, ``logs/zipformer.jsonl`` (metrics),
``logs/zipformer.log`` (the launcher's output),
``reports/zipformer_loss.png`` and the Prefect artifact ``zipformer-loss``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.caching import by_key, cache_options
from flows.config import flow_config
from llmasr.atomic import atomic_path, write_json
from llmasr.config import ConfigError, PipelineConfig, ZipformerConfig
from llmasr.layout import WorkLayout
from llmasr.lock import work_dir_lock
from llmasr.report import png_data_uri


@task(name="train-zipformer", cache_key_fn=by_key, persist_result=True)
def train_zipformer_task(work_dir: str, cfg: ZipformerConfig, key: str) -> dict[str, Any]:
    """Train (or resume) the Zipformer-Transducer: tasks/zipformer_train.py launched under torchrun
    with ``zipformer.nproc_per_node`` processes, like the LLM-ASR stages; returns its model.json record."""
    from tasks.zipformer_decode import read_model_json, zipformer_dir
    from tasks.zipformer_train import launch_zipformer

    logger = get_run_logger()
    done = read_model_json(zipformer_dir(work_dir))
    if done is not None and done.get("key") == key:
        logger.info("zipformer already trained for this key; nothing to do")
        return done
    record = launch_zipformer(work_dir, cfg, on_line=lambda line: logger.info("[zipformer] %s", line))
    if record.get("key") != key:
        raise RuntimeError(f"zipformer trained under key {record.get('key')}, the flow expected {key}")
    logger.info(
        "zipformer: %d steps, final loss %s, val loss %s",
        record["steps"],
        record["final_loss"],
        record.get("val_loss"),
    )
    return record


def publish(layout: WorkLayout, record: dict[str, Any]) -> None:
    """The loss curve (``reports/zipformer_loss.png``) as the Prefect artifact ``zipformer-loss``."""
    from flows.train_artifacts import loss_plot_png
    from tasks.zipformer_decode import zipformer_dir
    from tasks.zipformer_train import log_file

    path = log_file(layout.root)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    png = loss_plot_png([r for r in records if r.get("model") == "zipformer" and "event" not in r])
    with atomic_path(layout.root / "reports" / "zipformer_loss.png") as tmp:
        tmp.write_bytes(png)
    create_markdown_artifact(
        f"# Zipformer-Transducer: `{layout.root}`\n\n"
        f"![loss]({png_data_uri(png)})\n\n"
        f"{record['steps']} steps, {record['params']:,} parameters, final loss {record['final_loss']}, "
        f"validation loss {record.get('val_loss')}\n\n"
        f"Checkpoint: `{zipformer_dir(layout.root)}`; metrics log: `{path}`\n",
        key="zipformer-loss",
        description="Zipformer-Transducer loss curve and checkpoint",
    )


@flow(name="llmasr-zipformer", log_prints=True)
def zipformer_flow(
    profile: str | None = None,
    work_dir: str | None = None,
    overrides: list[str] | None = None,
    config_file: str | None = None,
    config: PipelineConfig | None = None,
) -> dict[str, Any] | None:
    """Train the Zipformer-Transducer baseline on the work dir's shards (None when zipformer.enabled
    is false).

    Args:
        profile: a profile of pipeline_config.yaml, e.g. "demo".
        work_dir: the work dir whose shards/index.json is trained on (default: the config's).
        overrides: config overrides as key=value, e.g. ["zipformer.epochs=30"].
        config_file: another pipeline_config.yaml.
        config: the run's whole configuration, as the caller loaded and checked it (the pipeline
            flow); profile, work_dir, overrides and config_file are then empty.
    """
    from tasks.zipformer_decode import decode_beam, zipformer_dir
    from tasks.zipformer_train import launch_problem, train_key

    cfg = flow_config(
        config, profile=profile, work_dir=work_dir, overrides=overrides, config_file=config_file
    )
    if not cfg.zipformer.enabled:
        return None
    layout = WorkLayout(Path(cfg.work_dir))
    if not layout.shard_index.is_file():
        raise ConfigError(
            f"no shard index at {layout.shard_index}: run `llmasr data` for this work_dir first"
        )
    problem = launch_problem(cfg.zipformer)
    if problem:
        raise ConfigError(problem)
    with work_dir_lock(layout.root, cfg.runner.lock_wait_s, what="llmasr-zipformer"):
        task_ = train_zipformer_task.with_options(**cache_options(layout))
        record = task_(str(layout.root), cfg.zipformer, key=train_key(layout.shard_index, cfg.zipformer))
        folder = zipformer_dir(layout.root)
        # the decoding settings evaluation reads (a beam change redecodes, it does not retrain)
        if not (folder / "decode.json").is_file() or decode_beam(folder) != cfg.zipformer.beam:
            write_json(folder / "decode.json", {"beam": cfg.zipformer.beam})
    publish(layout, record)
    return record
