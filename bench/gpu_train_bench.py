""".venv/bin/python bench/gpu_train_bench.py [--steps 300] [--llm 0.5b|1.5b] \
[--encoder large-v2|medium|base] [--batch 16] [--audio-s 8] [--out bench/results/gpu_train_bench.json]
.venv/bin/python bench/gpu_train_bench.py --cpu-smoke  # CPU: the same code path with tiny models,
                                                       # to check it runs

Stage-3 training throughput and MFU on ONE CUDA GPU (meant for a lent H100 / H200: one command,
under 8 minutes with the defaults, most of it building the random-init models on the CPU).  Without
CUDA it exits with status 2 and "needs a CUDA GPU" (nothing to measure on a CPU machine; see
bench/train_bench.py for the CPU bench), unless ``--cpu-smoke``: then a tiny encoder and LLM run
20 steps in fp32 with infra/deepspeed/zero2_cpu.json and DeepSpeed's CPU accelerator, through the
same Trainer subclass, and the results go to the work folder -- the check (tests/test_gpu_bench.py)
that the one device call will not die on a Trainer change.

What runs: the real ``tasks.train.Trainer`` (one process, NCCL world of 1, bf16, DeepSpeed ZeRO-2 with
infra/deepspeed/zero2.json, torch AdamW + LambdaLR, LoRA on the LLM + the adapter trained, encoder
and LLM frozen: stage 3) -- everything as ``python -m tasks.train RUN.json`` does it, except the
data: ``build_data`` is replaced by synthetic batches in the loader's batch format (random log-mel
features of ``--audio-s`` seconds +-20%, ``--batch`` examples, transcripts = two demo-corpus
sentences tokenized as stage 3 tokenizes them), so the GPU machine needs no shards and the loader
is out of the measurement.  Models, random init from configs (no hub, no download):

* encoder: a Whisper encoder config, ``large-v2`` (d_model 1280, 32 layers, 20 heads, 635 M params;
  default), ``medium`` or ``base``; 80 mels, 1500 positions; trim_padding on (the pipeline default).
* LLM: a Qwen2 config, ``0.5b`` (hidden 896, 24 layers, vocab 151936; default) or ``1.5b``.
* tokenizer: the shipped Whisper BPE as an LLM tokenizer (``llmasr.tiny_models.tiny_tokenizer``).

Reported from the metrics JSONL the trainer writes (log_every 10; the first window -- warm-up,
cuDNN/cuBLAS autotune, allocator growth -- left out): samples/s, audio-s/s, transcript tokens/s,
decoder positions/s, steps/s, model TFLOP/s and MFU (the trainer's: ``tasks.flops`` -- trained
weights 6N, frozen ones 4N or 2N, attention, logits where computed -- over
``tasks.train_log.peak_bf16_flops(GPU name)``), the usual 6N estimate beside it (``mfu_6n``; in a
result without it, bench/results/gpu_train_bench*.json, "mfu" is the 6N estimate), plus peak GPU memory
and the setup time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENCODERS = {  # Whisper encoder configs (random init)
    "large-v2": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120),
    "medium": dict(d_model=1024, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096),
    "base": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048),
    "tiny": dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128),  # --cpu-smoke
}
LLMS = {  # Qwen2 configs (random init)
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
    ),
    # --cpu-smoke
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


class SyntheticBatches:
    """Endless batches in tasks.train_data's format (each pass: the next epoch, same batches)."""

    def __init__(
        self, tokenizer, batch: int, audio_s: float, n_distinct: int = 8, n_mels: int = 80, seed: int = 0
    ) -> None:
        import random

        import torch

        from tasks.demo_corpus import TRAIN_SENTENCES
        from tasks.train_data import LLMTargets, collate

        rng = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        targets = LLMTargets(tokenizer)
        sentences = [s.strip() for s in TRAIN_SENTENCES if s.strip()]
        self.batches = []
        for b in range(n_distinct):
            frames = [min(3000, int(100 * audio_s * rng.uniform(0.8, 1.2))) for _ in range(batch)]
            feats = [torch.randn(n_mels, f, generator=gen).numpy() for f in frames]
            texts = [f"{rng.choice(sentences)} {rng.choice(sentences)}" for _ in range(batch)]
            keys = [f"syn{b:02d}-{i:03d}" for i in range(batch)]
            self.batches.append(collate(keys, texts, feats, [targets(t) for t in texts], sum(frames) / 100.0))

    def __iter__(self):
        i = 0
        while True:
            batch = dict(self.batches[i % len(self.batches)])
            batch.update(worker=0, worker_batch=i, epoch=0)
            yield batch
            i += 1


