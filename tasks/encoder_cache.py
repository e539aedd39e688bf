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

Stage 2 leaves its rows on disk for stage 3 (and for every ablation variant over the same encoder
and shards): ``<checkpoints>/encoder_outputs/<key>.pt``, beside the stage folders, where ``key``
(``cache_key``) hashes the encoder's weights as the engine holds them (dtype included), the
feature and trimming settings, and the shard index (which holds each shard's sha256).  A file whose
key differs is never read; delete the folder at any time (it is only a cache).  Each process writes
and reads its own file (``.rank<r>of<w>`` where several train).

Cost: memory, ~T/2 x d_model x 4 bytes per utterance (Whisper base, 512 wide: ~370 MB per hour of
speech; large, 1,280 wide: ~920 MB per hour), in each training process, for the run's samples
(train and validation), and the same on disk once per encoder and shards.  Worth it where the
encoder is a large share of a step: a CPU, many epochs, a small LLM.  At the paper's scale (190k
hours, one epoch) it stays off.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

CACHE_DIR = "encoder_outputs"  # beside the stage folders: <checkpoints>/encoder_outputs/


def cache_key(encoder: nn.Module, shard_index: str | Path, settings: Mapping[str, Any]) -> str:
    """What an utterance's encoder output depends on: the encoder's weights (bytes and dtypes, as
    they are after the engine cast them), ``settings`` (features, trimming), the shards' index."""
    h = hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    h.update(Path(shard_index).read_bytes())
    for name, tensor in encoder.state_dict().items():
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_path(stage_dir: str | Path, key: str, rank: int = 0, world: int = 1) -> Path:
    """The file a process of a stage in ``stage_dir`` reads and writes for ``key``."""
    suffix = "" if world == 1 else f".rank{rank}of{world}"
    return Path(stage_dir).parent / CACHE_DIR / f"{key}{suffix}.pt"


class EncoderCache:
    """Sample key -> the frozen encoder's valid output rows (T_i, D_enc)."""

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.rows: dict[str, torch.Tensor] = {}
        self.fresh: list[bool] = []  # the last call: which rows were encoded now (not read from the cache)
        self.encoded = 0  # rows encoded by this process (not loaded)
        self.key: str | None = None  # set by attach(): the rows' file and what it was written for
        self.path: Path | None = None

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
        self.encoded += len(missing)
        encoded_now = set(missing)
        self.fresh = [i in encoded_now for i in range(len(keys))]
        rows = [self.rows[k] for k in keys]
        # (B,)
        out_lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long, device=features.device)
        # (B, max T_i, D_enc), (B,)
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), out_lengths

    def attach(
        self,
        stage_dir: str | Path,
        shard_index: str | Path,
        settings: Mapping[str, Any],
        rank: int = 0,
        world: int = 1,
    ) -> int:
        """Find this process's file for the encoder's weights, ``settings`` and the shards (beside
        ``stage_dir``) and add the rows an earlier stage left there; returns how many."""
        self.key = cache_key(self.encoder, shard_index, settings)
        self.path = cache_path(stage_dir, self.key, rank, world)
        if not self.path.is_file():
            return 0
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        if saved.get("key") != self.key:
            return 0
        device = next(self.encoder.parameters()).device
        for k, row in saved["rows"].items():
            self.rows.setdefault(k, row.to(device))
        return len(saved["rows"])

    def persist(self) -> bool:
        """Write the rows to the attached file where this process encoded any (atomically: a reader
        sees the old file or the whole new one); True when written."""
        if not self.encoded or self.path is None:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save({"key": self.key, "rows": self.rows}, tmp)
        os.replace(tmp, self.path)
        return True
