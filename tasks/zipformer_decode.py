"""The ``zipformer`` evaluation system: the run's trained Zipformer-Transducer
(``<work_dir>/checkpoints/zipformer``), decoded by modified beam search.

    from tasks.zipformer_decode import ZipformerSystem
    system = ZipformerSystem("zipformer", "runs/demo/checkpoints/zipformer", EvalConfig())
    system.decode([audio])          # 16 kHz float32 pieces -> texts

Each piece is encoded alone (no padding: a piece decodes the same whatever it is batched with) from
its 80-dim Kaldi fbank, then searched with beam ``zipformer.beam`` (``decode.json`` in the checkpoint
folder, written by the zipformer flow from the config; 4 without it).  ``eval.num_beams`` and the
token bounds are the autoregressive decoders' settings; a transducer emits at most one token per
encoder frame (25 per second), so it needs no bound.  ``eval.device`` picks the device.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmasr.config import EvalConfig
from tasks.decode import System, torch_device

log = logging.getLogger("llmasr.zipformer_decode")
DEFAULT_BEAM = 4


def zipformer_dir(work_dir: str | Path) -> Path:
    return Path(work_dir) / "checkpoints" / "zipformer"


def read_model_json(folder: str | Path) -> dict[str, Any] | None:
    """The finished checkpoint's record (tasks/zipformer_train.py), or None while training has not
    completed."""
    path = Path(folder) / "model.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def decode_beam(folder: str | Path) -> int:
    path = Path(folder) / "decode.json"
    if path.is_file():
        return int(json.loads(path.read_text(encoding="utf-8"))["beam"])
    return DEFAULT_BEAM


class ZipformerSystem(System):
    def __init__(self, name: str, folder: str | Path, settings: EvalConfig) -> None:
        super().__init__(name)
        self.folder = Path(folder)
        self.settings = settings
        self.model = None
        self.bpe = None

    def identity(self) -> dict[str, Any]:
        from tasks.whisper_hf import _file_stamps

        record = read_model_json(self.folder) or {}
        return {
            "name": self.name,
            "kind": "zipformer",
            "folder": str(self.folder.resolve()),
            "key": record.get("key"),
            "steps": record.get("steps"),
            "files": _file_stamps(self.folder),
            "beam": decode_beam(self.folder),
        }

    def load(self) -> None:
        from tasks.zipformer_train import load_zipformer

        t0 = time.perf_counter()
        self.device = torch_device(self.settings.device)
        self.model, self.bpe = load_zipformer(self.folder, device=self.device)
        self.beam = decode_beam(self.folder)
        log.info(
            "%s: loaded %s on %s in %.1f s", self.name, self.folder, self.device, time.perf_counter() - t0
        )

    def close(self) -> None:
        self.model = None

    def decode(self, audios: Sequence[np.ndarray]) -> list[str]:
        import torch

        from llmasr.zipformer.features import fbank
        from llmasr.zipformer.search import modified_beam_search

        if self.model is None:
            self.load()
        out = []
        for audio in audios:
            feats = fbank(audio).to(self.device)  # (T, 80)
            if feats.shape[0] < 16:  # under ~0.16 s: too short for the subsampling convolutions
                out.append("")
                continue
            with torch.no_grad():
                enc, enc_lens = self.model.encode(
                    feats[None], torch.tensor([feats.shape[0]], device=self.device)
                )
            ids = modified_beam_search(self.model, enc[0, : int(enc_lens[0])], self.beam)  # (T', C) frames
            self.tokens += len(ids)
            out.append(self.bpe.decode(ids))
        return out
