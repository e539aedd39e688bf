""".venv/bin/python bench/data_bench.py [--items 30] [--rounds 2] [--mem-items 10] \
[--out bench/results/data_bench.json] [--work DIR]

Benchmark of the data half on this machine, all in one run so that ratios compare like with like
(same model object, same corpus, same machine state).  CPU only, offline; the demo profile's
settings (faster-whisper bundled tiny.en, int8, beam 5, batch 8).  With the defaults: about 6-7
minutes on an idle 2-core machine, 9.5 minutes on one where other processes kept ~1 core busy
(--mem-items 10 rather than 30 keeps it there: labelling 3 x 30 files more would add 2-4 minutes).

1. Labelling RTFx, pipeline vs faster-whisper called directly.  The demo corpus (``--items``
   espeak-ng "videos") is generated, ingested and segmented with the pipeline's own stage
   functions.  After an untimed warm-up of both paths, ``--rounds`` rounds go over every item and
   time, back to back (which one first alternates from item to item and between rounds, so a
   burst of background load hits both alike):
     (a) ``tasks.label.label_batch(layout, [item], ...)`` with the item's label part deleted first
         (so it labels: decode the audio, transcribe, write the part), and
     (b) ``BatchedInferencePipeline.transcribe(audio, clip_timestamps=..., batch_size, beam_size,
         language, without_timestamps=True, vad_filter=False)`` called directly on the same clips
         label_batch sends, on audio decoded beforehand, the segment generator consumed.
   Both use the very same pipeline object (``label.load_labeller``): model load is excluded from
   both; (b) also excludes audio decoding, which (a) pays.  Reported: RTFx of each (audio seconds
   / wall seconds), the wall ratio (target >= 0.9), the ratio of per-item bests over the rounds,
   the CPU-time ratio and the median per-item ratio (the last three less sensitive to other
   processes on a shared machine), and whether the texts of (a) and (b) are identical.  Calling
   label_batch per item rather than once for all items costs nothing measurable (the labeller is
   cached per process); the bookkeeping label_batch does per item (keys, part lookup) is timed
   separately as a no-op label_batch over all items.
2. Rerun cost.  Inside one ``prefect_test_harness()`` server (started before any timing), the
   whole ``data_flow`` (profile demo, fresh work dir, the same corpus, sources=[<corpus>/videos])
   runs in a fresh process, as the CLI runs it (``data_flow.with_options(task_runner=
   ThreadPoolTaskRunner(max_workers=runner.max_workers))``), then again unchanged in another fresh
   process (and once more in that same, now warm, process).  The flow call itself is timed
   (imports excluded from both, reported apart).  Target: second / first < 5%.  Also shown: the
   label RTFx the flow itself reports for the first run next to labelled audio / the label
   stage's span (first label task start to last end, from the Prefect API).
3. Memory.  Peak RSS of the first flow run's process (its VmHWM) and of its process tree
   (psutil, every 50 ms: the sum over the process and its children, e.g. ffmpeg).  Target < 3 GB.
   Then the label stage alone and the shard writer alone (filter.decide_all + shard.write_shards),
   each in a fresh process, over M = ``--mem-items`` files of the corpus and over 3M (the same
   files plus two copies in other folders, so item ids differ): the peak RSS ratio 3M/M should be
   ~1.0 (both stream item by item / shard by shard).  Peaks are VmHWM (/proc/self/status), reset
   (clear_refs) after imports and model load so they are the stage's own; not ru_maxrss, which
   Linux carries over fork + exec (a child of this ~0.8 GB parent would report >= 0.8 GB).

Prints a summary table (metric | value | target | ok) plus the machine, versions and the CPU that
other processes used meanwhile, and writes every number to ``--out`` (JSON).  Exit status 1 when a
target is missed.  Child processes are this script run with ``--child`` (not meant to be run by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers
from machine import CpuMeter, machine, print_metric_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Prefect reads its settings at import time: a private home, no analytics, quiet logs.  Children
# inherit these through the environment.
_OWN_PREFECT_HOME = "LLMASR_BENCH_PREFECT_HOME" not in os.environ  # the parent made it; it removes it
if _OWN_PREFECT_HOME:
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
    """ru_maxrss in bytes.  Beware: Linux keeps it across fork + exec, so in a child it is at least
    the parent's RSS at fork time (here the parent holds a model: ~0.8 GB).  Kept for reference;
    ``peak_rss`` is the number to use."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def peak_rss() -> int:
    """This process's peak RSS since exec (or since ``reset_peak_rss``): VmHWM, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return maxrss_self()


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a later ``peak_rss`` is one stage's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def versions() -> dict:
    import ctranslate2
    import faster_whisper
    import prefect

    return {
        "faster_whisper": faster_whisper.__version__,
        "ctranslate2": ctranslate2.__version__,
        "prefect": prefect.__version__,
    }


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
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--child-args",
        json.dumps(args),
        "--child-out",
        str(result_path),
    ]
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=fh, stderr=subprocess.STDOUT
        )
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
    out.update(
        process_wall_s=round(wall, 2),
        polled_peak_rss_proc=poll.peak_proc,
        polled_peak_rss_tree=poll.peak_tree,
        polled_max_children=poll.max_children,
    )
    return out


# --- 1. labelling RTFx -----------------------------------------------------------------------------


def bench_labelling(cfg, layout, ok, segs, rounds: int) -> dict:
    """Paired, interleaved timing: for every item, faster-whisper direct and label_batch([item])
    back to back (order flipped from one item to the next and between rounds), so a burst of
    background load hits both paths alike.  Wall time and this process's CPU time (all threads)."""
    from llmasr.audio import SAMPLE_RATE, load_audio
    from llmasr.records import Label
    from tasks import label
    from tasks.parts import read_part

    # what label_batch sends to faster-whisper: the labellable segments, ends clipped to the audio
    todo = {i.item_id: label.labellable(segs[i.item_id], cfg.filter) for i in ok}
    work_items = [i for i in ok if todo[i.item_id]]
    t0 = time.perf_counter()
    audio = {i.item_id: load_audio(layout.abs(i.path)) for i in work_items}
    decode_s = time.perf_counter() - t0
    clips = {
        iid: [(s.start_s, min(s.end_s, len(audio[iid]) / SAMPLE_RATE)) for s in todo[iid]] for iid in audio
    }
    audio_of = {iid: sum(s.duration_s for s in todo[iid]) for iid in audio}
    audio_s = sum(audio_of.values())
    n_segs = sum(len(v) for v in todo.values())

    t0 = time.perf_counter()
    labeller = label.load_labeller(cfg.label)
    load_s = time.perf_counter() - t0
    pipe = labeller.pipeline
    lc = cfg.label

    def direct(iid: str) -> list[str]:
        segments, _info = pipe.transcribe(
            audio[iid],
            language=lc.language,
            beam_size=lc.beam_size,
            batch_size=lc.batch_size,
            clip_timestamps=[{"start": s, "end": e} for s, e in clips[iid]],
            without_timestamps=True,
            vad_filter=False,
        )
        return [r.text.strip() for r in segments]  # consumes the generator fully

    def pipeline(item) -> None:
        layout.part("labels", item.item_id).unlink(missing_ok=True)  # so it really labels
        stats = label.label_batch(layout, [item], segs, cfg.label, cfg.filter)
        assert stats.items == 1 and abs(stats.audio_s - audio_of[item.item_id]) < 1e-6, stats

    def timed(fn, *a):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*a)
        return time.perf_counter() - w, time.process_time() - c, out

    # warm-up (untimed): the first item through both paths, so neither gets the cold start; items
    # with nothing to label get their (empty) parts now, so the no-op pass below is a pure no-op
    direct(work_items[0].item_id)
    pipeline(work_items[0])
    label.label_batch(layout, [i for i in ok if not todo[i.item_id]], segs, cfg.label, cfg.filter)

    meter = CpuMeter()
    rows = []
    direct_texts: dict[str, list[str]] = {}
    for r in range(rounds):
        for k, item in enumerate(work_items):
            iid = item.item_id
            row = {"round": r, "item_id": iid, "audio_s": round(audio_of[iid], 3)}
            for which in ["direct", "pipeline"] if (k + r) % 2 == 0 else ["pipeline", "direct"]:
                if which == "direct":
                    row["direct_wall_s"], row["direct_cpu_s"], direct_texts[iid] = timed(direct, iid)
                else:
                    row["pipeline_wall_s"], row["pipeline_cpu_s"], _ = timed(pipeline, item)
            rows.append(row)
        done = [x for x in rows if x["round"] == r]
        dw, pw = sum(x["direct_wall_s"] for x in done), sum(x["pipeline_wall_s"] for x in done)
        print(
            f"  round {r}: direct {dw:.2f} s (RTFx {audio_s / dw:.1f}), pipeline {pw:.2f} s (RTFx "
            f"{audio_s / pw:.1f}), ratio {dw / pw:.3f}",
            flush=True,
        )
    load = meter.stop()

    # the pipeline's own bookkeeping: label_batch over all items with every part present (no labelling)
    t0 = time.perf_counter()
    noop = label.label_batch(layout, ok, segs, cfg.label, cfg.filter)
    noop_s = time.perf_counter() - t0
    assert noop.items == 0, noop

    # both paths must have produced the same text
    same = total = 0
    for i in work_items:
        labels = (
            read_part(
                layout.part("labels", i.item_id),
                Label,
                label.item_key(layout, i, segs[i.item_id], cfg.label, cfg.filter),
            )
            or []
        )
        for lab, txt in zip(labels, direct_texts[i.item_id]):
            total += 1
            same += lab.text == txt

    def tot(key: str) -> float:
        return sum(x[key] for x in rows)

    per_item_ratio = sorted(x["direct_wall_s"] / x["pipeline_wall_s"] for x in rows)
    # per item, the fastest of the rounds for each path (timeit's estimator: noise only adds time)
    best_d = {
        i.item_id: min(x["direct_wall_s"] for x in rows if x["item_id"] == i.item_id) for i in work_items
    }
    best_p = {
        i.item_id: min(x["pipeline_wall_s"] for x in rows if x["item_id"] == i.item_id) for i in work_items
    }
    return {
        "items": len(ok),
        "items_with_segments": len(work_items),
        "segments": n_segs,
        "audio_s_per_pass": round(audio_s, 2),
        "rounds": rounds,
        "model_load_s": round(load_s, 2),
        "audio_decode_s_all_items": round(decode_s, 3),
        "noop_label_batch_all_items_s": round(noop_s, 3),
        "direct_wall_s": round(tot("direct_wall_s"), 2),
        "pipeline_wall_s": round(tot("pipeline_wall_s"), 2),
        "direct_cpu_s": round(tot("direct_cpu_s"), 2),
        "pipeline_cpu_s": round(tot("pipeline_cpu_s"), 2),
        "direct_rtfx": round(audio_s * rounds / tot("direct_wall_s"), 2),
        "pipeline_rtfx": round(audio_s * rounds / tot("pipeline_wall_s"), 2),
        "ratio_pipeline_over_direct": round(tot("direct_wall_s") / tot("pipeline_wall_s"), 3),
        "ratio_pipeline_over_direct_cpu": round(tot("direct_cpu_s") / tot("pipeline_cpu_s"), 3),
        "ratio_per_item_median": round(per_item_ratio[len(per_item_ratio) // 2], 3),
        "direct_rtfx_best_of_rounds": round(audio_s / sum(best_d.values()), 2),
        "pipeline_rtfx_best_of_rounds": round(audio_s / sum(best_p.values()), 2),
        "ratio_best_of_rounds": round(sum(best_d.values()) / sum(best_p.values()), 3),
        "texts_identical": f"{same}/{total}",
        "background_load": load,
        "label_config": cfg.label.model_dump(),
        "per_item": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in x.items()} for x in rows],
    }


