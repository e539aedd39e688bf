"""RUN.json, the one file a training stage run reads: its schema (``RunConfig``, a pydantic model
whose ``train``, ``stage_cfg`` and ``model`` are the config sections themselves: ``TrainConfig``,
``StageConfig``, ``LLMASRConfig``), how the flow writes it (``run_config_for``, ``write_run_config``)
and every config error that can be found before loading weights (``check_run``).

Config errors raise ``TrainConfigError``, whose message starts with the key at fault: a bad value in
RUN.json when it is read (``train.lr: ...``, ``train.stage2.lr: ...``, ``model.encoder: ...``), the
rest (missing checkpoints, stage 3 before stage 2, an LLM the stage-2 adapter does not fit, a shard
index without training samples or with fewer than processes, ZeRO-3...) in ``check_run``;
``tasks.train`` exits with status 2 on one, before any compute.  Nothing here imports torch.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from llmasr.config import (
    RENAMED_TRAIN_KEYS,
    ConfigError,
    LLMASRConfig,
    StageConfig,
    TrainConfig,
    current_names,
)
from tasks.launch import hostfile_problem, read_hostfile, resolve_repo_path

log = logging.getLogger("llmasr.train")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class TrainConfigError(ConfigError):
    """A RUN.json problem found before any compute; the message starts with the key at fault."""


# ------------------------------------------------------------------------------------ RUN.json


class RunConfig(BaseModel):
    """What one stage run needs; RUN.json holds exactly these fields (``model_dump(mode="json")``).

    stage: 1, 2 or 3.  work_dir: the pipeline's work dir.  shard_index: shards/index.json.
    out_dir: ``tasks.checkpoints.stage_dir(work_dir, stage)``.  key: the cache key recorded in
    stage.json (and in the DeepSpeed checkpoints: a checkpoint of another key is not resumed).
    model: the ``LLMASRConfig`` to build (``tasks.checkpoints.model_config(...)``).  train: the
    ``TrainConfig``.  stage_cfg: the stage's ``StageConfig`` (train.stage<N>).
    deepspeed_config: JSON path (relative: to the checkout).  precision: auto | fp32 | bf16 | fp16.
    metrics_log: JSON-lines file, appended (default ``<work_dir>/logs/train.jsonl``).
    tensorboard_dir: default ``<work_dir>/logs/tensorboard``.  verify_params: fingerprint every
    parameter before and after training and record in stage.json which frozen ones changed / trained
    ones did not (tests; costs two passes over the weights).
    """

    model_config = ConfigDict(extra="forbid")

    stage: int
    work_dir: str
    shard_index: str
    out_dir: str
    key: str
    model: LLMASRConfig
    train: TrainConfig
    stage_cfg: StageConfig
    deepspeed_config: str
    precision: str = "auto"
    metrics_log: str | None = None
    tensorboard_dir: str | None = None
    verify_params: bool = False

    @model_validator(mode="before")
    @classmethod
    def _as_written_now(cls, data: Any) -> Any:
        """Paths as strings; a RUN.json an earlier version wrote (``projector*`` for ``adapter*``)
        reads as written now (``LLMASRConfig`` renames its own former keys)."""
        if not isinstance(data, dict):
            return data
        data = {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}
        if "train" in data:
            data["train"] = current_names(data["train"], RENAMED_TRAIN_KEYS)
        return data

    @model_validator(mode="after")
    def _log_defaults(self) -> RunConfig:
        if self.metrics_log is None:
            self.metrics_log = str(Path(self.work_dir) / "logs" / "train.jsonl")
        if self.tensorboard_dir is None:
            self.tensorboard_dir = str(Path(self.work_dir) / "logs" / "tensorboard")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Validate RUN.json's fields (objects or their dicts); a bad one raises TrainConfigError."""
        try:
            return cls.model_validate(d)
        except ValidationError as exc:
            raise TrainConfigError(run_error(exc, d.get("stage"))) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def run_error(exc: ValidationError, stage: Any) -> str:
    """The message of RUN.json's first validation error, starting with the config key at fault
    (``stage_cfg`` is ``train.stage<stage>``); unknown and missing top-level keys are listed."""
    errors = exc.errors()
    for kind, what in (("extra_forbidden", "unknown"), ("missing", "missing")):
        keys = sorted(str(e["loc"][0]) for e in errors if e["type"] == kind and len(e["loc"]) == 1)
        if keys:
            known = f"; known: {sorted(RunConfig.model_fields)}" if what == "unknown" else ""
            return f"RUN.json: {what} keys {keys}{known}"
    err = errors[0]
    parts: list[str] = []
    fields: dict[str, Any] = RunConfig.model_fields
    for p in err["loc"]:  # field names only: not a union member's tag (model.encoder.str) or an index
        if p not in fields:
            if err["type"] == "extra_forbidden":
                parts.append(str(p))
            break
        parts.append(str(p))
        section = fields[p].annotation
        fields = section.model_fields if isinstance(section, type) and issubclass(section, BaseModel) else {}
    if parts and parts[0] == "stage_cfg":
        parts[0] = f"train.stage{stage}"
    key, got = ".".join(parts) or "RUN.json", err.get("input")
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    return f"{key}: {err['msg']}" + ("" if isinstance(got, dict) else f" (got {got!r})")


