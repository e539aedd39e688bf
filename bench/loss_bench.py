""".venv/bin/python bench/loss_bench.py [--vocab 151936] [--batch 8] [--audio-s 8] [--reps 5] \
[--out bench/results/loss_bench.json]

The stage-3 training step (forward + backward, LoRA + adapter trained) with logits at the scored
positions only (``LLMASR.forward`` passes ``logits_to_keep``: the transcript tokens + EOS) against
logits at every position (the same model, forced down the fallback path an LLM without
``logits_to_keep`` takes), on the CPU, alternated ``--reps`` times in one process.  The model is tiny
(Whisper d_model 64, 2 layers; Qwen2 hidden 64, 2 layers) but has a real LLM vocabulary
(``--vocab``, Qwen2's 151,936), so the vocabulary projection and its cross-entropy -- what slicing
removes -- are a large part of the step, as they are of a small LLM's step on a GPU.  Reports ms per
step, the ratio, the logits tensor's elements and bytes (fp32), and checks the losses agree.
About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--audio-s", type=float, default=8.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "bench/results/loss_bench.json"))
    args = ap.parse_args(argv)

    import torch

    import llmasr.model.llmasr as M
    from llmasr.model import LLMASRConfig, LoraConfig, apply_lora, build_model, set_trainable
    from llmasr.tiny_models import tiny_tokenizer
    from tasks.demo_corpus import TRAIN_SENTENCES

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="llmasr-loss-bench-"))
    cfg = LLMASRConfig(
        encoder=dict(
            num_mel_bins=80,
            d_model=64,
            encoder_layers=2,
            encoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_layers=1,
            decoder_attention_heads=4,
            decoder_ffn_dim=128,
            max_source_positions=1500,
            vocab_size=51865,
        ),
        llm=dict(
            model_type="qwen2",
            vocab_size=args.vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
        tokenizer=str(tiny_tokenizer(tmp / "tokenizer", vocab_size=None)),
        adapter_hidden=256,
        lora=LoraConfig(
            rank=8, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        ),
    )
    model = build_model(cfg)
    apply_lora(model, cfg)
    set_trainable(model, 3)
    frames = [int(100 * args.audio_s * (0.8 + 0.4 * i / max(1, args.batch - 1))) for i in range(args.batch)]
    x = torch.randn(args.batch, 80, max(frames))  # (B, M, T)
    lengths = torch.tensor(frames)
    sentences = [s for s in TRAIN_SENTENCES if s.strip()]
    targets = model.encode_targets(
        [f"{sentences[i % len(sentences)]} {sentences[(i + 3) % len(sentences)]}" for i in range(args.batch)]
    )

    def step(sliced: bool) -> tuple[float, float, tuple[int, ...]]:
        M.keeps_logits = original if sliced else (lambda llm: False)
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        out = model(x, lengths, targets)
        out.loss.backward()
        return time.perf_counter() - t, float(out.loss.detach()), tuple(out.logits.shape)

    original = M.keeps_logits
    step(True), step(False)  # warm-up
    times = {"sliced": [], "full": []}
    for rep in range(args.reps):
        for name in ["sliced", "full"] if rep % 2 == 0 else ["full", "sliced"]:
            dt, loss, shape = step(name == "sliced")
            times[name].append(dt)
            if name == "sliced":
                sliced_loss, sliced_shape = loss, shape
            else:
                full_loss, full_shape = loss, shape
    M.keeps_logits = original
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    elems = {
        "sliced": sliced_shape[0] * sliced_shape[1] * sliced_shape[2],
        "full": full_shape[0] * full_shape[1] * full_shape[2],
    }
    r = {
        "command": " ".join(sys.argv),
        "vocab": args.vocab,
        "batch": args.batch,
        "audio_s": args.audio_s,
        "reps": args.reps,
        "ms_per_step": ms,
        "speedup": ms["full"] / ms["sliced"],
        "logits_shape": {"sliced": sliced_shape, "full": full_shape},
        "logits_fp32_mb": {k: v * 4 / 1e6 for k, v in elems.items()},
        "loss": {"sliced": sliced_loss, "full": full_loss},
        "threads": torch.get_num_threads(),
    }
    print(
        f"stage-3 step, batch {args.batch} x ~{args.audio_s:.0f} s, vocab {args.vocab:,}, "
        f"{torch.get_num_threads()} threads (median of {args.reps})"
    )
    print(
        f"  logits at scored positions : {ms['sliced']:8.1f} ms  logits {sliced_shape}  "
        f"{r['logits_fp32_mb']['sliced']:7.1f} MB fp32"
    )
    print(
        f"  logits at every position   : {ms['full']:8.1f} ms  logits {full_shape}  "
        f"{r['logits_fp32_mb']['full']:7.1f} MB fp32"
    )
    print(
        f"  speedup {r['speedup']:.2f}x; logits {elems['full'] / elems['sliced']:.1f}x smaller; loss "
        f"{sliced_loss:.6f} vs {full_loss:.6f}"
    )
    if abs(sliced_loss - full_loss) > 1e-4 * max(1.0, abs(full_loss)):
        print("FAIL: the two losses differ")
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
