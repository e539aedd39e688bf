"""The training metrics: rank 0's log (``MetricsLog``: JSON lines appended to ``metrics_log`` and
TensorBoard scalars), what each batch counts for (``StepCounter``), the throughput of the steps
between two loss records (``Window``) and, with ``verify_params``, which parameters training
changed (``fingerprints``, ``param_changes``: recorded in stage.json).

Every ``train.log_every`` steps: {"stage", "step", "loss", "lr", "samples_per_s", "tokens_per_s",
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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("llmasr.train")

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


class MetricsLog:
    """Rank 0's JSON-lines log (appended) and TensorBoard writer; other ranks write nothing."""

    def __init__(
        self,
        path: str | Path,
        tensorboard_dir: str | Path | None,
        stage: int | str,
        active: bool,
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.active = active
        self.stage = stage
        self.fields = dict(fields or {})  # written into every record (e.g. the Zipformer's "model")
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
        record = {**self.fields, "stage": self.stage, **record, "time": time.time()}
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


@dataclass
class Window:
    """The micro-batches since the last loss record, summed on one rank (over all ranks after
    ``all_reduce`` of ``to_tensor()``)."""

    loss_sum: float = 0.0  # the micro-batches' losses
    micro_batches: float = 0.0
    samples: float = 0.0
    audio_s: float = 0.0
    tokens: float = 0.0  # transcript tokens
    encoder_frames: float = 0.0
    decoder_positions: float = 0.0
    wait_s: float = 0.0  # spent waiting for the loader
    model_flops: float = 0.0  # forward + backward (tasks.flops)

    def add(self, other: Window) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + float(getattr(other, f.name)))

    def to_tensor(self):
        """(9,) float64, in field order."""
        import torch

        return torch.tensor([getattr(self, f.name) for f in dataclasses.fields(self)], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: Any) -> Window:
        return cls(*(float(v) for v in values.tolist()))

    def rates(
        self, elapsed: float, world: int, peak: float | None, n_params: int, n_encoder: int
    ) -> dict[str, float]:
        """The record's mean loss and throughputs over ``elapsed`` seconds of ``world`` processes;
        ``mfu`` / ``mfu_6n`` where the GPU's ``peak`` FLOP/s is known."""
        r = {
            "loss": self.loss_sum / max(self.micro_batches, 1),
            "samples_per_s": self.samples / elapsed,
            "audio_s_per_s": self.audio_s / elapsed,
            "tokens_per_s": self.tokens / elapsed,
            "encoder_frames_per_s": self.encoder_frames / elapsed,
            "decoder_positions_per_s": self.decoder_positions / elapsed,
            # share of the ranks' wall time spent waiting for batches: ~0 = the loader keeps up
            "data_wait_frac": self.wait_s / (world * elapsed),
            "model_tflops": self.model_flops / elapsed / world / 1e12,  # per process
        }
        if peak:
            r["mfu"] = self.model_flops / elapsed / (world * peak)
            flops_6n = 6.0 * (
                n_encoder * r["encoder_frames_per_s"] + (n_params - n_encoder) * r["decoder_positions_per_s"]
            )
            r["mfu_6n"] = flops_6n / (world * peak)
        return r


def whisper_label_count(target_ids: Any, decoder_start: int) -> int:
    """Stage 1: the labels Whisper's loss is the mean over -- each example's ids after the
    decoder-start token, which ``llmasr.model.whisper_labels`` drops (prefix and <|endoftext|>
    included).  Also the positions Whisper's decoder runs on (the labels shifted right)."""
    return sum(len(t) - (1 if len(t) and t[0] == decoder_start else 0) for t in target_ids)


