""".venv/bin/python bench/train_bench.py [--steps 40] [--rounds 2] [--utterances 32] [--shards INDEX] \
[--enc-reps 3] [--threads 1] [--out bench/results/train_bench.json] [--work DIR]

Benchmark of the training half on this machine (CPU only, offline, tiny demo models), all in one run
so that ratios compare like with like.  About 2-4 minutes with the defaults on 2 cores (more when busy).  On a
machine shared with other jobs the absolute numbers move with the background load; the ratios are
what to read, and the things compared are alternated (a burst of load hits both alike).

1. Training throughput through the real entry point.  Shards: ``--shards INDEX`` (e.g.
   runs/demo/shards/index.json), else ``--utterances`` espeak-ng utterances (two demo-corpus
   sentences each, ~5-8 s, voices rotated; ``tasks.demo_corpus.speak``) written by
   ``tasks.shard.write_shards`` into 4-sample train shards plus a small validation shard.  Models:
   ``llmasr.tiny_models.build_demo_models`` (the demo profile's: Whisper d_model 64, 2+2 layers;
   Qwen2 hidden 64, 2 layers; 2048-token BPE).  Train config: the demo profile's (torchrun, 1
   process, infra/deepspeed/zero2_cpu.json, batch_max_audio_s 60, max_batch_size 8, 1 loader
   worker, fp32) with log_every 5 and validation / checkpoints pushed to the end.  Stage 2 then
   stage 3 (LoRA + adapter, from stage 2's adapter), ``--steps`` steps each, launched with
   ``tasks.launch.launch_command`` + ``launch_env`` (OMP_NUM_THREADS=1, DS_ACCELERATOR=cpu).
   Throughputs come from the metrics JSONL the trainer writes: per log window, window samples =
   difference of ``run_samples``, window seconds = samples / ``samples_per_s``; the first window
   (warm-up: first batches, allocator, lazy inits) is left out, the others are summed.  Process
   start, model build, the final validation, checkpoint and export are outside the windows (their
   total is shown as "launch overhead": process wall - windows).
2. Loader alone.  ``make_loader(ShardSpeechDataset(...), train.num_workers)`` over the same shards
   with the same settings and seed (so the same batches the training got), in this process (torch
   at 1 thread), for as many batches as one training run consumed (new passes = next epochs, as in
   training).  The first ``log_every`` batches (worker start-up, the first passes) are left out of
   the rate, as the training's first window is; the rest is timed to the last batch.  Ratio loader
   / training step in samples/s and audio-s/s (target >= 5: the loader is not what limits
   training).  Runs once after each training run (interleaved).
   CPU time, which the background load moves much less than wall time: while a stage trains, the
   trainer's and its loader workers' CPU seconds are read (psutil) each time a metrics window is
   written, so the steady windows give CPU ms per sample of the step and of the loader in training;
   the loader-alone run gives its workers' and this process's CPU ms per sample.  Their ratio (step
   / loader) is how many times the loader could feed the step with a core each; reported beside
   the wall-time ratio, not a target.
3. Encoder, trimmed vs padded to 30 s.  A whisper-base-like encoder (d_model 512, 6 layers, 8
   heads, ffn 2048, 80 mels, max_source_positions 1500; random init, fp32) as
   ``llmasr.model.SpeechEncoder.from_config(..., trim_padding=True)`` and the same weights with
   ``trim_padding=False`` (the stock HF forward on 3000 frames), on a batch of 4 x 5 s (500 mel
   frames), ``torch.inference_mode``, ``--threads`` torch threads (1: steady on a shared machine).
   One untimed warm-up each, then ``--enc-reps`` alternating repetitions; median times and the
   speedup padded / trimmed (target >= 3x; the ideal on compute alone is ~6x: 1500 vs 250
   positions, more with attention's quadratic term).

Prints a summary table (metric | value | target | ok) plus the machine and the CPU that other
processes used meanwhile, and writes every number to ``--out`` (JSON).  Exit status 1 when a target
is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers
from machine import CpuMeter, machine, print_metric_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEED = 0


# ------------------------------------------------------------------------------------ machine


def versions() -> dict:
    import deepspeed
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deepspeed": deepspeed.__version__,
    }


# ------------------------------------------------------------------------------------- shards


def build_shards(root: Path, n_train: int, n_val: int = 2) -> Path:
    """espeak-ng utterances (2 demo sentences each) -> tasks.shard.write_shards; returns index.json."""
    from llmasr.audio import convert_to_flac16k
    from llmasr.config import ShardConfig
    from llmasr.layout import WorkLayout
    from llmasr.records import STATUS_OK, Decision, Item, Label, Segment
    from tasks.demo_corpus import TRAIN_SENTENCES, VOICES, speak
    from tasks.shard import write_shards

    layout = WorkLayout(root)
    items, segments, labels, decisions = [], [], [], []
    sentences = [s.strip() for s in TRAIN_SENTENCES if s.strip()]
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="speak-", dir=root))
    try:
        for i in range(n_train + n_val):
            split = "train" if i < n_train else "validation"
            text = f"{sentences[(2 * i) % len(sentences)]} {sentences[(2 * i + 1) % len(sentences)]}"
            speak(text, VOICES[i % len(VOICES)], 160, tmp)  # writes tmp/speak.wav (22.05 kHz)
            item_id = f"{split[:3]}{i:03d}"
            path = layout.audio(item_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            dur = convert_to_flac16k(tmp / "speak.wav", path)  # 16 kHz FLAC, as ingest writes it
            sid = f"{item_id}-000000000"
            items.append(Item(item_id, "/bench", None, layout.rel(path), dur, None, STATUS_OK))
            segments.append(Segment(sid, item_id, 0.0, dur, dur, text, "captions"))
            labels.append(Label(sid, text, -0.2, 0.01, 1.3, "en", 0.99, "bench"))
            decisions.append(Decision(sid, item_id, True, [], 0.0, len(text.split()), 1.0, dur, split))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_shards(
        layout,
        items,
        segments,
        labels,
        decisions,
        ShardConfig(target_mb=64, max_samples=4, validation_fraction=0.0),
    )
    return layout.shard_index


# ----------------------------------------------------------------------------------- training


def train_config(models: dict, steps: int):
    from llmasr.config import LoraConfig, StageConfig, TrainConfig

    stage = StageConfig(lr=1e-3, max_steps=steps, warmup_steps=2)
    return TrainConfig(
        encoder=str(models["whisper"]),
        llm=str(models["llm"]),
        tokenizer=str(models["tokenizer"]),
        adapter_hidden=64,
        lora=LoraConfig(
            rank=8, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        ),
        launcher="torchrun",
        nproc_per_node=1,
        deepspeed_config="infra/deepspeed/zero2_cpu.json",
        precision="auto",
        batch_max_audio_s=60,
        max_batch_size=8,
        num_workers=1,
        log_every=5,
        val_every=10**6,
        val_max_batches=2,
        ckpt_every=10**6,
        seed=SEED,
        stage2=stage,
        stage3=stage,
    )


def tree_cpu(root) -> dict:
    """CPU seconds (user + system) so far of a launcher's process tree: ``trainer`` = its children
    (one per rank), ``workers`` = their descendants (the DataLoader workers)."""
    import psutil

    out = {"trainer": 0.0, "workers": 0.0}
    for child in root.children():
        try:
            out["trainer"] += sum(child.cpu_times()[:2])
            for worker in child.children(recursive=True):
                out["workers"] += sum(worker.cpu_times()[:2])
        # exited between listing and reading: the totals miss it, said in window_cpu
        except psutil.NoSuchProcess:
            continue
    return out


def watch_windows(
    proc: subprocess.Popen, metrics: Path, timeout: float, poll_s: float = 0.02
) -> dict[int, dict]:
    """Wait for ``proc``; whenever a new ``samples_per_s`` record reaches the metrics log, note the
    trainer's and the workers' CPU seconds (``tree_cpu``), keyed by the record's step."""
    import psutil

    root, seen, cpu_at = psutil.Process(proc.pid), 0, {}
    deadline = time.perf_counter() + timeout
    while proc.poll() is None:
        if time.perf_counter() > deadline:
            proc.kill()
            raise RuntimeError(f"training did not finish within {timeout} s")
        text = metrics.read_text() if metrics.exists() else ""
        lines = text[: text.rfind("\n") + 1].splitlines()  # whole lines only: the last may be half written
        new = [json.loads(x) for x in lines[seen:]]
        seen = len(lines)
        steps = [r["step"] for r in new if "samples_per_s" in r]
        if steps:
            snap = tree_cpu(root)
            cpu_at.update({st: snap for st in steps})
        time.sleep(poll_s)
    return cpu_at


