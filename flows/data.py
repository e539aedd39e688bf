"""llmasr data (cli/data.py) runs this flow: ingest -> segment -> label -> filter -> shard.

    llmasr data --profile demo                                   # CPU demo, offline
    llmasr data --source https://www.youtube.com/@SomeChannel --work-dir runs/mine

Tasks are coarse (one web source, or a batch of items, per task) and cached on a key computed
from their inputs' content, the stage's settings and the stage's code, so a rerun with nothing
new shows Cached states and does no stage work.  Each stage also keeps per-item parts on disk
(tasks/parts.py), so a rerun after new data labels only the new items even where a batch's key
changed.  Results of cached tasks live under ``<work_dir>/.prefect-results``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.utilities.annotations import quote

from flows import artifacts, runners
from flows.caching import by_key, cache_options
from flows.config import flow_config
from llmasr import progress
from llmasr.config import DemoConfig, PipelineConfig, cache_settings
from llmasr.layout import WorkLayout
from llmasr.lock import work_dir_lock
from llmasr.records import STATUS_OK, Decision, Item, Label, Segment, read_records, write_records
from tasks import demo_corpus, ingest, label, segment, shard
from tasks import filter as filt
from tasks.parts import code_version, fingerprint


def _cached_task(name: str, **kw: Any):
    return task(name=name, cache_key_fn=by_key, persist_result=True, **kw)


def batches(seq: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(seq[i : i + size]) for i in range(0, len(seq), size)]


# --- tasks: thin wrappers over tasks/*; `key` is the cache key, unused in the body ---------------


@task(name="demo-corpus", cache_policy=NO_CACHE)
def make_demo_corpus(demo: DemoConfig) -> str:
    """The demo or small profile's espeak-ng corpus (``demo.kind``), generated once."""
    return str(demo_corpus.generate_corpus(demo))


@_cached_task("ingest-local")
def ingest_local_task(files: list[ingest.LocalFile], cfg: PipelineConfig, key: str) -> list[Item]:
    return ingest.ingest_local(
        files, WorkLayout(Path(cfg.work_dir)), cfg.ingest, progress=lambda n: progress.advance("ingest", n)
    )


@task(name="ingest-web", cache_policy=NO_CACHE)
def ingest_web_task(url: str, cfg: PipelineConfig, known: dict[str, Item]) -> list[Item]:
    """Never cached: a channel or playlist may have new videos. yt-dlp's archive and the item
    records skip what was downloaded before."""
    from tasks import youtube

    return youtube.fetch_web_source(url, WorkLayout(Path(cfg.work_dir)), cfg.ingest, known=known)


@_cached_task("write-items")
def write_items_task(items: list[Item], cfg: PipelineConfig, key: str) -> str:
    layout = WorkLayout(Path(cfg.work_dir))
    return str(write_records(layout.items, items, Item))


@_cached_task("segment")
def segment_task(items: list[Item], cfg: PipelineConfig, item_keys: dict[str, str], key: str) -> int:
    return segment.segment_batch(WorkLayout(Path(cfg.work_dir)), items, cfg.segment, item_keys)


@_cached_task("write-segments")
def write_segments_task(segments: list[Segment], cfg: PipelineConfig, key: str) -> str:
    return str(write_records(WorkLayout(Path(cfg.work_dir)).segments, segments, Segment))


@_cached_task("label")
def label_task(
    items: list[Item],
    segments: dict[str, list[Segment]],
    cfg: PipelineConfig,
    item_keys: dict[str, str],
    key: str,
) -> dict:
    layout = WorkLayout(Path(cfg.work_dir))
    stats = label.label_batch(layout, items, segments, cfg.label, cfg.filter, item_keys)
    where = runners.worker_name()
    if stats.items:
        get_run_logger().info(
            "labelled %d items (%d segments, %.1f s audio) on %s: RTFx %.1f",
            stats.items,
            stats.segments,
            stats.audio_s,
            where,
            stats.rtfx,
        )
    return {
        "items": stats.items,
        "segments": stats.segments,
        "audio_s": stats.audio_s,
        "wall_s": stats.wall_s,
        "worker": where,
    }


