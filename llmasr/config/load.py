"""Reading the configuration (``load_config``): the file, its profile, ``--set`` overrides, then
validation; every error names the dotted key and the fix."""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmasr.config.fields import CHECKOUT, ConfigError
from llmasr.config.paths import DEFAULT_WORK_DIR, absolute_paths, resolve_paths
from llmasr.config.pipeline import PipelineConfig
from llmasr.config.train import RENAMED_TRAIN_KEYS

CONFIG_ENV = "LLMASR_CONFIG"
CONFIG_NAME = "pipeline_config.yaml"


def find_config_file(explicit: str | Path | None = None) -> Path:
    """--config, then $LLMASR_CONFIG, then ./pipeline_config.yaml, then the checkout's copy."""
    if explicit:  # never fall back to another file when the user named one
        if Path(explicit).is_file():
            return Path(explicit)
        raise ConfigError(f"config file {explicit} does not exist; pass an existing file to --config")
    candidates = [
        os.environ.get(CONFIG_ENV),
        Path.cwd() / CONFIG_NAME,
        CHECKOUT / CONFIG_NAME,
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise ConfigError(
        f"no {CONFIG_NAME} found (looked in ${CONFIG_ENV}, the current folder and the checkout)"
    )


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, f in model.model_fields.items():
        keys.append(prefix + name)
        ann = f.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                keys += _known_keys(cand, prefix + name + ".")
    return keys


def _renamed(key: str) -> str | None:
    """The name now of a dotted key an earlier version named ``key`` (``RENAMED_TRAIN_KEYS``), else None."""
    section, _, name = key.partition(".")
    if section == "train" and name in RENAMED_TRAIN_KEYS:
        return f"train.{RENAMED_TRAIN_KEYS[name]}"
    return None


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, _known_keys(PipelineConfig), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else "; see pipeline_config.yaml for the keys"


def apply_override(data: dict, assignment: str) -> dict:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(
            f"override {assignment!r} is not key=value; write e.g. --set filter.max_caption_wer=0.15"
        )
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(
            f"override {assignment!r} has an empty key: write --set section.key=value, "
            "e.g. --set label.batch_size=8"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r} ({exc.__class__.__name__}); quote it") from exc
    out = copy.deepcopy(data)
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"{key}: {p} is not a section{_suggest(key)}")
        node = node[p]
    node[parts[-1]] = value
    return out


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        # a list item's location ends in its index (eval.stages.0): name the list, which --set can set
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "(top level)"
        if err["type"] == "extra_forbidden" and (now := _renamed(key)):
            lines.append(f"{key} was renamed {now}: write {now} instead")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key{_suggest(key)}")
        else:
            got = err.get("input")
            if isinstance(got, dict):  # a rule across keys of a section: its message names them
                lines.append(f"{key}: {err['msg']}")
            else:
                lines.append(
                    f"{key}: {err['msg']} (got {got!r}); "
                    f"fix it in pipeline_config.yaml or with --set {key}=..."
                )
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(
    profile: str | None = None,
    overrides: list[str] | None = None,
    config_file: str | Path | None = None,
    **top_level: Any,
) -> PipelineConfig:
    """Read, merge and validate the configuration.

    ``top_level`` sets top-level keys directly (``work_dir=...``, ``sources=[...]``), as the CLI's
    flags do; None values are ignored.
    """
    path = find_config_file(config_file)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    profiles = data.pop("profiles", {}) or {}
    if profile:
        if profile not in profiles:
            raise ConfigError(
                f"profile {profile!r} is not defined; choose one of {sorted(profiles)} "
                f"(profiles: in {path.name})"
            )
        data = deep_merge(data, profiles[profile])
        data["profile"] = profile
    data.setdefault("work_dir", DEFAULT_WORK_DIR)
    data = resolve_paths(data, path.resolve().parent)  # the file's paths: relative to its folder
    for k, v in top_level.items():
        if v is not None:
            data[k] = v
    for ov in overrides or []:
        data = apply_override(data, ov)
    data = absolute_paths(data, Path.cwd())  # the command line's: relative to the current folder
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def with_overrides(
    cfg: PipelineConfig, overrides: list[str] | None = None, values: dict[str, Any] | None = None
) -> PipelineConfig:
    """``cfg`` with more settings, validated as ``load_config`` validates: ``overrides`` as ``--set``
    gives them (``key=value``, the value parsed as YAML), then ``values`` by dotted key as Python
    values (a command line's lists: ``{"eval.test_sets": [...]}``; None values are ignored).  A
    relative path among them is relative to the current folder, as on the command line."""
    data = cfg.model_dump(mode="json")
    for ov in overrides or []:
        data = apply_override(data, ov)
    for key, value in (values or {}).items():
        if value is not None:
            node = data
            *sections, name = key.split(".")
            for part in sections:
                node = node[part]
            node[name] = copy.deepcopy(value)
    data = absolute_paths(data, Path.cwd())
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