def window_cpu(cpu_at: dict[int, dict], first: int, last: int, samples: int) -> dict | None:
    """CPU per sample of the trainer and of its loader workers over the steady windows (after
    step ``first``, up to ``last``), from ``watch_windows``' snapshots; None if one is missing."""
    if first not in cpu_at or last not in cpu_at or samples <= 0:
        return None
    trainer = cpu_at[last]["trainer"] - cpu_at[first]["trainer"]
    workers = cpu_at[last]["workers"] - cpu_at[first]["workers"]
    return {
        "trainer_cpu_s": round(trainer, 3),
        "workers_cpu_s": round(workers, 3),
        "trainer_cpu_ms_per_sample": 1000 * trainer / samples,
        "workers_cpu_ms_per_sample": 1000 * workers / samples,
    }


def run_stage(work: Path, stage: int, train, shard_index: Path, log_dir: Path, tag: str) -> dict:
    from tasks.checkpoints import model_config, stage_dir
    from tasks.launch import launch_command, launch_env
    from tasks.run_file import write_run_config

    metrics = work / "logs" / f"train-{tag}.jsonl"
    metrics.unlink(missing_ok=True)
    run_json = work / f"run-{tag}.json"
    write_run_config(
        run_json,
        stage=stage,
        work_dir=str(work),
        shard_index=str(shard_index),
        out_dir=str(stage_dir(work, stage)),
        key=f"bench-{tag}",  # a new key per run: no resuming from the previous round's checkpoint
        model=model_config(train, work, stage),
        train=train,
        stage_cfg=getattr(train, f"stage{stage}"),
        deepspeed_config=train.deepspeed_config,
        precision=train.precision,
        metrics_log=str(metrics),
        tensorboard_dir=None,
    )
    env = {**os.environ, **launch_env(train, gpu=False)}
    load = CpuMeter()
    t0 = time.perf_counter()
    with open(log_dir / f"train-{tag}.log", "w") as fh:
        proc = subprocess.Popen(
            launch_command(run_json, train), cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT
        )
        # metric step -> CPU seconds of trainer / workers then
        cpu_at = watch_windows(proc, metrics, timeout=900)
    wall = time.perf_counter() - t0
    bg = load.stop()
    if proc.returncode != 0:
        raise RuntimeError(
            f"stage {stage} ({tag}) exited {proc.returncode}; see {log_dir / f'train-{tag}.log'}"
        )
    recs = [json.loads(x) for x in metrics.read_text().splitlines()]
    windows = [r for r in recs if "samples_per_s" in r]
    if len(windows) < 2:
        raise RuntimeError(f"stage {stage}: {len(windows)} metric windows; use more --steps (log_every 5)")
    prev, rows = 0, []
    for r in windows:
        n = r["run_samples"] - prev
        prev = r["run_samples"]
        sec = n / r["samples_per_s"] if r["samples_per_s"] > 0 else 0.0
        rows.append(
            {
                "step": r["step"],
                "samples": n,
                "seconds": sec,
                "audio_s": r["audio_s_per_s"] * sec,
                "tokens": r["tokens_per_s"] * sec,
                "data_wait_s": r.get("data_wait_frac", 0.0) * sec,
            }
        )
    steady = rows[1:]
    sec = sum(w["seconds"] for w in steady)
    samples = sum(w["samples"] for w in steady)
    steps = steady[-1]["step"] - rows[0]["step"]
    end = next((r for r in recs if r.get("event") == "end"), {})
    cpu = window_cpu(cpu_at, rows[0]["step"], steady[-1]["step"], samples)
    return {
        "stage": stage,
        "tag": tag,
        "steps": windows[-1]["step"],
        "steady_steps": steps,
        "steady_s": round(sec, 3),
        "samples_per_s": samples / sec,
        "audio_s_per_s": sum(w["audio_s"] for w in steady) / sec,
        "tokens_per_s": sum(w["tokens"] for w in steady) / sec,
        "steps_per_s": steps / sec,
        "data_wait_frac": sum(w["data_wait_s"] for w in steady) / sec,  # the trainer's time in next(loader)
        "first_window_s": round(rows[0]["seconds"], 3),
        "all_windows_s": round(sum(w["seconds"] for w in rows), 3),
        "process_wall_s": round(wall, 1),
        "launch_overhead_s": round(wall - sum(w["seconds"] for w in rows), 1),
        "samples_trained": end.get("samples"),
        "final_loss": end.get("final_loss"),
        "windows": rows,
        "cpu": cpu,
        "background_load": bg,
    }


