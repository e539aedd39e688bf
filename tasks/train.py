"""torchrun --nproc_per_node N -m tasks.train RUN.json | deepspeed --num_gpus N --module tasks.train RUN.json

    # GPUs, one node (several: deepspeed --hostfile HOSTFILE --module tasks.train RUN.json)
    deepspeed --num_gpus 8 --module tasks.train RUN.json
    torchrun --standalone --nproc_per_node 8 -m tasks.train RUN.json
    # CPU: gloo, DeepSpeed's CPU accelerator, one thread per process
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m tasks.train RUN.json
    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu deepspeed --num_gpus 1 --module tasks.train RUN.json
    python -m tasks.train RUN.json              # one process, no launcher

The one training entry point of the three LLM-ASR stages (DESIGN.md "Model"), under DeepSpeed.

``RUN.json`` (``tasks.run_file.RunConfig``, written by the flow) picks the stage:

* stage 1: Whisper (``model.encoder``) with its own decoder as the training head
  (``WhisperStage1Head``); trains the encoder.
* stage 2: ``build_model``; trains the adapter alone.
* stage 3: ``build_model`` with stage 2's adapter, LoRA on the LLM; trains LoRA + adapter.
* every stage then writes its exports (tasks/export.py), ``model.json`` (the ``LLMASRConfig`` that
  rebuilds the stage's model from its exports) and, last, ``stage.json`` (tasks/checkpoints.py is
  the contract).  A run starts by removing the stage's stage.json, model.json and export folders.

Config errors (reading RUN.json, ``tasks.run_file.check_run``, and those found while building the
model) fail before any compute, naming the key, with exit status 2.

DeepSpeed: ``deepspeed.initialize`` gets a ``torch.optim.AdamW`` over the trainable parameters (no
fused-op build), a ``LambdaLR`` (linear warm-up, then cosine / linear / constant over the total
steps: ``stage_cfg.max_steps``, or epochs x an estimate of the steps per epoch from the index's
sample and audio totals) and the JSON config with ``train_micro_batch_size_per_gpu`` = 1 (batches
come pre-built by length bucketing, see tasks/train_data.py), ``gradient_accumulation_steps`` =
``train.grad_accum``, ``gradient_clipping`` = ``train.grad_clip`` and bf16/fp16 per precision
("auto": bf16 on GPU, fp32 on CPU).  ZeRO-2 runs on the CPU accelerator over gloo too
(infra/deepspeed/zero2_cpu.json); ZeRO-3 is refused (validation runs outside ``synced``, and the
parameter fingerprints and exports read whole parameters).  Frozen parameters are outside the
optimizer and never change.

Checkpoints (tasks/train_ckpt.py): every ``train.ckpt_every`` steps and at the end; a rerun with
the same key resumes the latest one.

Metrics (rank 0, tasks/train_log.py): JSON lines appended to ``metrics_log`` and TensorBoard
scalars.  Every ``train.log_every`` steps the loss and throughputs of the steps since the last
record; the last window is written at the end of the stage whatever its size, so every stage logs
a loss.
Every ``train.val_every`` steps and at the end: {"stage", "step", "val_loss", ...} on the validation
split (at most ``train.val_max_batches`` batches per rank; batches weighted by the target positions
their loss averages over).  Shards without a validation split give no val_loss: the trainer warns
once, naming ``shard.validation_fraction`` (``no_validation_message``).  Each run starts with an
{"event": "start", "step", "resumed_from"} record.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from tasks.export import clear_stage, export_stage, stage_model_config, trained_fp32
from tasks.flops import step_flops
from tasks.launch import die_with_launcher
from tasks.run_file import (
    RunConfig,
    TrainConfigError,
    check_run,
    check_world_size,
    deepspeed_settings,
    no_validation_message,
    read_run_config,
    setting_key,
)
from tasks.train_ckpt import CKPT_DIR, claim_checkpoints, resume_problem, resume_state, saved
from tasks.train_log import MetricsLog, StepCounter, Window, fingerprints, param_changes, peak_bf16_flops

log = logging.getLogger("llmasr.train")

EXIT_CONFIG = 2


# ---------------------------------------------------------------------------------- helpers


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str):
    """LR factor after ``step`` optimizer steps: linear warm-up to 1 over ``warmup_steps``, then
    cosine / linear decay to 0 at ``total_steps`` (or constant)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _single_process_env() -> None:
    """Let ``python -m tasks.train RUN.json`` run without a launcher."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


# ------------------------------------------------------------------------------------ trainer


class Trainer:
    """One stage run: model, data, DeepSpeed engine, loop, checkpoints, exports."""

    def __init__(self, cfg: RunConfig) -> None:
        import torch

        self.cfg = cfg
        self.stage = cfg.stage
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / CKPT_DIR
        self.gpu = torch.cuda.is_available()
        if not self.gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if self.gpu else "fp32"
        if precision == "fp16" and not self.gpu:
            raise TrainConfigError("train.precision: fp16 needs a GPU; use fp32 (or bf16) on CPU")
        self.precision = precision
        self.train_cfg, self.stage_cfg = cfg.train, cfg.stage_cfg  # TrainConfig, StageConfig
        from llmasr.model import allow_cudnn_attention

        allow_cudnn_attention(self.train_cfg.cudnn_attention)

    # ---- setup
    def init_distributed(self) -> None:
        import deepspeed
        import torch
        import torch.distributed as dist

        if "RANK" not in os.environ:
            _single_process_env()
        deepspeed.init_distributed(dist_backend="nccl" if self.gpu else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.gpu:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.is_main = self.rank == 0
        # nodes taking part: distinct (host, launcher node rank) over the ranks -- DeepSpeed's
        # launcher sets CROSS_RANK, torchrun GROUP_RANK (two "nodes" may share a host in tests)
        node = f"{socket.gethostname()}/{os.environ.get('CROSS_RANK', os.environ.get('GROUP_RANK', '0'))}"
        nodes: list[str | None] = [None] * self.world
        dist.all_gather_object(nodes, node)
        self.nodes = len(set(nodes))
        for name in ("DeepSpeed", "deepspeed"):
            logging.getLogger(name).setLevel(logging.WARNING)

    def check_world(self) -> None:
        """check_run's world-size check against the processes actually started (a launch by hand)."""
        from tasks.train_data import TRAIN, read_split

        samples = read_split(self.cfg.shard_index, TRAIN).samples
        check_world_size(samples, self.world, self.train_cfg.hostfile, Path(self.cfg.shard_index))

    def build_model(self) -> None:
        import torch

        from llmasr.model import (
            ModelSettingError,
            WhisperStage1Head,
            apply_lora,
            build_model,
            set_trainable,
            setting,
        )
        from tasks.train_data import LLMTargets, WhisperTargets, whisper_label_tokenizer

        torch.manual_seed(self.train_cfg.seed)  # the same initial adapter / LoRA on every rank
        try:
            # bundled: names -> their local folders, once: the model, the stage-1 tokenizer, the
            # exports and model.json (absolute paths: decoding loads what training used) all see them
            self.model_cfg = self.cfg.model.resolved()
            if self.stage == 1:
                with setting("encoder"):
                    module = WhisperStage1Head.from_pretrained(
                        self.model_cfg.encoder,
                        trim_padding=self.model_cfg.trim_padding,
                        mask_padding=self.model_cfg.mask_padding,
                    )
                    tokenizer = whisper_label_tokenizer(self.model_cfg.encoder)
                wcfg = module.whisper.config
                self.targets = WhisperTargets(tokenizer, wcfg.max_target_positions)
                self.decoder_start = int(wcfg.decoder_start_token_id)
                enc_cfg = wcfg
            else:
                module = build_model(self.model_cfg)
                if (
                    self.stage == 2
                    and module.adapter.ctc
                    and self.train_cfg.ctc_vocab == "transcripts"
                    and not self.model_cfg.adapter_path
                ):
                    module.adapter.restrict_ctc(self._transcript_tokens(module.tokenizer))
                if self.stage == 3:
                    apply_lora(module, self.model_cfg.lora)
                self.targets = LLMTargets(module.tokenizer)
                enc_cfg = module.encoder.config
            self.trainable = set_trainable(module, self.stage)
        except ModelSettingError as exc:  # a part its setting cannot build: the setting's key
            raise TrainConfigError(f"{setting_key(self.cfg, exc.key)}: {exc}") from None
        self.n_mels = int(enc_cfg.num_mel_bins)
        self.max_frames = 2 * int(enc_cfg.max_source_positions)
        self.module = module
        self.n_params = sum(p.numel() for p in module.parameters())
        encoder = module.whisper.model.encoder if self.stage == 1 else module.encoder
        self.n_encoder = sum(p.numel() for p in encoder.parameters())
        self.n_trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        self.encoder_cache = None
        if self.stage != 1 and self.train_cfg.cache_encoder_outputs:
            from tasks.encoder_cache import EncoderCache

            self.encoder_cache = EncoderCache(module.encoder)  # frozen in stages 2 and 3
        self.counter = StepCounter(
            self.stage,
            module,
            step_flops(module, self.stage),
            decoder_start=self.decoder_start if self.stage == 1 else None,
            extra_tokens=self.targets.extra if self.stage == 1 else 0,
            encoder_cache=self.encoder_cache,
        )

    def _transcript_tokens(self, tokenizer: Any) -> set[int]:
        """The LLM tokens of every transcript in the shards (train and validation): what a CTC head
        with ``train.ctc_vocab: transcripts`` spells."""
        from tasks.train_data import TRAIN, VALIDATION, read_split, split_texts

        texts = [
            t for split in (TRAIN, VALIDATION) for t in split_texts(read_split(self.cfg.shard_index, split))
        ]
        ids = {i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]}
        log.info(
            "CTC head over the transcripts' %d distinct tokens (of %d) from %d transcripts",
            len(ids),
            len(tokenizer),
            len(texts),
        )
        return ids

    def build_data(self) -> None:
        from tasks.train_data import (
            TRAIN,
            VALIDATION,
            ShardSpeechDataset,
            estimate_batches,
            make_loader,
            read_split,
        )

        t = self.train_cfg
        common = dict(
            n_mels=self.n_mels,
            targets=self.targets,
            rank=self.rank,
            world_size=self.world,
            batch_max_audio_s=t.batch_max_audio_s,
            max_batch_size=t.max_batch_size,
            seed=t.seed,
            max_frames=self.max_frames,
        )
        self.train_info = read_split(self.cfg.shard_index, TRAIN)
        self.val_info = read_split(self.cfg.shard_index, VALIDATION)
        self.train_ds = ShardSpeechDataset(
            self.cfg.shard_index, TRAIN, epoch=self.state["epoch"], skip=self.state["skip"], **common
        )
        self.train_loader = make_loader(self.train_ds, t.num_workers)
        self.val_loader = None
        if not self.val_info.samples and self.is_main:
            log.warning(no_validation_message(self.cfg.shard_index))
        if self.val_info.samples:
            val_ds = ShardSpeechDataset(self.cfg.shard_index, VALIDATION, advance_epoch=False, **common)
            self.val_loader = make_loader(val_ds, min(t.num_workers, 1))
        batches = estimate_batches(
            self.train_info, self.world, t.batch_max_audio_s, t.max_batch_size, t.num_workers
        )
        self.est_steps_per_epoch = max(1, math.ceil(batches / t.grad_accum))
        s = self.stage_cfg
        self.total_steps = s.max_steps or max(1, math.ceil(s.epochs * self.est_steps_per_epoch))
        # fractional epochs end at the estimated step; whole epochs at the end of the last pass
        self.stop_step = s.max_steps or (None if float(s.epochs).is_integer() else self.total_steps)
        self.max_epochs = None if s.max_steps else math.ceil(s.epochs)

    def build_engine(self) -> None:
        import deepspeed
        import torch
        from torch.optim.lr_scheduler import LambdaLR

        s = self.stage_cfg
        ds_cfg = deepspeed_settings(self.cfg.deepspeed_config, self.train_cfg, self.precision)
        self.zero_stage = int(ds_cfg.get("zero_optimization", {}).get("stage", 0))
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        factor = lr_lambda(s.warmup_steps, self.total_steps, s.schedule)
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.module,
            optimizer=optimizer,
            lr_scheduler=lambda opt: LambdaLR(opt, factor),
            config=ds_cfg,
        )
        self.dtype = next(self.engine.module.parameters()).dtype

    # ---- state and resuming
    def prepare_out_dir(self) -> None:
        """Rank 0: the stage is no longer complete and its old exports go; a checkpoint of another
        key is dropped.  Then every rank: a checkpoint to resume must be of this run's shape."""
        import torch.distributed as dist

        if self.is_main:
            clear_stage(self.out_dir, self.stage)
            claim_checkpoints(self.ckpt_dir, self.cfg.key, self.stage, self.world, self.train_cfg.num_workers)
        dist.barrier()
        problem = resume_problem(self.ckpt_dir, self.world, self.train_cfg.num_workers)
        if problem:
            raise TrainConfigError(problem)

    def load_checkpoint(self) -> None:
        if self.state["resumed_from"] is None:
            return
        path, _ = self.engine.load_checkpoint(
            str(self.ckpt_dir), tag=self.state["resumed_from"], load_module_strict=False
        )
        if path is None:
            raise RuntimeError(
                f"could not load the DeepSpeed checkpoint {self.ckpt_dir}/{self.state['resumed_from']}"
            )
        if self.is_main:
            log.info("resumed from %s at step %d (epoch %d)", path, self.state["step"], self.state["epoch"])

    def save_checkpoint(self, consumed: dict[int, int]) -> None:
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, {str(k): v for k, v in consumed.items()})
        counts = self._global_counts()
        client = {k: self.state[k] for k in ("step", "epoch")}
        client.update(
            samples=counts[0],
            audio_s=counts[1],
            tokens=counts[2],
            consumed=gathered,
            key=self.cfg.key,
            world_size=self.world,
            num_workers=self.train_cfg.num_workers,
        )
        tag = f"step{self.state['step']}"
        self.engine.save_checkpoint(
            str(self.ckpt_dir), tag=tag, client_state=client, exclude_frozen_parameters=True
        )
        if self.is_main:
            saved(self.ckpt_dir, tag, client)
        dist.barrier()

    # ---- steps
    def _set_modes(self) -> None:
        """Train mode, except the frozen parts (no dropout where nothing learns)."""
        m = self.engine.module
        self.engine.train()
        if self.stage == 1:
            m.whisper.model.decoder.eval()
        else:
            m.encoder.eval()
            if self.stage == 2:
                m.llm.eval()

    def _loss(self, batch: dict[str, Any]):
        from llmasr.model import whisper_labels

        feats = batch["input_features"].to(device=self.device, dtype=self.dtype)  # (B, M, T)
        lengths = batch["feature_lengths"].to(self.device)  # (B,)
        if self.stage == 1:
            labels = whisper_labels(batch["target_ids"], self.decoder_start).to(self.device)  # (B, L)
            return self.engine(feats, lengths, labels)
        t = self.train_cfg
        # stage 2's first ctc_align_steps steps: the adapter's CTC head alone, no LLM forward
        ctc_only = self.stage == 2 and t.ctc_compress and self.state["step"] < t.ctc_align_steps
        encoded = None if self.encoder_cache is None else self.encoder_cache(batch["keys"], feats, lengths)
        out = self.engine(feats, lengths, batch["target_ids"],
                          ctc_weight=t.ctc_weight if t.ctc_compress else 0.0, ctc_only=ctc_only,
                          encoded=encoded)  # fmt: skip
        self.counter.saw(out)
        return out.loss

    def validate(self) -> dict[str, Any] | None:
        import torch
        import torch.distributed as dist

        if self.val_loader is None:
            return None
        self.engine.eval()
        total = torch.zeros(3, dtype=torch.float64)  # loss x weight, weight, batches
        with torch.no_grad():
            for i, batch in enumerate(self.val_loader):
                if i >= self.train_cfg.val_max_batches:
                    break
                weight = self.counter.scored(batch)
                total += torch.tensor([float(self._loss(batch)) * weight, weight, 1.0], dtype=torch.float64)
        self._set_modes()
        total = total.to(self.device)
        dist.all_reduce(total)
        if total[1] <= 0:
            return None
        return {
            "step": self.state["step"],
            "epoch": self.state["epoch"],
            "val_loss": float(total[0] / total[1]),
            "val_batches": int(total[2]),
        }

    def loop(self, metrics: MetricsLog) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        from tasks.train_data import synced, timed

        t = self.train_cfg
        sync_device = self.device
        peak = peak_bf16_flops(torch.cuda.get_device_name(self.device)) if self.gpu else None
        consumed: dict[int, int] = dict(self.state["skip"])
        window = Window()
        waited = [0.0]  # seconds this rank spent in next(loader) since the last log window
        window_start = time.time()
        last_val: dict[str, Any] | None = None
        last_loss = None
        logged_samples = 0  # all ranks, since this run started
        logged_step = self.state["step"]  # the step of the last loss record
        saved_at = self.state["step"]
        self._set_modes()

        def write_window() -> None:
            """The loss and throughputs of the steps since the last record (a collective: every rank
            calls it)."""
            nonlocal logged_samples, logged_step, last_loss, window, window_start
            step = self.state["step"]
            summed = window.to_tensor().to(self.device)
            dist.all_reduce(summed)
            w = Window.from_tensor(summed.cpu())
            elapsed = max(time.time() - window_start, 1e-9)
            logged_samples += int(w.samples)
            record = {
                "step": step,
                "epoch": self.state["epoch"],
                "lr": float(self.engine.get_lr()[0]),
                **w.rates(elapsed, self.world, peak, self.n_params, self.n_encoder),
                "run_samples": logged_samples,
                "world_size": self.world,
            }
            last_loss = record["loss"]
            metrics.write(record)
            if self.is_main:
                log.info(
                    "stage %d step %d loss %.4f lr %.2e %.1f samples/s",
                    self.stage,
                    step,
                    record["loss"],
                    record["lr"],
                    record["samples_per_s"],
                )
            window = Window()
            window_start = time.time()
            logged_step = step

        def finished() -> bool:
            return self.stop_step is not None and self.state["step"] >= self.stop_step

        while not finished():
            if self.max_epochs is not None and self.state["epoch"] >= self.max_epochs:
                break
            micro_this_pass = 0
            for batch in synced(timed(self.train_loader, waited), sync_device):
                consumed[batch["worker"]] = batch["worker_batch"] + 1
                micro_this_pass += 1
                loss = self._loss(batch)
                self.engine.backward(loss)
                boundary = self.engine.is_gradient_accumulation_boundary()
                self.engine.step()
                window.add(self.counter.window(float(loss.detach()), batch, waited[0]))
                waited[0] = 0.0
                self.state["samples"] += len(batch["keys"])
                self.state["audio_s"] += batch["audio_s"]
                self.state["tokens"] += self.counter.tokens(batch)
                if not boundary:
                    continue
                self.state["step"] += 1
                step = self.state["step"]
                if step % t.log_every == 0 or finished():
                    write_window()
                if step % t.val_every == 0:
                    last_val = self.validate()
                    if last_val:
                        metrics.write(last_val)
                if step % t.ckpt_every == 0:
                    self.save_checkpoint(consumed)
                    saved_at = step
                if finished():
                    break
            else:  # the pass is over on some rank: next epoch
                if micro_this_pass == 0 and not self.state["skip"]:
                    raise RuntimeError(
                        f"an epoch gave no batch on some rank: {self.train_info.samples} train samples "
                        f"in {self.train_info.shards} shards for {self.world} processes"
                    )
                self.state["epoch"] += 1
                self.state["skip"] = {}
                consumed = {}
                continue
            break
        if logged_step != self.state["step"]:  # the last window, whatever its size: every stage logs a loss
            write_window()
        if last_val is None or last_val["step"] != self.state["step"]:
            last_val = self.validate()
            if last_val:
                metrics.write(last_val)
        if saved_at != self.state["step"] or not (self.ckpt_dir / "latest").is_file():
            self.save_checkpoint(consumed)
        samples, audio_s, tokens = self._global_counts()
        return {
            "final_loss": last_loss,
            "val_loss": last_val["val_loss"] if last_val else None,
            "samples": samples,
            "audio_s": audio_s,
            "tokens": tokens,
        }

    def _global_counts(self) -> tuple[int, float, int]:
        """Samples, audio seconds and target tokens trained on, all ranks (a collective)."""
        import torch
        import torch.distributed as dist

        totals = torch.tensor(
            [self.state["samples"], self.state["audio_s"], self.state["tokens"]], dtype=torch.float64
        ).to(self.device)
        dist.all_reduce(totals)
        return int(totals[0]), round(float(totals[1]), 3), int(totals[2])

    # ---- exports
    def _load_encoder_outputs(self) -> None:
        """Stages 2-3 with ``train.cache_encoder_outputs``: start from the rows an earlier stage over
        the same encoder and shards left (``tasks.encoder_cache``)."""
        if self.encoder_cache is None:
            return
        m = self.model_cfg
        settings = {"n_mels": self.n_mels, "max_frames": self.max_frames, "trim_padding": m.trim_padding,
                    "mask_padding": m.mask_padding}  # fmt: skip
        n = self.encoder_cache.attach(self.out_dir, self.cfg.shard_index, settings, self.rank, self.world)
        if n and self.is_main:
            log.info("stage %d: %d encoder outputs read from %s", self.stage, n, self.encoder_cache.path)

    def export(self) -> list[str]:
        """Rank 0 writes the stage's exports (tasks/export.py); returns their names."""
        import torch.distributed as dist

        trained = trained_fp32(self.engine.module)  # a collective under ZeRO: every rank
        exports: list[str] = []
        if self.is_main:
            exports = export_stage(
                self.engine.module,
                trained,
                self.model_cfg,
                self.out_dir,
                self.stage,
                self.train_cfg.merge_lora,
            )
        dist.barrier()
        return exports

    # ---- all of it
    def run(self) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        from tasks.checkpoints import write_model_json, write_stage

        started = time.time()
        self.init_distributed()
        self.check_world()
        self.prepare_out_dir()
        self.build_model()
        self.state = resume_state(self.ckpt_dir, self.rank)  # before the data loaders: they skip
        self.build_data()
        self.build_engine()
        # after initialize (which casts to bf16/fp16 where asked), before the checkpoint loads
        self.fingerprints = fingerprints(self.module) if self.cfg.verify_params else None
        self.load_checkpoint()
        self._load_encoder_outputs()
        metrics = MetricsLog(self.cfg.metrics_log, self.cfg.tensorboard_dir, self.stage, self.is_main)
        metrics.write(
            {
                "event": "start",
                "step": self.state["step"],
                "epoch": self.state["epoch"],
                "resumed_from": self.state["resumed_from"],
                "world_size": self.world,
                "nodes": self.nodes,
                "precision": self.precision,
                "zero_stage": self.zero_stage,
                "total_steps": self.total_steps,
                "trainable_params": self.n_trainable,
                "params": self.n_params,
                "cudnn_attention": torch.backends.cuda.cudnn_sdp_enabled(),
            }
        )
        try:
            summary = self.loop(metrics)
            if self.encoder_cache is not None and self.encoder_cache.persist() and self.is_main:
                log.info("stage %d: encoder outputs -> %s", self.stage, self.encoder_cache.path)
            verify = None
            if self.fingerprints is not None:  # verify_params
                verify = param_changes(self.fingerprints, fingerprints(self.module), self.trainable)
            exports = self.export()
            info = None
            if self.is_main:
                write_model_json(self.out_dir, stage_model_config(self.model_cfg, self.out_dir, self.stage))
                info = dict(
                    stage=self.stage,
                    key=self.cfg.key,
                    steps=self.state["step"],
                    epochs=self.state["epoch"],
                    world_size=self.world,
                    nodes=self.nodes,
                    precision=self.precision,
                    zero_stage=self.zero_stage,
                    exports=exports,
                    trainable_params=self.n_trainable,
                    params=self.n_params,
                    time_s=round(time.time() - started, 1),
                    **summary,
                )
                if verify is not None:
                    info["verify"] = verify
                write_stage(self.out_dir, **info)  # last: the stage is complete
                metrics.write({"event": "end", "step": self.state["step"], **summary})
            dist.barrier()
            return info or {}
        finally:
            metrics.close()


# --------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.train", description="Train one LLM-ASR stage from RUN.json."
    )
    parser.add_argument("run_json")
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher"
    )
    args = parser.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if args.local_rank is not None or "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_launcher()
    logging.basicConfig(
        level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        cfg = read_run_config(args.run_json)
        check_run(cfg)
        trainer = Trainer(cfg)
        info = trainer.run()
    except TrainConfigError as exc:
        print(f"tasks.train: config error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    if info:
        log.info("stage %d complete: %d steps, exports %s", cfg.stage, info["steps"], info["exports"])
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