# --- children ----------------------------------------------------------------------------------------


def child_flow(a: dict) -> dict:
    """data_flow run ``repeat`` times in this process, as `llmasr data` runs it (the CLI's task
    runner), each call timed; the first call is the one a user gets from a fresh `llmasr data`."""
    t0 = time.perf_counter()
    from cli.common import task_runner
    from flows.data import data_flow
    from llmasr.config import load_config

    import_s = time.perf_counter() - t0
    cfg = load_config(PROFILE, a["overrides"], work_dir=a["work_dir"], sources=a["sources"])
    rss0 = rss_now()
    runs = []
    for _ in range(a.get("repeat", 1)):
        t0 = time.perf_counter()
        state = data_flow.with_options(task_runner=task_runner(cfg))(
            sources=a["sources"],
            profile=PROFILE,
            work_dir=a["work_dir"],
            overrides=a["overrides"],
            return_state=True,
        )
        flow_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tasks = _task_state_counts(state.state_details.flow_run_id)  # after the timing: not part of the run
        runs.append(
            {
                "flow_s": round(flow_s, 3),
                "result": asdict(state.result()),
                "tasks": tasks,
                "task_query_s": round(time.perf_counter() - t0, 2),
            }
        )
    return {
        "import_s": round(import_s, 2),
        **runs[0],
        "repeats": runs[1:],
        "rss_before_flow": rss0,
        "peak_rss": peak_rss(),
        "maxrss_self_inherited": maxrss_self(),
    }


