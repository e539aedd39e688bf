""".venv/bin/python bench/decode_bench.py [--checkpoint runs/demo/checkpoints/stage3] [--utts 6] [--reps 2] \
[--force-tokens auto|0|N] [--out bench/results/decode_bench.json]

Decoding cost of the LLM-ASR model on this machine (CPU), through the evaluation's own code path:
``tasks.llmasr_decode.LLMASRSystem`` + ``plan_pieces`` + ``run_system`` (so RTF and tokens/s are computed
exactly as the evaluate stage reports them: RTF = decode wall time, features + generation, not audio
reading or model loading, / audio seconds; tokens/s = new tokens up to each piece's first EOS/pad /
decode wall time).

Model: ``--checkpoint`` (a stage-2/3 folder) when given and complete (stage.json complete=true),
else a tiny random stage-3 checkpoint built in a temp folder the way tests/test_decode.py builds it
(``tiny_setup`` + LoRA with non-zero B).  The model is loaded once (``load_llmasr``) and shared by
the four systems.  Audio: the demo zero-shot set (runs/demo/demo-corpus/zero_shot/manifest.jsonl) when
present, else ``--utts`` espeak-ng utterances (``tasks.demo_corpus.speak``); at most ``--utts``.

Four configurations, all with the evaluation's token bound (``EvalConfig`` defaults:
ceil(8 tok/s * duration) + 16, cap 448):
    beam 8 + no_repeat_ngram_size 6  vs  greedy (num_beams 1, no n-gram blocking)
    batch_size 8 (longest-first batches, as decode_pieces makes them)  vs  batch_size 1
After an untimed warm-up of each, ``--reps`` repetitions each run all four over every utterance;
the order of the four rotates (and reverses) from one repetition to the next, so background load on
this shared machine hits all alike.  Reported per configuration: median decode seconds, RTF and
tokens/s over the repetitions, new tokens per utterance (mean/min/max) and generate() steps; and the
ratios beam8/greedy (decode time, at batch 8 and batch 1) and batched speedup (batch-1 time / batch-8
time, for greedy and beam 8), each the median of the per-repetition ratios.

Random / barely trained models may emit EOS at once (no decoding work to measure) or run every piece
to its bound.  ``--force-tokens auto`` (default) first decodes greedily, untimed; if the median is
under 2 new tokens per utterance, every timed run passes ``min_new_tokens=N`` (N = the smallest
piece bound) and suppresses the pad token through ``LLMASR.generate_ids``'s ``**generate_kwargs``
(the instance's generate_ids is wrapped; LLMASRSystem.decode itself is unchanged), so each piece
decodes at least N tokens.  ``--force-tokens N`` forces N always, ``0`` never.  The summary says
which.

Prints a table (metric | value | target | ok), the machine and the CPU other processes used meanwhile;
writes every number to ``--out`` (JSON).  Exit status 1 only when no tokens were generated at all.
With the defaults and the demo checkpoint: about 2-3 minutes on a shared 2-core machine (16
utterances x 3 repetitions took over 6 minutes there).  Beam search and greedy need not generate the
same number of tokens (greedy may loop to the bound, beam + n-gram blocking may stop early): compare
"new tokens/utt" and "ms per generate step" before reading beam8/greedy as a per-token cost.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers
from machine import CpuMeter, machine, print_metric_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")

ZERO_SHOT = REPO / "runs/demo/demo-corpus/zero_shot/manifest.jsonl"
SENTENCES = [
    "The weather was warm enough to eat lunch outside on the terrace.",
    "The doctor prescribed amoxicillin for the chest infection.",
    "We planted tomatoes and beans in the garden behind the house.",
    "The nurse checked for hypoglycaemia before the evening meal.",
    "The museum opens at nine and closes late on Fridays.",
    "Please remember to bring your passport and a warm jacket tomorrow.",
    "The report describes how the council plans to build new houses.",
    "Children played football in the park while their parents talked.",
]
CONFIGS = [  # (name, num_beams, no_repeat_ngram_size, batch_size)
    ("beam8 batch8", 8, 6, 8),
    ("greedy batch8", 1, 0, 8),
    ("beam8 batch1", 8, 6, 1),
    ("greedy batch1", 1, 0, 1),
]


# ------------------------------------------------------------------------------------ machine


# ------------------------------------------------------------------------------------- inputs


def tiny_checkpoint(root: Path) -> Path:
    """A tiny random stage-3 checkpoint, as tests/test_decode.py's make_checkpoints builds it."""
    import torch

    from llmasr.model import apply_lora, build_model, save_adapter, save_lora
    from llmasr.tiny_models import tiny_setup
    from tasks.checkpoints import stage_dir, write_model_json, write_stage

    setup = tiny_setup(root / "models")
    torch.manual_seed(0)
    model = build_model(setup.config)
    folder = stage_dir(root / "work", 3)
    apply_lora(model, setup.config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    save_lora(model, folder / "lora")
    save_adapter(model.adapter, folder / "adapter")
    write_model_json(folder, setup.config.model_copy(update={"adapter_path": str(folder / "adapter")}))
    write_stage(folder, stage=3, key="bench-tiny-3", steps=0, samples=0)
    return folder


def utterances(n: int, tmp: Path) -> tuple[str, list]:
    """(source description, TestUtterances): the demo zero-shot set when present, else espeak-ng."""
    from tasks.testsets import TestUtterance, read_manifest

    if ZERO_SHOT.is_file():
        utts = read_manifest(ZERO_SHOT)[:n]
        if utts:
            return f"demo zero_shot set ({ZERO_SHOT.relative_to(REPO)})", utts
    import numpy as np
    import soundfile as sf

    from tasks.demo_corpus import ESPEAK_RATE, speak

    out = []
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)]
        voice = ("en", "en-us", "en-gb-x-rp")[i // len(SENTENCES) % 3]
        audio = speak(text, voice, 150 + 10 * (i % 4), tmp)
        path = tmp / f"u{i:02d}.wav"
        sf.write(
            str(path), np.concatenate([np.zeros(int(0.2 * ESPEAK_RATE), np.float32), audio]), ESPEAK_RATE
        )
        out.append(TestUtterance(utt_id=f"u{i:02d}", audio_path=str(path), text=text))
    return f"{n} espeak-ng utterances", out


# -------------------------------------------------------------------------------------- bench


def median(xs):
    return statistics.median(xs) if xs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint", default=None, help="a stage-2/3 checkpoint folder (else a tiny random one)"
    )
    ap.add_argument("--utts", type=int, default=6)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--force-tokens", default="auto", help="auto | 0 (never) | N (always min_new_tokens=N)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=str(REPO / "bench/results/decode_bench.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()

    import torch
    import transformers

    from llmasr.config import EvalConfig, SegmentConfig
    from tasks.checkpoints import load_llmasr, read_stage
    from tasks.decode import piece_bound, run_system
    from tasks.llmasr_decode import LLMASRSystem
    from tasks.pieces import plan_pieces

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp_ctx = tempfile.TemporaryDirectory(prefix="llmasr-decode-bench-")
    tmp = Path(tmp_ctx.name)

    ckpt_note = ""
    if args.checkpoint and read_stage(Path(args.checkpoint)) is not None:
        ckpt = Path(args.checkpoint)
        ckpt_kind = f"{args.checkpoint} (stage {read_stage(ckpt)['stage']})"
    else:
        if args.checkpoint:
            ckpt_note = f"{args.checkpoint} is not a complete stage checkpoint; "
        ckpt = tiny_checkpoint(tmp)
        ckpt_kind = "tiny random stage-3 checkpoint (tests/test_decode.py style)"
    print(f"checkpoint: {ckpt_note}{ckpt_kind}", flush=True)

    t0 = time.perf_counter()
    model = load_llmasr(ckpt, device="cpu")
    load_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())

    source, utts = utterances(args.utts, tmp)
    problems: list[str] = []
    kept, pieces, durations = plan_pieces(utts, 30.0, SegmentConfig(), problems)
    audio_s = sum(durations.values())
    base = EvalConfig(device="cpu")
    bounds = [piece_bound(base, p.duration_s) for p in pieces]
    print(
        f"audio: {source}: {len(kept)} utterances, {len(pieces)} pieces, {audio_s:.1f} s; token bounds "
        f"{min(bounds)}-{max(bounds)}",
        flush=True,
    )

    # generate_ids is wrapped on the instance: record each call's steps, optionally force tokens.
    original = model.generate_ids
    force: dict = {}
    calls: list[dict] = []

    @functools.wraps(original)
    def generate_ids(*a, **kw):
        kw.update(force)
        ids = original(*a, **kw)
        calls.append({"batch": int(ids.shape[0]), "steps": int(ids.shape[1])})
        return ids

    model.generate_ids = generate_ids

    def system(name, beams, ngram, batch):
        s = LLMASRSystem(
            name,
            ckpt,
            base.model_copy(update={"num_beams": beams, "no_repeat_ngram_size": ngram, "batch_size": batch}),
        )
        s.model, s.device = model, "cpu"  # shared, already loaded
        return s

    systems = {c[0]: system(*c) for c in CONFIGS}

    def run(name, subset=None):
        s = systems[name]
        calls.clear()
        per_utt: dict[str, int] = {}
        ps = subset or pieces
        # per-utterance counts: re-tokenized hypotheses (decode's own counter is per batch)
        r = run_system(
            s,
            kept if subset is None else [u for u in kept if u.utt_id in {p.utt_id for p in ps}],
            ps,
            durations,
            s.settings,
        )
        for u, h in r.hyps.items():
            per_utt[u] = len(model.tokenizer(h, add_special_tokens=False)["input_ids"]) if h else 0
        return r, list(calls), per_utt

    # probe: does the model emit anything?
    probe, _, _ = run("greedy batch8")
    probe_tokens_per_utt = probe.tokens / max(1, len(pieces))
    fa = args.force_tokens
    n_force = 0
    if fa == "auto":
        n_force = min(bounds) if probe_tokens_per_utt < 2 else 0
    elif int(fa) > 0:
        n_force = min(int(fa), max(bounds))
    if n_force:
        force.update(min_new_tokens=n_force, suppress_tokens=[model.pad_id])
    force_note = (
        f"forced: min_new_tokens={n_force} + pad suppressed (probe: {probe_tokens_per_utt:.1f} new "
        "tokens/utt unforced)"
        if n_force
        else f"not forced (probe: {probe_tokens_per_utt:.1f} new tokens/utt greedy, natural EOS / bound)"
    )
    print(f"tokens: {force_note}", flush=True)

    # warm-up (untimed): every configuration on the first few pieces
    for name in systems:
        run(name, subset=sorted(pieces, key=lambda p: -p.duration_s)[:2])

    meter = CpuMeter()
    names = [c[0] for c in CONFIGS]
    reps: list[dict] = []
    for rep in range(args.reps):
        order = names[rep % 4 :] + names[: rep % 4]
        if rep % 2:
            order = order[::-1]
        res = {}
        for name in order:
            r, cs, per_utt = run(name)
            res[name] = {
                "decode_s": r.decode_s,
                "rtf": r.rtf,
                "tokens": r.tokens,
                "tokens_per_s": r.tokens_per_s,
                "calls": len(cs),
                "steps": sum(c["steps"] for c in cs),
                "max_steps": max(c["steps"] for c in cs),
                "failures": len(r.failures),
                "hyps": r.hyps,
                "tokens_per_utt": per_utt,
            }
            print(
                f"  rep {rep + 1}/{args.reps} {name:<14}: {r.decode_s:6.2f} s  RTF {r.rtf:.3f}  {r.tokens} "
                f"tok  {r.tokens_per_s:.1f} tok/s  {len(cs)} generate calls, {res[name]['steps']} steps",
                flush=True,
            )
        reps.append({"order": order, "results": res})
    load = meter.stop()

    summary: dict[str, dict] = {}
    for name in names:
        rs = [rp["results"][name] for rp in reps]
        ntok = [r["tokens"] / len(pieces) for r in rs]
        tpu = list(rs[-1]["tokens_per_utt"].values())
        summary[name] = {
            "decode_s_median": median([r["decode_s"] for r in rs]),
            "decode_s_min": min(r["decode_s"] for r in rs),
            "rtf_median": median([r["rtf"] for r in rs]),
            "tokens_per_s_median": median([r["tokens_per_s"] for r in rs]),
            "tokens_total": rs[-1]["tokens"],
            "new_tokens_per_piece_mean": median(ntok),
            "retokenized_hyp_tokens_per_utt": {
                "mean": statistics.mean(tpu),
                "min": min(tpu),
                "max": max(tpu),
            },
            "generate_calls": rs[-1]["calls"],
            "generate_steps": rs[-1]["steps"],
            "failures": rs[-1]["failures"],
        }

    def ratio(a, b):
        return median([rp["results"][a]["decode_s"] / rp["results"][b]["decode_s"] for rp in reps])

    ratios = {
        "beam8_over_greedy_batch8": ratio("beam8 batch8", "greedy batch8"),
        "beam8_over_greedy_batch1": ratio("beam8 batch1", "greedy batch1"),
        "batched_speedup_greedy": ratio("greedy batch1", "greedy batch8"),
        "batched_speedup_beam8": ratio("beam8 batch1", "beam8 batch8"),
    }
    last = reps[-1]["results"]
    same = {
        "greedy batch8 vs batch1": last["greedy batch8"]["hyps"] == last["greedy batch1"]["hyps"],
        "beam8 batch8 vs batch1": last["beam8 batch8"]["hyps"] == last["beam8 batch1"]["hyps"],
    }
    example = {name: next(iter(last[name]["hyps"].items())) for name in names}

    rows = []
    for name in names:
        s = summary[name]
        t = s["retokenized_hyp_tokens_per_utt"]
        rows.append((f"{name}: decode s (median of {args.reps})", f"{s['decode_s_median']:.2f}", "", None))
        rows.append((f"{name}: RTF", f"{s['rtf_median']:.4f}", "", None))
        rows.append((f"{name}: tokens/s", f"{s['tokens_per_s_median']:.1f}", "", None))
        rows.append(
            (
                f"{name}: new tokens/utt (hyp re-tok. mean min-max)",
                f"{s['new_tokens_per_piece_mean']:.1f} ({t['mean']:.1f} {t['min']}-{t['max']})",
                "",
                None,
            )
        )
        rows.append(
            (f"{name}: generate calls / steps", f"{s['generate_calls']} / {s['generate_steps']}", "", None)
        )
        rows.append(
            (
                f"{name}: ms per generate step",
                f"{1000 * s['decode_s_median'] / s['generate_steps']:.1f}",
                "",
                None,
            )
        )
    rows += [
        ("beam8/greedy decode time, batch 8", f"{ratios['beam8_over_greedy_batch8']:.2f}x", "", None),
        ("beam8/greedy decode time, batch 1", f"{ratios['beam8_over_greedy_batch1']:.2f}x", "", None),
        ("batched speedup (b1/b8 time), greedy", f"{ratios['batched_speedup_greedy']:.2f}x", "", None),
        ("batched speedup (b1/b8 time), beam8", f"{ratios['batched_speedup_beam8']:.2f}x", "", None),
        (
            "hyps identical batch8 vs batch1, greedy / beam8",
            f"{same['greedy batch8 vs batch1']} / {same['beam8 batch8 vs batch1']}",
            "",
            None,
        ),
        (
            "new tokens generated (every config)",
            f"{min(s['tokens_total'] for s in summary.values())} min",
            "> 0",
            all(s["tokens_total"] > 0 for s in summary.values()),
        ),
    ]
    rows = [{"metric": m, "value": v, "target": t, "ok": ok} for m, v, t, ok in rows]
    total_s = time.perf_counter() - t_start
    m = machine()

    print("\n=== decode bench summary ===")
    print(
        f"machine : {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['ram_gb']} GB RAM, "
        f"Python {m['python']}, {m['platform']}"
    )
    print(
        f"versions: torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}"
    )
    print(f"command : {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"model   : {ckpt_kind}; {n_params / 1e6:.2f} M params, load {load_s:.1f} s (excluded)")
    print(
        f"audio   : {source}: {len(pieces)} pieces, {audio_s:.1f} s; per-piece token bound "
        f"{min(bounds)}-{max(bounds)} (ceil(8/s * dur) + 16)"
    )
    print(f"tokens  : {force_note}")
    print(
        f"example : greedy batch8 hyp of {example['greedy batch8'][0]}: {example['greedy batch8'][1][:80]!r}"
    )
    print(
        f"background load (CPU of other processes): {load['other_cores_avg']} cores avg over "
        f"{load['wall_s']} s; loadavg end {' '.join(load['loadavg_end'])}"
    )
    print_metric_table(rows)
    print(f"total bench time: {total_s:.0f} s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for rp in reps:
        for r in rp["results"].values():
            r.pop("hyps")
    result = {
        "command": " ".join(sys.argv),
        "machine": m,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "checkpoint": ckpt_kind,
        "params": n_params,
        "load_s": load_s,
        "audio": {
            "source": source,
            "pieces": len(pieces),
            "audio_s": audio_s,
            "bounds": [min(bounds), max(bounds)],
        },
        "settings": base.model_dump(mode="json"),
        "forced_min_new_tokens": n_force,
        "probe_tokens_per_utt": probe_tokens_per_utt,
        "summary": summary,
        "ratios": ratios,
        "hyps_identical": same,
        "reps": reps,
        "background_load": load,
        "rows": rows,
        "total_s": total_s,
    }
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    tmp_ctx.cleanup()
    return 0 if rows[-1]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
