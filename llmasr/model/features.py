"""Whisper's log-mel features, the one implementation training and decoding both use.

    mel = LogMel(80)                          # the Hann window and the filterbank built once
    feats = mel(torch_audio)                  # (n,) float32 at 16 kHz -> (80, n // 160)
    feats = log_mel(np_audio, 80, max_frames=3000)   # a decoded piece (numpy), any length

The numbers of ``transformers.WhisperFeatureExtractor(feature_size=n_mels)`` with
``padding="longest"`` (not padded to 30 s: the encoder runs on the real length), computed with
``torch.stft`` without its per-call overhead.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from llmasr.audio import SAMPLE_RATE

HOP_LENGTH = 160  # Whisper's mel hop: 100 frames per second
N_FFT = 400  # Whisper's STFT window: 25 ms


def mel_filters(n_mels: int) -> torch.Tensor:
    """Whisper's mel filterbank (n_mels, N_FFT // 2 + 1), float32: the same call as
    ``WhisperFeatureExtractor.__init__`` (slaney scale and norm, 0-8 kHz)."""
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )  # (201, n_mels) float64
    return torch.from_numpy(fb).to(torch.float32).T.contiguous()  # (n_mels, 201)


class LogMel:
    """Whisper log-mel features of one waveform, as long as it is (not padded to 30 s).

    The numbers of ``WhisperFeatureExtractor(feature_size=n_mels)(audio, padding="longest")`` (its
    torch path: centred reflect-padded STFT, |X|^2 without the last frame, mel, log10 clamped at
    1e-10, floor at max - 8, (x + 4) / 4) up to float rounding, without its per-call overhead: the
    Hann window and the filterbank are built once, and the power is re^2 + im^2 (no sqrt).
    """

    def __init__(self, n_mels: int) -> None:
        self.n_mels = n_mels
        self.window = torch.hann_window(N_FFT)  # (400,) periodic Hann, as WhisperFeatureExtractor's
        self.filters = mel_filters(n_mels)  # (M, 201)

    def __call__(self, audio: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(n,) float32 samples at 16 kHz, n > N_FFT // 2 -> (M, n // 160) float32, written to
        ``out`` when given (e.g. a row of a padded batch: no copy afterwards)."""
        spec = torch.stft(
            audio, N_FFT, HOP_LENGTH, window=self.window, center=True, pad_mode="reflect", return_complex=True
        )
        spec = spec[:, :-1]  # (201, n // 160) complex: the last frame dropped, as Whisper does
        power = spec.real.square() + spec.imag.square()  # (201, T)
        log_spec = torch.mm(self.filters, power).clamp_(min=1e-10).log10_()  # (M, T)
        log_spec.clamp_(min=log_spec.max() - 8.0)  # dynamic range: 8 decades (80 dB) below the peak
        return torch.div(log_spec.add_(4.0), 4.0, out=out)  # (M, T)


@functools.lru_cache(maxsize=4)
def feature_extractor(num_mel_bins: int):
    """Whisper's log-mel features for an encoder of ``num_mel_bins`` (80: large-v2, 128: large-v3):
    one ``LogMel`` per size, built once."""
    return LogMel(num_mel_bins)


def log_mel(audio: np.ndarray, num_mel_bins: int, max_frames: int | None = None) -> np.ndarray:
    """Whisper log-mel features of one piece as long as it is: (num_mel_bins, len(audio) // 160),
    at most ``max_frames`` frames.  Not padded to 30 s (the model's encoder runs on the real length)."""
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))  # (n,)
    n_frames = len(x) // HOP_LENGTH
    if len(x) <= N_FFT // 2:  # the STFT's reflect padding needs more than half a window
        x = torch.nn.functional.pad(x, (0, N_FFT // 2 + 1 - len(x)))
    feats = feature_extractor(num_mel_bins)(x)[:, :n_frames].numpy()  # (M, T)
    return feats[:, :max_frames] if max_frames else feats
