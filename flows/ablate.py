"""llmasr ablate (cli/ablate.py) runs this flow: data once -> per variant, training then evaluation
(subflows) -> comparison.

    llmasr ablate --profile demo --work-dir runs/demo --vary train.stage3.lr=0.01,0.001
    llmasr ablate --work-dir runs/mine --vary train.adapter=mlp,linear --vary train.seed=0,1
    llmasr ablate --work-dir runs/mine --variant base: --variant stock-encoder:train.skip_stage1=true

A stage whose inputs and settings are equal across variants has one cache key (flows/train.py
``stage_key``) and is trained once, into ``<work_dir>/ablations/checkpoints/stage<N>-<key16>``;
every variant with that key links to it (tasks/ablate.py).  A stage the work dir's own run
(``llmasr run``) trained with the same key is adopted into the store (hard links), not retrained,
and the run's evaluation seeds the variants' decode caches.  Varying ``train.stage3.lr`` trains
stages 1 and 2 once and stage 3 per value; varying the adapter trains stage 1 once.  A rerun, or
another ablation that needs a stage of the same key, trains nothing for it.  Each variant is
evaluated into its own folder; a baseline or a shared stage is decoded once (decode caches carry
over between variants where their keys match).  Output: ``<work_dir>/ablations/<name>/``
comparison.json, report.md, r_vs_n.png, and the artifacts ``ablation-comparison`` (table) and
``ablation-report`` (markdown).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows import ablation_artifacts, train_artifacts
from flows.caching import cache_options
from flows.config import check_before_work, flow_config
from flows.data import data_flow
from flows.evaluate import _run_evaluate, eval_systems
from flows.train import check_stages, stage_key, train_stage_task
from llmasr import preflight
from llmasr.config import STAGES, PipelineConfig
from llmasr.layout import WorkLayout
from llmasr.lock import work_dir_lock
from tasks import ablate, checkpoints


@flow(name="llmasr-ablation-train", flow_run_name="train-{variant}", log_prints=True)
def variant_train_flow(variant: str, cfg: PipelineConfig, root: str) -> dict[str, dict[str, Any]]:
    """One variant's stages, each linked to the store folder of its key and trained only where that
    folder holds no complete checkpoint of the key.  Returns {stageN: {checkpoint, key, trained}}."""
    logger = get_run_logger()
    layout = WorkLayout(Path(cfg.work_dir))
    stages = [2, 3] if cfg.train.skip_stage1 else [1, 2, 3]
    if cfg.train.skip_stage1:
        ablate.unlink_stage(layout.root, 1)
    # the store decides, not Prefect's cache
    stage_task = train_stage_task.with_options(**cache_options(layout, refresh=True))
    lineage: dict[str, dict[str, Any]] = {}
    results: dict[int, dict[str, Any]] = {}
    for stage in stages:
        key = stage_key(cfg, layout, stage)
        folder = ablate.link_stage(layout.root, Path(root), stage, key)
        adopted = ablate.adopt_run_stage(Path(root), stage, key, folder)
        done = checkpoints.read_stage(folder)
        reused = done is not None and done.get("key") == key
        how = "adopting the work dir's" if adopted else "reusing" if reused else "training"
        logger.info("%s stage %d: %s %s", variant, stage, how, folder)
        results[stage] = stage_task(stage, cfg, key=key)
        lineage[f"stage{stage}"] = {"checkpoint": str(folder), "key": key, "trained": not reused}
        if adopted:
            lineage[f"stage{stage}"]["adopted_from"] = str(checkpoints.stage_dir(root, stage))
    train_artifacts.publish(layout, results)
    return lineage


@flow(name="llmasr-ablation-evaluate", flow_run_name="evaluate-{variant}", log_prints=True)
def variant_eval_flow(variant: str, cfg: PipelineConfig, earlier: list[str]) -> dict[str, Any]:
    """One variant's evaluation into its eval/ (as ``llmasr evaluate``), decode caches of the
    ``earlier`` variants' eval folders carried over where it has none."""
    logger = get_run_logger()
    out_dir = WorkLayout(Path(cfg.work_dir)).root / "eval"
    seeded = ablate.seed_decode_caches([Path(e) for e in earlier], out_dir)
    if seeded:
        logger.info(
            "%s: %d decode caches of earlier variants to check against this one's systems", variant, seeded
        )
    specs, notes = eval_systems(cfg)
    return _run_evaluate(cfg, specs, notes, out_dir, False, logger)