def steady(records: list[dict]) -> dict:
    """Throughputs over the metric windows after the first (window length = samples / samples_per_s)."""
    windows = [r for r in records if "samples_per_s" in r]
    prev, prev_step, rows = 0, 0, []
    for r in windows:
        n = r["run_samples"] - prev
        rows.append((r, n / r["samples_per_s"] if r["samples_per_s"] > 0 else 0.0, r["step"] - prev_step))
        prev, prev_step = r["run_samples"], r["step"]
    rows = rows[1:] or rows
    sec = sum(s for _, s, _ in rows)
    out = {"windows": len(rows), "seconds": round(sec, 2), "steps": sum(n for _, _, n in rows)}
    for k in (
        "samples_per_s",
        "audio_s_per_s",
        "tokens_per_s",
        "encoder_frames_per_s",
        "decoder_positions_per_s",
        "model_tflops",
        "mfu",
        "mfu_6n",
    ):
        if all(k in r for r, _, _ in rows):
            out[k] = sum(r[k] * s for r, s, _ in rows) / sec  # time-weighted mean over the windows
    out["steps_per_s"] = out["steps"] / sec if sec else None
    out["mfu_per_window"] = [round(r["mfu"], 4) for r, _, _ in rows if "mfu" in r]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="stage-3 throughput / MFU on one CUDA GPU through tasks.train.Trainer"
    )
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--llm", choices=sorted(LLMS), default="0.5b")
    ap.add_argument("--encoder", choices=sorted(ENCODERS), default="large-v2")
    ap.add_argument("--batch", type=int, default=16, help="examples per micro-batch")
    ap.add_argument("--audio-s", type=float, default=8.0, help="mean seconds per example (+-20%%)")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument(
        "--distinct",
        type=int,
        default=8,
        help=(
            "distinct synthetic batches, cycled (8: shapes repeat every 8 steps; >= --steps: every step a "
            "new shape, as real data)"
        ),
    )
    ap.add_argument(
        "--cudnn-attention",
        action="store_true",
        help="train.cudnn_attention=true: let torch pick cuDNN attention (off by default in the pipeline)",
    )
    ap.add_argument("--deepspeed-config", default="infra/deepspeed/zero2.json")
    ap.add_argument("--out", default="bench/results/gpu_train_bench.json")
    ap.add_argument("--work", default=None, help="work folder (default: a temp folder)")
    ap.add_argument(
        "--cpu-smoke",
        action="store_true",
        help=(
            "check the bench still runs, on the CPU: tiny encoder and LLM, fp32, zero2_cpu.json, --steps 20, "
            "results to the work folder (numbers meaningless; run it before spending device time)"
        ),
    )
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
        args.encoder, args.llm, args.batch, args.audio_s = "tiny", "tiny", 4, 4.0
        args.deepspeed_config = "infra/deepspeed/zero2_cpu.json"
        if args.steps == 300:
            args.steps = 20

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(
            "gpu_train_bench: needs a CUDA GPU (torch.cuda.is_available() is False); "
            "run bench/train_bench.py for the CPU benchmark",
            file=sys.stderr,
        )
        return 2

    from llmasr.config import LoraConfig, StageConfig, TrainConfig
    from llmasr.tiny_models import tiny_tokenizer
    from tasks.run_file import RunConfig
    from tasks.train import Trainer
    from tasks.train_log import peak_bf16_flops

    t_all, t_wall = time.perf_counter(), time.time()
    work = Path(args.work or tempfile.mkdtemp(prefix="llmasr-gpu-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if not args.cpu_smoke else "cpu (smoke run)"
    precision = "fp32" if args.cpu_smoke else "bf16"
    if args.cpu_smoke and args.out == "bench/results/gpu_train_bench.json":
        args.out = str(work / "gpu_train_bench.smoke.json")  # never over the GPU numbers
    print(f"GPU: {gpu}, peak bf16 {peak_bf16_flops(gpu)}; work {work}", flush=True)
    tok_dir = tiny_tokenizer(work / "tokenizer", vocab_size=None)
    encoder = dict(
        num_mel_bins=80,
        max_source_positions=1500,
        decoder_layers=1,
        decoder_attention_heads=8,
        decoder_ffn_dim=1024,
        vocab_size=51865,
        **ENCODERS[args.encoder],
    )
    llm = dict(
        model_type="qwen2",
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1e6,
        tie_word_embeddings=True,
        **LLMS[args.llm],
    )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    train = TrainConfig(
        encoder="config",
        llm="config",
        tokenizer=str(tok_dir),
        adapter_hidden=2048,
        lora=LoraConfig(rank=args.lora_rank, alpha=2 * args.lora_rank, dropout=0.05, target_modules=targets),
        launcher="deepspeed",
        nproc_per_node=1,
        deepspeed_config=args.deepspeed_config,
        precision=precision,
        cudnn_attention=args.cudnn_attention,
        batch_max_audio_s=1e6,
        max_batch_size=args.batch,
        num_workers=0,
        log_every=10,
        val_every=10**6,
        ckpt_every=10**6,
        stage3=StageConfig(lr=1e-4, max_steps=args.steps, warmup_steps=10),
    )
    model = dict(
        encoder=encoder,
        llm=llm,
        tokenizer=str(tok_dir),
        adapter_path=None,
        adapter_hidden=2048,
        k=2,
        activation="gelu",
        trim_padding=True,
        mask_padding=True,
        dtype="float32",
        lora=dict(rank=args.lora_rank, alpha=2 * args.lora_rank, dropout=0.05, target_modules=targets),
    )
    metrics = work / "logs" / "train.jsonl"
    cfg = RunConfig(
        stage=3,
        work_dir=str(work),
        shard_index=str(work / "none" / "index.json"),
        out_dir=str(work / "checkpoints" / "stage3"),
        key="gpu-bench",
        model=model,
        train=train,
        stage_cfg=train.stage3,
        deepspeed_config=args.deepspeed_config,
        precision=precision,
        metrics_log=str(metrics),
        tensorboard_dir=None,
    )

    class BenchTrainer(Trainer):
        """The real Trainer with synthetic batches in place of the shard loader."""

        def check_world(self) -> None:  # no shard index to hold the world size against
            pass

        def build_data(self) -> None:
            from types import SimpleNamespace

            self.t_data = time.perf_counter()
            self.train_loader = SyntheticBatches(
                self.module.tokenizer, args.batch, args.audio_s, n_distinct=args.distinct, n_mels=self.n_mels
            )
            self.val_loader = None
            self.train_info = SimpleNamespace(samples=10**9, shards=1)
            self.total_steps = self.stop_step = self.stage_cfg.max_steps
            self.max_epochs = None
            self.est_steps_per_epoch = self.total_steps

    trainer = BenchTrainer(cfg)
    info = trainer.run()
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    start = next(r for r in records if r.get("event") == "start")
    first = next(r for r in records if "samples_per_s" in r)
    st = steady(records)
    r = {
        "gpu": gpu,
        "peak_bf16_flops": peak_bf16_flops(gpu),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "args": vars(args),
        "params": trainer.n_params,
        "encoder_params": trainer.n_encoder,
        "trainable_params": trainer.n_trainable,
        "zero_stage": trainer.zero_stage,
        "precision": trainer.precision,
        "setup_s": round(start["time"] - t_wall, 1),  # to the "start" record: models built, engine up
        "steady": st,
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2)
        if torch.cuda.is_available()
        else None,
        "final_loss": info.get("final_loss"),
        "steps": info.get("steps"),
        "first_window_samples_per_s": first["samples_per_s"],
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1, default=str))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], out.name).write_text(json.dumps(r, indent=1, default=str))
    rows = [
        (
            "model",
            f"whisper-{args.encoder} enc ({trainer.n_encoder / 1e6:.0f} M) + qwen2-{args.llm} "
            f"({(trainer.n_params - trainer.n_encoder) / 1e6:.0f} M incl. adapter)",
        ),
        ("trainable (LoRA + adapter)", f"{trainer.n_trainable / 1e6:.1f} M"),
        ("batch", f"{args.batch} x ~{args.audio_s} s, {trainer.precision}, ZeRO-{trainer.zero_stage}"),
        ("steady steps / seconds", f"{st['steps']} / {st['seconds']}"),
        ("steps/s", f"{st['steps_per_s']:.2f}"),
        ("samples/s", f"{st['samples_per_s']:.1f}"),
        ("audio-s/s", f"{st['audio_s_per_s']:.0f}"),
        ("tokens/s (transcript)", f"{st['tokens_per_s']:.0f}"),
        ("decoder positions/s", f"{st['decoder_positions_per_s']:.0f}"),
        ("model TFLOP/s (tasks.flops)", f"{st['model_tflops']:.3g}" if "model_tflops" in st else "n/a"),
        ("MFU (tasks.flops)", f"{100 * st['mfu']:.1f}%" if "mfu" in st else "n/a (unknown GPU)"),
        ("MFU (6N estimate)", f"{100 * st['mfu_6n']:.1f}%" if "mfu_6n" in st else "n/a (unknown GPU)"),
        ("peak GPU memory", f"{r['peak_gpu_mem_gb']} GB"),
        ("setup (models, engine)", f"{r['setup_s']} s"),
        ("total", f"{r['total_s']} s"),
    ]
    print(f"\n=== gpu train bench: {gpu} ===")
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}} | {v}")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