@_cached_task("write-labels")
def write_labels_task(
    items: list[Item],
    segments: dict[str, list[Segment]],
    cfg: PipelineConfig,
    item_keys: dict[str, str],
    key: str,
) -> str:
    layout = WorkLayout(Path(cfg.work_dir))
    return str(
        write_records(
            layout.labels, label.read_labels(layout, items, segments, cfg.label, cfg.filter, item_keys), Label
        )
    )


@_cached_task("filter")
def filter_task(cfg: PipelineConfig, key: str) -> str:
    layout = WorkLayout(Path(cfg.work_dir))
    decisions = filt.decide_all(
        read_records(layout.segments, Segment),
        read_records(layout.labels, Label),
        cfg.filter,
        cfg.shard.validation_fraction,
    )
    return str(write_records(layout.decisions, decisions, Decision))


@_cached_task("shard")
def shard_task(cfg: PipelineConfig, key: str) -> dict:
    layout = WorkLayout(Path(cfg.work_dir))
    decisions = read_records(layout.decisions, Decision)
    progress.start("shard", sum(d.kept for d in decisions), unit="segments")
    return shard.write_shards(
        layout,
        read_records(layout.items, Item),
        read_records(layout.segments, Segment),
        read_records(layout.labels, Label),
        decisions,
        cfg.shard,
        progress=lambda n: progress.advance("shard", n),
    )


# --- the flow --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataRunResult:
    work_dir: str
    items: int
    failed_items: int
    segments: int
    kept: int
    shards: int
    labelled_items: int  # items labelled by this run (0 when nothing was new)
    label_rtfx: float  # of this run's labelling; 0.0 when nothing was labelled (a rerun: "cached")
    label_workers: int = 0  # processes (runner.kind=local) or Ray nodes (ray) that labelled new items


def _known_items(layout: WorkLayout) -> dict[str, Item]:
    if not layout.items.is_file():
        return {}
    return {i.item_id: i for i in read_records(layout.items, Item)}


def run_ingest(
    cfg: PipelineConfig, layout: WorkLayout, sources: list[ingest.Source], opts: dict
) -> list[Item]:
    local: list[ingest.LocalFile] = []
    urls: list[str] = []
    for src in sources:
        if src.kind == "web":
            urls.append(src.value)
        else:
            files, more_urls = ingest.expand_source(src)
            local += files
            urls += more_urls
    progress.start("ingest", len(local) + len(urls))
    known = _known_items(layout)
    local_task = ingest_local_task.with_options(**opts)
    futures = []
    for batch in batches(local, cfg.ingest.items_per_task):
        futures.append(local_task.submit(batch, cfg, key=ingest_key(batch, cfg)))
    futures += [
        ingest_web_task.submit(url, cfg, {k: v for k, v in known.items() if v.source == url}) for url in urls
    ]
    items = ingest.merge_items(f.result() for f in futures)
    progress.complete("ingest")
    write_items_task.with_options(**opts)(items, cfg, key=fingerprint("items", items))
    return items


def _stat(path: str | None) -> list[int] | None:
    if not path or not Path(path).exists():
        return None
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


# --- the stages' cache keys: each computed once per run, from what its stage's output depends on --


def ingest_key(batch: list[ingest.LocalFile], cfg: PipelineConfig) -> str:
    stamps = [(f.path, f.caption_path, _stat(f.path), _stat(f.caption_path)) for f in batch]
    return fingerprint(
        "ingest",
        stamps,
        cache_settings(cfg.ingest),
        code_version("tasks.ingest", "llmasr.audio", "tasks.captions"),
    )


def filter_key(segments_key: str, labels_key: str, cfg: PipelineConfig) -> str:
    """The filter reads segments.parquet (caption texts) and labels.parquet: its key covers both,
    since corrected captions with the same timing change the segments but not the labels' key."""
    return fingerprint(
        "filter",
        segments_key,
        labels_key,
        cfg.filter,
        cfg.shard.validation_fraction,
        code_version("tasks.filter", "llmasr.text"),
    )


