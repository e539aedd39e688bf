"""A run's configuration: loaded once, checked once before any work, then passed down.

Whoever starts a run loads its ``PipelineConfig``: the CLI (``cli/``), before Prefect starts, so a
bad key, source, test set or model fails in a second with one ``error:`` line; or the flow itself
when the Prefect UI or a deployment starts it, from its ``profile`` / ``work_dir`` / ``overrides`` /
``config_file`` parameters (``flow_config``).  Whoever loads it runs ``check_before_work`` for
what the run will do, then passes the validated config down as the flows' ``config`` parameter: the
CLI to the flow, a parent flow to its subflows.  A flow given ``config`` neither loads nor checks
it again, unless a deployment started it (a config typed into the UI's form had no caller to check
it).  What a flow checks of the work dir when it gets there (the shards before training, the
checkpoints before evaluation) stays in that flow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmasr import preflight
from llmasr.config import ConfigError, PipelineConfig, load_config, with_overrides


def eval_values(
    test_sets: list[str] | None = None,
    baselines: list[str] | None = None,
    hyps: list[str] | None = None,
    stages: list[int] | None = None,
) -> dict[str, Any]:
    """A command line's evaluation lists as ``with_overrides`` values (each replaces its eval.* list)."""
    given = {"test_sets": test_sets, "baselines": baselines, "hyps": hyps, "stages": stages}
    return {f"eval.{k}": list(v) for k, v in given.items() if v is not None}


def check_before_work(
    cfg: PipelineConfig,
    warn: Callable[[str], None],
    *,
    data: bool = False,
    train_stages: Sequence[int] | None = None,
    evaluate: bool = False,
    zipformer: bool = False,
) -> None:
    """Everything a run can check before any work, for a run that runs the data flow (``data``), the
    training stages ``train_stages``, the Zipformer baseline (``zipformer``, when enabled) and the
    evaluation (``evaluate``).  Raises ``ConfigError`` (or ``tasks.ingest.SourceError``) naming the key
    at fault; a warning goes to ``warn`` at once (it is still said when a later check fails).

    Without a data run the shards must be there now; without training, a system to evaluate.  What
    the profile generates (the demo's corpus, its test set and tiny models) is checked once it exists.
    """
    stages = sorted(train_stages or [])
    if train_stages is not None:  # training asked for: an empty or unordered list fails here
        preflight.check_stage_numbers(stages)
    if data:
        preflight.check_sources(cfg)
        if warning := preflight.label_device_warning(cfg):
            warn(warning)
    elif stages:
        from flows.train import check_stages
        from llmasr.layout import WorkLayout

        check_stages(cfg, WorkLayout(Path(cfg.work_dir)), stages)
    if zipformer and cfg.zipformer.enabled:
        from tasks.zipformer_train import launch_problem

        if problem := launch_problem(cfg.zipformer):
            raise ConfigError(problem)
    if evaluate:
        preflight.check_test_sets(cfg)
        if not stages:  # a system to evaluate before reading each test set
            from flows.evaluate import eval_systems

            eval_systems(cfg)
        preflight.check_scorable(cfg)
    preflight.check_models(preflight.model_refs(cfg, label=data, train_stages=stages, baselines=evaluate))


def flow_config(
    config: PipelineConfig | None,
    *,
    profile: str | None,
    work_dir: str | None,
    overrides: list[str] | None,
    config_file: str | None,
    sources: list[str] | None = None,
    values: dict[str, Any] | None = None,
    **plan: Any,
) -> PipelineConfig:
    """The config a flow runs with: ``config`` as its caller loaded and checked it, or the one the
    flow's own parameters name (``load_config``, then ``values`` as ``with_overrides`` sets them),
    checked here (``check_before_work(cfg, **plan)``, its warnings logged).  Given ``config``, no
    other setting may be: the flow would not read it.  A ``config`` typed into a deployment's form
    (the UI, ``run_deployment``) had no caller to check it: it is checked here too."""
    from prefect import get_run_logger
    from prefect.context import FlowRunContext

    if config is not None:
        given = dict(
            profile=profile, work_dir=work_dir, overrides=overrides, config_file=config_file, sources=sources
        )
        ignored = [name for name, value in {**given, **(values or {})}.items() if value]
        if ignored:
            raise ConfigError(
                f"{', '.join(ignored)}: not read when config is given (the whole configuration of the run); "
                "pass config alone, or leave it empty and pass these"
            )
        run = FlowRunContext.get()
        if run is not None and run.flow_run is not None and run.flow_run.deployment_id is not None:
            check_before_work(config, get_run_logger().warning, **plan)
        return config
    cfg = load_config(profile, overrides, config_file, work_dir=work_dir, sources=sources or None)
    if values:
        cfg = with_overrides(cfg, values=values)
    check_before_work(cfg, get_run_logger().warning, **plan)
    return cfg
