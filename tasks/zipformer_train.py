"""python -m tasks.zipformer_train RUN_JSON | --profile NAME [--work-dir DIR] [--set KEY=VALUE]

Train the Zipformer-Transducer baseline on the run's shards (the same train/validation split as the
LLM-ASR), with checkpoints and resume, in one process or data-parallel under torchrun.

    .venv/bin/python -m tasks.zipformer_train --profile demo [--work-dir runs/demo] [--set zipformer.epochs=2]
    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 -m tasks.zipformer_train \
        runs/demo/logs/zipformer.run.json                         # what the flow runs (launch_zipformer)

Reads ``<work_dir>/shards/index.json``; writes ``<work_dir>/checkpoints/zipformer/``:
``bpe.model`` (sentencepiece BPE trained on the train split's transcripts), ``ckpt/last.pt`` (the
resumable state: model, ScaledAdam, Eden, step, epoch, batches done in the epoch; written every
``zipformer.ckpt_every`` steps, removed once training ends), ``model.pt`` (the
trained weights) and, last, ``model.json`` (sizes, BPE file, cache key, steps: the checkpoint is
complete once it exists).  Metrics go to ``<work_dir>/logs/zipformer.jsonl``, one JSON object a line,
shaped as ``logs/train.jsonl``'s records, each with ``"model": "zipformer"``: ``event`` start / end,
training ``loss`` (RNN-T loss per token) with ``lr``, ``samples_per_s``, ``audio_s_per_s`` every
``log_every`` steps, ``val_loss`` every ``val_every`` steps and at the end.

A killed run resumes from ``ckpt/last.pt`` when its key (shards, settings, code, world size) is the
same: the step count continues and the batches already trained on in that epoch are skipped without
being decoded (``tasks.train_data``: the batch order is a function of the seed, epoch and rank).

Processes.  ``launch_zipformer`` (the flow's task) writes ``logs/zipformer.run.json`` and runs this
module under torchrun with ``zipformer.nproc_per_node`` processes through ``tasks.launch`` (its own
process group, ``zipformer.timeout_s``, output in ``logs/zipformer.log``, ``TrainingProcessError`` with
the log's tail).  With more than one, the ranks train one DDP model (gloo on the CPU, nccl with one GPU
each): each reads its own share of the split's shards (``ShardSpeechDataset``'s rank rule, so the
global batches are a function of the seed, epoch and world size), every rank stops an epoch when one
runs out (``synced``), and the loss is normalised by the tokens of all ranks' batches, so a step is
one batch of world-size x a rank's batch.  Rank 0 alone validates and writes the BPE model,
checkpoints (with every rank's RNG state), the metrics log and ``model.json``.  Without a launcher
this module trains in its own process (``zipformer.nproc_per_node`` 1) or starts the launcher.
The model, the recipe (ScaledAdam + Eden, icefall's) and the loss are in ``llmasr/zipformer/``.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record as elastic_record

from llmasr.atomic import atomic_path, write_json
from llmasr.config import ConfigError, ZipformerConfig, cache_settings
from llmasr.zipformer.features import LOG_EPS, fbank
from llmasr.zipformer.model import ZipformerSizes, ZipformerTransducer, count_parameters, set_batch_count
from llmasr.zipformer.pkg import zipformer_modules
from llmasr.zipformer.tokens import BPE, train_bpe
from tasks.decode import torch_device
from tasks.launch import REPO, TrainingProcessError, die_with_launcher, launch_command, run_process, stage_env
from tasks.parts import code_version, fingerprint
from tasks.train_data import (
    TRAIN,
    VALIDATION,
    ShardSpeechDataset,
    decode_flac,
    read_split,
    split_texts,
    synced,
)
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
    """What a trained Zipformer depends on: the shard index's content, the settings it learns from
    (the world size, ``nproc_per_node``, among them: it sets the global batch), and the training code."""
    index = Path(shard_index).read_bytes()
    settings = cache_settings(cfg)  # without the runtime fields (llmasr/config/ marks them)
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
    shard_index: Path,
    split: str,
    cfg: ZipformerConfig,
    bpe: BPE,
    epoch: int,
    shuffle: bool,
    skip: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> FbankShardDataset:
    """One rank's batches of ``split`` in ``epoch``, the first ``skip`` left out undecoded."""
    return FbankShardDataset(
        shard_index,
        split,
        n_mels=80,
        targets=bpe,
        rank=rank,
        world_size=world_size,
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


def _dist() -> tuple[int, int]:
    """(rank, world size) of the process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> None:
    """Join torchrun's process group when it started more than one process: nccl with this rank's
    GPU (``LOCAL_RANK``) for ``device`` cuda, else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch_device(device) == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def _barrier() -> None:
    if _dist()[1] > 1:
        dist.barrier()


def _sum_all(values: list[float], device: str) -> list[float]:
    """``values`` summed over the ranks (float64); themselves without a process group."""
    if _dist()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def train_zipformer(
    shard_index: str | Path, out_dir: str | Path, log_path: str | Path, cfg: ZipformerConfig
) -> dict:
    """Train (or resume, or find already trained) the Zipformer-Transducer on this process's rank of
    the process group (the whole job without one); returns model.json's record."""
    shard_index, out_dir = Path(shard_index), Path(out_dir)
    rank, world = _dist()
    device = torch_device(cfg.device)
    if device == "cuda" and world > 1:
        device = f"cuda:{torch.cuda.current_device()}"
    cfg = cfg.model_copy(update={"nproc_per_node": world})  # the key names the world size it ran with
    key = train_key(shard_index, cfg)
    done = read_model_json(out_dir)
    if done is not None and done.get("key") == key:
        return done
    ckpt_path = out_dir / "ckpt" / "last.pt"
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.is_file() else None
    if state is not None and state.get("key") != key:
        state = None  # made for other shards, settings, code or world size: start over

    bpe_path = out_dir / "bpe.model"
    if rank == 0:
        if done is not None:  # another key: a new model replaces it
            (out_dir / "model.json").unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        if state is None:
            texts = split_texts(read_split(shard_index, TRAIN))
            train_bpe(texts, bpe_path, cfg.vocab_size)
    _barrier()  # the BPE model is written
    bpe = BPE(bpe_path)
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
        _set_rng_state(state["rng"][rank])
    # DDP averages the gradients after backward; the encoder's layer bypass and the balancers leave
    # some parameters without a gradient in a step, hence find_unused_parameters (icefall's setting)
    net: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        index = [torch.device(device).index] if device.startswith("cuda") else None
        net = DistributedDataParallel(model, device_ids=index, find_unused_parameters=True)
    log = MetricsLog(log_path, None, stage=MODEL, active=rank == 0, fields={"model": MODEL})
    log.write(
        {
            "event": "start",
            "step": step,
            "epoch": epoch,
            "resumed_from": step if state is not None else None,
            "params": count_parameters(model),
            "vocab_size": bpe.vocab_size,
            "device": device,
            "world_size": world,
            "key": key,
        }
    )

    def checkpoint() -> None:
        rngs: list[Any] = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, _rng_state())
        else:
            rngs[0] = _rng_state()
        if rank == 0:
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
                    "rng": rngs,  # one per rank
                },
            )

    def window_record() -> dict[str, float]:
        """The window's loss per token and throughput over all ranks."""
        loss, tokens, samples, audio_s = _sum_all(
            [window["loss"], window["tokens"], window["samples"], window["audio_s"]], device
        )
        seconds = max(time.perf_counter() - window["t0"], 1e-9)
        return {"loss": loss / tokens, "samples_per_s": samples / seconds, "audio_s_per_s": audio_s / seconds}

    model.train()
    window = {"loss": 0.0, "tokens": 0, "samples": 0, "audio_s": 0.0, "t0": time.perf_counter()}
    last_loss, val = None, {}
    finished = False
    while epoch < cfg.epochs and not finished:
        scheduler.step_epoch(epoch)
        batches = make_dataset(
            shard_index, TRAIN, cfg, bpe, epoch, shuffle=True, skip=in_epoch, rank=rank, world_size=world
        )
        for batch in synced(batches, device):
            feats, feat_lens, targets, target_lens = batch_tensors(batch, device)
            set_batch_count(model, step * cfg.schedule_scale)
            losses = net(feats, feat_lens, targets, target_lens)  # (B,) per utterance
            n_tokens = max(int(target_lens.sum()), 1)
            # normalised by every rank's tokens: DDP's mean of the ranks' gradients is then the
            # gradient of the loss per token of the global batch
            all_tokens = _sum_all([float(n_tokens)], device)[0] if world > 1 else n_tokens
            (losses.sum() * world / all_tokens).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            in_epoch += 1
            scheduler.step_batch(step)
            window["loss"] += float(losses.detach().sum())
            window["tokens"] += n_tokens
            window["samples"] += len(batch["keys"])
            window["audio_s"] += batch["audio_s"]
            if step % cfg.log_every == 0:
                rec = window_record()
                last_loss = rec["loss"]
                log.write({"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **rec})
                window = {"loss": 0.0, "tokens": 0, "samples": 0, "audio_s": 0.0, "t0": time.perf_counter()}
            if step % cfg.val_every == 0 and rank == 0:
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
    if _sum_all([float(window["tokens"])], device)[0]:
        last_loss = window_record()["loss"]
        log.write({"step": step, "epoch": epoch, "loss": last_loss, "lr": scheduler.get_last_lr()[0]})
    if rank != 0:
        _barrier()  # rank 0 writes the model
        record = read_model_json(out_dir)
        if record is None or record.get("key") != key:
            raise RuntimeError(f"rank {rank}: rank 0 wrote no {out_dir / 'model.json'} for key {key}")
        return record
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
        "world_size": world,
        "final_loss": last_loss,
        **val,
    }
    log.write(
        {"event": "end", "step": step, **{k: v for k, v in record.items() if k not in ("sizes", "model")}}
    )
    write_json(out_dir / "model.json", record)
    shutil.rmtree(out_dir / "ckpt", ignore_errors=True)
    _barrier()
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


def run_file(work_dir: str | Path) -> Path:
    """The run file the ranks read: the work dir and the ``zipformer`` settings."""
    return Path(work_dir) / "logs" / "zipformer.run.json"


def launch_problem(cfg: ZipformerConfig) -> str | None:
    """What keeps ``cfg`` from launching here, as an error naming the key; None when fine."""
    if torch_device(cfg.device) == "cuda" and cfg.nproc_per_node > torch.cuda.device_count():
        return (
            f"zipformer.nproc_per_node={cfg.nproc_per_node}: this node has {torch.cuda.device_count()} "
            "GPU(s) and each process takes one (zipformer.device cuda)"
        )
    return None


def launch_spec(work_dir: str | Path, cfg: ZipformerConfig) -> tuple[list[str], dict[str, str], Path]:
    """The launcher's command line, environment and log file (``logs/zipformer.log``) that train
    ``work_dir``'s Zipformer with ``cfg`` under torchrun, ``cfg.nproc_per_node`` processes; writes the
    run file they read."""
    work_dir = Path(work_dir).resolve()
    run_json = write_json(
        run_file(work_dir), {"work_dir": str(work_dir), "zipformer": cfg.model_dump(mode="json")}
    )
    launcher = {"launcher": "torchrun", "nproc_per_node": cfg.nproc_per_node}
    log_path = work_dir / "logs" / "zipformer.log"
    env = stage_env(launcher, log_path, gpu=torch_device(cfg.device) == "cuda")
    return launch_command(run_json, launcher, module="tasks.zipformer_train"), env, log_path


def launch_zipformer(
    work_dir: str | Path, cfg: ZipformerConfig, on_line: Callable[[str], None] | None = None
) -> dict:
    """Train ``work_dir``'s Zipformer as the flow does: ``launch_spec``'s command in its own process
    group, its output teed to ``logs/zipformer.log`` and ``on_line``, killed after ``cfg.timeout_s``;
    returns model.json's record.  Raises ConfigError (``launch_problem``) before starting anything,
    TrainingProcessError (with the log's tail) when a rank fails or time runs out."""
    problem = launch_problem(cfg)
    if problem:
        raise ConfigError(problem)
    cmd, env, log_path = launch_spec(work_dir, cfg)
    run_process(
        cmd, env, log_path, cfg.timeout_s, on_line=on_line, cwd=REPO, timeout_key="zipformer.timeout_s"
    )
    record = read_model_json(zipformer_dir(work_dir))
    if record is None:
        raise TrainingProcessError(
            f"the zipformer training exited 0 but wrote no {zipformer_dir(work_dir) / 'model.json'}"
        )
    return record


# under torchrun, a failing rank's traceback goes into the launcher's summary (its last lines, which
# TrainingProcessError quotes), not only into the log above the other ranks' errors
@elastic_record
def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.zipformer_train [RUN_JSON | --profile ... --work-dir ... --set ...]``: under
    torchrun, one rank; else the whole training, in this process (one process) or under the launcher
    (``zipformer.nproc_per_node`` > 1)."""
    from llmasr.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "run_json", nargs="?", help="a run file (logs/zipformer.run.json, as launch_zipformer writes)"
    )
    ap.add_argument("--work-dir")
    ap.add_argument("--profile")
    ap.add_argument("--config-file")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    if args.run_json:
        run = json.loads(Path(args.run_json).read_text(encoding="utf-8"))
        work_dir, cfg = Path(run["work_dir"]), ZipformerConfig(**run["zipformer"])
    else:
        top = {"work_dir": args.work_dir} if args.work_dir else {}
        pipeline = load_config(
            profile=args.profile, overrides=args.overrides, config_file=args.config_file, **top
        )
        work_dir, cfg = Path(pipeline.work_dir), pipeline.zipformer
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_launcher()
    elif cfg.nproc_per_node > 1:
        record = launch_zipformer(work_dir, cfg, on_line=print)
        print(json.dumps({k: v for k, v in record.items() if k != "sizes"}, sort_keys=True))
        return 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
    init_distributed(cfg.device)
    record = train_zipformer(
        work_dir / "shards" / "index.json", zipformer_dir(work_dir), log_file(work_dir), cfg
    )
    if _dist()[0] == 0:
        print(json.dumps({k: v for k, v in record.items() if k != "sizes"}, sort_keys=True))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
