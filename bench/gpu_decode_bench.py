""".venv/bin/python bench/gpu_decode_bench.py [--llm qwen2-0.5b|qwen2-1.5b] [--utts 16] [--reps 2] \
[--tokens 64] [--out bench/results/gpu_decode_bench.json]
.venv/bin/python bench/gpu_decode_bench.py --cpu-smoke  # CPU: the same code path with tiny models,
                                                        # to check it runs

GPU version of bench/decode_bench.py (for a lent CUDA GPU, a few minutes on one H100): the same four
configurations -- beam 8 + no_repeat_ngram_size 6 vs greedy, batch_size 8 vs 1 -- through
``tasks.llmasr_decode.LLMASRSystem.decode`` / ``run_system`` (RTF = decode wall time, features + generation,
/ audio seconds; tokens/s = new tokens / decode wall time), but on a mid-size model built from
configs, random init, bf16, on the GPU: a Whisper-large-like encoder (d_model 1280, 32 layers,
128 mel bins) + adapter + a Qwen2 LLM (``--llm``: 0.5B or 1.5B shapes, 151,936-token vocabulary)
with an unmerged LoRA (rank 8 on q/k/v/o, as stage 3 decodes by default).  The tokenizer is the
tiny one (llmasr.tiny_models.tiny_tokenizer, ~50k Whisper BPE): only its special ids and the prompt
matter.

Random weights emit arbitrary tokens, so generation length is fixed: every piece's bound is
``--tokens`` (eval settings tokens_per_second ~0, min_new_tokens = max_new_tokens = N) and
``min_new_tokens=N`` plus pad suppression are passed through ``LLMASR.generate_ids``'s
``**generate_kwargs`` (the instance's generate_ids is wrapped), so each piece decodes exactly N tokens
and every configuration does the same decode work.  Audio: espeak-ng utterances when espeak-ng is
installed, else deterministic noise pieces of 2-12 s (features are all the random encoder sees).
Repetitions alternate the order of the four configurations; CUDA is synchronised around each batch
(decode_pieces times each ``system.decode`` call, whose ``.tolist()`` already synchronises).
``--cpu-smoke``: a tiny encoder and LLM in fp32 on the CPU, 3 utterances, 4 tokens, one repetition,
results to a temp folder -- the check (tests/test_gpu_bench.py) that the device call will run.

Exits 2 with "needs a CUDA GPU" when torch sees none.  Prints the table and the GPU; JSON to --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LLMS = {
    "qwen2-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "qwen2-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
}
WHISPER_LARGE = dict(
    num_mel_bins=128,
    d_model=1280,
    encoder_layers=32,
    encoder_attention_heads=20,
    encoder_ffn_dim=5120,
    decoder_layers=2,
    decoder_attention_heads=20,
    decoder_ffn_dim=5120,
    max_source_positions=1500,
    vocab_size=51866,
)
WHISPER_TINY = dict(  # --cpu-smoke
    num_mel_bins=128,
    d_model=64,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_layers=1,
    decoder_attention_heads=4,
    decoder_ffn_dim=128,
    max_source_positions=1500,
    vocab_size=51866,
)
CONFIGS = [
    ("beam8 batch8", 8, 6, 8),
    ("greedy batch8", 1, 0, 8),
    ("beam8 batch1", 8, 6, 1),
    ("greedy batch1", 1, 0, 1),
]


def parse_config(name: str) -> tuple[str, int, int, int]:
    """'beam8 batch8' / 'greedy batch32' -> (name, num_beams, no_repeat_ngram_size, batch_size)."""
    words = name.split()
    if (
        len(words) != 2
        or not words[1].startswith("batch")
        or not (words[0] == "greedy" or words[0].startswith("beam"))
    ):
        raise ValueError(
            f"--configs: {name!r} is not '<greedy|beamN> batchM' (e.g. 'beam8 batch8', 'greedy batch32')"
        )
    beams = 1 if words[0] == "greedy" else int(words[0][4:])
    return name, beams, (6 if beams > 1 else 0), int(words[1][5:])


def make_audio(n: int, tmp: Path):
    import shutil

    import numpy as np
    import soundfile as sf

    from tasks.testsets import TestUtterance

    texts = [
        "The weather was warm enough to eat lunch outside on the terrace.",
        "The doctor prescribed amoxicillin for the chest infection and asked the patient to come back next "
        "week.",
        "We planted tomatoes and beans in the garden behind the house.",
        "The museum opens at nine and closes late on Fridays.",
    ]
    out = []
    have_espeak = shutil.which("espeak-ng") is not None
    rng = np.random.default_rng(0)
    for i in range(n):
        path = tmp / f"u{i:02d}.wav"
        if have_espeak:
            from tasks.demo_corpus import ESPEAK_RATE, speak

            audio, sr = speak(texts[i % len(texts)] * (1 + i % 2), "en", 150, tmp), ESPEAK_RATE
        else:
            sr = 16000
            audio = (0.05 * rng.standard_normal(int(sr * (2 + 10 * ((i * 7) % n) / max(1, n - 1))))).astype(
                np.float32
            )
        sf.write(str(path), audio, sr)
        out.append(TestUtterance(utt_id=f"u{i:02d}", audio_path=str(path), text=texts[i % len(texts)]))
    return ("espeak-ng" if have_espeak else "noise"), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", choices=sorted(LLMS), default="qwen2-0.5b")
    ap.add_argument("--utts", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per piece, forced")
    ap.add_argument("--no-lora", action="store_true", help="no LoRA at all (the LLM alone)")
    ap.add_argument(
        "--merge-lora",
        action="store_true",
        help="fold the LoRA into the LLM weights before decoding (llmasr.model.merge_lora)",
    )
    ap.add_argument(
        "--sdpa",
        choices=["auto", "no-cudnn", "math"],
        default="auto",
        help="scaled-dot-product attention backends torch may pick (no-cudnn: disable cuDNN attention, "
        "which builds a plan per new shape; math: the reference kernel only)",
    )
    ap.add_argument(
        "--configs",
        default=",".join(c[0] for c in CONFIGS),
        help="comma-separated '<greedy|beamN> batchM' (default: the four of bench/decode_bench.py)",
    )
    ap.add_argument("--out", default=str(REPO / "bench/results/gpu_decode_bench.json"))
    ap.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="tiny models on the CPU, to check the bench runs (numbers meaningless)",
    )
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    try:
        configs = [parse_config(c.strip()) for c in args.configs.split(",") if c.strip()]
    except ValueError as exc:
        ap.error(str(exc))  # exit 2 with the usage line
    if smoke:
        args.llm, args.utts, args.reps, args.tokens = "tiny", 3, 1, 4

    import torch

    if not torch.cuda.is_available() and not smoke:
        print(
            "gpu_decode_bench: needs a CUDA GPU (torch.cuda.is_available() is False); run "
            "bench/decode_bench.py for the CPU numbers",
            file=sys.stderr,
        )
        return 2

    import transformers

    from llmasr.model import allow_cudnn_attention

    if args.sdpa == "no-cudnn":
        allow_cudnn_attention(False)  # as eval.cudnn_attention: false
    elif args.sdpa == "math":
        for off in (
            torch.backends.cuda.enable_cudnn_sdp,
            torch.backends.cuda.enable_flash_sdp,
            torch.backends.cuda.enable_mem_efficient_sdp,
        ):
            off(False)

    from llmasr.config import EvalConfig, SegmentConfig
    from llmasr.model import LLMASRConfig, LoraConfig, apply_lora, build_model, merge_lora
    from llmasr.tiny_models import tiny_tokenizer
    from tasks.decode import run_system
    from tasks.llmasr_decode import LLMASRSystem
    from tasks.pieces import plan_pieces

    t_start = time.perf_counter()
    tmp_ctx = tempfile.TemporaryDirectory(prefix="llmasr-gpu-decode-bench-")
    tmp = Path(tmp_ctx.name)
    if smoke and args.out == str(REPO / "bench/results/gpu_decode_bench.json"):
        args.out = str(tmp / "gpu_decode_bench.smoke.json")  # never over the GPU numbers
    device, dtype = ("cpu", torch.float32) if smoke else ("cuda", torch.bfloat16)
    tok_dir = tiny_tokenizer(tmp / "tokenizer")
    cfg = LLMASRConfig(
        encoder=dict(WHISPER_TINY if smoke else WHISPER_LARGE),
        llm={"model_type": "qwen2", "vocab_size": 151936, "max_position_embeddings": 32768, **LLMS[args.llm]},
        tokenizer=str(tok_dir),
        adapter_hidden=2048,
        dtype="float32" if smoke else "bfloat16",
        lora=LoraConfig(
            rank=8, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        ),
    )
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU (minutes on CPU for ~1-2B parameters)
        model = build_model(cfg)
        if not args.no_lora:
            apply_lora(model, cfg)
            if args.merge_lora:
                merge_lora(model)
    model = model.to(device, dtype).eval()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())

    source, utts = make_audio(args.utts, tmp)
    problems: list[str] = []
    kept, pieces, durations = plan_pieces(utts, 30.0, SegmentConfig(), problems)
    audio_s = sum(durations.values())
    n = args.tokens
    base = EvalConfig(device=device, tokens_per_second=1e-9, min_new_tokens=n, max_new_tokens=n)
    force = {"min_new_tokens": n, "suppress_tokens": [model.pad_id]}
    calls: list[dict] = []  # one per generate call: config, batch, frames, beams, seconds
    current = ["warm-up"]
    original = model.generate_ids

    @functools.wraps(original)
    def generate_ids(*a, **kw):
        # each generate call timed on its own (CUDA synchronised): the per-call cost of new shapes
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        ids = original(*a, **{**kw, **force})
        if device == "cuda":
            torch.cuda.synchronize()
        feats = a[0] if a else kw["input_features"]  # (B, M, T)
        calls.append(
            {
                "config": current[0],
                "batch": int(feats.shape[0]),
                "frames": int(feats.shape[-1]),
                "beams": int(kw.get("num_beams", 1)),
                "seconds": round(time.perf_counter() - t, 4),
            }
        )
        return ids

    model.generate_ids = generate_ids

    systems = {}
    for name, beams, ngram, batch in configs:
        s = LLMASRSystem(
            name,
            tmp,
            base.model_copy(update={"num_beams": beams, "no_repeat_ngram_size": ngram, "batch_size": batch}),
        )
        s.model, s.device = model, device
        systems[name] = s

    def run(name, ps=None):
        ps = ps or pieces
        ids = {p.utt_id for p in ps}
        if device == "cuda":
            torch.cuda.synchronize()
        return run_system(
            systems[name], [u for u in kept if u.utt_id in ids], ps, durations, systems[name].settings
        )

    longest = sorted(pieces, key=lambda p: -p.duration_s)
    for name, _, _, batch in configs:  # warm-up (CUDA kernels, allocator): one batch of each configuration
        current[0] = f"warm-up {name}"
        run(name, longest[:batch])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    names = [c[0] for c in configs]
    reps = []
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        order = order[::-1] if rep % 2 else order
        res = {}
        for name in order:
            current[0] = f"rep {rep + 1} {name}"
            r = run(name)
            res[name] = {
                "decode_s": r.decode_s,
                "rtf": r.rtf,
                "tokens": r.tokens,
                "tokens_per_s": r.tokens_per_s,
                "failures": len(r.failures),
            }
            print(
                f"  rep {rep + 1} {name:<14}: {r.decode_s:7.2f} s  RTF {r.rtf:.4f}  {r.tokens} tok "
                f"({r.tokens / len(pieces):.1f}/piece)  {r.tokens_per_s:.0f} tok/s  failures "
                f"{len(r.failures)}",
                flush=True,
            )
        reps.append({"order": order, "results": res})

    def med(name, k):
        return statistics.median(rp["results"][name][k] for rp in reps)

    def ratio(a, b):
        return statistics.median(rp["results"][a]["decode_s"] / rp["results"][b]["decode_s"] for rp in reps)

    rows = []
    for name in names:
        rows.append((f"{name}: RTF (median of {args.reps})", f"{med(name, 'rtf'):.4f}"))
        rows.append((f"{name}: tokens/s", f"{med(name, 'tokens_per_s'):.0f}"))
        rows.append((f"{name}: new tokens/piece", f"{med(name, 'tokens') / len(pieces):.1f}"))
    wanted = {
        "beam8_over_greedy_batch8": ("beam8 batch8", "greedy batch8"),
        "beam8_over_greedy_batch1": ("beam8 batch1", "greedy batch1"),
        "batched_speedup_greedy": ("greedy batch1", "greedy batch8"),
        "batched_speedup_beam8": ("beam8 batch1", "beam8 batch8"),
    }
    ratios = {k: ratio(a, b) for k, (a, b) in wanted.items() if a in names and b in names}
    rows += [(k.replace("_", " "), f"{v:.2f}x") for k, v in ratios.items()]
    if device == "cuda":
        rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 1024**3:.1f} GB"))
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke run)"
    print("\n=== GPU decode bench summary ===")
    print(f"gpu     : {gpu}; torch {torch.__version__}, transformers {transformers.__version__}")
    print(
        f"model   : whisper-large-like encoder + {args.llm} (random, "
        f"{'fp32' if smoke else 'bf16'}"
        f"{'' if args.no_lora else ', LoRA r8 ' + ('merged' if args.merge_lora else 'unmerged')}): "
        f"{n_params / 1e9:.2f} B params, built in {build_s:.0f} s"
    )
    print(f"audio   : {source}: {len(pieces)} pieces, {audio_s:.1f} s; {n} new tokens forced per piece")
    w = max(len(m) for m, _ in rows)
    print(f"{'metric':<{w}} | value | target | ok")
    for m, v in rows:
        print(f"{m:<{w}} | {v} |  |")
    total_s = time.perf_counter() - t_start
    print("generate calls (config, batch, frames, seconds):")
    for c in calls:
        print(
            f"  {c['config']:<26} B={c['batch']:<3} T={c['frames']:<5} beams={c['beams']}  "
            f"{c['seconds']:.3f} s"
        )
    print(f"total bench time: {total_s:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "gpu": gpu,
                "llm": args.llm,
                "lora": "none" if args.no_lora else ("merged" if args.merge_lora else "unmerged"),
                "params": n_params,
                "audio": {"source": source, "pieces": len(pieces), "audio_s": audio_s},
                "forced_tokens": n,
                "reps": reps,
                "ratios": ratios,
                "sdpa": args.sdpa,
                "generate_calls": calls,
                "rows": rows,
                "problems": problems,
                "total_s": total_s,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