def write_run_config(path: str | Path, **fields: Any) -> Path:
    """Write RUN.json (atomically) from ``RunConfig``'s fields (sections as objects or dicts).
    Returns the path."""
    from llmasr.atomic import write_json

    return write_json(Path(path), RunConfig.from_dict(fields).to_dict())


def read_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"RUN.json: no such file {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainConfigError(f"RUN.json: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"RUN.json: {path} is not a JSON object")
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
        model=model_config(train, work, stage),
        train=train,
        stage_cfg=getattr(train, f"stage{stage}"),
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


def check_checkpoint(
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


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _hidden_size(config: dict[str, Any]) -> int | None:
    for k in ("hidden_size", "n_embd", "d_model"):
        if isinstance(config.get(k), int):
            return int(config[k])
    text = config.get("text_config")
    return _hidden_size(text) if isinstance(text, dict) else None


def _adapter_json(folder: Path) -> Path | None:
    """The adapter config of an adapter folder: ``adapter.json``, or ``projector.json`` as an earlier
    version named it (``llmasr.model.adapter``'s files, named here to keep torch out)."""
    for name in ("adapter.json", "projector.json"):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(stage_json: Path) -> bool:
    try:
        return bool(read_json(stage_json).get("complete"))
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


def check_world_size(train_samples: int, world: int, hostfile: str | None, index: Path) -> None:
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
    """Every config error that can be found without loading weights (its values were validated when
    it was read); raises TrainConfigError."""
    if cfg.stage not in (1, 2, 3):
        raise TrainConfigError(f"stage: must be 1, 2 or 3, got {cfg.stage!r}")
    if not str(cfg.key).strip():
        raise TrainConfigError("key: empty; the flow passes the stage's cache key")
    train = cfg.train
    if cfg.precision not in PRECISIONS:
        raise TrainConfigError(f"train.precision: must be one of {PRECISIONS}, got {cfg.precision!r}")
    ds = resolve_repo_path(cfg.deepspeed_config)
    if not ds.is_file():
        raise TrainConfigError(f"train.deepspeed_config: no such file {cfg.deepspeed_config}")
    try:
        ds_cfg = read_json(ds)
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
        entries = read_json(index).get("shards", [])
    except json.JSONDecodeError as exc:
        raise TrainConfigError(f"shard_index: {index} is not valid JSON ({exc})") from None
    train_entries = [e for e in entries if e.get("split") == "train"]
    train_samples = sum(int(e.get("samples", 0)) for e in train_entries)
    if train_samples == 0:
        raise TrainConfigError(
            f"shard_index: {index} has no train samples (no kept segments in the train split)"
        )
    check_world_size(train_samples, world_size_of(train), train.hostfile, index)
    missing = [e["path"] for e in train_entries if not (index.parent / e["path"]).is_file()]
    if missing:
        raise TrainConfigError(
            f"shard_index: {len(missing)} train shard(s) of {index} are missing, e.g. {missing[0]}"
        )

    # checkpoints
    model = cfg.model
    enc_key = (
        "train.encoder"
        if cfg.stage == 1 or model.encoder == train.encoder
        else "model.encoder (stage 1's export)"
    )
    enc_dir = check_checkpoint(model.encoder, enc_key)
    if cfg.stage == 1:
        if isinstance(model.encoder, dict):
            raise TrainConfigError(f"{enc_key}: stage 1 needs a Whisper checkpoint folder, not a config dict")
        if enc_dir is not None and not any((enc_dir / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            raise TrainConfigError(
                f"{enc_key}: {enc_dir} has no tokenizer (tokenizer.json or vocab.json): "
                "stage 1 labels need Whisper's tokenizer"
            )
        return
    llm_dir = check_checkpoint(model.llm, "train.llm")
    if model.tokenizer:
        check_checkpoint(model.tokenizer, "train.tokenizer", "tokenizer folder", marker="")
    elif isinstance(model.llm, dict):
        raise TrainConfigError("train.tokenizer: required when the LLM is given as a config dict")
    if cfg.stage == 3:
        stage2 = Path(cfg.work_dir) / "checkpoints" / "stage2"
        if not model.adapter_path:
            raise TrainConfigError(
                "model.adapter_path: not set; stage 3 needs checkpoints/stage2/adapter (run stage 2 first)"
            )
        proj = Path(model.adapter_path)
        if _adapter_json(proj) is None:
            raise TrainConfigError(
                f"model.adapter_path: no adapter at {proj}; "
                "stage 3 needs checkpoints/stage2 (run stage 2 first)"
            )
        if proj.resolve().parent == stage2.resolve() and not _complete(stage2 / "stage.json"):
            raise TrainConfigError(
                f"model.adapter_path: {stage2} is not complete (no stage.json); "
                "stage 3 needs checkpoints/stage2 (run stage 2 first)"
            )
    proj = model.adapter_path
    if proj and _adapter_json(Path(proj)) is not None:
        pj = read_json(_adapter_json(Path(proj)))
        if llm_dir is not None or isinstance(model.llm, dict):
            llm_conf = model.llm if isinstance(model.llm, dict) else read_json(llm_dir / "config.json")
            hidden = _hidden_size(llm_conf)
            if hidden is not None and hidden != pj.get("d_llm"):
                raise TrainConfigError(
                    f"train.llm: hidden size {hidden} does not match "
                    f"the adapter's output width {pj.get('d_llm')} ({proj}, trained for another LLM); "
                    "rerun stage 2 with this LLM or set train.llm back"
                )
        if enc_dir is not None or isinstance(model.encoder, dict):
            enc_conf = (
                model.encoder if isinstance(model.encoder, dict) else read_json(enc_dir / "config.json")
            )
            if isinstance(enc_conf.get("d_model"), int) and enc_conf["d_model"] != pj.get("d_enc"):
                raise TrainConfigError(
                    f"{enc_key}: d_model {enc_conf['d_model']} does not match the adapter's input width "
                    f"{pj.get('d_enc')} ({proj})"
                )


def deepspeed_settings(path: str, train: Any, precision: str) -> dict[str, Any]:
    """The DeepSpeed config the engine gets: the JSON at ``path`` (relative: to the checkout; keys
    starting with "_" are comments) with the trainer's own batch shape, accumulation, clipping and
    ``precision`` (fp32 | bf16 | fp16); its optimizer and scheduler are ignored (the trainer passes
    its own).  ``train``: the run's ``TrainConfig``."""
    ds_cfg = {k: v for k, v in read_json(resolve_repo_path(path)).items() if not k.startswith("_")}
    for k in ("optimizer", "scheduler", "train_batch_size"):
        if ds_cfg.pop(k, None) is not None and k != "train_batch_size":
            log.warning("ignoring %r of %s: the trainer passes its own", k, path)
    ds_cfg["train_micro_batch_size_per_gpu"] = 1
    ds_cfg["gradient_accumulation_steps"] = train.grad_accum
    ds_cfg["gradient_clipping"] = train.grad_clip
    ds_cfg["bf16"] = {**ds_cfg.get("bf16", {}), "enabled": precision == "bf16"}
    ds_cfg["fp16"] = {**ds_cfg.get("fp16", {}), "enabled": precision == "fp16"}
    ds_cfg.setdefault("steps_per_print", 10**9)
    return ds_cfg


def no_validation_message(shard_index: str | Path, validation_fraction: float | None = None) -> str | None:
    """The warning for a shard index without validation samples (None when it has some): training
    then logs no validation loss.  The split is drawn per item by a hash of its id, so a corpus of
    few items can hash wholly to train at the default fraction."""
    index = Path(shard_index)
    entries = read_json(index).get("shards", [])
    if sum(int(e.get("samples", 0)) for e in entries if e.get("split") == "validation"):
        return None
    now = f" (now {validation_fraction})" if validation_fraction is not None else ""
    return (
        f"{index} has no validation split: every item hashed to train, so training logs no validation loss; "
        f"raise shard.validation_fraction{now} and rerun `llmasr data` (the split is drawn per item: "
        "few items need a larger fraction)"
    )


def setting_key(cfg: RunConfig, key: str) -> str:
    """The config key of a model setting (``llmasr.model.ModelSettingError.key``): ``train.<key>``;
    ``model.<key>`` for what the flow sets (the stage-2 adapter, stage 1's exported encoder that
    stages 2-3 read)."""
    if key.split(".")[0] not in TrainConfig.model_fields:
        return f"model.{key}"
    if key == "encoder" and cfg.stage != 1 and cfg.model.encoder != cfg.train.encoder:
        return "model.encoder (stage 1's export)"
    return f"train.{key}"