def shard_key(segments_key: str, labels_key: str, decisions_key: str, cfg: PipelineConfig) -> str:
    """The shard writes segment times and captions, labels, decisions and audio: all in these keys
    (segments_key and labels_key stamp each item's audio file; decisions_key is the filter's key)."""
    return fingerprint(
        "shard", segments_key, labels_key, decisions_key, cfg.shard, code_version("tasks.shard")
    )


@dataclass(frozen=True)
class SegmentRun:
    key: str  # of segments.parquet's content: the per-item segment keys
    segments: dict[str, list[Segment]]  # item_id -> its segments, read once for the later stages


def run_segment(cfg: PipelineConfig, ok: list[Item], opts: dict) -> SegmentRun:
    """Segment ``ok`` and write segments.parquet."""
    progress.start("segment", len(ok))
    task_ = segment_task.with_options(**opts)
    layout = WorkLayout(Path(cfg.work_dir))
    item_keys = segment.item_keys(layout, ok, cfg.segment)
    groups = batches(ok, cfg.segment.items_per_task)
    keys = [fingerprint("segment", [item_keys[i.item_id] for i in b]) for b in groups]
    futures = [
        task_.submit(b, cfg, {i.item_id: item_keys[i.item_id] for i in b}, key=k)
        for b, k in zip(groups, keys)
    ]
    wait(futures)
    for f in futures:
        f.result()  # re-raise the first failure
    progress.complete("segment")
    segs = segment.read_segments(layout, ok, cfg.segment, item_keys)
    segments_key = fingerprint("segments", keys)
    # quote(): Prefect would walk (and copy) every record of an argument; the write tasks run in this
    # process, which unwraps it (prefect-ray does not: the label tasks get their batch's records plainly)
    write_segments_task.with_options(**opts)(
        quote([s for i in ok for s in segs[i.item_id]]), cfg, key=segments_key
    )
    return SegmentRun(segments_key, segs)


@dataclass(frozen=True)
class LabelRun:
    labelled_items: int  # labelled by this run; 0 when every item was done before
    rtfx: float  # audio seconds labelled per second of the stage's wall time
    workers: int  # processes (local) or Ray nodes that labelled something
    key: str  # of labels.parquet's content: the per-item label keys


def run_label(cfg: PipelineConfig, ok: list[Item], segs: dict[str, list[Segment]], opts: dict) -> LabelRun:
    """Label ``ok`` (``segs``: their segments) in batches of ``label.items_per_task``, in the flow's
    thread pool or on Ray."""
    layout = WorkLayout(Path(cfg.work_dir))
    progress.start("label", len(ok))
    groups = batches(ok, cfg.label.items_per_task)
    item_keys = label.item_keys(layout, ok, segs, cfg.label, cfg.filter)
    keys = [fingerprint("label", [item_keys[i.item_id] for i in b]) for b in groups]
    task_ = label_task.with_options(**opts)
    progress_id = artifacts.label_progress_start(len(groups))
    t0 = time.perf_counter()
    labelled, audio_s, workers = 0, 0.0, set()
    # Ray workers may start elsewhere: they get the work dir as an absolute path (a shared mount).
    task_cfg = cfg.model_copy(update={"work_dir": str(layout.root)})
    with runners.label_submitter(cfg) as (submit, remote):
        futures = [
            submit(
                task_,
                items=b,
                segments={i.item_id: segs[i.item_id] for i in b},
                cfg=task_cfg,
                item_keys={i.item_id: item_keys[i.item_id] for i in b},
                key=k,
            )
            for b, k in zip(groups, keys)
        ]
        for n, (fut, group) in enumerate(zip(futures, groups), 1):
            stats = fut.result()
            artifacts.label_progress_update(progress_id, n, len(groups))
            if remote:
                progress.advance("label", len(group))  # a Ray worker's progress calls stay in its process
            if fut.state.is_completed() and fut.state.name == "Cached":
                continue  # done by an earlier run
            labelled += stats["items"]
            audio_s += stats["audio_s"]
            if stats["items"]:
                workers.add(stats["worker"])
    # tasks overlap: RTFx is audio over the stage's span, not summed task time
    span_s = time.perf_counter() - t0
    progress.complete("label")
    if workers:
        get_run_logger().info(
            "label stage: %d items on %d worker(s) (runner.kind=%s)", labelled, len(workers), cfg.runner.kind
        )
    write_labels_task.with_options(**opts)(ok, quote(segs), cfg, item_keys, key=fingerprint("labels", keys))
    return LabelRun(
        labelled,
        audio_s / span_s if labelled else 0.0,
        len(workers),
        fingerprint([item_keys[i.item_id] for i in ok]),
    )


