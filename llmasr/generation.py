"""Decoding settings that are ours alone, and a new-token bound per row.

Two things every transformers ``generate`` call of evaluation needs (issue 12, items 1 and 7):

* **A complete, explicit generation configuration.**  transformers fills every field a call leaves
  unset from the checkpoint's own ``generation_config.json`` (``GenerationMixin.
  _prepare_generation_config``): a Qwen2-style instruct checkpoint would add its
  ``repetition_penalty`` 1.05, ``do_sample``/``temperature``/``top_p``, ``bad_words_ids``,
  ``suppress_tokens``, ... to our beam search.  ``explicit_config`` sets every field that changes
  which tokens come out, from our settings only; ``checkpoint_defaults_off`` hides the model's own
  config during the call (replaced by an empty ``GenerationConfig``), so whatever field a future
  transformers adds is not inherited either.
* **Each row stops at its own bound.**  ``generate`` takes one ``max_new_tokens`` per call; a batch
  ran every row to the batch's longest bound, and with beam search a row's hypothesis could depend
  on how far the others ran.  ``RowBound`` forces the end token on row i once it has ``bounds[i]``
  new tokens (score 0, i.e. log-probability 0 under beam search: the forced end adds nothing to
  the hypothesis score), so a piece decodes to the same hypothesis alone or in any batch.  The call
  runs ``max(bounds) + 1`` steps: the last step is the forced end of the longest row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessor


def explicit_config(
    *,
    max_new_tokens: int,
    num_beams: int,
    no_repeat_ngram_size: int,
    eos_token_id: int,
    pad_token_id: int,
    decoder_start_token_id: int | None = None,
    suppress_tokens: Sequence[int] | None = None,
    begin_suppress_tokens: Sequence[int] | None = None,
) -> GenerationConfig:
    """Every generation field that decides the tokens, from our settings (none from a checkpoint).

    Deterministic: no sampling (temperature/top-k/top-p/typical-p/min-p/epsilon/eta left neutral,
    unused without sampling); beam search of ``num_beams`` (1: greedy) scored by summed
    log-probability / length (``length_penalty`` 1.0, as CTranslate2's and OpenAI Whisper's beam
    search), ending an utterance's search once ``num_beams`` hypotheses are finished
    (``early_stopping=True``: OpenAI Whisper's and CTranslate2's rule, patience 1); no repetition
    penalty (1.0: a word that truly repeats is not penalised); no repeated ``no_repeat_ngram_size``-
    grams (0: off); no minimum length, no bad words, no forced first/last token, no exponential
    length bonus.  ``suppress_tokens``/``begin_suppress_tokens``: tokens never generated / not as
    the first new token (Whisper's decoding rules: ``tasks.whisper_hf.suppress_tokens``); None for
    an LLM.  One hypothesis per input, no scores returned.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return GenerationConfig(
        max_new_tokens=int(max_new_tokens),
        min_new_tokens=0,
        do_sample=False,
        num_beams=int(num_beams),
        num_return_sequences=1,
        early_stopping=True if num_beams > 1 else False,
        length_penalty=1.0,
        temperature=1.0,
        top_k=50,  # HF's neutral default; only sampling reads it
        top_p=1.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=int(no_repeat_ngram_size),
        encoder_no_repeat_ngram_size=0,
        bad_words_ids=None,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        exponential_decay_length_penalty=None,
        suppress_tokens=list(suppress_tokens) if suppress_tokens else None,
        begin_suppress_tokens=list(begin_suppress_tokens) if begin_suppress_tokens else None,
        renormalize_logits=False,
        remove_invalid_values=False,
        eos_token_id=int(eos_token_id),
        pad_token_id=int(pad_token_id),
        bos_token_id=None,
        decoder_start_token_id=None if decoder_start_token_id is None else int(decoder_start_token_id),
        use_cache=True,
        output_scores=False,
        return_dict_in_generate=False,
    )


@contextlib.contextmanager
def checkpoint_defaults_off(model: nn.Module) -> Iterator[None]:
    """While inside, every module of ``model`` that carries a ``generation_config`` (the model, a
    peft wrapper's base model) carries an empty one instead: ``generate`` then has nothing to fill
    unset fields from but transformers' global defaults.  Restored on exit."""
    saved = []
    for module in model.modules():
        own = module.__dict__.get("generation_config")
        if isinstance(own, GenerationConfig):
            saved.append((module, own))
            module.generation_config = GenerationConfig()
    try:
        yield
    finally:
        for module, own in saved:
            module.generation_config = own


class RowBound(LogitsProcessor):
    """Row i may generate at most ``bounds[i]`` new tokens, then only ``eos_token_id``.

    ``bounds`` (B,): one per input; the rows ``generate`` scores are the B inputs, or B x num_beams
    beams in input order (``repeat_interleave``), so each input's bound is repeated over its beams.
    ``prompt_len``: tokens in ``input_ids`` before the new ones (0 for a decoder-only LLM fed
    ``inputs_embeds``: its ``input_ids`` hold the new tokens only; the decoder prompt's length for
    Whisper).  Runs after transformers' own processors (custom ones are appended), so nothing
    re-opens a forced row.
    """

    def __init__(self, bounds: Sequence[int] | torch.Tensor, eos_token_id: int, prompt_len: int = 0) -> None:
        self.bounds = torch.as_tensor(bounds, dtype=torch.long).flatten()  # (B,)
        if self.bounds.numel() == 0 or bool((self.bounds < 1).any()):
            raise ValueError(f"bounds must be >= 1 and one per input, got {self.bounds.tolist()}")
        self.eos_token_id = int(eos_token_id)
        self.prompt_len = int(prompt_len)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows = scores.shape[0]  # B or B * num_beams
        if rows % self.bounds.numel():
            raise ValueError(f"{rows} rows for {self.bounds.numel()} bounds")
        limit = self.bounds.to(scores.device).repeat_interleave(rows // self.bounds.numel())  # (rows,)
        done = (input_ids.shape[1] - self.prompt_len) >= limit  # (rows,) bool: the bound is reached
        if bool(done.any()):
            scores = scores.masked_fill(done[:, None], float("-inf"))  # (rows, V)
            scores[done, self.eos_token_id] = 0.0
        return scores


def generate_kwargs_for(
    bounds: Sequence[int], eos_token_id: int, prompt_len: int = 0
) -> tuple[int, RowBound]:
    """(max_new_tokens for the call, the ``RowBound`` processor) of a batch with per-row ``bounds``:
    the call runs one step past the longest bound, the step where that row's end is forced."""
    return max(int(b) for b in bounds) + 1, RowBound(bounds, eos_token_id, prompt_len)
