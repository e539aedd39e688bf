"""The speech encoder: any Whisper checkpoint's encoder (80 or 128 mel bins, from its config).

    input_features (B, M, T)  --SpeechEncoder-->  (B, T/2, D_enc)          [conv2 has stride 2]

``trim_padding=True`` runs T <= 2*max_source_positions frames as they are and slices the
positional table to T/2 (as SLAM-LLM does): no compute on 30 s of padding.  Frames past each
example's length are zeroed and masked out of self-attention, so an example gives the same output
alone or in a padded batch.  ``trim_padding=False`` pads to 2*max_source_positions and runs HF's
stock ``WhisperEncoder.forward``.  ``save_encoder`` exports it as a Whisper checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import WhisperConfig, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from llmasr.model.config import local_source


def encoder_output_lengths(feature_lengths: torch.Tensor) -> torch.Tensor:
    """Mel frames -> encoder frames: conv2 (kernel 3, stride 2, padding 1) gives ceil(L / 2)."""
    return (feature_lengths - 1) // 2 + 1


def frame_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool, True on valid frames."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def _check_features(encoder: WhisperEncoder, features: torch.Tensor, lengths: torch.Tensor) -> None:
    max_frames = 2 * encoder.config.max_source_positions
    if features.dim() != 3:
        raise ValueError(
            f"input_features must be (batch, mel_bins, frames), got shape {tuple(features.shape)}"
        )
    if features.shape[1] != encoder.config.num_mel_bins:
        raise ValueError(
            f"this Whisper encoder expects {encoder.config.num_mel_bins} mel bins, got {features.shape[1]}: "
            "compute features with the feature extractor of the same checkpoint"
        )
    if features.shape[-1] > max_frames:
        raise ValueError(
            f"input has {features.shape[-1]} mel frames, more than this encoder's "
            f"2*max_source_positions = {max_frames} ({max_frames / 100:.0f} s): cut the audio shorter"
        )
    if lengths.shape != (features.shape[0],):
        raise ValueError(
            f"feature_lengths must have shape ({features.shape[0]},), got {tuple(lengths.shape)}"
        )
    if bool((lengths < 1).any()) or bool((lengths > features.shape[-1]).any()):
        raise ValueError(f"feature_lengths must be in [1, {features.shape[-1]}], got {lengths.tolist()}")


def encode_whisper(
    encoder: WhisperEncoder,
    input_features: torch.Tensor,
    feature_lengths: torch.Tensor | None = None,
    trim_padding: bool = True,
    mask_padding: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a HF ``WhisperEncoder``; returns hidden states (B, T'/2, D_enc) and valid lengths (B,).

    ``input_features`` (B, M, T): log-mel features; ``feature_lengths`` (B,): valid frames per
    example (default: all T).  With ``trim_padding`` T' is T rounded up to even; otherwise
    T' = 2*max_source_positions and the stock HF forward runs.
    """
    batch, _, frames = input_features.shape
    if feature_lengths is None:
        feature_lengths = torch.full((batch,), frames, dtype=torch.long, device=input_features.device)
    feature_lengths = feature_lengths.to(device=input_features.device, dtype=torch.long)
    _check_features(encoder, input_features, feature_lengths)
    out_lengths = encoder_output_lengths(feature_lengths)  # (B,)
    if trim_padding:
        hidden = _trimmed_forward(encoder, input_features, feature_lengths, mask_padding)
    else:
        hidden = _padded_forward(encoder, input_features, feature_lengths)
    return hidden, out_lengths


