"""Train the Zipformer-Transducer baseline on the run's shards (the same train/validation split as the
LLM-ASR), with checkpoints and resume.

    .venv/bin/python -m tasks.zipformer_train --profile demo [--work-dir runs/demo] [--set zipformer.epochs=2]

Reads ``<work_dir>/shards/index.json``; writes ``<work_dir>/checkpoints/zipformer/``:
``bpe.model`` (sentencepiece BPE trained on the train split's transcripts), ``ckpt/last.pt`` (the
resumable state: model, ScaledAdam, Eden, step, epoch, batches done in the epoch; written every
``zipformer.ckpt_every`` steps, removed once training ends), ``model.pt`` (the
trained weights) and, last, ``model.json`` (sizes, BPE file, cache key, steps: the checkpoint is
complete once it exists).  Metrics go to ``<work_dir>/logs/zipformer.jsonl``, one JSON object a line,
shaped as ``logs/train.jsonl``'s records, each with ``"model": "zipformer"``: ``event`` start / end,
training ``loss`` (RNN-T loss per token) with ``lr``, ``samples_per_s``, ``audio_s_per_s`` every
``log_every`` steps, ``val_loss`` every ``val_every`` steps and at the end.

A killed run resumes from ``ckpt/last.pt`` when its key (shards, settings, code) is the same: the step
count continues and the batches already trained on in that epoch are skipped without being decoded
(``tasks.train_data``: the batch order is a function of the seed and epoch).  One CPU process or one
GPU (``zipformer.device``); the model, the recipe (ScaledAdam + Eden, icefall's) and the loss are in
``llmasr/zipformer/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmasr.atomic import atomic_path, write_json
from llmasr.config import ZipformerConfig, cache_settings
from llmasr.zipformer.features import LOG_EPS, fbank
from llmasr.zipformer.model import ZipformerSizes, ZipformerTransducer, count_parameters, set_batch_count
from llmasr.zipformer.pkg import zipformer_modules
from llmasr.zipformer.tokens import BPE, train_bpe
from tasks.decode import torch_device
from tasks.parts import code_version, fingerprint
from tasks.train_data import TRAIN, VALIDATION, ShardSpeechDataset, decode_flac, read_split, split_texts
from tasks.train_log import MetricsLog
from tasks.zipformer_decode import read_model_json, zipformer_dir

ZIPFORMER_CODE = (
    "tasks.zipformer_train",
    "tasks.train_data",
    "llmasr.zipformer.model",
    "llmasr.zipformer.loss",
    "llmasr.zipformer.features",
    "llmasr.zipformer.tokens",
    "llmasr.zipformer.pkg",
)
MODEL = "zipformer"


def log_file(work_dir: str | Path) -> Path:
    return Path(work_dir) / "logs" / "zipformer.jsonl"


def train_key(shard_index: str | Path, cfg: ZipformerConfig) -> str:
    """What a trained Zipformer depends on: the shard index's content, the settings it learns from,
    and the training code."""
    index = Path(shard_index).read_bytes()
    settings = cache_settings(cfg)  # without the runtime fields (llmasr/config.py marks them)
    return fingerprint(
        "zipformer", hashlib.sha256(index).hexdigest(), settings, code_version(*ZIPFORMER_CODE)
    )


def sizes_for(cfg: ZipformerConfig, vocab_size: int) -> ZipformerSizes:
    fields = ZipformerSizes.__dataclass_fields__
    values = {k: v for k, v in cfg.model_dump().items() if k in fields}
    return ZipformerSizes(**{**values, "vocab_size": vocab_size})


class FbankShardDataset(ShardSpeechDataset):
    """``ShardSpeechDataset``'s batches (same shards, split, bucketing, order, resume skipping) with
    80-dim Kaldi fbank features instead of Whisper's log-mel: ``input_features`` (B, 80, T_max)."""

    def _log_mel_batch(self, plan: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = [fbank(decode_flac(s.flac), self.n_mels) for s in plan]  # [(T_i, 80)]
        lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)  # (B,)
        out = torch.full((len(feats), self.n_mels, int(lengths.max())), LOG_EPS)  # (B, 80, T_max)
        for i, f in enumerate(feats):
            out[i, :, : f.shape[0]] = f.T
        return out, lengths