def check_plan(plan: ablate.Plan, warn: Callable[[str], None]) -> None:
    """Everything an ablation can check before any work (``flows.config.check_before_work``): the
    data run's sources (when it has some), the test sets, the base run's models and every variant's
    (its stages and settings, and its own test sets and hypothesis files where it varies them);
    warnings go to ``warn``."""
    check_before_work(plan.base, warn, data=bool(plan.base.sources), train_stages=STAGES, evaluate=True)
    for cfg in plan.configs.values():
        preflight.check_models(preflight.model_refs(cfg, train_stages=STAGES))
        if (cfg.eval.test_sets, cfg.eval.hyps) != (plan.base.eval.test_sets, plan.base.eval.hyps):
            preflight.check_test_sets(cfg)
            preflight.check_scorable(cfg)


@flow(name="llmasr-ablation", log_prints=True)
def ablation_flow(
    vary: list[str] | None = None,
    variants: list[str] | None = None,
    name: str | None = None,
    profile: str | None = None,
    work_dir: str | None = None,
    overrides: list[str] | None = None,
    config_file: str | None = None,
    sources: list[str] | None = None,
    yes: bool = False,
    config: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Train and evaluate variants of a run side by side; stages equal across variants train once.

    Args:
        vary: a grid: "KEY=V1,V2" per key, every combination is a variant, e.g.
            ["train.stage3.lr=1e-4,1e-5", "train.seed=0,1"]. Only train.* and eval.* keys.
        variants: hand-picked variants, "NAME:KEY=V,KEY=V", e.g. "linear:train.adapter=linear";
            "NAME:" alone is the config as it is.
        name: the ablation's folder under <work_dir>/ablations/ (default: the vary keys, or the
            variants' names).
        profile: a profile of pipeline_config.yaml, e.g. "demo".
        work_dir: the run whose shards every variant trains on (default: the config's work_dir).
        overrides: config overrides shared by every variant, as key=value.
        config_file: another pipeline_config.yaml.
        sources: the data stage's sources (run once, before any training); empty uses the config's
            `sources`, and no sources at all trains on the work dir's shards as they are.
        yes: run more than 16 variants.
        config: the base run's whole configuration, as the caller loaded it and checked the plan
            (``llmasr ablate``); profile, work_dir, overrides, config_file and sources are then empty.

    Returns:
        The content of <work_dir>/ablations/<name>/comparison.json.
    """
    logger = get_run_logger()
    address = dict(profile=profile, work_dir=work_dir, overrides=overrides, config_file=config_file)
    base = flow_config(config, **address, sources=sources)
    plan = ablate.make_plan(base, vary, variants, name, yes)
    if config is None:  # loaded here (the UI, a deployment): checked here
        check_plan(plan, logger.warning)
    if plan.base.sources:
        data_flow(config=plan.base)
        # a test set the profile's corpus brings exists only now
        preflight.check_scorable(plan.base, generated=True)
    else:
        logger.info("no sources: the variants train on the shards in %s as they are", plan.root / "shards")
    for v in plan.variants:  # every variant's folder and launch settings, before any training
        cfg = plan.configs[v.name]
        ablate.prepare_variant_dir(plan.root, plan.variant_dir(v))
        check_stages(cfg, WorkLayout(Path(cfg.work_dir)), [1, 2, 3])
        if cfg.demo is not None and cfg.demo.kind == "demo":  # the demo's tiny models, built once
            from llmasr.tiny_models import build_demo_models

            build_demo_models(Path(cfg.train.encoder).parent)
    lineages: dict[str, dict[str, dict[str, Any]]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    # the work dir's own evaluation (llmasr run's) first: its baselines' decodes carry over
    evaluated: list[str] = [str(plan.root / "eval")] if (plan.root / "eval").is_dir() else []
    # the work dir's lock (after the data flow, which takes it itself): no data run rewrites the
    # shards under the variants, no second ablation trains into the same store folders
    with work_dir_lock(plan.root, plan.base.runner.lock_wait_s, what="llmasr-ablation"):
        for v in plan.variants:
            cfg = plan.configs[v.name]
            lineages[v.name] = variant_train_flow(v.name, cfg, str(plan.root))
            metrics[v.name] = variant_eval_flow(v.name, cfg, list(evaluated))
            evaluated.append(str(plan.variant_dir(v) / "eval"))
        comparison = ablate.build_comparison(plan, lineages, metrics)
        report, png, rows = ablate.write_outputs(plan.out_dir, comparison)
    ablation_artifacts.publish(str(plan.out_dir), rows, report, png)
    logger.info("ablation written to %s (comparison.json, report.md)", plan.out_dir)
    return comparison
