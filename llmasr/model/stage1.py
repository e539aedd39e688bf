"""Stage 1: the encoder trained with Whisper's own decoder as the head (``WhisperStage1Head``,
``stage1_loss``), through the same encoder forward ``LLMASR`` uses; ``whisper_labels`` makes its
labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import WhisperForConditionalGeneration

from llmasr.model.config import local_source
from llmasr.model.encoder import SpeechEncoder, encode_whisper
from llmasr.model.prompt import IGNORE_INDEX


def whisper_labels(token_ids: Sequence[Sequence[int]], decoder_start_token_id: int) -> torch.Tensor:
    """Per-example Whisper token ids (e.g. ``[<|startoftranscript|>, <|notimestamps|>, text..,
    <|endoftext|>]``) -> labels (B, L) padded with -100.  A leading decoder-start token is
    dropped: ``WhisperForConditionalGeneration`` prepends it when shifting labels right."""
    rows = [list(r[1:]) if len(r) and r[0] == decoder_start_token_id else list(r) for r in token_ids]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [IGNORE_INDEX] * (width - len(r)) for r in rows], dtype=torch.long)


def stage1_loss(
    whisper: WhisperForConditionalGeneration,
    input_features: torch.Tensor,
    labels: torch.Tensor,
    feature_lengths: torch.Tensor | None = None,
    trim_padding: bool = True,
    mask_padding: bool = True,
) -> torch.Tensor:
    """Whisper's own seq2seq CE with the encoder run by ``encode_whisper`` (the LLMASR path).

    ``labels`` (B, L): -100 padded (see ``whisper_labels``).  Whisper's decoder has no encoder
    mask, so it cross-attends to all T/2 frames of the batch (as stock Whisper attends to its
    30 s of padding); batch similar lengths together.
    """
    hidden, _ = encode_whisper(
        whisper.get_encoder(), input_features, feature_lengths, trim_padding, mask_padding
    )
    out = whisper(encoder_outputs=(hidden,), labels=labels.to(hidden.device))  # hidden (B, T/2, D)
    return out.loss


class WhisperStage1Head(nn.Module):
    """Stage 1: a full ``WhisperForConditionalGeneration`` whose decoder is the training head.

    ``speech_encoder()`` shares the very encoder module being trained; ``save_pretrained`` writes
    a normal Whisper checkpoint that ``SpeechEncoder.from_pretrained`` (stage 2) loads.
    """

    def __init__(
        self, whisper: WhisperForConditionalGeneration, trim_padding: bool = True, mask_padding: bool = True
    ) -> None:
        super().__init__()
        self.whisper = whisper
        self.trim_padding = trim_padding
        self.mask_padding = mask_padding

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, **kwargs: Any
    ) -> WhisperStage1Head:
        return cls(
            WhisperForConditionalGeneration.from_pretrained(str(local_source(path)), dtype=dtype), **kwargs
        )

    def speech_encoder(self) -> SpeechEncoder:
        return SpeechEncoder(self.whisper.get_encoder(), self.trim_padding, self.mask_padding)

    def forward(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor | None, labels: torch.Tensor
    ) -> torch.Tensor:
        return stage1_loss(
            self.whisper, input_features, labels, feature_lengths, self.trim_padding, self.mask_padding
        )

    def save_pretrained(self, path: str | Path) -> Path:
        self.whisper.save_pretrained(str(path))
        return Path(path)
