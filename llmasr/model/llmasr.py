"""The LLM-ASR model: encoder + adapter + any ``AutoModelForCausalLM``, fed one row per example
``[prefix | speech | suffix | target + EOS]`` (``LLMASR``: ``forward`` gives the loss, ``generate``
decoded text), and its builders from an ``LLMASRConfig`` (``build_model``, ``build_encoder``,
``build_llm``)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    WhisperConfig,
)

from llmasr.ctc_prefix import token_classes
from llmasr.model.adapter import Adapter, load_adapter
from llmasr.model.config import DEFAULT_INSTRUCTION, LLMASRConfig, local_source, torch_dtype
from llmasr.model.encoder import SpeechEncoder, frame_mask
from llmasr.model.errors import ModelSettingError, setting
from llmasr.model.prompt import IGNORE_INDEX, build_prompt, build_tokenizer

RANDOM_INIT_SALT = 7919  # added to the seed of a randomly initialised LLM (build_llm)


@dataclass
class LLMASROutput:
    loss: torch.Tensor  # scalar: mean cross-entropy over target tokens (incl. EOS)
    logits: torch.Tensor  # (B, K, V): the positions in logit_positions only (K = L when the LLM cannot slice)
    labels: torch.Tensor  # (B, L): -100 except target tokens
    attention_mask: torch.Tensor  # (B, L)
    logit_positions: torch.Tensor  # (K,): logits[:, j] is the prediction at position logit_positions[j],
    #                                 scored against labels[:, logit_positions[j] + 1]
    # (B,): speech embeddings the LLM read per example (0: it did not run)
    speech_lengths: torch.Tensor | None = None


def keeps_logits(llm: nn.Module) -> bool:
    """Whether the LLM's forward takes ``logits_to_keep`` (transformers' causal LMs do; some remote-code
    models do not, and then every position gets its logits)."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm  # under a peft wrapper
    return _forward_takes_logits_to_keep(type(base))


@functools.cache
def _forward_takes_logits_to_keep(cls: type) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) labels -> (K,) sorted positions t (over the batch) whose next label labels[:, t + 1]
    is scored: the only positions whose logits the loss needs."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero(as_tuple=True)[0]


def allow_cudnn_attention(allowed: bool) -> None:
    """Whether torch's scaled-dot-product attention may pick cuDNN attention (process-wide).

    From torch 2.10 on H100/H200 with cuDNN >= 9.15 it is torch's first choice, and it builds an
    execution plan per input shape: every new (batch, length) -- most batches of variable-length
    speech, every step of ``generate``'s growing KV cache -- pays for one. On an H200 (README,
    Benchmarks) calls with unseen shapes ran 2.8x (decode) to 4.4x (first training steps) slower
    than repeats. False leaves flash / memory-efficient attention (torch's choice before 2.10).
    """
    torch.backends.cuda.enable_cudnn_sdp(allowed)


def _llm_hidden_size(llm: nn.Module) -> int:
    return int(llm.get_input_embeddings().embedding_dim)


