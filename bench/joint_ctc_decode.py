"""N-WER and decoding time of an LLM-ASR checkpoint with a CTC head, by joint CTC/LLM decoding weight.

    .venv/bin/python bench/joint_ctc_decode.py --stage-dir runs/small/checkpoints/stage3 \
        --manifest runs/small/small-corpus/heldout/manifest.jsonl --weights 0,0.3,0.5 \
        --out bench/results/joint_ctc_decode.json

Each weight decodes the same utterances with the same settings (greedy unless ``--beams``, the
profile's bounds); ``ctc_head`` is the CTC head alone (greedy: best class per frame, runs merged,
blanks dropped).  Times are reported as ratios to weight 0 measured in the same run (give 0 first;
it also pays the first batch's warm-up).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from llmasr.audio import SAMPLE_RATE
from llmasr.config import EvalConfig
from llmasr.model import log_mel
from llmasr.text import normalize, word_errors
from tasks.decode_audio import pad_features, read_audio
from tasks.llmasr_decode import LLMASRSystem


def read_manifest(path: Path, limit: int | None) -> list[tuple[str, np.ndarray]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    return [(r["text"], read_audio(path.parent / r["audio"])) for r in rows]


def n_wer(refs: list[str], hyps: list[str]) -> dict[str, float]:
    errs = [word_errors(normalize(r), normalize(h)) for r, h in zip(refs, hyps)]
    words = sum(e.ref_words for e in errs)
    s, d, i = (sum(getattr(e, k) for e in errs) for k in ("substitutions", "deletions", "insertions"))
    return {"n_wer": round((s + d + i) / words, 4), "sub": s, "del": d, "ins": i, "words": words}


def examples(refs: list[str], hyps: list[str]) -> list[tuple[str, str]]:
    return list(zip(refs, hyps))[:: max(1, len(refs) // 6)]


def ctc_head_hyps(system: LLMASRSystem, audios: list[np.ndarray], batch: int) -> list[str]:
    model = system.model
    out = []
    for start in range(0, len(audios), batch):
        chunk = audios[start : start + batch]
        enc = model.encoder
        x, lengths = pad_features([log_mel(a, enc.num_mel_bins, enc.max_frames) for a in chunk])
        with torch.no_grad():
            dtype = next(model.adapter.parameters()).dtype
            x = torch.from_numpy(x).to(system.device, dtype)
            _, _, (logits, frames) = model._speech(x, torch.from_numpy(lengths).to(system.device))
        blank = logits.shape[-1] - 1
        tokens = model.adapter.ctc_tokens
        for row, n in zip(logits.argmax(-1).tolist(), frames.tolist()):
            labels, prev = [], None
            for c in row[:n]:
                if c != blank and c != prev:
                    labels.append(int(tokens[c]) if tokens is not None else c)
                prev = c
            out.append(model.tokenizer.decode(labels, skip_special_tokens=True).strip())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage-dir", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--weights", default="0,0.3,0.5")
    ap.add_argument("--beams", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    data = read_manifest(Path(args.manifest), args.limit)
    data.sort(key=lambda r: len(r[1]))  # batches of similar length, as evaluation plans them
    refs, audios = [r[0] for r in data], [r[1] for r in data]
    audio_s = sum(len(a) for a in audios) / SAMPLE_RATE
    results = {}
    base = None
    for w in [float(x) for x in args.weights.split(",")]:
        settings = EvalConfig(num_beams=args.beams, batch_size=args.batch, device="cpu", ctc_weight=w)
        system = LLMASRSystem(f"w={w}", args.stage_dir, settings)
        system.load()
        t0 = time.perf_counter()
        hyps = []
        for start in range(0, len(audios), args.batch):
            hyps += system.decode(audios[start : start + args.batch])
        dt = time.perf_counter() - t0
        base = dt if w == 0.0 else base
        results[f"ctc_weight={w}"] = {
            **n_wer(refs, hyps),
            "decode_s": round(dt, 1),
            "time_ratio": round(dt / base, 2) if base else None,  # to weight 0 (list it first)
            "rtf": round(dt / audio_s, 3),
            "examples": examples(refs, hyps),
        }
        print(w, {k: v for k, v in results[f"ctc_weight={w}"].items() if k != "examples"}, flush=True)
        if w == 0.0:
            hyps = ctc_head_hyps(system, audios, args.batch)
            results["ctc_head"] = {**n_wer(refs, hyps), "examples": examples(refs, hyps)}
            print("ctc_head", {k: v for k, v in results["ctc_head"].items() if k != "examples"}, flush=True)
        system.close()
    record = {
        "stage_dir": str(Path(args.stage_dir).resolve()),
        "manifest": args.manifest,
        "utterances": len(refs),
        "audio_s": round(audio_s, 1),
        "beams": args.beams,
        "results": results,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
