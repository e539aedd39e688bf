"""Frozen encoder outputs kept in memory, per sample, for stages 2 and 3 (``train.cache_encoder_outputs``).

    cache = EncoderCache(model.encoder)
    hidden, lengths = cache(batch["keys"], features, feature_lengths)   # (B, T', D_enc), (B,)
    model(features, feature_lengths, targets, encoded=(hidden, lengths))

The encoder is frozen in stages 2 and 3, so an utterance's encoder output is the same every epoch:
the first time a sample key is seen its rows are encoded (under no_grad) and kept, trimmed to the
valid frames; afterwards the batch is assembled from the kept rows.  Batches are re-bucketed every
epoch, so rows are kept per sample, not per batch.  A row's valid frames do not depend on what it
was batched with (the trimmed encoder masks the padding; its convolutions see zeros past the end
either way), so a cached step computes what an uncached one does, up to float rounding.

Cost: memory, ~T/2 x d_model x 4 bytes per utterance (Whisper base, 512 wide: ~370 MB per hour of
speech; large, 1,280 wide: ~920 MB per hour), in each training process, for the run's samples
(train and validation).  Worth it where the encoder is a large share of a step: a CPU, many epochs,
a small LLM.  At the paper's scale (190k hours, one epoch) it stays off.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class EncoderCache:
    """Sample key -> the frozen encoder's valid output rows (T_i, D_enc)."""

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.rows: dict[str, torch.Tensor] = {}
        self.fresh: list[bool] = []  # the last call: which rows were encoded now (not read from the cache)

    @property
    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.rows.values())

    def __call__(
        self, keys: Sequence[str], features: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """keys (B,), features (B, M, T), lengths (B,) mel frames -> encoder output (B, T', D_enc)
        zero-padded past each row's length, and the lengths (B,) in encoder frames."""
        if len(keys) != features.shape[0]:
            raise ValueError(f"{len(keys)} keys for a batch of {features.shape[0]}")
        if len(set(keys)) != len(keys):
            raise ValueError(
                "duplicate sample keys in one batch: "
                f"{sorted(k for k in set(keys) if list(keys).count(k) > 1)}"
            )
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        if missing:
            index = torch.tensor(missing, dtype=torch.long, device=features.device)
            sub_lengths = lengths.index_select(0, index)  # (B',)
            sub = features.index_select(0, index)[..., : int(sub_lengths.max())]  # (B', M, T'')
            with torch.no_grad():
                hidden, hidden_lengths = self.encoder(sub, sub_lengths)  # (B', T''/2, D_enc), (B',)
            for j, i in enumerate(missing):
                self.rows[keys[i]] = hidden[j, : int(hidden_lengths[j])].detach().clone()  # (T_i, D_enc)
        encoded_now = set(missing)
        self.fresh = [i in encoded_now for i in range(len(keys))]
        rows = [self.rows[k] for k in keys]
        # (B,)
        out_lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long, device=features.device)
        # (B, max T_i, D_enc), (B,)
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), out_lengths
