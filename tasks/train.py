"""torchrun --nproc_per_node N -m tasks.train RUN.json | deepspeed --num_gpus N --module tasks.train RUN.json

    # GPUs, one node (several: deepspeed --hostfile HOSTFILE --module tasks.train RUN.json)
    deepspeed --num_gpus 8 --module tasks.train RUN.json
    torchrun --standalone --nproc_per_node 8 -m tasks.train RUN.json
    # CPU: gloo, DeepSpeed's CPU accelerator, one thread per process
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m tasks.train RUN.json
    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu deepspeed --num_gpus 1 --module tasks.train RUN.json
    python -m tasks.train RUN.json              # one process, no launcher

The one training entry point of the three LLM-ASR stages (DESIGN.md "Model"), under DeepSpeed.

``RUN.json`` (written by the flow with ``write_run_config``; see ``RunConfig``) picks the stage:

* stage 1: Whisper (``model["encoder"]``) with its own decoder as the training head
  (``WhisperStage1Head``); trains the encoder.  Exports ``out_dir/encoder`` and ``out_dir/whisper``.
* stage 2: ``build_model``; trains the projector alone.  Exports ``out_dir/projector``.
* stage 3: ``build_model`` with stage 2's projector, LoRA on the LLM; trains LoRA + projector.
  Exports ``out_dir/lora``, ``out_dir/projector`` (and ``out_dir/merged_llm`` with
  ``train.merge_lora``).
* every stage then writes ``model.json`` (the ``LLMASRConfig`` that rebuilds the stage's model
  from its exports) and, last, ``stage.json`` (tasks/checkpoints.py is the contract).  A run starts
  by removing the stage's stage.json, model.json and export folders: no export of an earlier run
  (an old ``merged_llm``) outlives it.

Config errors (missing checkpoints, stage 3 before stage 2, an LLM the stage-2 projector does not
fit, a shard index without training samples or with fewer than processes, ZeRO-3...) fail before any
compute, naming the key, with exit status 2.

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

Checkpoints: ``engine.save_checkpoint(out_dir/deepspeed, tag=f"step{step}")`` every
``train.ckpt_every`` steps and at the end (frozen parameters excluded; the last two tags kept).  A
rerun with the same key loads the latest one, continues the step count and skips the batches
already trained on (each loader worker's position is in the checkpoint; the batch order is a
function of the seed, epoch, rank and worker).  It needs the same number of processes and
loader workers.

Metrics (rank 0): JSON lines appended to ``metrics_log`` and TensorBoard scalars.  Every
``train.log_every`` steps: {"stage", "step", "loss", "lr", "samples_per_s", "tokens_per_s",
"audio_s_per_s", "data_wait_frac", "epoch", "time", ...}; throughputs are summed over the ranks;
``tokens`` are transcript tokens (in stage 1 too: Whisper's start, prefix and <|endoftext|> not
counted); ``data_wait_frac`` is the share of the ranks' time spent waiting for the loader (near 0:
the loader is not the bottleneck).  ``model_tflops``: model FLOP/s per process, in TFLOP/s, the
FLOPs the step must compute by what the stage does with each part (``tasks.flops``: 6N per token
for trained weights, 4N for frozen ones gradients pass through, 2N forward-only, attention, the
vocabulary projection only where logits are computed; held within 0.5% of torch's FLOP counter
by tests/test_flops.py).  On GPU also ``mfu`` = model FLOP/s / (world_size x peak), peak = the
GPU's dense bf16 FLOP/s (``peak_bf16_flops``; none for an unknown GPU), and ``mfu_6n``, the
usual 6N estimate for comparison (6 x (N_enc x encoder frames/s + N_other x decoder positions/s)
/ (world_size x peak): every weight as if trained, no attention).
The last window is written at the end of the stage whatever its size, so every stage logs a loss.
Every ``train.val_every`` steps and at the end: {"stage", "step", "val_loss", ...} on the validation
split (at most ``train.val_max_batches`` batches per rank; batches weighted by the target positions
their loss averages over).  Shards without a validation split give no val_loss: the trainer warns
once, naming ``shard.validation_fraction`` (``no_validation_message``).  Each run starts with an
{"event": "start", "step", "resumed_from"} record.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmasr.config import ConfigError
from tasks.flops import step_flops
from tasks.launch import hostfile_problem, read_hostfile, resolve_repo_path

log = logging.getLogger("llmasr.train")

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KEEP_CHECKPOINTS = 2
CKPT_DIR = "deepspeed"
CKPT_META = "run.json"
TRAINER_STATE = "trainer_state.json"
EXIT_CONFIG = 2


class TrainConfigError(ConfigError):
    """A RUN.json problem found before any compute; the message starts with the key at fault."""


# ------------------------------------------------------------------------------------ RUN.json


def _plain(value: Any) -> Any:
    """pydantic models / dataclasses -> dicts, for RunConfig fields the flow may pass as objects."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class RunConfig:
    """What one stage run needs; RUN.json holds exactly these fields.

    stage: 1, 2 or 3.  work_dir: the pipeline's work dir.  shard_index: shards/index.json.
    out_dir: ``tasks.checkpoints.stage_dir(work_dir, stage)``.  key: the cache key recorded in
    stage.json (and in the DeepSpeed checkpoints: a checkpoint of another key is not resumed).
    model: ``LLMASRConfig`` dict (``tasks.checkpoints.model_config(...)``).  train: ``TrainConfig``
    dict.  stage_cfg: ``StageConfig`` dict (train.stage<N>).  deepspeed_config: JSON path
    (relative: to the checkout).  precision: auto | fp32 | bf16 | fp16.  metrics_log: JSON-lines
    file, appended (default ``<work_dir>/logs/train.jsonl``).  tensorboard_dir: default
    ``<work_dir>/logs/tensorboard``.  verify_params: fingerprint every parameter before and after
    training and record in stage.json which frozen ones changed / trained ones did not (tests;
    costs two passes over the weights).
    """

    stage: int
    work_dir: str
    shard_index: str
    out_dir: str
    key: str
    model: dict[str, Any]
    train: dict[str, Any]
    stage_cfg: dict[str, Any]
    deepspeed_config: str
    precision: str = "auto"
    metrics_log: str | None = None
    tensorboard_dir: str | None = None
    verify_params: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _plain(getattr(self, f.name)))
        if self.metrics_log is None:
            self.metrics_log = str(Path(self.work_dir) / "logs" / "train.jsonl")
        if self.tensorboard_dir is None:
            self.tensorboard_dir = str(Path(self.work_dir) / "logs" / "tensorboard")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainConfigError(f"RUN.json: unknown keys {unknown}; known: {sorted(known)}")
        missing = sorted(
            f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in d
        )
        if missing:
            raise TrainConfigError(f"RUN.json: missing keys {missing}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_run_config(path: str | Path, **fields: Any) -> Path:
    """Write RUN.json (atomically) from ``RunConfig``'s fields; objects (TrainConfig,
    LLMASRConfig, ...) are turned into dicts.  Returns the path."""
    from llmasr.atomic import write_json

    cfg = RunConfig.from_dict(fields)
    return write_json(Path(path), cfg.to_dict())


def read_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"RUN.json: no such file {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainConfigError(f"RUN.json: {path} is not valid JSON ({exc})") from None
    return RunConfig.from_dict(data)


def run_config_for(
    cfg: Any, stage: int, key: str, work_dir: str | Path | None = None, **extra: Any
) -> RunConfig:
    """The RunConfig of ``stage`` for a validated ``PipelineConfig`` (what the flow writes)."""
    from llmasr.layout import WorkLayout
    from tasks.checkpoints import model_config, stage_dir

    work = Path(work_dir or cfg.work_dir)
    train = cfg.train
    fields: dict[str, Any] = dict(
        stage=stage,
        work_dir=str(work),
        shard_index=str(WorkLayout(work).shard_index),
        out_dir=str(stage_dir(work, stage)),
        key=key,
        model=model_config(train, work, stage).to_dict(),
        train=train.model_dump(mode="json"),
        stage_cfg=getattr(train, f"stage{stage}").model_dump(mode="json"),
        deepspeed_config=train.deepspeed_config,
        precision=train.precision,
    )
    fields.update(extra)
    return RunConfig.from_dict(fields)


# ----------------------------------------------------------------------- validation (no torch)


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_available(name: str) -> bool:
    """A hub-style name is usable when it is in the HF cache, or when the hub may be reached."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ).lower() in ("1", "true", "yes")
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return True
    except Exception:  # noqa: BLE001 - no hub library, bad name: treat as not cached
        pass
    return not offline


def _check_checkpoint(
    value: Any, key: str, what: str = "checkpoint folder", marker: str = "config.json"
) -> Path | None:
    """A local checkpoint folder (returned), a config dict or an available hub name (None).

    A ``bundled:<name>`` model (``llmasr.bundled``) is resolved here, converting it into the model
    cache on first use, and checked as the folder it resolves to."""
    if isinstance(value, dict):
        return None
    if not isinstance(value, str) or not value.strip():
        raise TrainConfigError(f"{key}: expected a {what} path, got {value!r}")
    if value.startswith("bundled:"):
        from llmasr.bundled import BundledModelError, resolve_hf

        try:
            value = resolve_hf(value)
        except BundledModelError as exc:
            raise TrainConfigError(f"{key}: {exc}") from None
    path = Path(value).expanduser()
    if path.is_dir():
        if marker and not (path / marker).is_file():
            raise TrainConfigError(f"{key}: {path} has no {marker}: not a {what}")
        return path
    if (
        not path.exists()
        and _HUB_NAME.match(value)
        and not value.startswith((".", "/", "~"))
        and _hub_available(value)
    ):
        return None
    raise TrainConfigError(f"{key}: no such {what} {value}")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _hidden_size(config: dict[str, Any]) -> int | None:
    for k in ("hidden_size", "n_embd", "d_model"):
        if isinstance(config.get(k), int):
            return int(config[k])
    text = config.get("text_config")
    return _hidden_size(text) if isinstance(text, dict) else None


def _complete(stage_json: Path) -> bool:
    try:
        return bool(_read_json(stage_json).get("complete"))
    except (OSError, json.JSONDecodeError):
        return False


def _check_zero_stage(ds_cfg: dict[str, Any], path: Path) -> None:
    """ZeRO 0-2 only: under ZeRO-3 every forward is a collective over partitioned parameters, but
    validation runs each rank's own number of batches (not under ``synced``), and the parameter
    fingerprints and the exports read whole parameters from each rank's module."""
    zero = ds_cfg.get("zero_optimization") or {}
    stage = zero.get("stage", 0) if isinstance(zero, dict) else 0
    if not isinstance(stage, int) or not 0 <= stage <= 2:
        raise TrainConfigError(
            f"train.deepspeed_config: {path} sets zero_optimization.stage {stage!r}; "
            "the trainer supports ZeRO stages 0-2 "
            "(ZeRO-3 partitions the parameters: validation, the parameter fingerprints and the exports "
            "assume whole ones on every rank)"
        )


def world_size_of(train: Any) -> int:
    """The processes a launch of ``train`` starts: the hostfile's slots summed, else nproc_per_node."""
    if train.hostfile:
        return sum(read_hostfile(resolve_repo_path(train.hostfile)).values())
    return int(train.nproc_per_node)


def _check_world_size(train_samples: int, world: int, hostfile: str | None, index: Path) -> None:
    """Every rank needs a train sample (ranks take the same steps: one without a batch stops them all)."""
    if train_samples < world:
        key, launch = (
            ("train.hostfile", f"its slots start {world} processes")
            if hostfile
            else ("train.nproc_per_node", f"{world} processes")
        )
        raise TrainConfigError(
            f"{key}: {launch}, but {index} has only {train_samples} train samples; "
            "every process needs at least one (run fewer processes, or shard more data)"
        )


def check_run(cfg: RunConfig) -> None:
    """Every config error that can be found without loading weights; raises TrainConfigError."""
    from pydantic import ValidationError

    from llmasr.config import StageConfig, TrainConfig

    if cfg.stage not in (1, 2, 3):
        raise TrainConfigError(f"stage: must be 1, 2 or 3, got {cfg.stage!r}")
    if not str(cfg.key).strip():
        raise TrainConfigError("key: empty; the flow passes the stage's cache key")
    try:
        train = TrainConfig.model_validate(cfg.train)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TrainConfigError(f"train.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    try:
        StageConfig.model_validate(cfg.stage_cfg)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TrainConfigError(
            f"train.stage{cfg.stage}.{'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from None
    if cfg.precision not in PRECISIONS:
        raise TrainConfigError(f"train.precision: must be one of {PRECISIONS}, got {cfg.precision!r}")
    ds = resolve_repo_path(cfg.deepspeed_config)
    if not ds.is_file():
        raise TrainConfigError(f"train.deepspeed_config: no such file {cfg.deepspeed_config}")
    try:
        ds_cfg = _read_json(ds)
    except json.JSONDecodeError as exc:
        raise TrainConfigError(f"train.deepspeed_config: {ds} is not valid JSON ({exc})") from None
    _check_zero_stage(ds_cfg, ds)
    problem = hostfile_problem(train)
    if problem:
        raise TrainConfigError(problem)

    # shards
    index = Path(cfg.shard_index)
    if not index.is_file():
        raise TrainConfigError(f"shard_index: no such file {index} (run the data stages first: llmasr data)")
    try:
        entries = _read_json(index).get("shards", [])
    except json.JSONDecodeError as exc:
        raise TrainConfigError(f"shard_index: {index} is not valid JSON ({exc})") from None
    train_entries = [e for e in entries if e.get("split") == "train"]
    train_samples = sum(int(e.get("samples", 0)) for e in train_entries)
    if train_samples == 0:
        raise TrainConfigError(
            f"shard_index: {index} has no train samples (no kept segments in the train split)"
        )
    _check_world_size(train_samples, world_size_of(train), train.hostfile, index)
    missing = [e["path"] for e in train_entries if not (index.parent / e["path"]).is_file()]
    if missing:
        raise TrainConfigError(
            f"shard_index: {len(missing)} train shard(s) of {index} are missing, e.g. {missing[0]}"
        )

    # checkpoints
    model = cfg.model
    enc_key = (
        "train.encoder"
        if cfg.stage == 1 or model.get("encoder") == train.encoder
        else "model.encoder (stage 1's export)"
    )
    enc_dir = _check_checkpoint(model.get("encoder"), enc_key)
    if cfg.stage == 1:
        if isinstance(model.get("encoder"), dict):
            raise TrainConfigError(f"{enc_key}: stage 1 needs a Whisper checkpoint folder, not a config dict")
        if enc_dir is not None and not any((enc_dir / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            raise TrainConfigError(
                f"{enc_key}: {enc_dir} has no tokenizer (tokenizer.json or vocab.json): "
                "stage 1 labels need Whisper's tokenizer"
            )
        return
    llm_dir = _check_checkpoint(model.get("llm"), "train.llm")
    if model.get("tokenizer"):
        _check_checkpoint(model["tokenizer"], "train.tokenizer", "tokenizer folder", marker="")
    elif isinstance(model.get("llm"), dict):
        raise TrainConfigError("train.tokenizer: required when the LLM is given as a config dict")
    if cfg.stage == 3:
        stage2 = Path(cfg.work_dir) / "checkpoints" / "stage2"
        proj = model.get("projector_path")
        if not proj:
            raise TrainConfigError(
                "model.projector_path: not set; "
                "stage 3 needs checkpoints/stage2/projector (run stage 2 first)"
            )
        proj = Path(proj)
        if not (proj / "projector.json").is_file():
            raise TrainConfigError(
                f"model.projector_path: no projector at {proj}; "
                "stage 3 needs checkpoints/stage2 (run stage 2 first)"
            )
        if proj.resolve().parent == stage2.resolve() and not _complete(stage2 / "stage.json"):
            raise TrainConfigError(
                f"model.projector_path: {stage2} is not complete (no stage.json); "
                "stage 3 needs checkpoints/stage2 (run stage 2 first)"
            )
    proj = model.get("projector_path")
    if proj and (Path(proj) / "projector.json").is_file():
        pj = _read_json(Path(proj) / "projector.json")
        if llm_dir is not None or isinstance(model.get("llm"), dict):
            llm_conf = (
                model["llm"] if isinstance(model.get("llm"), dict) else _read_json(llm_dir / "config.json")
            )
            hidden = _hidden_size(llm_conf)
            if hidden is not None and hidden != pj.get("d_llm"):
                raise TrainConfigError(
                    f"train.llm: hidden size {hidden} does not match "
                    f"the projector's output width {pj.get('d_llm')} ({proj}, trained for another LLM); "
                    "rerun stage 2 with this LLM or set train.llm back"
                )
        if enc_dir is not None or isinstance(model.get("encoder"), dict):
            enc_conf = (
                model["encoder"]
                if isinstance(model.get("encoder"), dict)
                else _read_json(enc_dir / "config.json")
            )
            if isinstance(enc_conf.get("d_model"), int) and enc_conf["d_model"] != pj.get("d_enc"):
                raise TrainConfigError(
                    f"{enc_key}: d_model {enc_conf['d_model']} does not match the projector's input width "
                    f"{pj.get('d_enc')} ({proj})"
                )


def no_validation_message(shard_index: str | Path, validation_fraction: float | None = None) -> str | None:
    """The warning for a shard index without validation samples (None when it has some): training
    then logs no validation loss.  The split is drawn per item by a hash of its id, so a corpus of
    few items can hash wholly to train at the default fraction."""
    index = Path(shard_index)
    entries = _read_json(index).get("shards", [])
    if sum(int(e.get("samples", 0)) for e in entries if e.get("split") == "validation"):
        return None
    now = f" (now {validation_fraction})" if validation_fraction is not None else ""
    return (
        f"{index} has no validation split: every item hashed to train, so training logs no validation loss; "
        f"raise shard.validation_fraction{now} and rerun `llmasr data` (the split is drawn per item: "
        "few items need a larger fraction)"
    )


def _config_key(message: str) -> str:
    """The config key a model-module ValueError is about."""
    m = message.lower()
    if "lora" in m:
        return "train.lora.target_modules"
    if "hidden size" in m or "projector output dim" in m or "embeds only" in m:
        return "train.llm"
    if "tokenizer" in m:
        return "train.tokenizer"
    if "encoder" in m or "mel bins" in m:
        return "train.encoder"
    if "projector" in m:
        return "train.projector_hidden / train.downsample_k / train.activation"
    return "model"


# ---------------------------------------------------------------------------------- helpers


def whisper_label_count(target_ids: Any, decoder_start: int) -> int:
    """Stage 1: the labels Whisper's loss is the mean over -- each example's ids after the
    decoder-start token, which ``llmasr.model.whisper_labels`` drops (prefix and <|endoftext|>
    included).  Also the positions Whisper's decoder runs on (the labels shifted right)."""
    return sum(len(t) - (1 if len(t) and t[0] == decoder_start else 0) for t in target_ids)


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


_PEAK_BF16 = (  # dense bf16 FLOP/s, by the first name fragment found in the device name
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
    ("L4", 121e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    for frag, flops in _PEAK_BF16:
        if frag in device_name:
            return flops
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_launcher() -> None:
    """Linux: get SIGKILL when the launcher process dies.  torchrun starts each worker in a session
    of its own, so killing the launcher's process group (a timeout, a cancelled flow run) would
    otherwise leave the workers training on; this way a killed launcher takes them with it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no glibc: nothing to do
        return
    if os.getppid() == 1:  # the launcher died before prctl
        os._exit(1)


def _single_process_env() -> None:
    """Let ``python -m tasks.train RUN.json`` run without a launcher."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


@contextlib.contextmanager
def _export_folder(out_dir: Path, name: str) -> Iterator[Path]:
    """Write a folder under a temp name, then swap it in for ``out_dir/name``."""
    final = out_dir / name
    tmp = out_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        old = out_dir / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_AUX_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "added_tokens.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)


def _copy_aux(src: Any, dst: Path) -> None:
    """Tokenizer and feature-extractor files of a Whisper checkpoint folder, copied beside an export."""
    if isinstance(src, str) and Path(src).is_dir():
        for name in _AUX_FILES:
            if (Path(src) / name).is_file():
                shutil.copy2(Path(src) / name, dst / name)


def _complete_whisper_folder(src: Any, dst: Path, num_mel_bins: int) -> None:
    """Make the stage-1 ``whisper/`` export a folder Whisper loaders take whole (the
    ``llmasr-stage1`` evaluation system, ``WhisperProcessor.from_pretrained``): the source's
    tokenizer when none was copied (a hub-name source has no files to copy), and Whisper's feature
    extractor settings for its mel bins when the source has no preprocessor_config.json."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    if not any((dst / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))
    if not (dst / "preprocessor_config.json").is_file():
        WhisperFeatureExtractor(feature_size=int(num_mel_bins)).save_pretrained(str(dst))


def _abs_if_local(value: Any) -> Any:
    if isinstance(value, str) and value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


class MetricsLog:
    """Rank 0's JSON-lines log (appended) and TensorBoard writer; other ranks write nothing."""

    def __init__(
        self, path: str | Path, tensorboard_dir: str | Path | None, stage: int, active: bool
    ) -> None:
        self.active = active
        self.stage = stage
        self.path = Path(path)
        self.writer = None
        if active:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard_dir:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.writer = SummaryWriter(log_dir=str(tensorboard_dir))
                except Exception as exc:  # noqa: BLE001 - TensorBoard is optional
                    log.warning("TensorBoard disabled: %s", exc)

    def write(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        record = {"stage": self.stage, **record, "time": time.time()}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self.writer is not None and "step" in record:
            kind = "val" if "val_loss" in record else "train"
            for k, v in record.items():
                if (
                    k not in ("stage", "step", "time", "epoch")
                    and isinstance(v, (int, float))
                    and not isinstance(v, bool)
                ):
                    self.writer.add_scalar(f"stage{self.stage}/{kind}/{k}", v, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ------------------------------------------------------------------------- out dir, resuming


def clear_stage(out_dir: Path, stage: int) -> None:
    """The stage is made again: its stage.json goes first (no longer complete), then model.json and
    every export folder of the stage (``tasks.checkpoints.STAGE_EXPORTS``), half-swapped ones
    included.  This run writes its own; an old one kept (say merged_llm/ from a run with
    train.merge_lora, now off) would be loaded with this run's projector."""
    from tasks.checkpoints import STAGE_EXPORTS

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stage.json").unlink(missing_ok=True)
    (out_dir / "model.json").unlink(missing_ok=True)
    for name in STAGE_EXPORTS[stage]:
        for folder in (out_dir / name, out_dir / f".tmp-{name}", out_dir / f".old-{name}"):
            if folder.exists():
                log.info("removing %s: an export of an earlier run", folder)
                shutil.rmtree(folder)


def claim_checkpoints(ckpt_dir: Path, key: str, stage: int, world: int, num_workers: int) -> None:
    """Checkpoints of another run (key or stage) are dropped; while there is none to resume (no
    ``latest``) run.json is (re)written with this run's key and shape -- also over the run.json of a
    run that died before its first checkpoint, whose shape must not bind the next one."""
    from llmasr.atomic import write_json

    meta = ckpt_dir / CKPT_META
    if ckpt_dir.exists():
        old = _read_json(meta) if meta.is_file() else {}
        if old.get("key") != key or old.get("stage") != stage:
            log.info("removing %s: its checkpoints are of another run (key %s)", ckpt_dir, old.get("key"))
            shutil.rmtree(ckpt_dir)
    if not (ckpt_dir / "latest").is_file():
        write_json(meta, {"key": key, "stage": stage, "world_size": world, "num_workers": num_workers})


def resume_problem(ckpt_dir: Path, world: int, num_workers: int) -> str | None:
    """Why the checkpoint in ``ckpt_dir`` cannot be resumed by ``world`` processes with
    ``num_workers`` loader workers each (the batch order is per rank and worker), naming the key;
    None when it can, or when there is none."""
    if not (ckpt_dir / "latest").is_file():
        return None
    meta = _read_json(ckpt_dir / CKPT_META)
    if (meta.get("world_size"), meta.get("num_workers")) == (world, num_workers):
        return None
    return (
        f"train.nproc_per_node / train.num_workers: {ckpt_dir} was written by "
        f"{meta.get('world_size')} processes with {meta.get('num_workers')} loader workers each; "
        "resume with the same, or delete that folder to start the stage over"
    )


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

        from llmasr.config import StageConfig, TrainConfig

        self.train_cfg = TrainConfig.model_validate(cfg.train)
        self.stage_cfg = StageConfig.model_validate(cfg.stage_cfg)
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
        _check_world_size(samples, self.world, self.train_cfg.hostfile, Path(self.cfg.shard_index))

    def build_model(self) -> None:
        import torch

        from llmasr.model import (
            LLMASRConfig,
            WhisperStage1Head,
            apply_lora,
            build_model,
            set_trainable,
        )
        from tasks.train_data import LLMTargets, WhisperTargets, whisper_label_tokenizer

        torch.manual_seed(self.train_cfg.seed)  # the same initial projector / LoRA on every rank
        try:
            # bundled: names -> their local folders, once: the model, the stage-1 tokenizer, the
            # exports and model.json (absolute paths: decoding loads what training used) all see them
            self.model_cfg = LLMASRConfig.from_dict(self.cfg.model).resolved()
            if self.stage == 1:
                module = WhisperStage1Head.from_pretrained(
                    self.model_cfg.encoder,
                    trim_padding=self.model_cfg.trim_padding,
                    mask_padding=self.model_cfg.mask_padding,
                )
                wcfg = module.whisper.config
                self.targets = WhisperTargets(
                    whisper_label_tokenizer(self.model_cfg.encoder), wcfg.max_target_positions
                )
                self.decoder_start = int(wcfg.decoder_start_token_id)
                enc_cfg = wcfg
            else:
                module = build_model(self.model_cfg)
                if (
                    self.stage == 2
                    and module.projector.ctc
                    and self.train_cfg.ctc_vocab == "transcripts"
                    and not self.model_cfg.projector_path
                ):
                    module.projector.restrict_ctc(self._transcript_tokens(module.tokenizer))
                if self.stage == 3:
                    apply_lora(module, self.model_cfg.lora)
                self.targets = LLMTargets(module.tokenizer)
                enc_cfg = module.encoder.config
            self.trainable = set_trainable(module, self.stage)
        except (ValueError, OSError) as exc:  # OSError: from_pretrained could not find / fetch it
            raise TrainConfigError(f"{self._config_key(str(exc))}: {exc}") from None
        self.n_mels = int(enc_cfg.num_mel_bins)
        self.max_frames = 2 * int(enc_cfg.max_source_positions)
        self.module = module
        self.n_params = sum(p.numel() for p in module.parameters())
        encoder = module.whisper.model.encoder if self.stage == 1 else module.encoder
        self.n_encoder = sum(p.numel() for p in encoder.parameters())
        self.n_trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        self.flops = step_flops(module, self.stage)
        self.logit_rows = 0
        self.encoder_cache = None
        if self.stage != 1 and self.train_cfg.cache_encoder_outputs:
            from tasks.encoder_cache import EncoderCache

            self.encoder_cache = EncoderCache(module.encoder)  # frozen in stages 2 and 3

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

    def _config_key(self, message: str) -> str:
        if "trust_remote_code" in message:  # transformers: the checkpoint ships its own code
            return "train.trust_remote_code"
        for key, value in (
            ("train.encoder", self.cfg.model.get("encoder")),
            ("train.llm", self.cfg.model.get("llm")),
            ("train.tokenizer", self.cfg.model.get("tokenizer")),
        ):
            if isinstance(value, str) and value and value in message:
                return key
        return _config_key(message)

    def _fingerprints(self) -> dict[str, str]:
        import hashlib

        import torch

        out = {}
        for name, p in self.module.named_parameters():
            data = p.detach().to("cpu").contiguous().flatten().view(torch.uint8).numpy().tobytes()
            out[name] = hashlib.sha1(data).hexdigest()
        return out

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

        t, s = self.train_cfg, self.stage_cfg
        ds_cfg = {
            k: v
            for k, v in _read_json(resolve_repo_path(self.cfg.deepspeed_config)).items()
            if not k.startswith("_")
        }
        for k in ("optimizer", "scheduler", "train_batch_size"):
            if ds_cfg.pop(k, None) is not None and k != "train_batch_size":
                log.warning("ignoring %r of %s: the trainer passes its own", k, self.cfg.deepspeed_config)
        ds_cfg["train_micro_batch_size_per_gpu"] = 1
        ds_cfg["gradient_accumulation_steps"] = t.grad_accum
        ds_cfg["gradient_clipping"] = t.grad_clip
        ds_cfg["bf16"] = {**ds_cfg.get("bf16", {}), "enabled": self.precision == "bf16"}
        ds_cfg["fp16"] = {**ds_cfg.get("fp16", {}), "enabled": self.precision == "fp16"}
        ds_cfg.setdefault("steps_per_print", 10**9)
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

    def peek_state(self) -> None:
        """The resume position from the latest checkpoint's client state (read before the data
        loaders exist, so they start at the right place); the engine loads it later."""
        self.state = {
            "step": 0,
            "epoch": 0,
            "samples": 0,
            "audio_s": 0.0,
            "tokens": 0,
            "skip": {},
            "resumed_from": None,
        }
        latest = self.ckpt_dir / "latest"
        if not latest.is_file():
            return
        import torch

        tag = latest.read_text().strip()
        sidecar = self.ckpt_dir / tag / TRAINER_STATE
        states = self.ckpt_dir / tag / "mp_rank_00_model_states.pt"
        if sidecar.is_file():
            client = _read_json(sidecar)
        elif states.is_file():  # killed between DeepSpeed's save and the sidecar
            client = torch.load(str(states), map_location="cpu", weights_only=False)
        else:
            return
        consumed = client.get("consumed") or []
        main = self.rank == 0  # the counters in a checkpoint are global: rank 0 carries them on
        self.state.update(
            step=int(client.get("step", 0)),
            epoch=int(client.get("epoch", 0)),
            samples=int(client.get("samples", 0)) if main else 0,
            audio_s=float(client.get("audio_s", 0.0)) if main else 0.0,
            tokens=int(client.get("tokens", 0)) if main else 0,
            skip={
                int(k): int(v) for k, v in (consumed[self.rank] if self.rank < len(consumed) else {}).items()
            },
            resumed_from=tag,
        )

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
            from llmasr.atomic import write_json

            write_json(self.ckpt_dir / tag / TRAINER_STATE, client)  # the resume position, without torch.load
            tags = sorted(
                (p for p in self.ckpt_dir.glob("step*") if p.is_dir() and p.name[4:].isdigit()),
                key=lambda p: int(p.name[4:]),
            )
            for old in tags[:-KEEP_CHECKPOINTS]:
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
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
        self.logit_rows = out.logits.shape[0] * out.logits.shape[1]  # (B, K, V): the scored columns only
        self.speech_lengths = out.speech_lengths.tolist()  # what the LLM read: 0 on CTC-only steps
        return out.loss

    def _scored(self, batch: dict[str, Any]) -> int:
        """Target positions the batch's loss is the mean over (validation weights batches by it)."""
        if self.stage == 1:
            return whisper_label_count(batch["target_ids"], self.decoder_start)
        return batch["n_tokens"] + len(batch["keys"])  # transcript tokens + EOS per example

    def _tokens(self, batch: dict[str, Any]) -> int:
        """Transcript tokens: stage 1's ids less the start, prefix and <|endoftext|> around each."""
        if self.stage == 1:
            return sum(max(0, len(t) - self.targets.extra) for t in batch["target_ids"])
        return batch["n_tokens"]

    def _lengths(self, batch: dict[str, Any]) -> tuple[list[int], list[int]]:
        """Per example: the encoder frames and decoder positions the model runs on (no padding)."""
        enc = [(int(n) - 1) // 2 + 1 for n in batch["feature_lengths"]]  # mel frames / 2, rounded up
        if self.stage == 1:  # Whisper's decoder runs on its labels shifted right: one position each
            return enc, [
                len(t) - (1 if len(t) and t[0] == self.decoder_start else 0) for t in batch["target_ids"]
            ]
        m = self.engine.module
        prompt = len(m.prompt.prefix_ids) + len(m.prompt.suffix_ids)
        if m.projector.ctc:  # the LLM read the CTC-compressed frames (none on a CTC-only step)
            return enc, [
                s + prompt + len(t) + 1 if s else 0 for s, t in zip(self.speech_lengths, batch["target_ids"])
            ]
        # + EOS
        return enc, [e // m.projector.k + prompt + len(t) + 1 for e, t in zip(enc, batch["target_ids"])]

    def _model_flops(self, enc: list[int], pos: list[int]) -> float:
        """Forward + backward model FLOPs of the batch just trained on (``tasks.flops``)."""
        if self.stage == 1:  # Whisper's head runs on every label position; cross-attention labels x frames
            return self.flops(sum(enc), sum(e * e for e in enc), sum(pos), sum(p * p for p in pos), sum(pos),
                              sum(p * e for p, e in zip(pos, enc)))  # fmt: skip
        cached = (
            [e for e, fresh in zip(enc, self.encoder_cache.fresh) if not fresh] if self.encoder_cache else []
        )
        return self.flops(sum(enc), sum(e * e for e in enc), sum(pos), sum(p * p for p in pos),
                          self.logit_rows, adapter_frames=sum(e // self.flops.k for e in enc),
                          cached_frames=sum(cached), cached_frames_sq=sum(e * e for e in cached))  # fmt: skip

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
                weight = self._scored(batch)
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
        # (9,): loss sum, micro-batches, samples, audio_s, tokens, enc frames, dec positions, s waiting for
        # the loader, model FLOPs (tasks.flops)
        window = torch.zeros(9, dtype=torch.float64)
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
            nonlocal logged_samples, logged_step, last_loss, window_start
            step = self.state["step"]
            w = window.to(self.device)
            dist.all_reduce(w)
            w = w.cpu()
            elapsed = max(time.time() - window_start, 1e-9)
            logged_samples += int(w[2])
            record = {
                "step": step,
                "epoch": self.state["epoch"],
                "loss": float(w[0] / max(w[1], 1)),
                "lr": float(self.engine.get_lr()[0]),
                "samples_per_s": float(w[2] / elapsed),
                "audio_s_per_s": float(w[3] / elapsed),
                "tokens_per_s": float(w[4] / elapsed),
                "encoder_frames_per_s": float(w[5] / elapsed),
                "decoder_positions_per_s": float(w[6] / elapsed),
                # share of the ranks' wall time spent waiting for batches: ~0 = the loader keeps up
                "data_wait_frac": float(w[7] / (self.world * elapsed)),
                "run_samples": logged_samples,
                "world_size": self.world,
            }
            record["model_tflops"] = float(w[8] / elapsed / self.world / 1e12)  # per process
            if peak:
                record["mfu"] = float(w[8] / elapsed) / (self.world * peak)
                flops_6n = 6.0 * (
                    self.n_encoder * record["encoder_frames_per_s"]
                    + (self.n_params - self.n_encoder) * record["decoder_positions_per_s"]
                )
                record["mfu_6n"] = flops_6n / (self.world * peak)
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
            window.zero_()
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
                n = len(batch["keys"])
                tokens = self._tokens(batch)
                enc, pos = self._lengths(batch)
                window += torch.tensor([float(loss.detach()), 1, n, batch["audio_s"], tokens, sum(enc),
                                        sum(pos), waited[0], self._model_flops(enc, pos)],
                                       dtype=torch.float64)  # fmt: skip
                waited[0] = 0.0
                self.state["samples"] += n
                self.state["audio_s"] += batch["audio_s"]
                self.state["tokens"] += tokens
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
    def _trained_fp32(self) -> dict[str, Any]:
        """Trainable parameters as full fp32 tensors on CPU (DeepSpeed's fp32 master copies where it
        keeps them; a collective under ZeRO: every rank calls it)."""
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, p in self.engine.module.named_parameters():
            if p.requires_grad:
                full = safe_get_full_fp32_param(p)
                out[name] = (full if full is not None else p.detach()).float().cpu().clone()
        return out

    def export(self) -> list[str]:
        import torch
        import torch.distributed as dist

        from llmasr.model import Projector, build_llm, build_tokenizer, save_encoder, save_projector

        trained = self._trained_fp32()
        exports: list[str] = []
        if self.is_main:
            m = self.engine.module
            if self.stage == 1:
                from transformers import WhisperForConditionalGeneration

                from llmasr.model import SpeechEncoder

                # frozen parts from the fp32 source checkpoint, trained ones from the fp32 masters
                whisper = WhisperForConditionalGeneration.from_pretrained(
                    str(self.model_cfg.encoder), dtype=torch.float32
                )
                own = dict(whisper.named_parameters())
                with torch.no_grad():
                    for name, value in trained.items():
                        own[name[len("whisper.") :]].copy_(value)
                with _export_folder(self.out_dir, "whisper") as tmp:
                    whisper.save_pretrained(str(tmp))
                    _copy_aux(self.model_cfg.encoder, tmp)
                    _complete_whisper_folder(self.model_cfg.encoder, tmp, whisper.config.num_mel_bins)
                with _export_folder(self.out_dir, "encoder") as tmp:
                    save_encoder(SpeechEncoder(whisper.get_encoder()), tmp)
                    _copy_aux(self.model_cfg.encoder, tmp)
                exports = ["encoder", "whisper"]
            else:
                projector = Projector(**m.projector.config_dict())
                # the CTC head's token ids
                buffers = {k: v.detach().cpu() for k, v in m.projector.named_buffers()}
                projector.load_state_dict(
                    {
                        **buffers,
                        **{
                            k[len("projector.") :]: v
                            for k, v in trained.items()
                            if k.startswith("projector.")
                        },
                    }
                )
                with _export_folder(self.out_dir, "projector") as tmp:
                    save_projector(projector, tmp)
                exports = ["projector"]
                if self.stage == 3:
                    lora = {k[len("llm.") :]: v for k, v in trained.items() if "lora_" in k}
                    with _export_folder(self.out_dir, "lora") as tmp:
                        m.llm.save_pretrained(str(tmp), state_dict=lora)
                    exports.append("lora")
                    if self.train_cfg.merge_lora:
                        from peft import PeftModel

                        base = build_llm(
                            self.model_cfg.llm,
                            "float32",
                            self.model_cfg.trust_remote_code,
                            self.model_cfg.llm_init,
                            self.model_cfg.llm_seed,
                        )
                        merged = PeftModel.from_pretrained(
                            base, str(self.out_dir / "lora")
                        ).merge_and_unload()
                        tok_source = self.model_cfg.tokenizer or self.model_cfg.llm
                        with _export_folder(self.out_dir, "merged_llm") as tmp:
                            merged.save_pretrained(str(tmp))
                            build_tokenizer(tok_source, self.model_cfg.trust_remote_code).save_pretrained(
                                str(tmp)
                            )
                        exports.append("merged_llm")
        dist.barrier()
        return exports

    def model_json(self):
        from llmasr.model import LLMASRConfig

        d = self.model_cfg.to_dict()
        d.update(
            encoder=_abs_if_local(d["encoder"]),
            llm=_abs_if_local(d["llm"]),
            tokenizer=_abs_if_local(d["tokenizer"]),
        )
        if self.stage == 1:
            d["encoder"] = str((self.out_dir / "encoder").resolve())
        else:
            d["projector_path"] = str((self.out_dir / "projector").resolve())
        return LLMASRConfig.from_dict(d)

    def verify(self) -> dict[str, Any] | None:
        if self.fingerprints is None:
            return None
        after = self._fingerprints()
        trainable = set(self.trainable)
        return {
            "frozen": sum(1 for n in after if n not in trainable),
            "trained": len(trainable),
            "frozen_changed": sorted(
                n for n in after if n not in trainable and after[n] != self.fingerprints[n]
            ),
            "trained_unchanged": sorted(n for n in trainable if after[n] == self.fingerprints[n]),
        }

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
        self.peek_state()
        self.build_data()
        self.build_engine()
        # after initialize (which casts to bf16/fp16 where asked), before the checkpoint loads
        self.fingerprints = self._fingerprints() if self.cfg.verify_params else None
        self.load_checkpoint()
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
            verify = self.verify()
            exports = self.export()
            info = None
            if self.is_main:
                write_model_json(self.out_dir, self.model_json())
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
        _die_with_launcher()
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