class StepCounter:
    """What a batch counts for in one stage: the target positions its loss is the mean over, its
    transcript tokens, the encoder frames and decoder positions the model runs on, and its model
    FLOPs.  ``module``: the WhisperStage1Head (stage 1) or LLMASR being trained; ``flops``:
    ``tasks.flops.step_flops(module, stage)``; ``decoder_start`` and ``extra_tokens`` (Whisper's
    ids around each transcript): stage 1; ``encoder_cache``: stages 2 and 3, where it is used."""

    def __init__(
        self,
        stage: int,
        module: Any,
        flops: Any,
        decoder_start: int | None = None,
        extra_tokens: int = 0,
        encoder_cache: Any = None,
    ) -> None:
        self.stage, self.module, self.flops = stage, module, flops
        self.decoder_start, self.extra_tokens, self.encoder_cache = decoder_start, extra_tokens, encoder_cache
        self.logit_rows = 0
        self.speech_lengths: list[int] = []

    def saw(self, out: Any) -> None:
        """Stages 2 and 3: what the forward just ran (an ``LLMASROutput``)."""
        self.logit_rows = out.logits.shape[0] * out.logits.shape[1]  # (B, K, V): the scored columns only
        self.speech_lengths = out.speech_lengths.tolist()  # what the LLM read: 0 on CTC-only steps

    def scored(self, batch: dict[str, Any]) -> int:
        """Target positions the batch's loss is the mean over (validation weights batches by it)."""
        if self.stage == 1:
            return whisper_label_count(batch["target_ids"], self.decoder_start)
        return batch["n_tokens"] + len(batch["keys"])  # transcript tokens + EOS per example

    def tokens(self, batch: dict[str, Any]) -> int:
        """Transcript tokens: stage 1's ids less the start, prefix and <|endoftext|> around each."""
        if self.stage == 1:
            return sum(max(0, len(t) - self.extra_tokens) for t in batch["target_ids"])
        return batch["n_tokens"]

    def lengths(self, batch: dict[str, Any]) -> tuple[list[int], list[int]]:
        """Per example: the encoder frames and decoder positions the model runs on (no padding)."""
        enc = [(int(n) - 1) // 2 + 1 for n in batch["feature_lengths"]]  # mel frames / 2, rounded up
        if self.stage == 1:  # Whisper's decoder runs on its labels shifted right: one position each
            return enc, [
                len(t) - (1 if len(t) and t[0] == self.decoder_start else 0) for t in batch["target_ids"]
            ]
        m = self.module
        prompt = len(m.prompt.prefix_ids) + len(m.prompt.suffix_ids)
        if m.adapter.ctc:  # the LLM read the CTC-compressed frames (none on a CTC-only step)
            return enc, [
                s + prompt + len(t) + 1 if s else 0 for s, t in zip(self.speech_lengths, batch["target_ids"])
            ]
        # + EOS
        return enc, [e // m.adapter.k + prompt + len(t) + 1 for e, t in zip(enc, batch["target_ids"])]

    def model_flops(self, enc: list[int], pos: list[int]) -> float:
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

    def window(self, loss: float, batch: dict[str, Any], wait_s: float) -> Window:
        """One micro-batch's part of the log window."""
        enc, pos = self.lengths(batch)
        return Window(loss, 1, len(batch["keys"]), batch["audio_s"], self.tokens(batch), sum(enc), sum(pos),
                      wait_s, self.model_flops(enc, pos))  # fmt: skip


def fingerprints(module: Any) -> dict[str, str]:
    """A hash of each parameter's bytes, by name."""
    import hashlib

    import torch

    out = {}
    for name, p in module.named_parameters():
        data = p.detach().to("cpu").contiguous().flatten().view(torch.uint8).numpy().tobytes()
        out[name] = hashlib.sha1(data).hexdigest()
    return out


def param_changes(before: dict[str, str], after: dict[str, str], trainable: list[str]) -> dict[str, Any]:
    """What training did to the parameters (``fingerprints`` before and after): the frozen ones
    that changed and the trained ones that did not (both should be empty)."""
    trained = set(trainable)
    return {
        "frozen": sum(1 for n in after if n not in trained),
        "trained": len(trained),
        "frozen_changed": sorted(n for n in after if n not in trained and after[n] != before[n]),
        "trained_unchanged": sorted(n for n in trained if after[n] == before[n]),
    }