# ------------------------------------------------------------------------------------- loader


def workers_cpu() -> float:
    """CPU seconds so far of this process's children (the DataLoader workers)."""
    import psutil

    return sum(sum(c.cpu_times()[:2]) for c in psutil.Process().children(recursive=True))


def bench_loader(shard_index: Path, models: dict, train, n_batches: int, warmup: int) -> dict:
    """``n_batches`` from ``make_loader`` with ``train.num_workers``; the first ``warmup`` batches
    (worker start, first passes) are left out of the rate, as the training's first window is."""
    import torch
    from transformers import AutoTokenizer

    from tasks.train_data import TRAIN, LLMTargets, ShardSpeechDataset, make_loader

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(models["tokenizer"]))
    wcfg = json.loads((Path(models["whisper"]) / "config.json").read_text())
    ds = ShardSpeechDataset(
        shard_index,
        TRAIN,
        n_mels=int(wcfg["num_mel_bins"]),
        targets=LLMTargets(tok),
        rank=0,
        world_size=1,
        batch_max_audio_s=train.batch_max_audio_s,
        max_batch_size=train.max_batch_size,
        seed=train.seed,
        max_frames=2 * int(wcfg["max_source_positions"]),
    )
    warmup = min(warmup, n_batches - 1)
    load = CpuMeter()
    t_start = time.perf_counter()
    loader = make_loader(ds, train.num_workers)
    got, samples, audio, tokens, passes = 0, 0, 0.0, 0, 0
    t_first = cpu_first = None
    while got < n_batches:
        passes += 1
        for batch in loader:
            got += 1
            if got == warmup:  # the rate counts the batches after this one
                t_first, cpu_first = time.perf_counter(), (workers_cpu(), time.process_time())
            elif got > warmup:
                samples += len(batch["keys"])
                audio += batch["audio_s"]
                tokens += batch["n_tokens"]
            if got >= n_batches:
                break
    t_end, cpu_end = time.perf_counter(), (workers_cpu(), time.process_time())
    del loader  # stops the persistent workers
    sec = t_end - t_first
    n = got - warmup
    worker_s, main_s = cpu_end[0] - cpu_first[0], cpu_end[1] - cpu_first[1]
    return {
        "batches": got,
        "passes": passes,
        "warmup_batches": warmup,
        "timed_batches": n,
        "timed_s": round(sec, 3),
        "warmup_s": round(t_first - t_start, 3),
        "batches_per_s": n / sec,
        "samples_per_s": samples / sec,
        "audio_s_per_s": audio / sec,
        "tokens_per_s": tokens / sec,
        "num_workers": train.num_workers,
        "workers_cpu_s": round(worker_s, 3),
        "main_cpu_s": round(main_s, 3),
        "workers_cpu_ms_per_sample": 1000 * worker_s / samples,
        "main_cpu_ms_per_sample": 1000 * main_s / samples,
        "background_load": load.stop(),
    }