def _padded_forward(encoder: WhisperEncoder, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Stock path: pad (B, M, T) to (B, M, 2*max_source_positions) -> (B, max_source_positions, D).

    The pad value is each example's minimum over its valid frames: Whisper's log-mel of silence
    is the clamp floor (max - 8 before scaling), i.e. what its feature extractor's zero padding gives.
    """
    full = 2 * encoder.config.max_source_positions
    valid = frame_mask(lengths, features.shape[-1])[:, None, :]  # (B, 1, T)
    floor = features.masked_fill(~valid, float("inf")).amin(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    features = torch.where(valid, features, floor)  # (B, M, T)
    features = torch.cat([features, floor.expand(-1, features.shape[1], full - features.shape[-1])], dim=-1)
    return encoder(features).last_hidden_state  # (B, full/2, D)


def _trimmed_forward(
    encoder: WhisperEncoder, features: torch.Tensor, lengths: torch.Tensor, mask_padding: bool
) -> torch.Tensor:
    """Our own forward over the HF encoder's submodules (HF's forward insists on 3000 frames)."""
    if features.shape[-1] % 2:
        # Odd T: pad to T+1 with a zero feature frame (the conv stack gives ceil(T/2) frames either
        # way).  The pad makes a solo odd-length example see what it sees inside a longer batch,
        # where the frame after its end is a zeroed padding frame too: conv1 turns that zero frame
        # into gelu(bias) (not zero), which reaches the example's last output frame through conv2.
        features = F.pad(features, (0, 1))  # (B, M, T+1)
    frames = features.shape[-1]
    # Zero frames past each length: the convs then see what a solo run of that example sees.
    features = features * frame_mask(lengths, frames)[:, None, :].to(features.dtype)  # (B, M, T)
    hidden = F.gelu(encoder.conv1(features))  # (B, D, T)
    hidden = F.gelu(encoder.conv2(hidden))  # (B, D, T/2)
    hidden = hidden.permute(0, 2, 1)  # (B, T/2, D)
    steps = hidden.shape[1]
    hidden = hidden + encoder.embed_positions.weight[:steps].to(hidden.dtype)  # positions sliced to T/2
    hidden = F.dropout(hidden, p=encoder.dropout, training=encoder.training)

    out_lengths = encoder_output_lengths(lengths)  # (B,)
    attn_mask = None
    if mask_padding and bool((out_lengths < steps).any()):
        keep = frame_mask(out_lengths, steps)[:, None, None, :]  # (B, 1, 1, T/2): keys only
        attn_mask = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
        attn_mask = attn_mask.masked_fill(~keep, torch.finfo(hidden.dtype).min)  # additive
        impl = getattr(encoder.config, "_attn_implementation", "eager") or "eager"
        if impl not in ("eager", "sdpa"):
            raise ValueError(
                f"padding masks need attn_implementation 'eager' or 'sdpa', encoder uses {impl!r}; "
                "set mask_padding=False or batch equal lengths"
            )

    for layer in encoder.layers:
        if encoder.training and encoder.layerdrop > 0.0 and torch.rand([]) < encoder.layerdrop:
            continue  # LayerDrop, as in HF's forward
        hidden = layer(hidden, attn_mask)  # (B, T/2, D)
    return encoder.layer_norm(hidden)  # (B, T/2, D)


class SpeechEncoder(nn.Module):
    """A Whisper checkpoint's encoder; ``forward`` -> (hidden (B, T/2, D_enc), lengths (B,))."""

    def __init__(self, encoder: WhisperEncoder, trim_padding: bool = True, mask_padding: bool = True) -> None:
        super().__init__()
        if not isinstance(encoder, WhisperEncoder):
            raise TypeError(f"expected a transformers WhisperEncoder, got {type(encoder).__name__}")
        self.encoder = encoder
        self.trim_padding = trim_padding
        self.mask_padding = mask_padding

    @property
    def config(self) -> WhisperConfig:
        return self.encoder.config

    @property
    def d_model(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def num_mel_bins(self) -> int:
        return int(self.encoder.config.num_mel_bins)

    @property
    def max_frames(self) -> int:
        """Mel frames of Whisper's 30 s window (2 * max_source_positions)."""
        return 2 * int(self.encoder.config.max_source_positions)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, **kwargs: Any
    ) -> SpeechEncoder:
        """Load the encoder of a WhisperModel / WhisperForConditionalGeneration checkpoint.

        An encoder-only export (stage 1's ``encoder/``) has no decoder weights; transformers would
        list every decoder tensor as MISSING, so its load report is silenced here."""
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            whisper = WhisperModel.from_pretrained(str(local_source(path)), dtype=dtype)
        finally:
            hf_logging.set_verbosity(level)
        return cls(whisper.get_encoder(), **kwargs)  # the decoder is dropped with `whisper`

    @classmethod
    def from_config(cls, config: WhisperConfig | dict[str, Any], **kwargs: Any) -> SpeechEncoder:
        """A randomly initialised encoder (tests)."""
        if isinstance(config, dict):
            config = WhisperConfig(**config)
        return cls(WhisperEncoder(config), **kwargs)

    def forward(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_whisper(
            self.encoder, input_features, feature_lengths, self.trim_padding, self.mask_padding
        )


def save_encoder(encoder: SpeechEncoder | WhisperEncoder, path: str | Path) -> Path:
    """Export the encoder as a Whisper checkpoint (config.json + model.safetensors, WhisperModel
    key names).  ``WhisperModel``/``WhisperForConditionalGeneration.from_pretrained`` load it; the
    decoder, absent here, is freshly initialised by them (only the encoder is meant to be used).
    A full Whisper (stage 1) is better saved with ``WhisperStage1Head.save_pretrained``."""
    module = encoder.encoder if isinstance(encoder, SpeechEncoder) else encoder
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = WhisperConfig.from_dict(module.config.to_dict())
    config.architectures = ["WhisperModel"]
    config.save_pretrained(str(path))
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path
