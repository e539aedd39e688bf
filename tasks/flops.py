"""Model FLOPs of a training step, counted by what the stage does with each part of the model.

    from tasks.flops import step_flops
    f = step_flops(module, stage)           # once, after set_trainable (and apply_lora for stage 3)
    flops = f(frames, frames_sq, positions, positions_sq, logit_rows)   # per batch, forward + backward
    flops = f(frames, frames_sq, positions, positions_sq, logit_rows,
              adapter_frames=sum(t // k for t in frames_i))

The logged MFU of ``tasks.train`` (``mfu`` = model FLOP/s / peak) and ``model_tflops``: what the
step must compute, not what the hardware did (no recomputation, no padding).  Per parameter of a
matmul (2 FLOPs per multiply-add):

* 2N forward, always;
* + 2N for the gradients of its input activations, when anything upstream trains (a frozen LLM
  passes gradients to the adapter / LoRA; stage 1's frozen Whisper decoder to the encoder) or the
  part itself trains;
* + 2N for the weight gradients, when the weight trains.

So a trained weight costs 6N per token, a frozen one that gradients pass through 4N, a frozen one
that only runs forward (the encoder in stages 2/3, under no_grad) 2N -- the rules of
``bench/capacity.py``.  Tokens: encoder frames (mel frames / 2; the stride-2 conv runs on mel frames,
counted at the frame rate, a ~1% under-count), decoder positions (the LLM's prompt + speech + target
+ EOS; Whisper's label tokens in stage 1), and the rows that get logits for the vocabulary
projection (only the scored positions' columns in stages 2/3, ``LLMASR.forward``; every label in
stage 1).  Embedding lookups (token, position) are not matmuls and count 0.  Attention: QK^T and AV
are 4 x d FLOPs per (query, key) pair per layer forward, x3 when gradients pass (Whisper's
cross-attention in stage 1: per (label, frame) pair; its key/value projections run per frame).
``tests/test_flops.py`` holds this against torch's own FLOP counter on a real step.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class StepFlops:
    """FLOPs (forward + backward) per unit of a batch."""

    per_frame: float  # encoder matmuls per encoder frame
    per_position: float  # decoder / LLM matmuls per position, the vocabulary projection excluded
    per_logit_row: float  # vocabulary projection per row that gets logits
    per_frame_pair: float  # encoder attention per (frame, frame) pair of one example, all layers
    per_position_pair: float  # decoder attention per (position, position) pair of one example
    per_cross_pair: float = 0.0  # stage 1: Whisper's cross-attention per (label, frame) pair
    per_adapter_frame: float = 0.0  # stages 2/3: the adapter (and its CTC head) per adapter frame
    k: int = 1  # encoder frames per adapter frame

    def __call__(self, frames: float, frames_sq: float, positions: float, positions_sq: float,
                 logit_rows: float, cross_pairs: float = 0.0, adapter_frames: float | None = None,
                 cached_frames: float = 0.0, cached_frames_sq: float = 0.0) -> float:  # fmt: skip
        """frames / positions: summed over the batch; *_sq: summed squares of each example's count;
        cross_pairs: summed positions x frames of each example (stage 1); adapter_frames: summed
        ``frames_i // k`` (None: frames / k, which counts each row's dropped tail); cached_frames(_sq):
        the frames (and squares) among ``frames`` whose encoder output came from ``tasks.encoder_cache``."""
        adapter = frames / self.k if adapter_frames is None else adapter_frames
        return (self.per_frame * (frames - cached_frames)
                + self.per_frame_pair * (frames_sq - cached_frames_sq)
                + self.per_adapter_frame * adapter + self.per_position * positions
                + self.per_position_pair * positions_sq + self.per_logit_row * logit_rows
                + self.per_cross_pair * cross_pairs)  # fmt: skip


def _factor(trains: bool, upstream_trains: bool) -> int:
    return 6 if trains else 4 if upstream_trains else 2


def _matmul_params(
    module: nn.Module, skip: tuple[str, ...], upstream_trains: bool, only: tuple[str, ...] = ()
) -> tuple[float, bool]:
    """sum of factor x numel over ``module``'s matrices (names containing a ``skip`` part are
    lookups or counted elsewhere; with ``only``, just the names containing one of its parts); and
    whether any of them trains (then every frozen weight inside passes gradients: 4N)."""
    params = [
        (n, p)
        for n, p in module.named_parameters()
        if not any(s in n for s in skip) and (not only or any(s in n for s in only))
    ]
    trains = any(p.requires_grad for _, p in params)
    total = sum(
        _factor(p.requires_grad, upstream_trains or trains) * p.numel() for _, p in params if p.dim() > 1
    )
    return float(total), trains


def _encoder_params(enc: nn.Module) -> tuple[float, bool]:
    """A WhisperEncoder's matmul FLOPs per encoder frame.  conv1 sees the features, which need no
    gradient (4N trained, 2N frozen), and runs on the mel frames: two per encoder frame."""
    e, trains = _matmul_params(enc, ("embed_positions", "conv1."), upstream_trains=False)
    w = enc.conv1.weight
    return e + 2 * (4 if w.requires_grad else 2) * w.numel(), trains or w.requires_grad


def step_flops(module: nn.Module, stage: int) -> StepFlops:
    """The stage's ``StepFlops`` for ``module``: a ``WhisperStage1Head`` (stage 1) or an ``LLMASR``
    (stages 2/3), with ``requires_grad`` already set for the stage (``set_trainable``)."""
    if stage == 1:
        whisper = module.whisper
        enc, dec = whisper.model.encoder, whisper.model.decoder
        e, enc_trains = _encoder_params(enc)
        # the cross-attention's keys and values are projections of the encoder's frames, not of the labels
        kv = ("encoder_attn.k_proj", "encoder_attn.v_proj")
        d, _ = _matmul_params(dec, ("embed_tokens", "embed_positions", *kv), upstream_trains=enc_trains)
        cross_kv, _ = _matmul_params(dec, (), upstream_trains=enc_trains, only=kv)
        head = whisper.get_output_embeddings().weight  # (V, d): tied to embed_tokens in Whisper
        cfg = whisper.config
        grad = 3 if enc_trains else 1
        return StepFlops(
            per_frame=e + cross_kv,
            per_position=d,
            per_logit_row=_factor(head.requires_grad, enc_trains) * head.numel(),
            per_frame_pair=4 * cfg.d_model * cfg.encoder_layers * grad,
            per_position_pair=4 * cfg.d_model * cfg.decoder_layers * grad,
            per_cross_pair=4 * cfg.d_model * cfg.decoder_layers * grad,
        )
    enc = module.encoder.encoder  # the WhisperEncoder inside SpeechEncoder
    e, enc_trains = _encoder_params(enc)
    p, proj_trains = _matmul_params(module.adapter, (), upstream_trains=enc_trains)
    first = module.adapter.linear1.weight
    # its input (the frozen encoder's output) needs no gradient: 4N
    if first.requires_grad and not enc_trains:
        p -= 2 * first.numel()
    upstream = enc_trains or proj_trains
    llm = module.llm
    out = llm.get_output_embeddings()  # the vocabulary projection (V, h); None in some remote-code models
    head = getattr(out, "weight", None)
    # the input embedding is a lookup; the head, where found, is counted per logit row
    # token / position tables
    lookups = ("embed_tokens", "wte", "wpe", "embed_positions", "position_embeddings")
    skip = (*lookups, "lm_head") if head is not None else lookups
    lm, _ = _matmul_params(llm, skip, upstream_trains=upstream)
    lcfg, ecfg = llm.config, module.encoder.config
    # n_embd / n_layer: GPT-2-style configs
    width = getattr(lcfg, "hidden_size", None) or getattr(lcfg, "n_embd", 0)
    layers = getattr(lcfg, "num_hidden_layers", None) or getattr(lcfg, "n_layer", 0)
    ctc = 0.0
    if module.adapter.ctc:  # the CTC head: adapter frames x (the LLM's token embeddings + blank), frozen
        tokens = module.adapter.ctc_tokens
        vocab = llm.get_input_embeddings().weight.shape[0] if tokens is None else tokens.numel()
        ctc = (4 if upstream else 2) * (vocab + 1) * module.adapter.d_llm
    return StepFlops(
        per_frame=e,
        per_position=lm,
        per_logit_row=_factor(head.requires_grad, upstream) * head.numel() if head is not None else 0.0,
        per_frame_pair=4 * ecfg.d_model * ecfg.encoder_layers * (3 if enc_trains else 1),
        per_position_pair=4 * width * layers * (3 if upstream else 1),
        per_adapter_frame=p + ctc,
        k=module.adapter.k,
    )