# ------------------------------------------------------------------------------------ encoder


def bench_encoder(reps: int, threads: int, batch: int = 4, frames: int = 500) -> dict:
    import torch

    from llmasr.model import SpeechEncoder

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    config = dict(
        num_mel_bins=80,
        d_model=512,
        encoder_layers=6,
        encoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_layers=1,
        decoder_attention_heads=8,
        decoder_ffn_dim=2048,
        max_source_positions=1500,
        vocab_size=51865,
    )
    trimmed = SpeechEncoder.from_config(config, trim_padding=True).eval()
    padded = SpeechEncoder(trimmed.encoder, trim_padding=False).eval()  # the same weights
    n_params = sum(p.numel() for p in trimmed.parameters())
    feats = torch.randn(batch, 80, frames)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    times = {"trimmed": [], "padded": []}
    shapes = {}
    load = CpuMeter()
    with torch.inference_mode():
        for name, enc in (("trimmed", trimmed), ("padded", padded)):  # warm-up
            shapes[name] = list(enc(feats, lengths)[0].shape)
        for i in range(reps):
            order = [("trimmed", trimmed), ("padded", padded)]
            for name, enc in order if i % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                enc(feats, lengths)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "config": config,
        "params": n_params,
        "attn_implementation": getattr(trimmed.config, "_attn_implementation", None),
        "batch": batch,
        "frames": frames,
        "threads": threads,
        "reps": reps,
        "out_shapes": shapes,
        "times_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "speedup": med["padded"] / med["trimmed"],
        "best_speedup": min(times["padded"]) / min(times["trimmed"]),
        "background_load": load.stop(),
    }