class LLMASR(nn.Module):
    """Whisper encoder + adapter + causal LM, fed ``[prefix, speech, suffix, target]``."""

    def __init__(
        self,
        encoder: SpeechEncoder,
        adapter: Adapter,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        instruction: str = DEFAULT_INSTRUCTION,
    ) -> None:
        super().__init__()
        d_llm = _llm_hidden_size(llm)
        if adapter.d_enc != encoder.d_model:
            raise ModelSettingError(
                "encoder",
                f"adapter input width {adapter.d_enc} != encoder d_model {encoder.d_model}: "
                "the adapter was built for another Whisper size",
            )
        if adapter.d_llm != d_llm:
            raise ModelSettingError(
                "llm",
                f"adapter output dim {adapter.d_llm} != LLM hidden size {d_llm}: "
                "the adapter was built for another LLM",
            )
        vocab_rows = int(llm.get_input_embeddings().num_embeddings)
        if len(tokenizer) > vocab_rows:
            raise ModelSettingError(
                "tokenizer",
                f"tokenizer has {len(tokenizer)} tokens but the LLM embeds only {vocab_rows}: "
                "wrong tokenizer for this LLM",
            )
        if tokenizer.eos_token_id is None:
            raise ModelSettingError("tokenizer", "tokenizer has no eos_token: targets must end with one")
        self.encoder = encoder
        self.adapter = adapter
        self.llm = llm
        self.tokenizer = tokenizer
        with setting("instruction"):
            self.prompt = build_prompt(tokenizer, instruction)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )

    @property
    def slice_logits(self) -> bool:
        """Training computes logits at scored positions only (``forward``); the LLM may be swapped for
        a peft wrapper or a merged model, so this is read from the current one."""
        return keeps_logits(self.llm)

    # ---- speech
    def speech_embeds(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M, T) mel -> speech embeds (B, S, D_llm) and their valid lengths (B,): what the LLM reads
        (CTC-compressed when the adapter has a CTC head).

        A frozen encoder (stages 2 and 3) runs under no_grad: no activations kept for it.
        """
        speech, speech_lengths, _ = self._speech(input_features, feature_lengths)
        return speech, speech_lengths

    def _speech(
        self,
        input_features: torch.Tensor | None,
        feature_lengths: torch.Tensor | None,
        encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """speech_embeds, plus (CTC logits (B, S, V + 1), frame lengths (B,)) before compression, or None.

        ``encoded``: the frozen encoder's output for these features, computed earlier
        (``tasks.encoder_cache``): (B, T/2, D_enc) and its valid lengths (B,); the features are then
        unused."""
        if encoded is not None:
            hidden, lengths = encoded  # (B, T/2, D_enc), (B,)
        else:
            encoder_trains = torch.is_grad_enabled() and any(
                p.requires_grad for p in self.encoder.parameters()
            )
            with torch.set_grad_enabled(encoder_trains):
                hidden, lengths = self.encoder(input_features, feature_lengths)  # (B, T/2, D_enc), (B,)
        speech, speech_lengths = self.adapter(hidden, lengths)  # (B, T/2//k, D_llm), (B,)
        if bool((speech_lengths < 1).any()):
            raise ValueError(
                f"an input is too short: {speech_lengths.tolist()} speech embeddings after the adapter "
                f"(need >= 1, i.e. >= {2 * self.adapter.k - 1} mel frames)"
            )
        if not self.adapter.ctc:
            return speech, speech_lengths, None
        logits = self.adapter.ctc_logits(speech, self.llm.get_input_embeddings().weight)  # (B, S, V + 1)
        # (B, S', D_llm)
        compressed, compressed_lengths = self.adapter.compress(speech, speech_lengths, logits)
        return compressed, compressed_lengths, (logits, speech_lengths)

    def ctc_loss(
        self, ctc: tuple[torch.Tensor, torch.Tensor], target_ids: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Mean CTC loss of the adapter's head spelling each transcript in LLM tokens (no EOS)."""
        logits, lengths = ctc  # (B, S, V + 1), (B,)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (S, B, V + 1)
        # LLM ids -> the head's classes; ids it cannot spell are left out
        if self.adapter.ctc_tokens is not None:
            vocab = self.llm.get_input_embeddings().num_embeddings
            classes = token_classes(self.adapter.ctc_tokens, vocab, torch.device("cpu")).tolist()  # (V,)
            target_ids = [[classes[t] for t in row if classes[t] >= 0] for row in target_ids]
        flat = torch.tensor([t for row in target_ids for t in row], dtype=torch.long, device=logits.device)
        target_lengths = torch.tensor(
            [len(row) for row in target_ids], dtype=torch.long, device=logits.device
        )
        # zero_infinity: a transcript longer than its frames (too fast for k) adds nothing instead of inf
        return F.ctc_loss(
            log_probs, flat, lengths, target_lengths, blank=logits.shape[-1] - 1, zero_infinity=True
        )

    def encode_targets(self, texts: Sequence[str]) -> list[list[int]]:
        """Target token ids, without EOS (``forward`` appends it)."""
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    # ---- batch assembly
    def _assemble(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        targets: Sequence[Sequence[int]] | None,
        left_pad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Build inputs_embeds (B, L, D_llm), attention_mask (B, L) and labels (B, L).

        Row i: prefix (P1) | speech (S_i) | suffix (P2) | target_i + EOS (or nothing when
        generating), padded to the longest row on the right (training) or left (generation).
        """
        prefix, suffix = self.prompt.prefix_ids, self.prompt.suffix_ids
        rows_ids, rows_speech, rows_labels = [], [], []
        for i, s in enumerate(speech_lengths.tolist()):
            target = [] if targets is None else list(targets[i]) + [self.eos_id]
            rows_ids.append(prefix + [self.pad_id] * s + suffix + target)
            rows_speech.append([False] * len(prefix) + [True] * s + [False] * (len(suffix) + len(target)))
            rows_labels.append([IGNORE_INDEX] * (len(prefix) + s + len(suffix)) + target)
        width = max(len(r) for r in rows_ids)

        def pad(rows: list[list[Any]], value: Any) -> list[list[Any]]:
            return [
                ([value] * (width - len(r)) + r) if left_pad else (r + [value] * (width - len(r)))
                for r in rows
            ]

        device = speech.device
        ids = torch.tensor(pad(rows_ids, self.pad_id), dtype=torch.long, device=device)  # (B, L)
        is_speech = torch.tensor(pad(rows_speech, False), dtype=torch.bool, device=device)  # (B, L)
        labels = torch.tensor(pad(rows_labels, IGNORE_INDEX), dtype=torch.long, device=device)  # (B, L)
        attention_mask = torch.tensor(
            pad([[1] * len(r) for r in rows_ids], 0), dtype=torch.long, device=device
        )

        embeds = self.llm.get_input_embeddings()(ids)  # (B, L, D_llm)
        valid = frame_mask(speech_lengths, speech.shape[1])  # (B, S)
        speech_flat = speech[valid].to(embeds.dtype)  # (sum S_i, D_llm), row-major = is_speech order
        rows, cols = is_speech.nonzero(as_tuple=True)
        embeds = embeds.index_put((rows, cols), speech_flat)  # speech frames into their slots
        return embeds, attention_mask, labels

    # ---- training
    def forward(
        self,
        input_features: torch.Tensor,
        feature_lengths: torch.Tensor | None,
        target_ids: Sequence[Sequence[int]],
        ctc_weight: float = 0.0,
        ctc_only: bool = False,
        encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> LLMASROutput:
        """``target_ids``: per-example token ids without EOS (see ``encode_targets``).
        Returns ``LLMASROutput``; ``.loss`` is the mean CE over target tokens + EOS, plus
        ``ctc_weight`` x the adapter's CTC loss when it has a CTC head.  ``ctc_only``: the CTC loss
        alone, without running the LLM (stage 2's alignment steps; ``logits`` is then (B, 0, V)).
        ``encoded``: the frozen encoder's output for ``input_features`` (see ``_speech``)."""
        batch = encoded[0].shape[0] if encoded is not None else input_features.shape[0]
        if len(target_ids) != batch:
            raise ValueError(f"{len(target_ids)} targets for a batch of {batch}")
        if (ctc_only or ctc_weight) and not self.adapter.ctc:
            raise ValueError("a CTC loss needs an adapter with a CTC head (train.ctc_compress: true)")
        speech, speech_lengths, ctc = self._speech(input_features, feature_lengths, encoded)
        if ctc_only:
            loss = self.ctc_loss(ctc, target_ids)
            empty = speech.new_zeros(speech.shape[0], 0, int(self.llm.get_input_embeddings().num_embeddings))
            none = torch.zeros(0, dtype=torch.long, device=speech.device)
            return LLMASROutput(loss, empty, none, none, none, speech_lengths * 0)
        embeds, attention_mask, labels = self._assemble(speech, speech_lengths, target_ids, left_pad=False)
        if not self.slice_logits:
            out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
            everywhere = torch.arange(labels.shape[1], device=labels.device)
            loss, logits, keep = out.loss, out.logits, everywhere
        else:
            # Logits only where the loss looks: prompt and speech positions (~90% of a batch) never meet
            # the (B, L, V) vocabulary projection -- the largest activation of the step at V = 152k.
            keep = scored_positions(labels)  # (K,)
            # (B, K, V)
            logits = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=keep).logits
            targets = labels[:, keep + 1]  # (B, K): -100 where this row's position is not scored
            # HF's causal-LM loss, on K
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        if ctc is not None and ctc_weight:
            loss = loss + ctc_weight * self.ctc_loss(ctc, target_ids)
        return LLMASROutput(loss, logits, labels, attention_mask, keep, speech_lengths)

    # ---- inference
    @torch.no_grad()
    def generate_ids(
        self,
        input_features: torch.Tensor,
        feature_lengths: torch.Tensor | None = None,
        max_new_tokens: int | Sequence[int] = 128,
        num_beams: int = 1,
        no_repeat_ngram_size: int = 0,
        ctc_weight: float = 0.0,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """New token ids (B, N), EOS/pad included (or HF's generate output object when
        ``return_dict_in_generate=True``); the prefix is left-padded. Runs in eval mode.

        ``max_new_tokens``: one bound for every row, or one per row (B,).  Row i ends at its own
        bound and end token whatever else is in the batch (``llmasr.generation.RowBound``: EOS is
        forced after ``bound_i`` tokens), so N <= max(bound) + 1.  The generation configuration is
        complete and ours (``llmasr.generation.explicit_config``): nothing comes from the LLM
        checkpoint's ``generation_config.json``.  ``generate_kwargs`` (benches: ``min_new_tokens``,
        ``suppress_tokens``, ``output_scores``, ...) are applied on top of it.  ``ctc_weight`` > 0:
        joint decoding with the adapter's CTC head (``llmasr.ctc_prefix``; needs a CTC head).
        """
        from transformers import LogitsProcessorList

        from llmasr.ctc_prefix import CTCPrefixScorer
        from llmasr.generation import checkpoint_defaults_off, explicit_config, generate_kwargs_for

        batch = input_features.shape[0]
        bounds = (
            [int(max_new_tokens)] * batch
            if isinstance(max_new_tokens, int)
            else [int(b) for b in max_new_tokens]
        )
        if len(bounds) != batch:
            raise ValueError(f"{len(bounds)} new-token bounds for a batch of {batch}")
        steps, row_bound = generate_kwargs_for(bounds, self.eos_id)  # max(bounds) + 1 steps
        config = explicit_config(
            max_new_tokens=steps,
            num_beams=num_beams,
            no_repeat_ngram_size=no_repeat_ngram_size,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        if ctc_weight and not self.adapter.ctc:
            raise ValueError(
                f"eval.ctc_weight={ctc_weight} needs an adapter with a CTC head (trained with "
                "train.ctc_compress: true); set eval.ctc_weight: 0 for this checkpoint"
            )
        processors = LogitsProcessorList(generate_kwargs.pop("logits_processor", []))
        model_kwargs = config.update(**generate_kwargs)  # settings the caller adds; the rest go to forward
        was_training = self.training
        self.eval()
        try:
            speech, speech_lengths, ctc = self._speech(input_features, feature_lengths)
            if ctc_weight:
                logits, frames = ctc  # (B, S, V' + 1), (B,)
                vocab = self.llm.get_input_embeddings().num_embeddings
                classes = token_classes(self.adapter.ctc_tokens, vocab, logits.device)  # (V,)
                processors.append(
                    CTCPrefixScorer(logits.float().log_softmax(-1), frames, classes, self.eos_id, ctc_weight)
                )
            processors.append(row_bound)  # last: nothing re-opens a row past its bound
            embeds, attention_mask, _ = self._assemble(speech, speech_lengths, None, left_pad=True)
            with warnings.catch_warnings(), checkpoint_defaults_off(self.llm):
                # no_repeat_ngram_size with inputs_embeds only looks at new tokens: what we want.
                warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*")
                return self.llm.generate(
                    inputs_embeds=embeds,
                    attention_mask=attention_mask,
                    generation_config=config,
                    logits_processor=processors,
                    **model_kwargs,
                )  # (B, N): with inputs_embeds and no input_ids, HF returns only the new tokens
        finally:
            self.train(was_training)

    def generate(
        self,
        input_features: torch.Tensor,
        feature_lengths: torch.Tensor | None = None,
        max_new_tokens: int | Sequence[int] = 128,
        num_beams: int = 1,
        no_repeat_ngram_size: int = 0,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Greedy (or beam) transcripts of a batch, special tokens removed, stripped."""
        ids = self.generate_ids(
            input_features,
            feature_lengths,
            max_new_tokens,
            num_beams,
            no_repeat_ngram_size,
            **generate_kwargs,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def build_encoder(source: str | Path | dict[str, Any] | WhisperConfig, cfg: LLMASRConfig) -> SpeechEncoder:
    kwargs = {"trim_padding": cfg.trim_padding, "mask_padding": cfg.mask_padding}
    if isinstance(source, (dict, WhisperConfig)):
        return SpeechEncoder.from_config(source, **kwargs).to(torch_dtype(cfg.dtype))
    return SpeechEncoder.from_pretrained(source, dtype=torch_dtype(cfg.dtype), **kwargs)


def build_llm(
    source: str | Path | dict[str, Any],
    dtype: str = "float32",
    trust_remote_code: bool = False,
    init: str = "pretrained",
    seed: int = 0,
) -> PreTrainedModel:
    """The causal LM of a checkpoint (``init="pretrained"``), or its architecture with fresh weights
    drawn from ``seed`` (``init="random"``).  The draw happens on the CPU under its own generator
    state, so a rebuild gives the same weights and the caller's RNG is left as it was.  A config
    dict has no weights to load: with ``init="pretrained"`` its weights come from the caller's RNG."""
    if init not in ("pretrained", "random"):
        raise ValueError(f"llm init must be 'pretrained' or 'random', got {init!r}")
    if isinstance(source, dict):
        d = dict(source)
        if "model_type" not in d:
            raise ValueError("an llm config dict needs 'model_type' (e.g. 'qwen2')")
        config = AutoConfig.for_model(d.pop("model_type"), **d)
        if init == "pretrained":  # nothing to load: drawn from the caller's RNG
            return AutoModelForCausalLM.from_config(config).to(torch_dtype(dtype))
    elif init == "pretrained":
        return AutoModelForCausalLM.from_pretrained(
            str(local_source(source)), dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
    else:
        config = AutoConfig.from_pretrained(str(local_source(source)), trust_remote_code=trust_remote_code)
    with torch.random.fork_rng(devices=[]):
        # salted: a checkpoint drawn with torch.manual_seed(seed) and the same config (the demo's tiny
        # LLM, llmasr.tiny_models) would otherwise be this "random" LLM, weight for weight
        torch.manual_seed(RANDOM_INIT_SALT + seed)
        llm = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return llm.to(torch_dtype(dtype))


def check_adapter_settings(adapter: Adapter, cfg: LLMASRConfig) -> None:
    """A trained adapter (``cfg.adapter_path``) has the shape the settings describe; else
    ``ModelSettingError`` naming the first setting it contradicts."""
    mlp = adapter.kind == "mlp"
    pairs = (
        ("adapter", adapter.kind, cfg.adapter),
        ("downsample_k", adapter.k, cfg.downsample_k),
        ("activation", adapter.activation if mlp else cfg.activation, cfg.activation),
        ("adapter_hidden", adapter.hidden if mlp else cfg.adapter_hidden, cfg.adapter_hidden),
        ("adapter_norm", adapter.norm_to is not None, cfg.adapter_norm),
        ("ctc_compress", adapter.ctc, cfg.ctc_compress),
    )
    for key, trained, setting_now in pairs:
        if trained != setting_now:
            raise ModelSettingError(
                key,
                f"the adapter at {cfg.adapter_path} was trained with {key}={trained!r}, the settings say "
                f"{setting_now!r}: set it back, or train stage 2 again",
            )


def build_model(cfg: LLMASRConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> LLMASR:
    """Encoder + adapter (fresh, or from ``cfg.adapter_path``) + LLM + tokenizer. No LoRA.  A part
    that cannot be built from its setting raises ``ModelSettingError`` naming the setting."""
    if tokenizer is None:
        source = cfg.tokenizer or (cfg.llm if not isinstance(cfg.llm, dict) else None)
        if source is None:
            raise ModelSettingError("tokenizer", "required when the llm is given as a config dict")
        with setting("tokenizer" if cfg.tokenizer else "llm"):
            tokenizer = build_tokenizer(source, cfg.trust_remote_code)
    with setting("encoder"):
        encoder = build_encoder(cfg.encoder, cfg)
    with setting("llm"):
        llm = build_llm(cfg.llm, cfg.dtype, cfg.trust_remote_code, cfg.llm_init, cfg.llm_seed)
    norm_to = (
        float(llm.get_input_embeddings().weight.detach().norm(dim=-1).mean()) if cfg.adapter_norm else None
    )
    if cfg.adapter_path:
        with setting("adapter_path"):
            adapter = load_adapter(cfg.adapter_path)
        check_adapter_settings(adapter, cfg)
    else:
        adapter = Adapter(
            encoder.d_model,
            _llm_hidden_size(llm),
            cfg.adapter_hidden,
            cfg.downsample_k,
            cfg.activation,
            norm_to,
            cfg.ctc_compress,
            kind=cfg.adapter,
        )
    adapter = adapter.to(torch_dtype(cfg.dtype))
    return LLMASR(encoder, adapter, llm, tokenizer, cfg.instruction)