def make_dataset(
    shard_index: Path, split: str, cfg: ZipformerConfig, bpe: BPE, epoch: int, shuffle: bool, skip: int = 0
) -> FbankShardDataset:
    return FbankShardDataset(
        shard_index,
        split,
        n_mels=80,
        targets=bpe,
        batch_max_audio_s=cfg.batch_max_audio_s,
        max_batch_size=cfg.max_batch_size,
        shuffle=shuffle,
        seed=cfg.seed,
        epoch=epoch,
        advance_epoch=False,
        max_frames=None,
        skip={0: skip} if skip else None,
    )


def batch_tensors(batch: dict[str, Any], device: str) -> tuple[torch.Tensor, ...]:
    """A loader batch -> (B, T, 80) features, (B,) frames, (B, U) targets padded with 0, (B,) token
    counts.  An utterance with no tokens keeps U = 1 of padding (the loss reads only its blank path)."""
    feats = batch["input_features"].transpose(1, 2).contiguous()  # (B, 80, T) -> (B, T, 80)
    ids = batch["target_ids"]
    U = max(1, max(len(t) for t in ids))
    targets = torch.zeros(len(ids), U, dtype=torch.long)  # (B, U)
    for i, t in enumerate(ids):
        targets[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    target_lens = torch.tensor([len(t) for t in ids], dtype=torch.long)
    return (
        feats.to(device),
        batch["feature_lengths"].to(device),
        targets.to(device),
        target_lens.to(device),
    )


@torch.no_grad()
def validate(
    model: ZipformerTransducer, shard_index: Path, cfg: ZipformerConfig, bpe: BPE, device: str
) -> dict:
    """RNN-T loss per token over up to ``val_max_batches`` batches of the validation split (the same
    batches every time); {} when the split is empty."""
    if read_split(shard_index, VALIDATION).samples == 0:
        return {}
    model.eval()
    total, tokens, batches = 0.0, 0, 0
    for batch in make_dataset(shard_index, VALIDATION, cfg, bpe, epoch=0, shuffle=False):
        feats, feat_lens, targets, target_lens = batch_tensors(batch, device)
        total += float(model(feats, feat_lens, targets, target_lens).sum())
        tokens += int(target_lens.sum())
        batches += 1
        if batches >= cfg.val_max_batches:
            break
    model.train()
    return {"val_loss": total / max(tokens, 1), "val_batches": batches} if batches else {}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def train_zipformer(
    shard_index: str | Path, out_dir: str | Path, log_path: str | Path, cfg: ZipformerConfig
) -> dict:
    """Train (or resume, or find already trained) the Zipformer-Transducer; returns model.json's record."""
    shard_index, out_dir = Path(shard_index), Path(out_dir)
    key = train_key(shard_index, cfg)
    done = read_model_json(out_dir)
    if done is not None and done.get("key") == key:
        return done
    if done is not None:  # another key: a new model replaces it
        (out_dir / "model.json").unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "ckpt" / "last.pt"
    state = torch.load(ckpt_path, weights_only=False) if ckpt_path.is_file() else None
    if state is not None and state.get("key") != key:
        state = None  # made for other shards, settings or code: start over

    bpe_path = out_dir / "bpe.model"
    if state is None:
        texts = split_texts(read_split(shard_index, TRAIN))
        train_bpe(texts, bpe_path, cfg.vocab_size)
    bpe = BPE(bpe_path)
    device = torch_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    sizes = sizes_for(cfg, bpe.vocab_size)
    model = ZipformerTransducer(sizes, loss_impl=cfg.loss).to(device)
    zf = zipformer_modules()
    optimizer = zf.ScaledAdam(list(model.named_parameters()), lr=cfg.lr, clipping_scale=2.0)
    scheduler = zf.Eden(optimizer, cfg.lr_batches, cfg.lr_epochs, warmup_batches=cfg.lr_warmup_batches)
    step, epoch, in_epoch = 0, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, in_epoch = state["step"], state["epoch"], state["in_epoch"]
        _set_rng_state(state["rng"])
    log = MetricsLog(log_path, None, stage=MODEL, active=True, fields={"model": MODEL})
    log.write(
        {
            "event": "start",
            "step": step,
            "epoch": epoch,
            "resumed_from": step if state is not None else None,
            "params": count_parameters(model),
            "vocab_size": bpe.vocab_size,
            "device": device,
            "key": key,
        }
    )

    def checkpoint() -> None:
        _save_state(
            ckpt_path,
            {
                "key": key,
                "step": step,
                "epoch": epoch,
                "in_epoch": in_epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
            },
        )

    model.train()
    window = {"loss": 0.0, "tokens": 0, "samples": 0, "audio_s": 0.0, "t0": time.perf_counter()}
    samples_total, last_loss, val = 0, None, {}
    finished = False
    while epoch < cfg.epochs and not finished:
        scheduler.step_epoch(epoch)
        for batch in make_dataset(shard_index, TRAIN, cfg, bpe, epoch, shuffle=True, skip=in_epoch):
            feats, feat_lens, targets, target_lens = batch_tensors(batch, device)
            set_batch_count(model, step * cfg.schedule_scale)
            losses = model(feats, feat_lens, targets, target_lens)  # (B,) per utterance
            n_tokens = max(int(target_lens.sum()), 1)
            (losses.sum() / n_tokens).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            in_epoch += 1
            scheduler.step_batch(step)
            window["loss"] += float(losses.detach().sum())
            window["tokens"] += n_tokens
            window["samples"] += len(batch["keys"])
            window["audio_s"] += batch["audio_s"]
            samples_total += len(batch["keys"])
            if step % cfg.log_every == 0:
                seconds = max(time.perf_counter() - window["t0"], 1e-9)
                last_loss = window["loss"] / window["tokens"]
                log.write(
                    {
                        "step": step,
                        "epoch": epoch,
                        "loss": last_loss,
                        "lr": scheduler.get_last_lr()[0],
                        "samples_per_s": window["samples"] / seconds,
                        "audio_s_per_s": window["audio_s"] / seconds,
                    }
                )
                window = {"loss": 0.0, "tokens": 0, "samples": 0, "audio_s": 0.0, "t0": time.perf_counter()}
            if step % cfg.val_every == 0:
                val = validate(model, shard_index, cfg, bpe, device)
                if val:
                    log.write({"step": step, "epoch": epoch, **val})
            if step % cfg.ckpt_every == 0:
                checkpoint()
            if cfg.max_steps is not None and step >= cfg.max_steps:
                finished = True
                break
        if not finished:
            epoch += 1
            in_epoch = 0
    if window["tokens"]:
        last_loss = window["loss"] / window["tokens"]
        log.write({"step": step, "epoch": epoch, "loss": last_loss, "lr": scheduler.get_last_lr()[0]})
    val = validate(model, shard_index, cfg, bpe, device)
    if val:
        log.write({"step": step, "epoch": epoch, **val})
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    record = {
        "model": MODEL,
        "key": key,
        "sizes": sizes.to_dict(),
        "params": count_parameters(model),
        "bpe": "bpe.model",
        "weights": "model.pt",
        "steps": step,
        "epochs": epoch,
        "final_loss": last_loss,
        **val,
    }
    log.write(
        {"event": "end", "step": step, **{k: v for k, v in record.items() if k not in ("sizes", "model")}}
    )
    write_json(out_dir / "model.json", record)
    shutil.rmtree(out_dir / "ckpt", ignore_errors=True)
    return record


def load_zipformer(folder: str | Path, device: str = "cpu") -> tuple[ZipformerTransducer, BPE]:
    """The trained model (eval mode) and its BPE model from a finished ``checkpoints/zipformer``."""
    folder = Path(folder)
    record = read_model_json(folder)
    if record is None:
        raise FileNotFoundError(f"{folder}: no model.json (training has not finished)")
    model = ZipformerTransducer(ZipformerSizes(**record["sizes"]))
    model.load_state_dict(torch.load(folder / record["weights"], map_location="cpu", weights_only=True))
    return model.to(device).eval(), BPE(folder / record["bpe"])


def main(argv: list[str] | None = None) -> int:
    from llmasr.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir")
    ap.add_argument("--profile")
    ap.add_argument("--config-file")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    top = {"work_dir": args.work_dir} if args.work_dir else {}
    cfg = load_config(profile=args.profile, overrides=args.overrides, config_file=args.config_file, **top)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
    record = train_zipformer(
        Path(cfg.work_dir) / "shards" / "index.json",
        zipformer_dir(cfg.work_dir),
        log_file(cfg.work_dir),
        cfg.zipformer,
    )
    print(json.dumps({k: v for k, v in record.items() if k != "sizes"}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
