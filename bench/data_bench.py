""".venv/bin/python bench/data_bench.py [--items 30] [--rounds 2] [--out bench/results/data_bench.json] [--work DIR]

Benchmark of the data half on this machine, all in one run so that ratios compare like with like
(same model object, same corpus, same machine state).  CPU only, offline; the demo profile's
settings (faster-whisper bundled tiny.en, int8, beam 5, batch 8).  About 6-8 minutes with the
defaults on 2 CPU cores.

1. Labelling RTFx, pipeline vs faster-whisper called directly.  The demo corpus (``--items``
   espeak-ng "videos") is generated, ingested and segmented with the pipeline's own stage
   functions.  Then, after one untimed warm-up, ``--rounds`` rounds alternate (order flipped every
   round) between
     (a) ``tasks.label.label_batch`` over every item (its label parts deleted first, so it labels), and
     (b) ``BatchedInferencePipeline.transcribe(audio, clip_timestamps=..., batch_size, beam_size,
         language, without_timestamps=True, vad_filter=False)`` called directly on the same
         segments (the clips label_batch sends), on audio decoded beforehand, generator consumed.
   Both use the very same pipeline object (``label.load_labeller``), so model load is excluded
   from both; (b) also excludes audio decoding, which (a) pays (its cost is shown separately).
2. Rerun cost.  Inside one ``prefect_test_harness()`` (started before any timing), the whole
   ``data_flow`` (profile demo, fresh work dir, the same corpus) runs in a fresh process, then
   again unchanged in another fresh process; the flow call itself is timed in each (imports and
   interpreter start-up excluded from both, reported apart).  A third, in-process rerun
   (``data_flow.with_options(task_runner=ThreadPoolTaskRunner(...))`` as the CLI does) is
   reported too.  Target: second / first < 5%.
3. Memory.  Peak RSS of the first flow run's process (ru_maxrss of the process itself) and of
   its process tree (psutil, polled every 50 ms: the sum over the process and its children, e.g.
   ffmpeg).  Then the label stage alone and the shard writer alone, each in a fresh process, over
   N items and over 3N items (the corpus folder plus two copies under other folder names, so
   item ids differ): the peak RSS ratio 3N/N should be ~1.0 (both stream item by item).

Prints a summary table (metric | value | target | ok) and writes every number to ``--out`` (JSON).
Child processes are this script run with ``--child``; they are not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Prefect reads its settings at import time: a private home, no analytics, quiet logs.  Children
# inherit these through the environment.
if "LLMASR_BENCH_PREFECT_HOME" not in os.environ:
    os.environ["LLMASR_BENCH_PREFECT_HOME"] = tempfile.mkdtemp(prefix="llmasr-bench-prefect-")
os.environ["PREFECT_HOME"] = os.environ["LLMASR_BENCH_PREFECT_HOME"]
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TQDM_DISABLE", "1")

MB = 1024 * 1024
PROFILE = "demo"
SEED = 0


# --- helpers -------------------------------------------------------------------------------------


def rss_now() -> int:
    """Current RSS of this process in bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maxrss_self() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def maxrss_children() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(mem / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def versions() -> dict:
    import ctranslate2
    import faster_whisper
    import prefect

    return {"faster_whisper": faster_whisper.__version__, "ctranslate2": ctranslate2.__version__, "prefect": prefect.__version__}


def demo_config(work_dir: Path, corpus: Path, n_items: int, sources: list[Path] | None = None):
    from llmasr.config import load_config

    return load_config(
        PROFILE,
        [f"demo.corpus_dir={corpus}", f"demo.n_items={n_items}"],
        work_dir=str(work_dir),
        sources=[str(s) for s in (sources or [corpus / "videos"])],
    )


def prepare(work_dir: Path, corpus: Path, n_items: int, sources: list[Path]):
    """Ingest + segment ``sources`` into ``work_dir`` with the pipeline's stage functions.

    Writes the items and segments manifests (children read them). Returns (cfg, layout, ok items,
    segments by item id)."""
    from llmasr.layout import WorkLayout
    from llmasr.records import STATUS_OK, Item, Segment, write_records
    from tasks import ingest, segment

    cfg = demo_config(work_dir, corpus, n_items, sources)
    layout = WorkLayout(Path(cfg.work_dir))
    files: list = []
    for src in ingest.resolve_sources(cfg.sources):
        f, _ = ingest.expand_source(src)
        files += f
    items = ingest.merge_items([ingest.ingest_local(files, layout, cfg.ingest)])
    ok = [i for i in items if i.status == STATUS_OK]
    segment.segment_batch(layout, ok, cfg.segment)
    segs = segment.read_segments(layout, ok, cfg.segment)
    write_records(layout.items, items, Item)
    write_records(layout.segments, [s for i in ok for s in segs[i.item_id]], Segment)
    return cfg, layout, ok, segs


class TreePeak:
    """Polls a process and its descendants every ``interval`` s: peak RSS of the process alone and
    of the tree (sum over the process and every descendant alive at the same poll)."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak_proc = 0
        self.peak_tree = 0
        self.max_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                own = self.proc.memory_info().rss
                kids = self.proc.children(recursive=True)
            except psutil.Error:
                break
            tree = own
            for k in kids:
                try:
                    tree += k.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_proc = max(self.peak_proc, own)
            self.peak_tree = max(self.peak_tree, tree)
            self.max_children = max(self.max_children, len(kids))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_child(mode: str, args: dict, log: Path, env: dict | None = None, timeout: float = 900) -> dict:
    """Run this script in ``--child mode`` in a fresh process; returns its JSON result plus the
    process wall time and the peaks polled by psutil."""
    result_path = log.with_suffix(".json")
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--child-args", json.dumps(args), "--child-out", str(result_path)]
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=fh, stderr=subprocess.STDOUT)
        poll = TreePeak(proc.pid)
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            poll.stop()
    wall = time.perf_counter() - t0
    if rc != 0 or not result_path.is_file():
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"child {mode} failed (rc={rc}); log {log}:\n{tail}")
    out = json.loads(result_path.read_text())
    out.update(process_wall_s=round(wall, 2), polled_peak_rss_proc=poll.peak_proc, polled_peak_rss_tree=poll.peak_tree, polled_max_children=poll.max_children)
    return out


# --- 1. labelling RTFx -----------------------------------------------------------------------------


def bench_labelling(cfg, layout, ok, segs, rounds: int) -> dict:
    from llmasr.audio import SAMPLE_RATE, load_audio
    from llmasr.records import Label
    from tasks import label

    # what label_batch sends to faster-whisper: the labellable segments, ends clipped to the audio
    todo = {i.item_id: label.labellable(segs[i.item_id], cfg.filter) for i in ok}
    work_items = [i for i in ok if todo[i.item_id]]
    t0 = time.perf_counter()
    audio = {i.item_id: load_audio(layout.abs(i.path)) for i in work_items}
    decode_s = time.perf_counter() - t0
    clips = {iid: [(s.start_s, min(s.end_s, len(audio[iid]) / SAMPLE_RATE)) for s in todo[iid]] for iid in audio}
    audio_s = sum(s.duration_s for v in todo.values() for s in v)
    n_segs = sum(len(v) for v in todo.values())

    t0 = time.perf_counter()
    labeller = label.load_labeller(cfg.label)
    load_s = time.perf_counter() - t0
    pipe = labeller.pipeline
    lc = cfg.label

    def direct_pass() -> tuple[float, dict[str, list[str]]]:
        texts: dict[str, list[str]] = {}
        t = time.perf_counter()
        for iid, a in audio.items():
            segments, _info = pipe.transcribe(
                a,
                language=lc.language,
                beam_size=lc.beam_size,
                batch_size=lc.batch_size,
                clip_timestamps=[{"start": s, "end": e} for s, e in clips[iid]],
                without_timestamps=True,
                vad_filter=False,
            )
            texts[iid] = [r.text.strip() for r in segments]  # consume the generator fully
        return time.perf_counter() - t, texts

    def pipeline_pass() -> tuple[float, object]:
        shutil.rmtree(layout.parts / "labels", ignore_errors=True)  # so it really labels
        t = time.perf_counter()
        stats = label.label_batch(layout, ok, segs, cfg.label, cfg.filter)
        return time.perf_counter() - t, stats

    # warm-up (untimed): one item through both paths' code, so neither gets the cold start
    first = work_items[0].item_id
    list(pipe.transcribe(audio[first], language=lc.language, beam_size=lc.beam_size, batch_size=lc.batch_size, clip_timestamps=[{"start": s, "end": e} for s, e in clips[first]], without_timestamps=True, vad_filter=False)[0])

    per_round = []
    direct_texts: dict[str, list[str]] = {}
    stats = None
    for r in range(rounds):
        order = ["direct", "pipeline"] if r % 2 == 0 else ["pipeline", "direct"]
        row: dict = {"round": r, "order": order}
        for which in order:
            if which == "direct":
                row["direct_s"], direct_texts = direct_pass()
            else:
                row["pipeline_s"], stats = pipeline_pass()
                row["pipeline_stats_wall_s"] = stats.wall_s
                assert stats.items == len(ok) and abs(stats.audio_s - audio_s) < 1e-6, stats
        per_round.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
        print(f"  round {r}: direct {row['direct_s']:.2f} s (RTFx {audio_s / row['direct_s']:.1f}), pipeline {row['pipeline_s']:.2f} s (RTFx {audio_s / row['pipeline_s']:.1f})", flush=True)

    # the two paths must have produced the same text
    from tasks.parts import read_part

    same = total = 0
    for i in work_items:
        labels = read_part(layout.part("labels", i.item_id), Label, label.item_key(segs[i.item_id], cfg.label, cfg.filter)) or []
        for lab, txt in zip(labels, direct_texts[i.item_id]):
            total += 1
            same += lab.text == txt
    direct_s = sum(r["direct_s"] for r in per_round)
    pipeline_s = sum(r["pipeline_s"] for r in per_round)
    res = {
        "items": len(ok),
        "items_with_segments": len(work_items),
        "segments": n_segs,
        "audio_s_per_pass": round(audio_s, 2),
        "rounds": rounds,
        "per_round": per_round,
        "model_load_s": round(load_s, 2),
        "audio_decode_s_all_items": round(decode_s, 3),
        "direct_wall_s": round(direct_s, 2),
        "pipeline_wall_s": round(pipeline_s, 2),
        "direct_rtfx": round(audio_s * rounds / direct_s, 2),
        "pipeline_rtfx": round(audio_s * rounds / pipeline_s, 2),
        "ratio_pipeline_over_direct": round(direct_s / pipeline_s, 3),
        "ratio_per_round": [round(r["direct_s"] / r["pipeline_s"], 3) for r in per_round],
        "texts_identical": f"{same}/{total}",
        "label_config": cfg.label.model_dump(),
    }
    return res


# --- children ----------------------------------------------------------------------------------------


def child_flow(a: dict) -> dict:
    """One data_flow run, as `llmasr data` runs it (the CLI's task runner), timed around the call."""
    t0 = time.perf_counter()
    from flows.data import data_flow
    from llmasr.cli import _task_runner
    from llmasr.config import load_config

    import_s = time.perf_counter() - t0
    cfg = load_config(PROFILE, a["overrides"], work_dir=a["work_dir"], sources=a["sources"])
    rss0 = rss_now()
    t0 = time.perf_counter()
    state = data_flow.with_options(task_runner=_task_runner(cfg))(sources=a["sources"], profile=PROFILE, work_dir=a["work_dir"], overrides=a["overrides"], return_state=True)
    flow_s = time.perf_counter() - t0
    result = state.result()
    return {
        "import_s": round(import_s, 2),
        "flow_s": round(flow_s, 3),
        "result": asdict(result),
        "task_states": _task_state_counts(state.state_details.flow_run_id),
        "rss_before_flow": rss0,
        "maxrss_self": maxrss_self(),
        "maxrss_children": maxrss_children(),
    }


def _task_state_counts(flow_run_id) -> dict[str, dict[str, int]]:
    """stage -> {state name: count} of a flow run's task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out: dict[str, dict[str, int]] = {}
    for tr in runs:
        stage = tr.name.rsplit("-", 1)[0]
        out.setdefault(stage, {})
        out[stage][tr.state.name] = out[stage].get(tr.state.name, 0) + 1
    return dict(sorted(out.items()))


def _child_inputs(a: dict):
    from llmasr.layout import WorkLayout
    from llmasr.records import STATUS_OK, Item, read_records
    from tasks import segment

    cfg = demo_config(Path(a["work_dir"]), Path(a["corpus"]), a["n_items"])
    layout = WorkLayout(Path(a["work_dir"]))
    ok = [i for i in read_records(layout.items, Item) if i.status == STATUS_OK]
    return cfg, layout, ok, segment.read_segments(layout, ok, cfg.segment)


def child_label(a: dict) -> dict:
    """label_batch over every item of a prepared work dir (its label parts deleted first)."""
    from tasks import label

    cfg, layout, ok, segs = _child_inputs(a)
    shutil.rmtree(layout.parts / "labels", ignore_errors=True)
    label.load_labeller(cfg.label)  # model loaded before the baseline: the ratio is about items
    rss0 = rss_now()
    stats = label.label_batch(layout, ok, segs, cfg.label, cfg.filter)
    return {"items": stats.items, "segments": stats.segments, "audio_s": round(stats.audio_s, 2), "wall_s": round(stats.wall_s, 2), "rss_before": rss0, "maxrss_self": maxrss_self(), "rss_after": rss_now()}


def child_shard(a: dict) -> dict:
    """The shard stage alone: labels (from the parts the label child wrote) -> filter.decide_all ->
    tasks.shard.write_shards into a fresh shards folder."""
    from llmasr.records import Segment, read_records
    from tasks import filter as filt
    from tasks import label, shard

    cfg, layout, ok, segs = _child_inputs(a)
    shutil.rmtree(layout.shards, ignore_errors=True)
    layout.shard_members.unlink(missing_ok=True)
    segments = read_records(layout.segments, Segment)
    labels = label.read_labels(layout, ok, segs, cfg.label, cfg.filter)
    decisions = filt.decide_all(segments, labels, cfg.filter, cfg.shard.validation_fraction)
    rss0 = rss_now()
    from llmasr.records import Item

    items = read_records(layout.items, Item)
    t0 = time.perf_counter()
    index = shard.write_shards(layout, items, segments, labels, decisions, cfg.shard)
    return {
        "kept": sum(d.kept for d in decisions),
        "segments": len(segments),
        "shards": len(index["shards"]),
        "shard_bytes": sum(e["bytes"] for e in index["shards"]),
        "wall_s": round(time.perf_counter() - t0, 2),
        "rss_before": rss0,
        "maxrss_self": maxrss_self(),
    }


CHILDREN = {"flow": child_flow, "label": child_label, "shard": child_shard}


# --- main --------------------------------------------------------------------------------------------


def fmt_mb(b: float) -> str:
    return f"{b / MB:.0f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=30, help="demo corpus items (N); the memory check also runs 3N")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of direct vs pipeline labelling")
    ap.add_argument("--out", default="bench/results/data_bench.json")
    ap.add_argument("--work", help="work folder (kept; a rerun reuses the corpus); default: a temp folder, removed")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--child-args", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        res = CHILDREN[args.child](json.loads(args.child_args))
        Path(args.child_out).write_text(json.dumps(res, indent=1, default=str))
        return 0

    command = " ".join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable, os.path.relpath(Path(__file__).resolve(), Path.cwd()), *sys.argv[1:]])
    t_start = time.perf_counter()
    tmp_work = args.work is None
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="llmasr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    n = args.items
    info = {"machine": machine(), "versions": versions(), "command": command, "items": n, "rounds": args.rounds}
    print(f"machine: {info['machine']}\nversions: {info['versions']}\ncommand: {command}\nwork: {work}", flush=True)
    results: dict = {**info}
    try:
        from tasks import demo_corpus

        print(f"\n[0] demo corpus: {n} items", flush=True)
        t0 = time.perf_counter()
        corpus = demo_corpus.generate(work / "corpus", n_items=n, seed=SEED)
        results["corpus_generate_s"] = round(time.perf_counter() - t0, 1)

        # --- 1 -------------------------------------------------------------------------------
        print("[1] labelling: pipeline (label_batch) vs faster-whisper direct", flush=True)
        t0 = time.perf_counter()
        cfg, layout, ok, segs = prepare(work / "label-N", corpus, n, [corpus / "videos"])
        results["ingest_segment_s"] = round(time.perf_counter() - t0, 1)
        results["labelling"] = lab = bench_labelling(cfg, layout, ok, segs, args.rounds)
        print(f"  audio {lab['audio_s_per_pass']} s x {args.rounds}: direct RTFx {lab['direct_rtfx']}, pipeline RTFx {lab['pipeline_rtfx']}, ratio {lab['ratio_pipeline_over_direct']}", flush=True)

        # --- 2 + 3 (flow) --------------------------------------------------------------------
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        print("[2] rerun cost of data_flow (Prefect test harness)", flush=True)
        t0 = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=120):
            results["harness_start_s"] = round(time.perf_counter() - t0, 1)
            env = {"PREFECT_API_URL": PREFECT_API_URL.value() or ""}
            fwork = work / "flow"
            shutil.rmtree(fwork, ignore_errors=True)
            fargs = {"work_dir": str(fwork), "sources": [str(corpus / "videos")], "overrides": [f"demo.corpus_dir={corpus}", f"demo.n_items={n}"]}
            first = run_child("flow", fargs, logs / "flow-1.log", env)
            print(f"  first run:  flow {first['flow_s']:.1f} s (process {first['process_wall_s']:.1f} s, imports {first['import_s']:.1f} s), labelled {first['result']['labelled_items']} items", flush=True)
            second = run_child("flow", fargs, logs / "flow-2.log", env)
            print(f"  second run: flow {second['flow_s']:.2f} s (process {second['process_wall_s']:.1f} s), labelled {second['result']['labelled_items']} items", flush=True)
            from flows.data import data_flow
            from prefect.task_runners import ThreadPoolTaskRunner

            fcfg = cfg  # the same profile's runner settings (loaded in [1])
            t0 = time.perf_counter()
            third = data_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=fcfg.runner.max_workers))(sources=fargs["sources"], profile=PROFILE, work_dir=fargs["work_dir"], overrides=fargs["overrides"])
            third_s = time.perf_counter() - t0
            # and once more in-process: the first in-process call pays one-off client/registration costs
            t0 = time.perf_counter()
            data_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=fcfg.runner.max_workers))(sources=fargs["sources"], profile=PROFILE, work_dir=fargs["work_dir"], overrides=fargs["overrides"])
            fourth_s = time.perf_counter() - t0
            print(f"  in-process reruns: {third_s:.2f} s, {fourth_s:.2f} s (labelled {third.labelled_items})", flush=True)
        results["rerun"] = {
            "first": first,
            "second": second,
            "in_process_rerun_s": [round(third_s, 3), round(fourth_s, 3)],
            "in_process_rerun_labelled": third.labelled_items,
            "fraction_second_over_first": round(second["flow_s"] / first["flow_s"], 4),
            "fraction_second_over_first_process_wall": round(second["process_wall_s"] / first["process_wall_s"], 4),
            "fraction_in_process_rerun_over_first": round(fourth_s / first["flow_s"], 4),
        }
        results["flow_memory"] = {
            "maxrss_flow_process": first["maxrss_self"],
            "polled_peak_rss_flow_process": first["polled_peak_rss_proc"],
            "polled_peak_rss_tree": first["polled_peak_rss_tree"],
            "maxrss_grandchildren": first["maxrss_children"],
        }

        # --- 3 (label and shard alone, N vs 3N) ---------------------------------------------------
        print("[3] memory: label stage and shard writer alone, N vs 3N items", flush=True)
        copies = []
        for k in (1, 2):
            dst = work / f"corpus-copy{k}" / f"videos_copy{k}"
            if not dst.exists():
                shutil.copytree(corpus / "videos", dst)
            copies.append(dst)
        t0 = time.perf_counter()
        prepare(work / "label-3N", corpus, n, [corpus / "videos", *copies])
        results["ingest_segment_3N_s"] = round(time.perf_counter() - t0, 1)
        mem: dict = {}
        for tag, wdir in (("N", work / "label-N"), ("3N", work / "label-3N")):
            a = {"work_dir": str(wdir), "corpus": str(corpus), "n_items": n}
            mem[f"label_{tag}"] = run_child("label", a, logs / f"label-{tag}.log")
            m = mem[f"label_{tag}"]
            print(f"  label {tag}: {m['items']} items, {m['audio_s']} s audio in {m['wall_s']} s; peak {fmt_mb(m['maxrss_self'])} (before labelling {fmt_mb(m['rss_before'])})", flush=True)
            mem[f"shard_{tag}"] = run_child("shard", a, logs / f"shard-{tag}.log")
            m = mem[f"shard_{tag}"]
            print(f"  shard {tag}: {m['kept']} kept of {m['segments']} segments -> {m['shards']} shards; peak {fmt_mb(m['maxrss_self'])} (before writing {fmt_mb(m['rss_before'])})", flush=True)
        for stage in ("label", "shard"):
            a, b = mem[f"{stage}_N"], mem[f"{stage}_3N"]
            mem[f"{stage}_peak_ratio_3N_over_N"] = round(b["maxrss_self"] / a["maxrss_self"], 3)
            mem[f"{stage}_growth_over_baseline_N_MB"] = round((a["maxrss_self"] - a["rss_before"]) / MB, 1)
            mem[f"{stage}_growth_over_baseline_3N_MB"] = round((b["maxrss_self"] - b["rss_before"]) / MB, 1)
        results["stage_memory"] = mem
    finally:
        results["total_s"] = round(time.perf_counter() - t_start, 1)
        if tmp_work and "stage_memory" in results:
            shutil.rmtree(work, ignore_errors=True)

    summary = summarize(results)
    results["summary"] = summary
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print_summary(results, summary)
    print(f"\nresults: {out}")
    return 0 if all(r["ok"] in (True, None) for r in summary) else 1


def summarize(r: dict) -> list[dict]:
    lab, rr, fm, sm = r["labelling"], r["rerun"], r["flow_memory"], r["stage_memory"]
    rows = [
        ("label RTFx, faster-whisper direct", f"{lab['direct_rtfx']:.1f}", "", None),
        ("label RTFx, pipeline (label_batch)", f"{lab['pipeline_rtfx']:.1f}", "", None),
        ("label RTFx ratio pipeline/direct", f"{lab['ratio_pipeline_over_direct']:.3f}", ">= 0.9", lab["ratio_pipeline_over_direct"] >= 0.9),
        ("flow 1st run (fresh work dir)", f"{rr['first']['flow_s']:.1f} s", "", None),
        ("label RTFx as the flow reports it (1st run)", f"{rr['first']['result']['label_rtfx']:.1f}", "", None),
        ("flow 2nd run (unchanged)", f"{rr['second']['flow_s']:.2f} s", "", None),
        ("rerun cost 2nd/1st (flow call)", f"{100 * rr['fraction_second_over_first']:.1f}%", "< 5%", rr["fraction_second_over_first"] < 0.05),
        ("rerun cost 2nd/1st (whole process)", f"{100 * rr['fraction_second_over_first_process_wall']:.1f}%", "", None),
        ("rerun cost in-process/1st", f"{100 * rr['fraction_in_process_rerun_over_first']:.1f}%", "< 5%", rr["fraction_in_process_rerun_over_first"] < 0.05),
        ("peak RSS data flow process", fmt_mb(fm["maxrss_flow_process"]), "< 3 GB", fm["maxrss_flow_process"] < 3 * 1024**3),
        ("peak RSS data flow tree (50 ms poll)", fmt_mb(fm["polled_peak_rss_tree"]), "< 3 GB", fm["polled_peak_rss_tree"] < 3 * 1024**3),
        (f"peak RSS label N={sm['label_N']['items']} / 3N={sm['label_3N']['items']}", f"{fmt_mb(sm['label_N']['maxrss_self'])} / {fmt_mb(sm['label_3N']['maxrss_self'])}", "", None),
        ("label peak RSS ratio 3N/N", f"{sm['label_peak_ratio_3N_over_N']:.3f}", "<= 1.10", sm["label_peak_ratio_3N_over_N"] <= 1.10),
        ("label RSS growth over baseline N / 3N", f"{sm['label_growth_over_baseline_N_MB']:.0f} / {sm['label_growth_over_baseline_3N_MB']:.0f} MB", "", None),
        (f"peak RSS shard N={sm['shard_N']['kept']} / 3N={sm['shard_3N']['kept']} kept", f"{fmt_mb(sm['shard_N']['maxrss_self'])} / {fmt_mb(sm['shard_3N']['maxrss_self'])}", "", None),
        ("shard peak RSS ratio 3N/N", f"{sm['shard_peak_ratio_3N_over_N']:.3f}", "<= 1.10", sm["shard_peak_ratio_3N_over_N"] <= 1.10),
        ("shard RSS growth over baseline N / 3N", f"{sm['shard_growth_over_baseline_N_MB']:.0f} / {sm['shard_growth_over_baseline_3N_MB']:.0f} MB", "", None),
    ]
    return [{"metric": m, "value": v, "target": t, "ok": ok} for m, v, t, ok in rows]


def print_summary(r: dict, rows: list[dict]) -> None:
    lab = r["labelling"]
    m = r["machine"]
    print("\n=== data bench summary ===")
    print(f"machine : {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['ram_gb']} GB RAM, Python {m['python']}")
    print(f"versions: faster-whisper {r['versions']['faster_whisper']}, ctranslate2 {r['versions']['ctranslate2']}, prefect {r['versions']['prefect']}")
    print(f"command : {r['command']}")
    lc = lab["label_config"]
    print(f"labelling: {lab['items']} items, {lab['segments']} segments, {lab['audio_s_per_pass']} s audio per pass, {lab['rounds']} alternating rounds; model {lc['model']} {lc['device']} {lc['compute_type']}, beam {lc['beam_size']}, batch {lc['batch_size']}, cpu_threads {lc['cpu_threads']}; model load {lab['model_load_s']} s (excluded), audio decode {lab['audio_decode_s_all_items']} s per pass (paid by the pipeline only); texts identical {lab['texts_identical']}")
    w = [max(len(x[k]) for x in rows + [{"metric": "metric", "value": "value", "target": "target"}]) for k in ("metric", "value", "target")]
    print(f"{'metric':<{w[0]}} | {'value':>{w[1]}} | {'target':<{w[2]}} | ok")
    print(f"{'-' * w[0]}-+-{'-' * w[1]}-+-{'-' * w[2]}-+---")
    for x in rows:
        ok = "" if x["ok"] is None else ("yes" if x["ok"] else "NO")
        print(f"{x['metric']:<{w[0]}} | {x['value']:>{w[1]}} | {x['target']:<{w[2]}} | {ok}")
    print(f"total bench time: {r['total_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