def _task_state_counts(flow_run_id) -> dict[str, dict]:
    """stage -> {"states": {state name: count}, "tasks", "sum_run_s" (their run times added up),
    "span_s" (first start to last end: the stage's wall time when its tasks overlap)}."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out: dict[str, dict] = {}
    spans: dict[str, list] = {}
    for tr in runs:
        stage = tr.name.rsplit("-", 1)[0]
        agg = out.setdefault(stage, {"states": {}, "tasks": 0, "sum_run_s": 0.0})
        agg["states"][tr.state.name] = agg["states"].get(tr.state.name, 0) + 1
        agg["tasks"] += 1
        agg["sum_run_s"] = round(agg["sum_run_s"] + tr.total_run_time.total_seconds(), 3)
        if tr.start_time and tr.end_time:
            spans.setdefault(stage, []).append((tr.start_time, tr.end_time))
    for stage, se in spans.items():
        out[stage]["span_s"] = round((max(e for _, e in se) - min(st for st, _ in se)).total_seconds(), 3)
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
    peak0 = peak_rss()
    reset = reset_peak_rss()
    rss0 = rss_now()
    stats = label.label_batch(layout, ok, segs, cfg.label, cfg.filter)
    peak = peak_rss()
    return {
        "items": stats.items,
        "segments": stats.segments,
        "audio_s": round(stats.audio_s, 2),
        "wall_s": round(stats.wall_s, 2),
        "peak_rss_before_stage": peak0,  # imports + model load
        "hwm_reset": reset,
        "rss_before": rss0,
        "peak_rss": peak,  # during label_batch (the process's peak if the reset failed)
        "process_peak_rss": max(peak0, peak),
        "rss_after": rss_now(),
    }


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
    from llmasr.records import Item

    items = read_records(layout.items, Item)
    peak0 = peak_rss()
    reset = reset_peak_rss()
    rss0 = rss_now()
    t0 = time.perf_counter()
    index = shard.write_shards(layout, items, segments, labels, decisions, cfg.shard)
    peak = peak_rss()
    return {
        "kept": sum(d.kept for d in decisions),
        "segments": len(segments),
        "shards": len(index["shards"]),
        "shard_bytes": sum(e["bytes"] for e in index["shards"]),
        "wall_s": round(time.perf_counter() - t0, 2),
        "peak_rss_before_stage": peak0,
        "hwm_reset": reset,
        "rss_before": rss0,
        "peak_rss": peak,  # during write_shards (the process's peak if the reset failed)
        "process_peak_rss": max(peak0, peak),
    }


CHILDREN = {"flow": child_flow, "label": child_label, "shard": child_shard}


# --- main --------------------------------------------------------------------------------------------


def fmt_mb(b: float) -> str:
    return f"{b / MB:.0f} MB"


def subset_folder(corpus: Path, dst: Path, n: int) -> Path:
    """``n`` files of the demo corpus with their captions: its "clean" items first (they have kept
    segments, so the shard writer has work), then the others in plan order."""
    if dst.is_dir():
        return dst
    plan = json.loads((corpus / "corpus.json").read_text())["items"]
    chosen = sorted(range(len(plan)), key=lambda k: (plan[k]["purpose"] != "clean", k))[:n]
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k in chosen:
        item = plan[k]
        for name in [item["name"] + item["ext"]] + (
            [f"{item['name']}.{item['captions']}"] if item["captions"] else []
        ):
            shutil.copy2(corpus / "videos" / name, tmp / name)
    tmp.rename(dst)
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--items", type=int, default=30, help="demo corpus items (labelling and flow runs); default 30"
    )
    ap.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds of direct vs pipeline labelling; default 2"
    )
    ap.add_argument(
        "--mem-items",
        type=int,
        default=10,
        help="M: the label/shard memory check runs M vs 3M files of the corpus; default 10",
    )
    ap.add_argument("--out", default="bench/results/data_bench.json")
    ap.add_argument(
        "--work", help="work folder (kept; a rerun reuses the corpus); default: a temp folder, removed"
    )
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--child-args", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        res = CHILDREN[args.child](json.loads(args.child_args))
        Path(args.child_out).write_text(json.dumps(res, indent=1, default=str))
        return 0

    exe = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    command = " ".join([exe, os.path.relpath(Path(__file__).resolve(), Path.cwd()), *sys.argv[1:]])
    t_start = time.perf_counter()
    tmp_work = args.work is None
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="llmasr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    n, m = args.items, args.mem_items
    results: dict = {
        "machine": machine(),
        "versions": versions(),
        "command": command,
        "items": n,
        "rounds": args.rounds,
        "mem_items": m,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }
    print(
        f"machine: {results['machine']}\nversions: {results['versions']}\ncommand: {command}\nwork: {work}",
        flush=True,
    )
    ok_run = False
    try:
        from tasks import demo_corpus

        print(f"\n[0] demo corpus: {n} items", flush=True)
        t0 = time.perf_counter()
        corpus = demo_corpus.generate(work / "corpus", n_items=n, seed=SEED)
        results["corpus_generate_s"] = round(time.perf_counter() - t0, 1)

        # --- 1 -------------------------------------------------------------------------------
        print(
            "[1] labelling: pipeline (label_batch) vs faster-whisper direct, interleaved per item", flush=True
        )
        t0 = time.perf_counter()
        cfg, layout, ok, segs = prepare(work / "label-N", corpus, n, [corpus / "videos"])
        results["ingest_segment_s"] = round(time.perf_counter() - t0, 1)
        results["labelling"] = lab = bench_labelling(cfg, layout, ok, segs, args.rounds)
        print(
            f"  audio {lab['audio_s_per_pass']} s x {args.rounds}: direct RTFx {lab['direct_rtfx']}, "
            f"pipeline RTFx {lab['pipeline_rtfx']}, ratio {lab['ratio_pipeline_over_direct']} (CPU time "
            f"ratio {lab['ratio_pipeline_over_direct_cpu']}); other processes used "
            f"{lab['background_load']['other_cores_avg']} cores on average",
            flush=True,
        )

        # --- 2 + 3 (flow) --------------------------------------------------------------------
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        print("[2] rerun cost of data_flow (one Prefect test harness server for all runs)", flush=True)
        t0 = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=120):
            results["harness_start_s"] = round(time.perf_counter() - t0, 1)
            env = {"PREFECT_API_URL": PREFECT_API_URL.value() or ""}
            fwork = work / "flow"
            shutil.rmtree(fwork, ignore_errors=True)
            fargs = {
                "work_dir": str(fwork),
                "sources": [str(corpus / "videos")],
                "overrides": [f"demo.corpus_dir={corpus}", f"demo.n_items={n}"],
            }
            meter = CpuMeter()
            first = run_child("flow", fargs, logs / "flow-1.log", env)
            load1 = meter.stop()
            print(
                f"  first run:  flow {first['flow_s']:.1f} s (process {first['process_wall_s']:.1f} s, "
                f"imports {first['import_s']:.1f} s), labelled {first['result']['labelled_items']} items; "
                f"other processes used {load1['other_cores_avg']} cores",
                flush=True,
            )
            meter = CpuMeter()
            second = run_child("flow", {**fargs, "repeat": 2}, logs / "flow-2.log", env)
            load2 = meter.stop()
            warm_s = second["repeats"][0]["flow_s"]
            print(
                f"  second run: flow {second['flow_s']:.2f} s (process {second['process_wall_s']:.1f} s), "
                f"labelled {second['result']['labelled_items']} items; same process once more: {warm_s:.2f} "
                "s",
                flush=True,
            )
        not_cached = {
            st: c["states"]
            for r in [second, *second["repeats"]]
            for st, c in r["tasks"].items()
            if st != "demo-corpus" and set(c["states"]) != {"Cached"}
        }
        lt = first["tasks"].get("label", {})
        results["rerun"] = {
            "first": first,
            "second": second,
            "background_load_first": load1,
            "background_load_second": load2,
            "second_not_cached_stages": not_cached,  # non-empty: code or inputs changed between runs
            "fraction_second_over_first": round(second["flow_s"] / first["flow_s"], 4),
            "fraction_second_over_first_process_wall": round(
                second["process_wall_s"] / first["process_wall_s"], 4
            ),
            "fraction_warm_rerun_over_first": round(warm_s / first["flow_s"], 4),
            # the label stage of the 1st run: its tasks overlap (runner.max_workers), so the RTFx the
            # flow reports (audio / the tasks' wall times added up) is below audio / the stage's span
            "first_label_tasks": lt.get("tasks"),
            "first_label_sum_run_s": lt.get("sum_run_s"),
            "first_label_span_s": lt.get("span_s"),
            "first_label_rtfx_by_span": round(lab["audio_s_per_pass"] / lt["span_s"], 2)
            if lt.get("span_s")
            else None,
        }
        results["flow_memory"] = {
            "peak_rss_flow_process": first["peak_rss"],  # VmHWM of the flow's process
            "polled_peak_rss_flow_process": first["polled_peak_rss_proc"],
            "polled_peak_rss_tree": first["polled_peak_rss_tree"],
            # not a measure: see maxrss_self()
            "ru_maxrss_flow_process_inherited": first["maxrss_self_inherited"],
        }

        # --- 3 (label and shard alone, M vs 3M) -----------------------------------------------
        print(f"[3] memory: label stage and shard writer alone, {m} vs {3 * m} files", flush=True)
        folders = [subset_folder(corpus, work / "mem" / f"videos_{k}", m) for k in "abc"]
        t0 = time.perf_counter()
        prepare(work / "mem-M", corpus, n, folders[:1])
        prepare(work / "mem-3M", corpus, n, folders)
        results["ingest_segment_mem_s"] = round(time.perf_counter() - t0, 1)
        mem: dict = {}
        for tag, wdir in (("M", work / "mem-M"), ("3M", work / "mem-3M")):
            a = {"work_dir": str(wdir), "corpus": str(corpus), "n_items": n}
            mem[f"label_{tag}"] = x = run_child("label", a, logs / f"label-{tag}.log")
            print(
                f"  label {tag}: {x['items']} items, {x['audio_s']} s audio in {x['wall_s']} s; peak "
                f"{fmt_mb(x['peak_rss'])} during labelling (RSS before {fmt_mb(x['rss_before'])}; process "
                f"peak {fmt_mb(x['process_peak_rss'])})",
                flush=True,
            )
            mem[f"shard_{tag}"] = x = run_child("shard", a, logs / f"shard-{tag}.log")
            print(
                f"  shard {tag}: {x['kept']} kept of {x['segments']} segments -> {x['shards']} shards; peak "
                f"{fmt_mb(x['peak_rss'])} during write_shards (RSS before {fmt_mb(x['rss_before'])}; process "
                f"peak {fmt_mb(x['process_peak_rss'])})",
                flush=True,
            )
        for stage in ("label", "shard"):
            x, y = mem[f"{stage}_M"], mem[f"{stage}_3M"]
            mem[f"{stage}_peak_ratio"] = round(y["peak_rss"] / x["peak_rss"], 3)
            mem[f"{stage}_process_peak_ratio"] = round(y["process_peak_rss"] / x["process_peak_rss"], 3)
            mem[f"{stage}_growth_M_MB"] = round((x["peak_rss"] - x["rss_before"]) / MB, 1)
            mem[f"{stage}_growth_3M_MB"] = round((y["peak_rss"] - y["rss_before"]) / MB, 1)
        results["stage_memory"] = mem
        ok_run = True
    finally:
        results["total_s"] = round(time.perf_counter() - t_start, 1)
        results["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        if not ok_run:
            print(f"\nbench failed; work folder kept: {work}", file=sys.stderr)
        elif tmp_work:
            shutil.rmtree(work, ignore_errors=True)
        if _OWN_PREFECT_HOME:
            shutil.rmtree(os.environ["PREFECT_HOME"], ignore_errors=True)

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
    first, second = rr["first"], rr["second"]
    lM, l3, sM, s3 = sm["label_M"], sm["label_3M"], sm["shard_M"], sm["shard_3M"]
    rows = [
        ("label RTFx, faster-whisper direct", f"{lab['direct_rtfx']:.1f}", "", None),
        ("label RTFx, pipeline (label_batch)", f"{lab['pipeline_rtfx']:.1f}", "", None),
        (
            "label RTFx ratio pipeline/direct (wall)",
            f"{lab['ratio_pipeline_over_direct']:.3f}",
            ">= 0.9",
            lab["ratio_pipeline_over_direct"] >= 0.9,
        ),
        ("  same, best of rounds per item", f"{lab['ratio_best_of_rounds']:.3f}", "", None),
        (
            "  same, CPU time / median per item",
            f"{lab['ratio_pipeline_over_direct_cpu']:.3f} / {lab['ratio_per_item_median']:.3f}",
            "",
            None,
        ),
        ("label RTFx the flow reports (1st run)", f"{first['result']['label_rtfx']:.1f}", "", None),
        (
            f"  flow label stage: audio / span ({rr['first_label_tasks']} tasks)",
            f"{rr['first_label_rtfx_by_span'] or 0:.1f}",
            "",
            None,
        ),
        (f"flow 1st run ({first['result']['items']} files, fresh)", f"{first['flow_s']:.1f} s", "", None),
        ("flow 2nd run (unchanged, fresh process)", f"{second['flow_s']:.2f} s", "", None),
        (
            "rerun cost 2nd/1st (flow call)",
            f"{100 * rr['fraction_second_over_first']:.1f}%",
            "< 5%",
            rr["fraction_second_over_first"] < 0.05,
        ),
        (
            "rerun cost 2nd/1st (whole process)",
            f"{100 * rr['fraction_second_over_first_process_wall']:.1f}%",
            "",
            None,
        ),
        ("rerun cost, warm process / 1st", f"{100 * rr['fraction_warm_rerun_over_first']:.1f}%", "", None),
        (
            "peak RSS data flow process (VmHWM)",
            fmt_mb(fm["peak_rss_flow_process"]),
            "< 3 GB",
            fm["peak_rss_flow_process"] < 3 * 1024**3,
        ),
        (
            "peak RSS data flow tree (50 ms poll)",
            fmt_mb(fm["polled_peak_rss_tree"]),
            "< 3 GB",
            fm["polled_peak_rss_tree"] < 3 * 1024**3,
        ),
        (
            f"peak RSS label_batch {lM['items']} / {l3['items']} items",
            f"{fmt_mb(lM['peak_rss'])} / {fmt_mb(l3['peak_rss'])}",
            "",
            None,
        ),
        (
            "label peak RSS ratio 3M/M",
            f"{sm['label_peak_ratio']:.3f}",
            "<= 1.10",
            sm["label_peak_ratio"] <= 1.10,
        ),
        (
            "label RSS growth while labelling M/3M",
            f"{sm['label_growth_M_MB']:.0f} / {sm['label_growth_3M_MB']:.0f} MB",
            "",
            None,
        ),
        (
            f"peak RSS write_shards {sM['kept']} / {s3['kept']} segs",
            f"{fmt_mb(sM['peak_rss'])} / {fmt_mb(s3['peak_rss'])}",
            "",
            None,
        ),
        (
            "shard peak RSS ratio 3M/M",
            f"{sm['shard_peak_ratio']:.3f}",
            "<= 1.10",
            sm["shard_peak_ratio"] <= 1.10,
        ),
        (
            "shard RSS growth while writing M/3M",
            f"{sm['shard_growth_M_MB']:.0f} / {sm['shard_growth_3M_MB']:.0f} MB",
            "",
            None,
        ),
    ]
    return [{"metric": m, "value": v, "target": t, "ok": ok} for m, v, t, ok in rows]


def print_summary(r: dict, rows: list[dict]) -> None:
    lab, rr = r["labelling"], r["rerun"]
    m = r["machine"]
    lc = lab["label_config"]
    print("\n=== data bench summary ===")
    print(
        f"machine : {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['ram_gb']} GB RAM, "
        f"Python {m['python']}, {m['platform']}"
    )
    print(
        f"versions: faster-whisper {r['versions']['faster_whisper']}, ctranslate2 "
        f"{r['versions']['ctranslate2']}, prefect {r['versions']['prefect']}"
    )
    print(f"command : {r['command']}")
    print(
        f"labelling: {lab['items']} items, {lab['segments']} segments, {lab['audio_s_per_pass']} s audio x "
        f"{lab['rounds']} rounds, interleaved per item; {lc['model']} {lc['device']} {lc['compute_type']}, "
        f"beam {lc['beam_size']}, batch {lc['batch_size']}, cpu_threads {lc['cpu_threads']}; model load "
        f"{lab['model_load_s']} s (excluded from both); audio decode {lab['audio_decode_s_all_items']} s and "
        f"no-op label_batch bookkeeping {lab['noop_label_batch_all_items_s']} s per pass (pipeline only); "
        f"texts identical {lab['texts_identical']}"
    )
    loads = [
        ("labelling", lab["background_load"]),
        ("flow 1st", rr["background_load_first"]),
        ("flow 2nd", rr["background_load_second"]),
    ]
    print(
        "background load (CPU of other processes on the machine): "
        + ", ".join(f"{k} {v['other_cores_avg']} cores" for k, v in loads)
        + f"; loadavg start {' '.join(r['loadavg_start'])}, end {' '.join(r['loadavg_end'])}"
    )
    if rr["second_not_cached_stages"]:
        print(
            "WARNING: the rerun was not fully cached (code or inputs changed during the bench?): "
            f"{rr['second_not_cached_stages']}"
        )
    print_metric_table(rows)
    print(f"total bench time: {r['total_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
