""".venv/bin/python bench/rnnt_loss_bench.py [--batch 8] [--frames 150] [--tokens 40] [--vocab 500] \
[--reps 5] [--out bench/results/rnnt_loss_bench.json]

The RNN-T loss of the Zipformer-Transducer baseline (``llmasr.zipformer.loss``), forward + backward
from the joiner's logits (B, T, U+1, V), float32 on the CPU: ``impl="torch"`` (the closed-form
frame recursion in plain PyTorch) against ``impl="warp"`` (``warprnnt-numba``), alternated
``--reps`` times in one process after a warm-up (numba compiles on first use), so the ratio compares
like with like.  The defaults are a realistic training batch of this project's data: 8 utterances of
6 s (150 frames at the Zipformer's 25 Hz output), 40 BPE tokens, vocabulary 500.  Also reports the
joiner-logit forward + backward alone (log-softmax + a sum), the cost both share, and checks the two
losses agree.  Seconds on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--vocab", type=int, default=500)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "bench/results/rnnt_loss_bench.json"))
    args = ap.parse_args(argv)

    import torch

    from llmasr.zipformer.loss import rnnt_loss

    torch.manual_seed(0)
    B, T, U, V = args.batch, args.frames, args.tokens, args.vocab
    logits = torch.randn(B, T, U + 1, V)  # (B, T, U+1, V)
    targets = torch.randint(1, V, (B, U))
    t_lens = torch.tensor([T - 7 * i % (T // 3) for i in range(B)])
    u_lens = torch.tensor([U - 3 * i % (U // 3) for i in range(B)])

    def step(impl: str | None) -> tuple[float, float]:
        x = logits.clone().requires_grad_(True)
        t0 = time.perf_counter()
        if impl is None:
            loss = x.log_softmax(-1).sum()
        else:
            loss = rnnt_loss(x, targets, t_lens, u_lens, impl=impl).sum()
        loss.backward()
        return time.perf_counter() - t0, float(loss.detach())

    for impl in ("torch", "warp", None):  # warm-up: numba's JIT compile, allocator
        step(impl)
    times: dict[str, list[float]] = {"torch": [], "warp": [], "log_softmax_only": []}
    losses = {}
    for _ in range(args.reps):
        for impl, name in (("torch", "torch"), ("warp", "warp"), (None, "log_softmax_only")):
            s, value = step(impl)
            times[name].append(s)
            losses[name] = value
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    result = {
        "shape": {"batch": B, "frames": T, "tokens": U, "vocab": V},
        "ms_median": ms,
        "ms_all": {k: [1000 * s for s in v] for k, v in times.items()},
        "torch_over_warp": ms["torch"] / ms["warp"],
        "loss_torch": losses["torch"],
        "loss_warp": losses["warp"],
        "loss_rel_diff": abs(losses["torch"] - losses["warp"]) / abs(losses["warp"]),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    print(f"batch {B} x {T} frames x {U + 1} x {V} (fp32, CPU, {torch.get_num_threads()} threads)")
    for k, v in ms.items():
        print(f"  {k:18s} {v:9.1f} ms  (forward + backward, median of {args.reps})")
    print(
        f"  torch / warp = {result['torch_over_warp']:.3f};  "
        f"losses {losses['torch']:.4f} vs {losses['warp']:.4f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