# --------------------------------------------------------------------------------------- main


def cpu_ratios(runs: list[dict], loaders: list[dict]) -> dict:
    """CPU time per sample, the step's over the loader's (medians): how many times the loader could
    feed the step if each had a core to itself -- a ratio that the background load moves little.
    ``cpu``: against the loader alone (workers + the receiving process); ``cpu_in_training``:
    against the training's own loader workers (their CPU over the same steady windows)."""
    cpus = [t["cpu"] for t in runs if t.get("cpu")]
    if not cpus:
        return {}
    step = statistics.median(c["trainer_cpu_ms_per_sample"] for c in cpus)
    alone = statistics.median(
        lo["workers_cpu_ms_per_sample"] + lo["main_cpu_ms_per_sample"] for lo in loaders
    )
    in_training = statistics.median(c["workers_cpu_ms_per_sample"] for c in cpus)
    return {
        "step_cpu_ms_per_sample": step,
        "loader_cpu_ms_per_sample": alone,
        "loader_cpu_ms_per_sample_in_training": in_training,
        "cpu": step / alone if alone > 0 else None,
        "cpu_in_training": step / in_training if in_training > 0 else None,
    }


def summarize(r: dict) -> list[dict]:
    rows = []
    for stage in (2, 3):
        runs = [x for x in r["training"] if x["stage"] == stage]
        if not runs:
            continue
        sps = statistics.median(x["samples_per_s"] for x in runs)
        aps = statistics.median(x["audio_s_per_s"] for x in runs)
        tps = statistics.median(x["tokens_per_s"] for x in runs)
        stp = statistics.median(x["steps_per_s"] for x in runs)
        rows += [
            (f"stage {stage} train samples/s (median of {len(runs)})", f"{sps:.2f}", "", None),
            (f"stage {stage} train audio-s/s", f"{aps:.1f}", "", None),
            (f"stage {stage} train tokens/s", f"{tps:.1f}", "", None),
            (f"stage {stage} train steps/s", f"{stp:.2f}", "", None),
            (
                f"stage {stage} time waiting for the loader (share of steady windows)",
                f"{max(x['data_wait_frac'] for x in runs):.1%}",
                "< 5%",
                max(x["data_wait_frac"] for x in runs) < 0.05,
            ),
        ]
    lo = r["loader"]
    rows += [
        (
            f"loader alone batches/s ({lo[0]['num_workers']} worker, median of {len(lo)})",
            f"{statistics.median(x['batches_per_s'] for x in lo):.2f}",
            "",
            None,
        ),
        ("loader alone samples/s", f"{statistics.median(x['samples_per_s'] for x in lo):.1f}", "", None),
        ("loader alone audio-s/s", f"{statistics.median(x['audio_s_per_s'] for x in lo):.1f}", "", None),
    ]
    for stage in (2, 3):
        key = f"stage{stage}"
        if key in r["ratios"]:
            q = r["ratios"][key]
            rows.append(
                (
                    f"loader/step ratio vs stage {stage} (samples/s)",
                    f"{q['samples']:.1f}x",
                    ">= 5x",
                    q["samples"] >= 5,
                )
            )
            rows.append(
                ("  same, audio-s/s / worst round", f"{q['audio_s']:.1f}x / {q['worst']:.1f}x", "", None)
            )
            if q.get("cpu"):
                rows.append(
                    (
                        "  CPU ms/sample: step / loader alone / loader in training",
                        f"{q['step_cpu_ms_per_sample']:.1f} / {q['loader_cpu_ms_per_sample']:.1f} / "
                        f"{q['loader_cpu_ms_per_sample_in_training']:.1f}",
                        "",
                        None,
                    )
                )
                rows.append(
                    (
                        "  CPU-time ratio step/loader: alone / in training",
                        f"{q['cpu']:.1f}x / {q['cpu_in_training']:.1f}x",
                        "",
                        None,
                    )
                )
    e = r["encoder"]
    rows += [
        (
            f"encoder 4x5 s trimmed (median of {e['reps']})",
            f"{e['median_s']['trimmed'] * 1000:.0f} ms",
            "",
            None,
        ),
        ("encoder 4x5 s padded to 30 s", f"{e['median_s']['padded'] * 1000:.0f} ms", "", None),
        ("encoder speedup padded/trimmed", f"{e['speedup']:.2f}x", ">= 3x", e["speedup"] >= 3),
        ("  same, best of reps", f"{e['best_speedup']:.2f}x", "", None),
    ]
    return [{"metric": m, "value": v, "target": t, "ok": ok} for m, v, t, ok in rows]


