"""llmasr ui (cli/ui.py) serves these, the project's Prefect deployments: data (optionally on a cron),
train, evaluate, the pipeline, ablations.

    llmasr ui                                   # serves these next to a local Prefect server
    prefect deploy --prefect-file infra/prefect.yaml --all   # the same on a team's server and work pools

Each deployment's parameter form is the flow's signature; its fields carry the flow docstring's
descriptions.  Defaults come from the profile, work dir, config file, ``--set`` overrides and
``--source``s that `llmasr ui` was started with, so the UI's "Run" button runs the same thing the CLI
would.
"""

from __future__ import annotations

from typing import Any

from llmasr.config import PipelineConfig


def deployment_parameters(
    profile: str | None, work_dir: str | None, config_file: str | None, overrides: list[str] | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if overrides:
        params["overrides"] = list(overrides)
    if profile:
        params["profile"] = profile
    if work_dir:
        params["work_dir"] = work_dir
    if config_file:
        params["config_file"] = config_file
    return params


def build_deployments(
    cfg: PipelineConfig,
    profile: str | None = None,
    work_dir: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    sources: list[str] | None = None,
) -> list:
    """RunnerDeployments for ``prefect.serve``: names ``<prefix>-data``, ``-train``, ``-evaluate``,
    ``-pipeline``, ``-ablation``.  The data deployment runs on ``schedule.data_cron`` when it is set."""
    from flows.ablate import ablation_flow
    from flows.data import data_flow
    from flows.evaluate import evaluate_flow
    from flows.pipeline import pipeline_flow
    from flows.train import train_flow

    prefix = cfg.schedule.deployment_prefix
    params = deployment_parameters(profile, work_dir, config_file, overrides)
    data_params = {**params, **({"sources": list(sources)} if sources else {})}
    tags = ["llmasr"] + ([f"profile:{profile}"] if profile else [])
    cron = None
    if cfg.schedule.data_cron:
        from prefect.client.schemas.schedules import CronSchedule

        cron = CronSchedule(cron=cfg.schedule.data_cron, timezone=cfg.schedule.timezone)
    return [
        data_flow.to_deployment(
            name=f"{prefix}-data",
            parameters=data_params,
            schedule=cron,
            description=(
                "Ingest new audio (yt-dlp archive, cached stages), segment, label, filter, shard. Scheduled "
                "by schedule.data_cron."
            ),
            tags=tags + ["data"],
        ),
        train_flow.to_deployment(
            name=f"{prefix}-train",
            parameters=params,
            description="Stages 1 -> 2 -> 3 on the work dir's shards (DeepSpeed).",
            tags=tags + ["train"],
        ),
        evaluate_flow.to_deployment(
            name=f"{prefix}-evaluate",
            parameters=params,
            description="Decode test sets with checkpoints and baselines; O/N/R/U-WER report.",
            tags=tags + ["evaluate"],
        ),
        pipeline_flow.to_deployment(
            name=f"{prefix}-pipeline",
            parameters=data_params,
            description="data -> train -> evaluate.",
            tags=tags + ["pipeline"],
        ),
        ablation_flow.to_deployment(
            name=f"{prefix}-ablation",
            parameters=data_params,
            description=(
                "Variants of a run (fill in vary and/or variants): each trained and evaluated, stages equal "
                "across variants trained once; ablations/<name>/comparison.json."
            ),
            tags=tags + ["ablation"],
        ),
    ]
