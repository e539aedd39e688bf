"""The ``llmasr`` evaluation system: the LLM-ASR model of a stage checkpoint (stage 2 or 3).

Loaded by ``tasks.checkpoints.load_llmasr`` (a stage-3 LoRA folded into the LLM weights in memory
when ``eval.merge_lora``), decoded in batches by beam search (``eval.num_beams``, default 8; 1 is
greedy) with no repeated ``eval.no_repeat_ngram_size``-grams, or jointly with the CTC head
(``eval.ctc_weight``, ``llmasr.ctc_prefix``).  Features are Whisper log-mel of each piece *as long as
it is* (``llmasr.model.log_mel``, no padding to 30 s), padded with zero frames to the longest
piece of the batch and passed with their lengths: the model runs the encoder on the real length and
masks the padding (``llmasr.model``).  Each row stops at its own new-token bound
(``tasks.decode.piece_bound``), so a piece's hypothesis does not depend on the pieces batched with it.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmasr.audio import SAMPLE_RATE
from llmasr.config import EvalConfig
from llmasr.model import log_mel
from tasks.decode import System, piece_bound, torch_device
from tasks.decode_audio import pad_features

log = logging.getLogger("llmasr.decode")


class LLMASRSystem(System):
    """The LLM-ASR model of one stage checkpoint folder (stage 2 or 3)."""

    def __init__(self, name: str, stage_dir: str | Path, settings: EvalConfig) -> None:
        super().__init__(name)
        self.stage_dir = Path(stage_dir)
        self.settings = settings
        self.model = None

    def identity(self) -> dict[str, Any]:
        from tasks.checkpoints import read_stage
        from tasks.train_ckpt import CKPT_DIR
        from tasks.whisper_hf import _file_stamps

        s = self.settings
        stage = read_stage(self.stage_dir)
        return {
            "name": self.name,
            "kind": "llmasr",
            # what was trained (its key and run), and its exports' files, not where they lie: a stage
            # adopted into an ablation's store (hard links) is the same system
            "stage": stage,
            "exports": {
                d.name: _file_stamps(d)
                for d in sorted(self.stage_dir.iterdir())
                if d.is_dir() and d.name != CKPT_DIR
            },
            "decode": [
                s.num_beams,
                s.no_repeat_ngram_size,
                s.tokens_per_second,
                s.min_new_tokens,
                s.max_new_tokens,
            ],
            "merge_lora": s.merge_lora,
            **({"ctc_weight": s.ctc_weight} if s.ctc_weight else {}),  # only when on
        }

    def load(self) -> None:
        from llmasr.model import allow_cudnn_attention, has_lora, merge_lora
        from tasks.checkpoints import load_llmasr

        t0 = time.perf_counter()
        allow_cudnn_attention(self.settings.cudnn_attention)
        self.device = torch_device(self.settings.device)
        self.model = load_llmasr(self.stage_dir, device=self.device)
        merged = ""
        if self.settings.merge_lora and has_lora(self.model):
            merge_lora(self.model)  # the adapters' B A folded into W: one matmul per projection, not three
            merged = ", LoRA merged in memory"
        log.info(
            "%s: loaded %s on %s in %.1f s%s",
            self.name,
            self.stage_dir,
            self.device,
            time.perf_counter() - t0,
            merged,
        )

    def close(self) -> None:
        self.model = None
        gc.collect()
        if getattr(self, "device", "cpu") == "cuda":
            import torch

            torch.cuda.empty_cache()

    def decode(self, audios: Sequence[np.ndarray]) -> list[str]:
        import torch

        if self.model is None:
            self.load()
        model = self.model
        enc = model.encoder
        feats = [log_mel(a, enc.num_mel_bins, enc.max_frames) for a in audios]
        x, lengths = pad_features(feats)  # (B, M, T), (B,)
        bounds = [piece_bound(self.settings, len(a) / SAMPLE_RATE) for a in audios]
        dtype = next(model.adapter.parameters()).dtype
        ids = model.generate_ids(
            torch.from_numpy(x).to(self.device, dtype),
            torch.from_numpy(lengths).to(self.device),
            max_new_tokens=bounds,  # one per piece: each row ends at its own bound (RowBound)
            num_beams=self.settings.num_beams,
            no_repeat_ngram_size=self.settings.no_repeat_ngram_size,
            ctc_weight=self.settings.ctc_weight,
        )  # (B, N) new tokens only, N <= max(bounds) + 1
        stop = {model.eos_id, model.pad_id}
        rows = []
        for row, bound in zip(ids.tolist(), bounds):
            row = row[:bound]  # the forced end token after `bound` tokens, and pads past it
            n = next((i for i, t in enumerate(row) if t in stop), len(row))
            rows.append(row[:n])
            self.tokens += n
        return [t.strip() for t in model.tokenizer.batch_decode(rows, skip_special_tokens=True)]