@flow(name="llmasr-data", log_prints=True)
def data_flow(
    sources: list[str] | None = None,
    profile: str | None = None,
    work_dir: str | None = None,
    overrides: list[str] | None = None,
    config_file: str | None = None,
    refresh: bool = False,
    config: PipelineConfig | None = None,
) -> DataRunResult:
    """Web audio and local files -> filtered, pseudo-labelled WebDataset shards.

    Args:
        sources: YouTube URLs (video, playlist, channel), local folders or files, manifests (.jsonl,
            .csv, .txt); empty uses the config's `sources`.
        profile: a profile of pipeline_config.yaml, e.g. "demo" (offline CPU demo).
        work_dir: where every stage writes (default: the config's work_dir).
        overrides: config overrides as key=value, e.g. ["filter.max_caption_wer=0.15"].
        config_file: another pipeline_config.yaml.
        refresh: ignore Prefect's cached task results and re-check every stage (per-item work already
            on disk is still reused); use it after deleting files from the work dir by hand.
        config: the run's whole configuration, as the caller loaded and checked it (``llmasr data``,
            the pipeline flow); sources, profile, work_dir, overrides and config_file are then empty.
    """
    logger = get_run_logger()
    address = dict(profile=profile, work_dir=work_dir, overrides=overrides, config_file=config_file)
    cfg = flow_config(config, **address, sources=sources, data=True)
    if cfg.demo is not None:
        make_demo_corpus(cfg.demo)
    sources = ingest.resolve_sources(cfg.sources)  # a bad source fails here, before any work
    layout = WorkLayout(Path(cfg.work_dir))
    with work_dir_lock(layout.root, cfg.runner.lock_wait_s, what="llmasr-data"):
        result, index = _run_data(cfg, layout, sources, refresh, logger)
    follow_with_training(cfg, layout, index, logger)  # after the lock: the training takes it next
    return result


def _run_data(
    cfg: PipelineConfig, layout: WorkLayout, sources: list[ingest.Source], refresh: bool, logger
) -> tuple[DataRunResult, dict]:
    if swept := layout.sweep_temp():
        logger.info("removed %d temp files left by an interrupted run", swept)
    from tasks import youtube  # lazy, as in ingest_web_task

    if swept_dl := youtube.sweep_download_dirs(layout):
        logger.info("removed %d raw/.dl-* download folders left by an interrupted run", swept_dl)
    opts = cache_options(layout, refresh)

    items = run_ingest(cfg, layout, sources, opts)
    ok = [i for i in items if i.status == STATUS_OK]
    for bad in (i for i in items if i.status != STATUS_OK):
        logger.warning("item %s failed: %s", bad.item_id, bad.error)

    segment_run = run_segment(cfg, ok, opts)
    label_run = run_label(cfg, ok, segment_run.segments, opts)
    n_segments = sum(len(v) for v in segment_run.segments.values())
    decisions_key = filter_key(segment_run.key, label_run.key, cfg)
    filter_task.with_options(**opts)(cfg, key=decisions_key)
    index = shard_task.with_options(**opts)(
        cfg, key=shard_key(segment_run.key, label_run.key, decisions_key, cfg)
    )

    decisions = read_records(layout.decisions, Decision)
    artifacts.publish_data_run(layout, items, decisions, index, label_run.labelled_items, label_run.rtfx)
    result = DataRunResult(
        work_dir=str(layout.root),
        items=len(items),
        failed_items=len(items) - len(ok),
        segments=n_segments,
        kept=sum(d.kept for d in decisions),
        shards=len(index["shards"]),
        labelled_items=label_run.labelled_items,
        label_rtfx=round(label_run.rtfx, 2),
        label_workers=label_run.workers,
    )
    labelled = (
        f"labelled {result.labelled_items} items at RTFx {result.label_rtfx:.1f}"
        if result.labelled_items
        else "labels cached (nothing new to label)"
    )
    logger.info("data run done in %s: %d items (%d failed), %d segments, %d kept, %d shards; %s",
                result.work_dir, result.items, result.failed_items, result.segments, result.kept,
                result.shards, labelled)  # fmt: skip
    return result, index


