"""llmasr run (cli/run.py) runs this flow, the full pipeline: data -> train -> zipformer -> evaluate, as
one Prefect flow with four subflows (zipformer: the Zipformer-Transducer baseline on the same shards,
when zipformer.enabled).

    llmasr run --profile demo                 # CPU demo end to end: corpus, shards, 3 stages, report
    llmasr run --source https://www.youtube.com/@SomeChannel --work-dir runs/mine

Each subflow keeps its own caching, so a rerun with nothing new skips straight to the report.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.config import eval_values, flow_config
from flows.data import data_flow
from flows.evaluate import evaluate_flow
from flows.train import train_flow
from flows.zipformer import zipformer_flow
from llmasr import preflight
from llmasr.config import STAGES, PipelineConfig


@flow(name="llmasr-pipeline", log_prints=True)
def pipeline_flow(
    sources: list[str] | None = None,
    profile: str | None = None,
    work_dir: str | None = None,
    overrides: list[str] | None = None,
    config_file: str | None = None,
    stages: list[int] | None = None,
    test_sets: list[str] | None = None,
    baselines: list[str] | None = None,
    hyps: list[str] | None = None,
    refresh: bool = False,
    config: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Web audio -> shards -> LLM-ASR in three stages (+ the Zipformer baseline) -> rare-word error rates.

    Args:
        sources: YouTube URLs (video, playlist, channel), local folders or files, manifests;
            empty uses the config's `sources`.
        profile: a profile of pipeline_config.yaml, e.g. "demo" (offline CPU demo).
        work_dir: where every stage writes (default: the config's work_dir).
        overrides: config overrides as key=value, e.g. ["train.stage3.lr=2e-6"].
        config_file: another pipeline_config.yaml.
        stages: training stages to run (default 1, 2, 3).
        test_sets: "name=path" test sets; empty uses eval.test_sets.
        baselines: "faster-whisper:<model>" or "transformers:<model>" baselines; empty uses eval.baselines.
        hyps: "name=path" hypothesis files scored as systems; empty uses eval.hyps.
        refresh: ignore the data flow's cached task results and decode the test sets again.
        config: the run's whole configuration, as the caller loaded and checked it (``llmasr run``);
            sources, profile, work_dir, overrides, config_file, test_sets, baselines and hyps are then
            empty.

    Returns:
        {"data": the data run's counts, "train": each stage's stage.json, "zipformer": its model.json
        (None when zipformer.enabled is false), "eval": metrics.json}.
    """
    stages = sorted(stages or STAGES)
    address = dict(profile=profile, work_dir=work_dir, overrides=overrides, config_file=config_file)
    values = eval_values(test_sets, baselines, hyps)
    plan = dict(data=True, train_stages=stages, zipformer=True, evaluate=True)
    # loaded and checked once (here, or by the caller that passes it); every subflow gets it as is
    cfg = flow_config(config, **address, sources=sources, values=values, **plan)
    data = data_flow(refresh=refresh, config=cfg)
    # a test set the profile's corpus brings exists only now: it must have something to score
    # before hours of training
    preflight.check_scorable(cfg, generated=True)
    train = train_flow(stages=stages, config=cfg)
    zipformer = zipformer_flow(config=cfg)
    metrics = evaluate_flow(refresh=refresh, config=cfg)
    return {"data": data.__dict__, "train": train, "zipformer": zipformer, "eval": metrics}
