"""llmasr evaluate (cli/evaluate.py) runs this flow: decode every test set with every system, score
O/N/R/U-WER, report.

    llmasr evaluate --work-dir runs/mine --test-set primock57=/data/primock57 \\
        --test-set kincaid46=/data/kincaid46 --baseline faster-whisper:large-v2
    llmasr evaluate --profile demo        # runs/demo checkpoints + tiny.en on the zero-shot set

Systems: each complete stage checkpoint (``llmasr-stage1``: Whisper with the stage-1 encoder,
through transformers; ``llmasr-stage2``, ``llmasr-stage3``: the LLM-ASR), Whisper baselines
(``faster-whisper:<model>``, ``transformers:<model>``) and hypothesis files (``name=path``).  One
Prefect task reads each test set, one decodes all test sets with one system (its model loaded once),
one scores and writes ``<work_dir>/eval/`` (tasks/evaluate.py).  A system that cannot be loaded is
reported and the others still run.  Hypotheses are cached per (test set, system) in
``eval/<set>/<system>.decode.json``, so a rerun with the same pieces, checkpoint and settings only
rescores (``refresh=True`` decodes again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import eval_artifacts
from flows.config import eval_values, flow_config
from llmasr import preflight, progress
from llmasr.config import ConfigError, EvalConfig, PipelineConfig, SegmentConfig
from llmasr.layout import WorkLayout
from llmasr.lock import work_dir_lock
from tasks import evaluate as ev
from tasks.decode import DecodeResult, make_system


@task(name="eval-prepare", cache_policy=NO_CACHE, task_run_name="prepare-{name}")
def prepare_task(name: str, path: str, cfg: EvalConfig, segment_cfg: SegmentConfig) -> ev.PreparedSet:
    prepared = ev.prepare_test_set(name, path, cfg, segment_cfg)
    get_run_logger().info(
        "%s: %d utterances, %d pieces, %.1f s of audio, %d problems",
        name,
        len(prepared.utterances),
        len(prepared.pieces),
        prepared.audio_s,
        len(prepared.problems),
    )
    return prepared


@task(name="eval-decode", cache_policy=NO_CACHE, task_run_name="decode-{spec.name}")
def decode_task(
    spec: ev.SystemSpec, sets: list[ev.PreparedSet], out_dir: str, settings: EvalConfig, refresh: bool
) -> dict[str, DecodeResult]:
    """Decode every test set with one system (loaded once); returns {test set: result}."""
    logger = get_run_logger()
    system = make_system(spec.kind, spec.name, spec.target, settings)
    system.load()
    out: dict[str, DecodeResult] = {}
    try:
        for prepared in sets:
            progress.start("decode", len(prepared.pieces), unit=f"pieces {spec.name} / {prepared.name}")
            result = ev.decode_cached(
                system,
                prepared,
                Path(out_dir),
                settings,
                refresh,
                progress=lambda n: progress.advance("decode", n),
            )
            progress.complete("decode")
            out[prepared.name] = result
            rtf = (
                "n/a" if result.rtf is None else f"{result.rtf:.3f}" + (" (cached)" if result.cached else "")
            )
            tps = "" if result.tokens_per_s is None else f", {result.tokens_per_s:.1f} tokens/s"
            logger.info(
                "%s on %s: %d hypotheses, %d failed, RTF %s%s",
                spec.name,
                prepared.name,
                len(result.hyps),
                len(result.failures),
                rtf,
                tps,
            )
    finally:
        system.close()
    return out


@task(name="eval-score", cache_policy=NO_CACHE)
def score_task(
    out_dir: str,
    cfg: PipelineConfig,
    sets: list[ev.PreparedSet],
    specs: list[ev.SystemSpec],
    results: dict[str, dict[str, DecodeResult]],
    problems: list[str],
) -> dict[str, Any]:
    rare, info, rare_problems = ev.rare_word_set(cfg.work_dir, cfg.eval, cfg.shard.transcript)
    metrics, report, png, rows = ev.score_and_write(
        Path(out_dir),
        cfg.work_dir,
        sets,
        specs,
        results,
        rare,
        info,
        [*problems, *rare_problems],
        cfg.eval.model_dump(mode="json"),
    )
    eval_artifacts.publish(out_dir, rows, report, png)
    return metrics


def eval_systems(cfg: PipelineConfig) -> tuple[list[ev.SystemSpec], list[str]]:
    """The systems to evaluate and the notes on those left out; fails before any decoding when there
    is none (no complete stage checkpoint, no baseline, no hypothesis file)."""
    specs, notes = ev.system_specs(cfg.work_dir, cfg.eval)
    if not specs:
        raise ConfigError(
            f"nothing to evaluate: no complete checkpoint of stages {cfg.eval.stages} under "
            f"{Path(cfg.work_dir) / 'checkpoints'}, no --baseline and no --hyps"
        )
    return specs, notes


@flow(name="llmasr-evaluate", log_prints=True)
def evaluate_flow(
    profile: str | None = None,
    work_dir: str | None = None,
    overrides: list[str] | None = None,
    config_file: str | None = None,
    test_sets: list[str] | None = None,
    baselines: list[str] | None = None,
    hyps: list[str] | None = None,
    stages: list[int] | None = None,
    refresh: bool = False,
    config: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Decode test sets with the run's checkpoints and baselines; score O/N/R/U-WER; write eval/.

    Args:
        profile: a profile of pipeline_config.yaml, e.g. "demo" (the zero-shot set, tiny.en baseline).
        work_dir: the run whose checkpoints and training labels are used (default: the config's).
        overrides: config overrides as key=value, e.g. ["eval.num_beams=1"].
        config_file: another pipeline_config.yaml.
        test_sets: "name=path": a manifest, a Kincaid46 tsv, a Primock57 folder, a folder of audio +
            .txt; empty uses eval.test_sets.
        baselines: "faster-whisper:<model>" or "transformers:<model>", e.g. "faster-whisper:large-v2",
            "transformers:bundled:whisper-base"; empty uses eval.baselines.
        hyps: "name=path" hypothesis files (jsonl/tsv of utt_id and text, icefall recogs-*.txt);
            empty uses eval.hyps.
        stages: stage checkpoints to decode; empty uses eval.stages (1, 2 and 3, where complete).
        refresh: decode again even where eval/<set>/<system>.decode.json matches.
        config: the run's whole configuration, as the caller loaded and checked it (``llmasr
            evaluate``, the pipeline flow); the settings above are then left empty.

    Returns:
        The content of eval/metrics.json.
    """
    logger = get_run_logger()
    address = dict(profile=profile, work_dir=work_dir, overrides=overrides, config_file=config_file)
    values = eval_values(test_sets, baselines, hyps, stages)
    cfg = flow_config(config, **address, values=values, evaluate=True)
    if cfg.demo is not None:
        from tasks import demo_corpus

        demo_corpus.generate_corpus(cfg.demo)
        preflight.check_scorable(cfg, generated=True)  # a test set the profile generates, now it exists
    specs, notes = eval_systems(cfg)
    out_dir = WorkLayout(Path(cfg.work_dir)).root / ev.EVAL_DIR
    # eval/ only: training may go on
    with work_dir_lock(out_dir, cfg.runner.lock_wait_s, what="llmasr-evaluate"):
        return _run_evaluate(cfg, specs, notes, out_dir, refresh, logger)