def run_work_dir(parameters: dict[str, Any]) -> str | None:
    """The work dir a flow run's parameters name: its ``work_dir``, or its whole ``config``'s."""
    return parameters.get("work_dir") or (parameters.get("config") or {}).get("work_dir")


def follow_with_training(cfg: PipelineConfig, layout: WorkLayout, index: dict, logger) -> str | None:
    """Trigger the train deployment when a deployed run brought schedule.train_after_new_hours of
    new kept audio; otherwise say how much is new.  Returns the triggered flow run's id.

    The training runs with this data run's configuration (profile, config file, overrides) on its
    work dir.  A train run for the work dir that is already scheduled, pending or running (e.g.
    waiting for GPUs) is not triggered twice, nor by a retry of the same data run (idempotency key).
    """
    threshold = cfg.schedule.train_after_new_hours
    if threshold is None:
        return None
    from prefect.context import get_run_context

    from tasks.checkpoints import new_train_hours

    new_h = new_train_hours(layout.root, index)
    if new_h < threshold:
        logger.info(
            "%.2f h of new kept audio since the last training (< %.2f h): training waits", new_h, threshold
        )
        return None
    flow_run = get_run_context().flow_run
    if flow_run is None or flow_run.deployment_id is None:
        logger.info(
            "%.2f h of new kept audio (>= %.2f h): run `llmasr train --work-dir %s` (only deployed runs "
            "trigger it)",
            new_h,
            threshold,
            layout.root,
        )
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    name = f"llmasr-train/{cfg.schedule.deployment_prefix}-train"
    waiting = (StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        active = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(waiting))),
            )
        )
    mine = [
        r for r in active if (w := run_work_dir(r.parameters)) and Path(w).resolve() == layout.root.resolve()
    ]
    if mine:
        logger.info(
            "%.2f h of new kept audio (>= %.2f h): %s is already %s for this work dir (flow run %s): not "
            "triggering another",
            new_h,
            threshold,
            name,
            mine[0].state_name,
            mine[0].id,
        )
        return None
    given = flow_run.parameters or {}
    if given.get("config") is not None:  # the run was given its whole configuration: so is the training
        # (None over the deployment's default address: a flow given config reads nothing else)
        address = dict.fromkeys(("profile", "work_dir", "overrides", "config_file"))
        params: dict[str, Any] = {**address, "config": cfg.model_dump(mode="json")}
    else:
        params = {
            "profile": cfg.profile,
            "work_dir": str(layout.root),
            "overrides": given.get("overrides"),
            "config_file": given.get("config_file"),
        }
    run = run_deployment(
        name=name,
        parameters=params,
        timeout=0,
        as_subflow=False,
        idempotency_key=f"llmasr-data:{flow_run.id}:train",
    )
    logger.info(
        "%.2f h of new kept audio (>= %.2f h): triggered %s (flow run %s)", new_h, threshold, name, run.id
    )
    return str(run.id)
