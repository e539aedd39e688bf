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

from flows.data import data_flow
from flows.evaluate import check_test_sets, evaluate_flow, resolve_config
from flows.train import train_flow
from flows.zipformer import zipformer_flow
from llmasr import preflight


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

    Returns:
        {"data": the data run's counts, "train": each stage's stage.json, "zipformer": its model.json
        (None when zipformer.enabled is false), "eval": metrics.json}.
    """
    common = dict(profile=profile, work_dir=work_dir, overrides=overrides, config_file=config_file)
    data = data_flow(sources=sources, refresh=refresh, **common)
    # a test set the profile's corpus brings exists only now: each must have something to score
    # before hours of training (the CLI checked the others before the data flow)
    eval_cfg = resolve_config(test_sets=test_sets, baselines=baselines, hyps=hyps, **common)
    check_test_sets(eval_cfg)
    preflight.check_scorable(eval_cfg)
    train = train_flow(stages=stages, **common)
    zipformer = zipformer_flow(**common)
    metrics = evaluate_flow(test_sets=test_sets, baselines=baselines, hyps=hyps, refresh=refresh, **common)
    return {"data": data.__dict__, "train": train, "zipformer": zipformer, "eval": metrics}
