""".venv/bin/python bench/ctc_step_bench.py [--shards runs/small/shards/index.json] [--batches 6] \
    [--rounds 2] [--threads 2] [--out bench/results/ctc_step_bench.json]

What the small profile's two stage-2 levers buy, in one run on the real parts (Whisper base encoder,
SmolLM2-135M-Instruct, the small profile's adapter with its CTC head): the time of a CTC-only
training step (stage 2's ``train.ctc_align_steps``: encoder under no_grad, adapter, CTC head, CTC
loss, backward, AdamW step), batch as the trainer builds them (``ShardSpeechDataset``, the profile's
``batch_max_audio_s`` / ``max_batch_size``), in four configurations:

    ctc_vocab llm (every one of SmolLM2's 49,152 tokens) or transcripts (the shards' transcripts' tokens)
  x cache_encoder_outputs off or on (on: the encoder's outputs read from memory, as from the second
    epoch on; filled before timing)

The configurations are alternated batch by batch (``--rounds`` passes over ``--batches`` batches), so a
burst of background load hits all alike; medians per configuration and the speedups against
(llm, off) are printed and written to ``--out``.  Needs the small profile's shards (``llmasr data
--profile small``) and the bundled models (``python -m llmasr.bundled prepare``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default=str(REPO / "runs/small/shards/index.json"))
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench/results/ctc_step_bench.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bench.machine import loadavg, machine
    from llmasr.config import load_config
    from llmasr.model import build_model, set_trainable
    from tasks.checkpoints import model_config
    from tasks.encoder_cache import EncoderCache
    from tasks.train_data import TRAIN, VALIDATION, LLMTargets, ShardSpeechDataset, read_split, split_texts

    if not Path(args.shards).is_file():
        print(f"error: no shards at {args.shards}: run `llmasr data --profile small` first", file=sys.stderr)
        return 2
    cfg = load_config("small")
    t = cfg.train
    mcfg = model_config(t, Path(cfg.work_dir), 2).resolved()
    torch.manual_seed(0)
    model = build_model(mcfg)
    set_trainable(model, 2)
    model.encoder.eval()
    ds = ShardSpeechDataset(
        args.shards,
        TRAIN,
        n_mels=model.encoder.num_mel_bins,
        targets=LLMTargets(model.tokenizer),
        batch_max_audio_s=t.batch_max_audio_s,
        max_batch_size=t.max_batch_size,
        seed=0,
    )
    batches = []
    for batch in ds:
        batches.append(batch)
        if len(batches) == args.batches:
            break
    texts = [x for split in (TRAIN, VALIDATION) for x in split_texts(read_split(args.shards, split))]
    spoken = sorted(
        {i for text in texts for i in model.tokenizer(text, add_special_tokens=False)["input_ids"]}
    )
    full_vocab = len(model.tokenizer)
    print(f"{len(batches)} batches of {[len(b['keys']) for b in batches]} utterances; CTC vocabulary: "
          f"{full_vocab} (llm) vs {len(spoken)} (transcripts, from {len(texts)} transcripts)")  # fmt: skip

    cache = EncoderCache(model.encoder)
    for b in batches:  # filled before timing: what every epoch after the first reads
        cache(b["keys"], b["input_features"], b["feature_lengths"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    configs = [("llm", False), ("llm", True), ("transcripts", False), ("transcripts", True)]
    times: dict[str, list[float]] = {f"{v}/{'cache' if c else 'no cache'}": [] for v, c in configs}

    def step(batch: dict, vocab: str, cached: bool) -> float:
        model.adapter.ctc_tokens = None if vocab == "llm" else torch.tensor(spoken, dtype=torch.long)
        t0 = time.perf_counter()
        encoded = cache(batch["keys"], batch["input_features"], batch["feature_lengths"]) if cached else None
        out = model(
            batch["input_features"],
            batch["feature_lengths"],
            batch["target_ids"],
            ctc_only=True,
            encoded=encoded,
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step(batches[0], "llm", False)  # warm-up (allocator, lazy inits)
    for r in range(args.rounds):
        for batch in batches:
            for vocab, cached in configs:
                times[f"{vocab}/{'cache' if cached else 'no cache'}"].append(step(batch, vocab, cached))
        print(f"round {r + 1}/{args.rounds} done")
    base = statistics.median(times["llm/no cache"])
    result = {
        "machine": machine(),
        "loadavg": loadavg(),
        "threads": args.threads,
        "batch_sizes": [len(b["keys"]) for b in batches],
        "batch_audio_s": [round(b["audio_s"], 2) for b in batches],
        "ctc_vocab": {"llm": full_vocab, "transcripts": len(spoken)},
        "median_step_s": {k: statistics.median(v) for k, v in times.items()},
        "speedup_vs_llm_no_cache": {k: base / statistics.median(v) for k, v in times.items()},
        "step_s": times,
    }
    print(f"{'configuration':<26} {'median step s':>14} {'speedup':>8}")
    for k in times:
        print(f"{k:<26} {result['median_step_s'][k]:>14.3f} {result['speedup_vs_llm_no_cache'][k]:>7.1f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