def cpu_text(cpu: dict | None) -> str:
    if not cpu:
        return "not measured"
    return (
        f"{cpu['trainer_cpu_ms_per_sample']:.1f} ms/sample in the trainer + "
        f"{cpu['workers_cpu_ms_per_sample']:.1f} in its loader workers"
    )


def print_summary(r: dict, rows: list[dict]) -> None:
    m = r["machine"]
    print("\n=== train bench summary ===")
    print(
        f"machine : {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['ram_gb']} GB RAM, "
        f"Python {m['python']}, {m['platform']}"
    )
    print(f"versions: {r['versions']}")
    print(f"command : {r['command']}")
    print(
        f"shards  : {r['shards']} ({r['shard_info']['samples']} train samples, "
        f"{r['shard_info']['audio_s']:.0f} s audio)"
    )
    for t in r["training"]:
        print(
            f"train {t['tag']}: {t['steps']} steps, steady {t['steady_steps']} steps in {t['steady_s']:.1f} "
            f"s, first window {t['first_window_s']:.1f} s, process {t['process_wall_s']:.0f} s "
            f"(launch/val/export overhead {t['launch_overhead_s']:.0f} s), final loss {t['final_loss']}, CPU "
            f"{cpu_text(t.get('cpu'))}, other load {t['background_load']['other_cores_avg']} cores"
        )
    for i, lo in enumerate(r["loader"]):
        print(
            f"loader {i}: {lo['timed_batches']} timed batches in {lo['timed_s']:.1f} s over {lo['passes']} "
            f"passes, warm-up {lo['warmup_batches']} batches in {lo['warmup_s']:.1f} s, CPU "
            f"{lo['workers_cpu_ms_per_sample']:.1f} ms/sample in workers + "
            f"{lo['main_cpu_ms_per_sample']:.1f} in this process, other load "
            f"{lo['background_load']['other_cores_avg']} cores"
        )
    e = r["encoder"]
    print(
        f"encoder : whisper-base-like, {e['params'] / 1e6:.1f} M params, attn {e['attn_implementation']}, "
        f"{e['threads']} thread(s), out {e['out_shapes']}, times {e['times_s']}, other load "
        f"{e['background_load']['other_cores_avg']} cores"
    )
    print(f"loadavg start {' '.join(r['loadavg_start'])}, end {' '.join(r['loadavg_end'])}\n")
    print_metric_table(rows)
    print(f"total bench time: {r['total_s']:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps",
        type=int,
        default=40,
        help="training steps per stage run (log_every 5; the first window is warm-up)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (stage 2, loader, stage 3, loader)")
    ap.add_argument("--utterances", type=int, default=32, help="train utterances when building shards")
    ap.add_argument(
        "--shards", default=None, help="an existing shards/index.json (e.g. runs/demo/shards/index.json)"
    )
    ap.add_argument("--enc-reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the encoder timing")
    ap.add_argument("--out", default="bench/results/train_bench.json")
    ap.add_argument(
        "--work", default=None, help="work folder (default: a temp folder, removed after a successful run)"
    )
    ap.add_argument("--skip-train", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if shutil.which("espeak-ng") is None and not args.shards:
        print("espeak-ng is not installed: pass --shards INDEX", file=sys.stderr)
        return 2

    from llmasr.tiny_models import build_demo_models
    from tasks.train_data import TRAIN, read_split

    t_all = time.perf_counter()
    tmp_work = args.work is None
    work = Path(args.work or tempfile.mkdtemp(prefix="llmasr-train-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "bench-logs"
    logs.mkdir(exist_ok=True)
    command = " ".join([".venv/bin/python", "bench/train_bench.py", *sys.argv[1:]])
    r: dict = {
        "machine": machine(),
        "versions": versions(),
        "command": command,
        "args": vars(args),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }
    print(f"machine: {r['machine']}\nwork: {work}", flush=True)
    ok_run = False
    try:
        t0 = time.perf_counter()
        shard_index = (
            Path(args.shards).resolve() if args.shards else build_shards(work / "data", args.utterances)
        )
        r["shards"] = str(shard_index)
        info = read_split(shard_index, TRAIN)
        r["shard_info"] = {"samples": info.samples, "audio_s": info.audio_s, "shards": info.shards}
        models = build_demo_models(work / "models")
        r["setup_s"] = round(time.perf_counter() - t0, 1)
        print(
            f"shards + models: {r['setup_s']} s ({info.samples} samples, {info.audio_s:.0f} s audio)",
            flush=True,
        )
        train = train_config(models, args.steps)

        r["training"], r["loader"] = [], []
        for rnd in range(args.rounds):
            for stage in (2, 3):
                t = run_stage(work / "train", stage, train, shard_index, logs, f"s{stage}r{rnd}")
                r["training"].append(t)
                print(
                    f"stage {stage} round {rnd}: {t['samples_per_s']:.2f} samples/s, "
                    f"{t['audio_s_per_s']:.1f} audio-s/s, {t['tokens_per_s']:.0f} tokens/s "
                    f"({t['process_wall_s']} s)",
                    flush=True,
                )
                # as many batches as a run consumes: steps x grad_accum (1)
                lo = bench_loader(
                    shard_index,
                    models,
                    train,
                    args.steps * train.grad_accum,
                    warmup=train.log_every * train.grad_accum,
                )
                r["loader"].append(lo)
                print(
                    f"loader: {lo['batches_per_s']:.2f} batches/s, {lo['samples_per_s']:.1f} samples/s, "
                    f"{lo['audio_s_per_s']:.1f} audio-s/s",
                    flush=True,
                )
        r["ratios"] = {}
        for stage in (2, 3):
            # each run with the loader run right after it
            pairs = [(t, lo) for t, lo in zip(r["training"], r["loader"]) if t["stage"] == stage]
            r["ratios"][f"stage{stage}"] = {
                "samples": statistics.median(lo["samples_per_s"] for _, lo in pairs)
                / statistics.median(t["samples_per_s"] for t, _ in pairs),
                "audio_s": statistics.median(lo["audio_s_per_s"] for _, lo in pairs)
                / statistics.median(t["audio_s_per_s"] for t, _ in pairs),
                "worst": min(lo["samples_per_s"] / t["samples_per_s"] for t, lo in pairs),
                **cpu_ratios([t for t, _ in pairs], [lo for _, lo in pairs]),
            }

        r["encoder"] = bench_encoder(args.enc_reps, args.threads)
        print(f"encoder: {r['encoder']['median_s']} -> {r['encoder']['speedup']:.2f}x", flush=True)
        ok_run = True
    finally:
        r["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        r["total_s"] = round(time.perf_counter() - t_all, 1)
        if not ok_run:
            print(f"\nbench failed; work folder kept: {work}", file=sys.stderr)
        elif tmp_work:
            shutil.rmtree(work, ignore_errors=True)

    summary = summarize(r)
    r["summary"] = summary
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1, default=str))
    print_summary(r, summary)
    print(f"\nresults: {out}")
    return 0 if all(x["ok"] in (True, None) for x in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