def _run_evaluate(
    cfg: PipelineConfig, specs: list[ev.SystemSpec], notes: list[str], out_dir: Path, refresh: bool, logger
) -> dict[str, Any]:
    settings = cfg.eval
    problems = list(notes)
    for note in notes:
        logger.warning(note)
    sets = [prepare_task(*ev.parse_named(spec), cfg.eval, cfg.segment) for spec in cfg.eval.test_sets]
    for prepared in sets:  # audio found but none of it readable: stop before any system loads
        if not prepared.utterances:
            raise ev.EvalError(
                f"eval.test_sets: test set {prepared.name} ({prepared.path}) has nothing to score: "
                f"{'; '.join(prepared.problems[:3])}"
            )
    results: dict[str, dict[str, DecodeResult]] = {}
    for spec in specs:
        state = decode_task(spec, sets, str(out_dir), settings, refresh, return_state=True)
        if state.is_completed():
            results[spec.name] = state.result()
            continue
        try:
            state.result()
            reason = state.message or state.name
        except Exception as exc:  # the task's exception
            reason = f"{type(exc).__name__}: {exc}"
        problems.append(f"{spec.name}: not evaluated, the system failed: {reason}")
        logger.error("%s failed: %s", spec.name, reason)
    metrics = score_task(str(out_dir), cfg, sets, specs, results, problems)
    logger.info("evaluation written to %s (report.md, metrics.json, wer.png)", out_dir)
    return metrics
