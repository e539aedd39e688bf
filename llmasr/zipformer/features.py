"""80-dim Kaldi fbank of 16 kHz audio (kaldi-native-fbank), as icefall's recipes compute it (lhotse's
``Fbank``: 25 ms Povey window, 10 ms hop, no dither, ``snip_edges=False``, waveform in [-1, 1]).

    from llmasr.zipformer.features import fbank
    feats = fbank(audio)                # (T, 80) float32, T = round(samples / 160)
"""

from __future__ import annotations

import numpy as np
import torch

from llmasr.audio import SAMPLE_RATE

NUM_BINS = 80
# padding value of a batch's shorter utterances: log(1e-10), lhotse's LOG_EPSILON, below any real
# log-energy.  Zero padding (a log-energy of 1, louder than quiet speech) lets the convolutions before
# the padding mask read an utterance's padding: a tiny set can then be memorised by its lengths.
LOG_EPS = -23.0259


def _options(num_bins: int):
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = (
        0.0  # deterministic: the same audio gives the same features in training and decoding
    )
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = num_bins
    return opts


def fbank(audio: np.ndarray | torch.Tensor, num_bins: int = NUM_BINS) -> torch.Tensor:
    """(samples,) float 16 kHz -> (T, num_bins) float32 log-mel filterbank."""
    import kaldi_native_fbank as knf

    samples = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
    extractor = knf.OnlineFbank(_options(num_bins))
    extractor.accept_waveform(SAMPLE_RATE, samples)
    extractor.input_finished()
    n = extractor.num_frames_ready
    if n == 0:
        return torch.zeros(0, num_bins)
    return torch.from_numpy(np.stack([extractor.get_frame(i) for i in range(n)]))  # (T, num_bins)


def fbank_batch(audios: list[np.ndarray], num_bins: int = NUM_BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T_max, num_bins) features padded with ``LOG_EPS`` and their (B,) frame counts."""
    feats = [fbank(a, num_bins) for a in audios]
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    out = torch.full((len(feats), int(lengths.max()) if feats else 0, num_bins), LOG_EPS)  # (B, T_max, bins)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, lengths
