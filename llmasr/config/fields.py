"""What a config section is, and which of its settings a stage's cache key covers.

``runtime(...)`` marks a setting that changes where, how fast or how visibly a stage runs, never
what it computes; ``for_stages(...)`` marks a training setting only some stages read.
``cache_settings`` reads the marks: every cache key built from a section's settings goes through it,
so a field's mark, not a list kept beside the key, decides whether the key covers it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticUndefined

CHECKOUT = Path(__file__).resolve().parents[2]  # the repository: infra/ and the default config live here
WORK_DIR_REF = "${work_dir}"


class ConfigError(ValueError):
    """A configuration problem, with the dotted key at fault and how to fix it."""


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def runtime(default: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """``Field(default, **kwargs)`` for a runtime-only setting: one that changes where, how fast or
    how visibly a stage runs (or that only a later stage reads), never what the stage computes.
    ``cache_settings`` leaves it out of the stage's cache key."""
    return Field(default, json_schema_extra={"runtime": True}, **kwargs)


def for_stages(stages: tuple[int, ...], default: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """``Field(default, **kwargs)`` for a training setting that only the training ``stages`` read:
    ``cache_settings(train, stage)`` leaves it out of the other stages' keys."""
    return Field(default, json_schema_extra={"stages": list(stages)}, **kwargs)


def cache_settings(section: BaseModel, stage: int | None = None) -> dict[str, Any]:
    """``section``'s settings as JSON, for a cache key: without its ``runtime`` fields and, for a
    training ``stage``, without the ``for_stages`` fields that stage does not read; nested sections
    likewise."""
    dumped = section.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name, info in type(section).model_fields.items():
        mark = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if mark.get("runtime") or (stage is not None and stage not in mark.get("stages", [stage])):
            continue
        value = getattr(section, name)
        out[name] = cache_settings(value, stage) if isinstance(value, BaseModel) else dumped[name]
    return out
