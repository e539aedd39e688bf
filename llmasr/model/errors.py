"""``ModelSettingError``: a model that cannot be built from its settings, naming the setting.

``key`` is a field of ``LLMASRConfig`` / ``llmasr.config.ModelSettings`` (``llm``, ``encoder``,
``tokenizer``, ``adapter_hidden``, ``lora.target_modules``...), which is the ``train.*`` key of the same
name: the trainer reports ``train.<key>: <message>`` and exits 2, with no message matching.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class ModelSettingError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@contextmanager
def setting(key: str) -> Iterator[None]:
    """Loading or building one part from the setting ``key``: its ValueError, or the OSError of a
    ``from_pretrained`` that finds no checkpoint, is that setting's (``trust_remote_code``'s when
    transformers asks for it: the checkpoint ships its own code)."""
    try:
        yield
    except ModelSettingError:
        raise
    except (ValueError, OSError) as exc:
        raise ModelSettingError(
            "trust_remote_code" if "trust_remote_code" in str(exc) else key, str(exc)
        ) from exc
