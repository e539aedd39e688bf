""".venv/bin/python bench/capacity.py [--hours 190000] [--kept-fraction 0.7] [--label-rtfx 100] [--mfu 0.35] \
[--mfu-zipformer 0.35] [--from-gpu-bench bench/results/gpu_train_bench.json] \
[--out bench/results/capacity.json]

Capacity table for the paper's run (arXiv 2502.16142: 190k hours of YouTube audio): GPU-hours and
wall-clock days on one 8x H100 node for labelling and each training stage, and the storage for
the raw audio, the shards and the checkpoints.  Pure arithmetic over named assumptions; each one
is printed under the table with its source: "measured here (command)", "published (where)",
"config (key)" or "assumed".  Nothing here needs a GPU; it runs in ~15 s on a CPU (most of it the
Zipformer-M forward the zipformer row counts).

Inputs (every one a flag; the defaults are the assumptions the table prints):

* labelling: GPU-h = hours / RTFx (``--label-rtfx``: audio seconds labelled per GPU-second by
  faster-whisper ``label.model``, batched, ``label.beam_size``); no GPU number has been measured
  yet, so the default is an extrapolation from faster-whisper's published GPU benchmark.
* training: kept hours (= hours x ``--kept-fraction``) x ``train.stageN.epochs`` (read through
  ``llmasr.config.load_config``, so ``--profile`` / ``--set`` apply) at a per-GPU throughput in
  audio-seconds/s, either given (``--audio-s-per-s 2=310``) or derived from FLOPs per audio
  second / (MFU x 989 TFLOP/s, H100 dense bf16).  FLOPs count each part by what the stage does
  with it: 6N per token where the weights train (forward 2N + activation gradients 2N + weight
  gradients 2N), 4N where frozen weights are back-propagated through (stage 1's Whisper decoder
  head; stage 2/3's LLM, which must pass gradients to the adapter / LoRA), 2N where a frozen part
  only runs forward (stage 2/3's encoder, under no_grad in llmasr/model/llmasr.py), plus attention
  (QK^T and AV; 3x forward when back-propagated).  Tokens per audio second: encoder 50 frames/s,
  adapter ``train.downsample_k``:1 -> 25/s into the LLM, text tokens = words/s x tokens/word,
  plus the prompt (chat template) and EOS per segment of the mean length.
* zipformer (the Zipformer-Transducer baseline, when ``zipformer.enabled``): kept hours x
  ``zipformer.epochs`` at forward FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
  model built from ``zipformer.*`` for one segment of ``--segment-s`` with U = segment x words/s x
  BPE pieces per word tokens (pieces per word measured by training the BPE on ``--bpe-shards``'
  transcripts), x3 for forward + backward, at ``--mfu-zipformer`` (default: the assumed ``--mfu``;
  bench/gpu_train_bench.py's MFU is the LLM-ASR's and is not applied to it).
* ``--from-gpu-bench bench/results/gpu_train_bench.json`` (written by bench/gpu_train_bench.py on a
  lent H100): the stage-3 MFU measured there, recounted with the FLOP rules above from its own
  parameters and frames/positions per second (its printed "6N" MFU over-counts frozen weights),
  replaces the assumed MFU of every stage that has no ``--mfu-stageN``/``--audio-s-per-s``.
* storage: FLAC bytes per hour measured here on ../shared/data/real_speech (converted as ingest
  does, with ffmpeg, and re-encoded as the shard writer does, with soundfile), tar + json overhead
  per sample measured on a shard index (``--shards``, default runs/demo/shards/index.json) when
  one exists; checkpoints from the parameter counts (fp32 exports, and DeepSpeed resumable
  checkpoints of the trainable parameters: bf16 weights + fp32 master + Adam m, v = 14 B each,
  the last 2 tags kept).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA H100 SXM datasheet (dense, no sparsity)
PCM16_MB_PER_HOUR = 16000 * 2 * 3600 / 1e6  # 115.2 MB/h: 16 kHz mono 16-bit
REAL_SPEECH = REPO.parent / "shared" / "data" / "real_speech"
DEMO_SHARDS = REPO / "runs" / "demo" / "shards" / "index.json"
# the small profile's shards: full sentences of English text, to measure BPE pieces per word on
SMALL_SHARDS = REPO / "runs" / "small" / "shards" / "index.json"
FBANK_FPS = 100  # llmasr/zipformer/features.py: Kaldi fbank, 10 ms frame shift
KEEP_CHECKPOINTS = 2  # tasks/train_ckpt.py KEEP_CHECKPOINTS
DS_BYTES_PER_TRAINABLE = 2 + 4 + 8  # bf16 weights + fp32 master + Adam m and v

# Architectures (published configs) of the models the paper profile names.  A local folder with a
# config.json (e.g. the demo profile's runs/demo/demo-models) is read instead.
WHISPER = {  # openai/whisper-<size> (HF config.json; Radford et al. 2022, Table 1)
    "tiny": {"d": 384, "enc_layers": 4, "dec_layers": 4, "ffn": 1536, "n_mels": 80, "vocab": 51865},
    "base": {"d": 512, "enc_layers": 6, "dec_layers": 6, "ffn": 2048, "n_mels": 80, "vocab": 51865},
    "small": {"d": 768, "enc_layers": 12, "dec_layers": 12, "ffn": 3072, "n_mels": 80, "vocab": 51865},
    "medium": {"d": 1024, "enc_layers": 24, "dec_layers": 24, "ffn": 4096, "n_mels": 80, "vocab": 51865},
    "large-v2": {"d": 1280, "enc_layers": 32, "dec_layers": 32, "ffn": 5120, "n_mels": 80, "vocab": 51865},
    "large-v3": {"d": 1280, "enc_layers": 32, "dec_layers": 32, "ffn": 5120, "n_mels": 128, "vocab": 51866},
}
LLMS = {  # hub name -> (hidden, layers, MLP width per branch, vocab, k/v width, tied embeddings)
    "Qwen/Qwen-7B-Chat": {
        "hidden": 4096,
        "layers": 32,
        "ff": 11008,
        "vocab": 151936,
        "kv": 4096,
        "tied": False,
        "naming": "qwen",
    },
    "Qwen/Qwen-7B": {
        "hidden": 4096,
        "layers": 32,
        "ff": 11008,
        "vocab": 151936,
        "kv": 4096,
        "tied": False,
        "naming": "qwen",
    },
    "Qwen/Qwen2-7B-Instruct": {
        "hidden": 3584,
        "layers": 28,
        "ff": 18944,
        "vocab": 152064,
        "kv": 512,
        "tied": False,
        "naming": "hf",
    },
}


@dataclass
class Assumption:
    name: str
    value: Any
    unit: str
    source: str  # measured here | published | config | code | given (a flag) | assumed
    where: str  # the command, the reference, the key or the reasoning


# --------------------------------------------------------------------------- parameter counts


def _local_config(name: str) -> dict | None:
    p = Path(name)
    p = p if p.is_absolute() else REPO / p
    f = p / "config.json"
    return json.loads(f.read_text()) if f.is_file() else None


def whisper_arch(name: str) -> dict:
    cfg = _local_config(name)
    if cfg is not None:
        return {
            "d": cfg["d_model"],
            "enc_layers": cfg["encoder_layers"],
            "dec_layers": cfg["decoder_layers"],
            "ffn": cfg["encoder_ffn_dim"],
            "dec_ffn": cfg.get("decoder_ffn_dim", cfg["encoder_ffn_dim"]),
            "n_mels": cfg["num_mel_bins"],
            "vocab": cfg["vocab_size"],
        }
    size = name.rsplit("whisper-", 1)[-1].removesuffix(".en")
    if size not in WHISPER:
        raise SystemExit(
            f"capacity: unknown Whisper encoder {name!r}: known {sorted(WHISPER)} (or a local folder with "
            "config.json)"
        )
    return dict(WHISPER[size])


def llm_arch(name: str) -> dict:
    cfg = _local_config(name)
    if cfg is not None:
        h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        qwen1 = cfg.get("model_type") == "qwen"  # Qwen-1 configs give 2x the MLP branch width
        return {
            "hidden": h,
            "layers": cfg["num_hidden_layers"],
            "ff": cfg["intermediate_size"] // (2 if qwen1 else 1),
            "vocab": cfg["vocab_size"],
            "kv": h * cfg.get("num_key_value_heads", heads) // heads,
            "tied": bool(cfg.get("tie_word_embeddings", False)),
            "naming": "qwen" if qwen1 else "hf",
        }
    if name not in LLMS:
        raise SystemExit(
            f"capacity: unknown LLM {name!r}: known {sorted(LLMS)} (or a local folder with config.json)"
        )
    return dict(LLMS[name])


def model_counts(train) -> dict:
    """Parameters (total) and compute parameters (multiply-adds per token) of each part."""
    w, q = whisper_arch(train.encoder), llm_arch(train.llm)
    d, dec_ffn = w["d"], w.get("dec_ffn", w["ffn"])
    enc_layer = 4 * d * d + 2 * d * w["ffn"]
    enc_conv1, enc_conv2 = w["n_mels"] * d * 3, d * d * 3
    enc_total = w["enc_layers"] * enc_layer + enc_conv1 + enc_conv2 + 1500 * d  # + frozen position table
    # conv1 runs at 100 frames/s: 2 per frame
    enc_compute = w["enc_layers"] * enc_layer + 2 * enc_conv1 + enc_conv2
    dec_xkv = w["dec_layers"] * 2 * d * d  # cross-attention k/v: once per encoder frame
    dec_per_pos = w["dec_layers"] * (6 * d * d + 2 * d * dec_ffn) + w["vocab"] * d  # + tied output head
    dec_total = w["dec_layers"] * (8 * d * d + 2 * d * dec_ffn) + w["vocab"] * d + 448 * d
    h, L, ff = q["hidden"], q["layers"], q["ff"]
    llm_layer = 2 * h * h + 2 * h * q["kv"] + 3 * h * ff
    embed = q["vocab"] * h
    llm_total = L * llm_layer + embed * (1 if q["tied"] else 2)
    # the input lookup costs nothing; the output head runs at every position
    llm_compute = L * llm_layer + embed
    k, hid = train.downsample_k, train.adapter_hidden
    adapter = k * d * hid + hid + hid * h + h
    shapes = {
        "qwen": {"c_attn": [(h, 3 * h)], "c_proj": [(h, h), (ff, h)], "w1": [(h, ff)], "w2": [(h, ff)]},
        "hf": {
            "q_proj": [(h, h)],
            "k_proj": [(h, q["kv"])],
            "v_proj": [(h, q["kv"])],
            "o_proj": [(h, h)],
            "gate_proj": [(h, ff)],
            "up_proj": [(h, ff)],
            "down_proj": [(ff, h)],
        },
    }[q["naming"]]
    lora = L * sum(train.lora.rank * (i + o) for m in train.lora.target_modules for i, o in shapes.get(m, []))
    return {
        "whisper": w,
        "llm": q,
        "encoder_params": enc_total,
        "encoder_compute": enc_compute,
        "whisper_decoder_params": dec_total,
        "whisper_decoder_per_position": dec_per_pos,
        "whisper_decoder_cross_kv": dec_xkv,
        "llm_params": llm_total,
        "llm_compute": llm_compute,
        "adapter_params": adapter,
        "lora_params": lora,
    }


# --------------------------------------------------------------------------- FLOPs per audio second


def flops_per_audio_s(stage: int, m: dict, r: dict) -> float:
    """Training FLOPs per second of audio for one stage (before padding)."""
    w, q = m["whisper"], m["llm"]
    f = r["encoder_fps"]  # encoder frames per audio second
    T = f * r["segment_s"]  # encoder frames per segment (trimmed: the real length)
    enc_attn = 4 * w["enc_layers"] * w["d"] * T * f  # forward QK^T + AV, per audio second
    if stage == 1:
        dec_pos = r["text_tps"] + r["whisper_special_tokens"] / r["segment_s"]
        # cross + causal self
        dec_attn = 4 * w["dec_layers"] * w["d"] * (T + dec_pos * r["segment_s"] / 2) * dec_pos
        return (
            6 * m["encoder_compute"] * f
            + 3 * enc_attn  # encoder trains
            # frozen head
            + 4 * (m["whisper_decoder_per_position"] * dec_pos + m["whisper_decoder_cross_kv"] * f)
            + 3 * dec_attn
        )
    speech = f / r["downsample_k"]
    pos = speech + r["text_tps"] + (r["prompt_tokens"] + 1) / r["segment_s"]  # + EOS per segment
    llm_attn = 2 * q["layers"] * q["hidden"] * pos * r["segment_s"] * pos  # causal: half of 4*L*h*ctx
    out = 2 * m["encoder_compute"] * f + enc_attn  # frozen encoder: forward only
    out += 6 * m["adapter_params"] * speech  # the adapter trains in stages 2 and 3
    out += 4 * m["llm_compute"] * pos + 3 * llm_attn  # frozen LLM: forward + activation gradients
    if stage == 3:
        out += 6 * m["lora_params"] * pos
    return out


def zipformer_sizes(zcfg) -> dict:
    """The ``ZipformerSizes`` fields of a ``ZipformerConfig`` (as tasks/zipformer_train.py's sizes_for)."""
    from llmasr.zipformer.model import ZipformerSizes

    values = zcfg.model_dump()
    return {k: values[k] for k in ZipformerSizes.__dataclass_fields__ if k in values}


def zipformer_flops(sizes: dict, audio_s: float, tokens: int) -> dict:
    """FLOPs of one utterance (``audio_s`` seconds, ``tokens`` BPE pieces) through the Zipformer-Transducer
    built from ``sizes`` (llmasr.zipformer.model), counted by torch.utils.flop_counter.FlopCounterMode:
    Conv2d subsampling + encoder + stateless decoder + the joiner over all T' x (U+1) lattice nodes, as
    the full RNN-T loss needs them (the loss's recursion itself is no matmul and counts nothing).  The
    model runs in eval mode, so every layer runs (training's random layer bypass would skip some) and no
    CTC head.  Only the forward is counted: training is 3x it (the model-FLOPs convention), because the
    counter's backward rule for grouped convolutions multiplies by the group count (a depthwise conv's
    backward counts ~channels x its forward), and the Zipformer's convolutions are depthwise."""
    return dict(_zipformer_flops(json.dumps(sizes, sort_keys=True), float(audio_s), int(tokens)))


@functools.lru_cache(maxsize=16)  # Zipformer-M takes seconds on a CPU: one count per process and input
def _zipformer_flops(key: str, audio_s: float, tokens: int) -> tuple:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from llmasr.zipformer.model import ZipformerSizes, ZipformerTransducer, count_parameters

    sizes = ZipformerSizes(**json.loads(key))
    lattice = []  # the joiner's logits shape (1, T', U+1, V)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ZipformerTransducer(sizes).eval()
        model.joiner.register_forward_hook(lambda mod, args, out: lattice.append(tuple(out.shape)))
        frames = round(audio_s * FBANK_FPS)
        feats = torch.randn(1, frames, sizes.feature_dim)  # (1, T, 80): values do not change the count
        targets = torch.randint(1, sizes.vocab_size, (1, tokens))  # (1, U)
        with torch.no_grad(), FlopCounterMode(display=False) as fwd:
            model(feats, torch.tensor([frames]), targets, torch.tensor([tokens]))
    return tuple(
        {
            "params": count_parameters(model),
            "audio_s": audio_s,
            "fbank_frames": frames,
            "encoder_frames": lattice[0][1],
            "tokens": tokens,
            "forward_flops": fwd.get_total_flops(),
        }.items()
    )


# --------------------------------------------------------------------------- measurements


def measure_flac(clips: Path = REAL_SPEECH) -> dict | None:
    """MB per hour of 16 kHz mono 16-bit FLAC over the real speech clips: ffmpeg (ingest's
    convert_to_flac16k, raw/) and soundfile (the shard writer's encode_flac)."""
    manifest = clips / "manifest.jsonl"
    if not manifest.is_file():
        return None
    import io

    import soundfile as sf

    from llmasr.audio import convert_to_flac16k

    raw_b = shard_b = dur = words = 0.0
    with tempfile.TemporaryDirectory(prefix="llmasr-capacity-") as tmp:
        for i, line in enumerate(manifest.read_text().splitlines()):
            rec = json.loads(line)
            dst = Path(tmp, f"{i}.flac")
            dur += convert_to_flac16k(clips / rec["audio"], dst)
            raw_b += dst.stat().st_size
            pcm, sr = sf.read(str(dst), dtype="int16")
            buf = io.BytesIO()
            sf.write(buf, pcm, sr, format="FLAC", subtype="PCM_16")
            shard_b += len(buf.getvalue())
            words += len(rec["text"].split())
    return {
        "clips": i + 1,
        "audio_s": round(dur, 1),
        "raw_mb_per_h": raw_b / dur * 3600 / 1e6,
        "shard_mb_per_h": shard_b / dur * 3600 / 1e6,
        "words_per_s": words / dur,
    }


def measure_shards(index_path: Path) -> dict | None:
    """Bytes per sample in the tars besides the FLAC payload: both members' headers, their padding
    to 512-byte blocks and the json (the end-of-archive blocks, ~10 kB per shard, left out: they
    are nothing in a 512 MB shard and much in the demo's 1 MB ones)."""
    if not index_path.is_file():
        return None
    index = json.loads(index_path.read_text())
    member_b = flac_b = json_b = samples = 0
    for s in index["shards"]:
        with tarfile.open(index_path.parent / s["path"]) as tar:
            for m in tar.getmembers():
                member_b += (m.offset_data - m.offset) + -(-m.size // 512) * 512
                flac_b += m.size if m.name.endswith(".flac") else 0
                json_b += m.size if m.name.endswith(".json") else 0
        samples += s["samples"]
    if not samples:
        return None
    return {
        "shards": len(index["shards"]),
        "samples": samples,
        "overhead_bytes": (member_b - flac_b) / samples,
        "json_bytes": json_b / samples,
    }


def measure_bpe(index_path: Path, vocab_size: int) -> dict | None:
    """BPE pieces per word of the train split's transcripts, by a sentencepiece BPE model of
    ``vocab_size`` pieces trained on them as the Zipformer's is (llmasr.zipformer.tokens)."""
    if not index_path.is_file():
        return None
    from llmasr.zipformer.tokens import BPE, train_bpe

    texts = []
    for s in json.loads(index_path.read_text())["shards"]:
        if s["split"] != "train":
            continue
        with tarfile.open(index_path.parent / s["path"]) as tar:
            texts += [
                json.load(tar.extractfile(m))["text"] for m in tar.getmembers() if m.name.endswith(".json")
            ]
    words = sum(len(t.split()) for t in texts)
    if not words:
        return None
    with tempfile.TemporaryDirectory(prefix="llmasr-capacity-") as tmp:
        bpe = BPE(train_bpe(texts, Path(tmp, "bpe.model"), vocab_size))
        pieces = sum(len(bpe.encode(t)) for t in texts)
    return {
        "segments": len(texts),
        "words": words,
        "pieces_per_word": pieces / words,
        "vocab": bpe.vocab_size,
    }


def gpu_bench_mfu(path: Path, rates: dict) -> dict:
    """The stage-3 MFU of a bench/gpu_train_bench.py result, recounted with this script's FLOP rules."""
    b = json.loads(path.read_text())
    if "steady" not in b:
        kind = (
            "bench/gpu_decode_bench.py (LLM-ASR decoding, i.e. evaluation)"
            if "ratios" in b
            else "an unknown file"
        )
        raise SystemExit(
            f"capacity: {path} looks like {kind}, not bench/gpu_train_bench.py output: it has no training "
            "throughput; labelling is faster-whisper, pass its GPU RTFx as --label-rtfx"
        )
    spec = importlib.util.spec_from_file_location("gpu_train_bench", REPO / "bench" / "gpu_train_bench.py")
    gtb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gtb)
    enc, llm = gtb.ENCODERS[b["args"]["encoder"]], gtb.LLMS[b["args"]["llm"]]
    st = b["steady"]
    d, hid, h = enc["d_model"], 2048, llm["hidden_size"]
    f, p, sps = st["encoder_frames_per_s"], st["decoder_positions_per_s"], st["samples_per_s"]
    adapter = 2 * d * hid + hid + hid * h + h
    lora = b["trainable_params"] - adapter
    llm_params = b["params"] - b["encoder_params"] - b["trainable_params"]  # tied embedding = the output head
    enc_attn = 4 * enc["encoder_layers"] * d * (f / sps) * f
    llm_attn = 2 * llm["num_hidden_layers"] * h * (p / sps) * p
    flops = (
        2 * (b["encoder_params"] - 1500 * d) * f
        + enc_attn
        + 6 * adapter * f / 2
        + 4 * llm_params * p
        + 6 * lora * p
        + 3 * llm_attn
    )
    peak = b.get("peak_bf16_flops") or H100_BF16_DENSE
    # a result without "mfu_6n" (bench/results/gpu_train_bench*.json) logged the 6N estimate as "mfu"
    return {
        "gpu": b.get("gpu"),
        "mfu": flops / peak,
        "mfu_6n": st.get("mfu_6n", st.get("mfu")),
        "audio_s_per_s": st.get("audio_s_per_s"),
        "model": f"whisper-{b['args']['encoder']} encoder + qwen2-{b['args']['llm']}",
        "batch": b["args"].get("batch"),
    }


# --------------------------------------------------------------------------- the table


def parse_stage_values(items: list[str], flag: str) -> dict[int, float]:
    out = {}
    for it in items or []:
        stage, _, value = it.partition("=")
        if stage not in ("1", "2", "3") or not value:
            raise SystemExit(f"capacity: {flag} takes STAGE=VALUE with STAGE 1, 2 or 3, got {it!r}")
        out[int(stage)] = float(value)
    return out


def compute(args: argparse.Namespace) -> dict:
    from llmasr.config import load_config

    cfg = load_config(profile=args.profile, overrides=args.set)
    train, label = cfg.train, cfg.label
    A: list[Assumption] = []

    def a(*x):
        A.append(Assumption(*x))
        return x[1]

    prof = f"--profile {args.profile} " if args.profile else ""

    hours = a(
        "audio hours labelled",
        args.hours,
        "h",
        "published" if args.hours == 190000 else "given",
        "arXiv 2502.16142: 190k h of YouTube audio, pseudo-labelled by Whisper large-v3 (--hours)",
    )
    kept = a(
        "kept fraction after filtering",
        args.kept_fraction,
        "",
        "assumed",
        "not published; WER-vs-caption <= filter.max_caption_wer, simplicity, duration < 20 s. If 190k h is "
        "the filtered set, pass --kept-fraction 1 (labelling then under-counts) (--kept-fraction)",
    )
    rtfx = a(
        f"labelling RTFx per GPU ({label.model}, beam {label.beam_size}, batch {label.batch_size}, fp16)",
        args.label_rtfx,
        "audio-s per GPU-s",
        "given" if args.label_rtfx_given else "assumed",
        "measured with `llmasr data` on a GPU (label logs 'RTFx')"
        if args.label_rtfx_given
        else (
            "no GPU measurement yet. Published: faster-whisper 1.1 README, large-v2 fp16 beam 5 batch 8: 13 "
            "min in 17 s = 46x on an RTX 3070 Ti; WhisperX README: 70x, large-v2 batched (both pack VAD "
            "speech into 30 s windows). An H100 has ~5.5x the 3070 Ti's memory bandwidth, but tasks/label.py "
            "decodes each segment (< 20 s) in its own 30 s window (~2.5x the encoder work per audio second "
            "at 12 s); 100x is a round guess between (--label-rtfx)"
        ),
    )
    epochs = {
        s: a(
            f"stage {s} epochs",
            getattr(train, f"stage{s}").epochs,
            "",
            "config",
            f"train.stage{s}.epochs ({prof}pipeline_config.yaml via llmasr.config.load_config)",
        )
        for s in (1, 2, 3)
    }
    for s in (1, 2, 3):
        if getattr(train, f"stage{s}").max_steps:
            A.append(
                Assumption(
                    f"stage {s} max_steps ignored",
                    getattr(train, f"stage{s}").max_steps,
                    "steps",
                    "config",
                    "the table trains whole epochs; train.stageN.max_steps would stop earlier",
                )
            )

    m = model_counts(train)
    A.append(
        Assumption(
            "model",
            f"{train.encoder} encoder {m['encoder_params'] / 1e6:.0f} M + adapter "
            f"{m['adapter_params'] / 1e6:.1f} M + {train.llm} {m['llm_params'] / 1e9:.2f} B; LoRA "
            f"r{train.lora.rank} {m['lora_params'] / 1e6:.1f} M; Whisper decoder (stage-1 head) "
            f"{m['whisper_decoder_params'] / 1e6:.0f} M",
            "params",
            "config",
            "train.encoder / train.llm / train.adapter_hidden / train.lora; shapes from the models' "
            "published config.json",
        )
    )
    r = {
        "encoder_fps": a(
            "encoder frames per audio second",
            50,
            "frames/s",
            "published",
            "Whisper: 100 mel frames/s, conv stride 2",
        ),
        "downsample_k": a(
            "adapter downsampling k",
            train.downsample_k,
            "encoder frames per LLM token",
            "config",
            f"train.downsample_k -> {50 / train.downsample_k:g} LLM tokens/s",
        ),
        "segment_s": a(
            "mean kept segment",
            args.segment_s,
            "s",
            "assumed",
            f"cues merged up to segment.target_segment_s={cfg.segment.target_segment_s:g}, cut < "
            f"{cfg.segment.max_segment_s:g} s (--segment-s)",
        ),
        "prompt_tokens": a(
            "prompt tokens per segment",
            args.prompt_tokens,
            "tokens",
            "assumed",
            f"the LLM's chat template around {train.instruction!r} (+1 EOS) (--prompt-tokens)",
        ),
        "whisper_special_tokens": a(
            "Whisper decoder special tokens per segment",
            5,
            "tokens",
            "published",
            "<|startoftranscript|><|en|><|transcribe|><|notimestamps|> ... <|endoftext|>",
        ),
    }
    measured = None if args.no_measure else measure_flac()
    wps_note = (
        f"; measured here on the real speech clips (read speech): {measured['words_per_s']:.2f}"
        if measured
        else ""
    )
    wps = a(
        "speech rate",
        args.words_per_s,
        "words/s",
        "assumed",
        f"conversational English ~150-180 words/min{wps_note} (--words-per-s)",
    )
    tpw = a(
        "tokens per word",
        args.tokens_per_word,
        "tokens/word",
        "assumed",
        "BPE (Qwen, Whisper) on English text (--tokens-per-word)",
    )
    r["text_tps"] = wps * tpw
    r["words_per_s"] = wps
    pad = a(
        "padding overhead",
        args.padding,
        "x",
        "assumed",
        "length-bucketed batches (tasks/train_data.py), trimmed encoder (--padding)",
    )
    peak = a(
        "H100 peak", H100_BF16_DENSE / 1e12, "TFLOP/s", "published", "NVIDIA H100 SXM datasheet, dense bf16"
    )
    n_gpus = a(
        "GPUs",
        args.gpus,
        "",
        "config" if args.gpus == train.nproc_per_node else "given",
        f"train.nproc_per_node={train.nproc_per_node} (the paper: 8x H100) (--gpus)",
    )
    scale = a(
        "multi-GPU training efficiency",
        args.scaling,
        "",
        "assumed",
        "ZeRO-2 on one NVLink node; stage 1's 0.6 B gradients overlap the backward pass (--scaling); "
        "labelling: 1.0 (independent)",
    )

    bench = None
    if args.from_gpu_bench:
        bench = gpu_bench_mfu(Path(args.from_gpu_bench), r)
        A.append(
            Assumption(
                "MFU, measured",
                round(bench["mfu"], 4),
                "",
                "measured here",
                f"`bench/gpu_train_bench.py` on {bench['gpu']} ({_rel(args.from_gpu_bench)}): stage 3, "
                f"{bench['model']}, batch {bench['batch']}; recounted with these FLOP rules (its 6N figure: "
                f"{bench['mfu_6n']}); applied to every stage without its own number",
            )
        )
    mfu_given = parse_stage_values(args.mfu_stage, "--mfu-stage")
    tput_given = parse_stage_values(args.audio_s_per_s, "--audio-s-per-s")
    if not bench and len(mfu_given) + len(tput_given) < 3:
        a(
            "MFU, assumed",
            args.mfu,
            "",
            "assumed",
            "bf16 HF + DeepSpeed fine-tuning on H100, large batches: typically 0.3-0.45; "
            "replace with --from-gpu-bench once bench/gpu_train_bench.py has run (--mfu, --mfu-stage N=x)",
        )

    kept_audio_s = hours * kept * 3600
    rows = [
        {
            "row": "labelling (faster-whisper)",
            "work_h": hours,
            "per_gpu": f"RTFx {rtfx:g}",
            "audio_s_per_s": rtfx,
            "gpu_hours": hours / rtfx,
            "days": hours / rtfx / n_gpus / 24,
        }
    ]
    for s in (1, 2, 3):
        fl = flops_per_audio_s(s, m, r) * pad
        if s in tput_given:
            tput, how = tput_given[s], "given (--audio-s-per-s)"
        else:
            mfu = mfu_given.get(s, bench["mfu"] if bench else args.mfu)
            tput, how = mfu * peak * 1e12 / fl, f"MFU {mfu:.2f}"
        gpu_h = kept_audio_s * epochs[s] / tput / 3600
        rows.append(
            {
                "row": f"stage {s} ({['encoder', 'adapter', 'LoRA + adapter'][s - 1]})",
                "work_h": hours * kept * epochs[s],
                "per_gpu": f"{tput:,.0f} audio-s/s ({how}; {fl / 1e9:,.0f} GFLOP/audio-s)",
                "audio_s_per_s": tput,
                "gflop_per_audio_s": fl / 1e9,
                "gpu_hours": gpu_h,
                "days": gpu_h / (n_gpus * scale) / 24,
            }
        )
    zipformer = (
        zipformer_row(args, cfg, r, a, A, kept_audio_s, pad, peak, n_gpus, scale)
        if cfg.zipformer.enabled
        else None
    )
    if zipformer:
        rows.append(zipformer.pop("row"))
    rows.append(
        {
            "row": "total",
            "work_h": None,
            "per_gpu": "",
            "gpu_hours": sum(x["gpu_hours"] for x in rows),
            "days": sum(x["days"] for x in rows),
        }
    )

    shards = None if args.no_measure else measure_shards(Path(args.shards))
    raw_mb = a(
        "FLAC, raw audio (ffmpeg, as ingest)",
        round(args.flac_mb_per_h or (measured and measured["raw_mb_per_h"]) or 0.6 * PCM16_MB_PER_HOUR, 1),
        "MB/h",
        "given" if args.flac_mb_per_h else "measured here" if measured else "assumed",
        "--flac-mb-per-h"
        if args.flac_mb_per_h
        else (
            f"`.venv/bin/python bench/capacity.py`: {measured['clips']} real speech clips "
            f"({measured['audio_s']} s, ../shared/data/real_speech) through llmasr.audio.convert_to_flac16k "
            f"= {measured['raw_mb_per_h'] / PCM16_MB_PER_HOUR:.2f} of 16-bit PCM (115.2 MB/h); clean read "
            "speech: noisy/music YouTube audio compresses less"
        )
        if measured
        else "~0.6 of 16-bit PCM (115.2 MB/h)",
    )
    shard_mb = a(
        "FLAC, shard segments (soundfile, as tasks/shard.py)",
        round(args.flac_mb_per_h or (measured and measured["shard_mb_per_h"]) or raw_mb, 1),
        "MB/h",
        "given" if args.flac_mb_per_h else "measured here" if measured else "assumed",
        "the same clips re-encoded with soundfile PCM_16"
        if measured and not args.flac_mb_per_h
        else "as the raw audio",
    )
    ovh = a(
        "shard overhead per sample (tar headers + json)",
        round(args.shard_overhead_bytes or (shards and shards["overhead_bytes"]) or 2048.0),
        "bytes",
        "given" if args.shard_overhead_bytes else "measured here" if shards else "assumed",
        "--shard-overhead-bytes"
        if args.shard_overhead_bytes
        else (
            f"`.venv/bin/python bench/capacity.py` on {_rel(args.shards)}: {shards['samples']} samples in "
            f"{shards['shards']} tars (json {shards['json_bytes']:.0f} B; demo texts are short)"
        )
        if shards
        else "2 x 512-byte tar headers + 2 x ~256 B padding + ~500 B json",
    )
    samples = kept_audio_s / r["segment_s"]
    e1 = m["encoder_params"] - 1500 * m["whisper"]["d"]  # stage 1 trains the encoder, not its position table
    ckpt = {
        1: (m["encoder_params"] + m["encoder_params"] + m["whisper_decoder_params"]) * 4
        + KEEP_CHECKPOINTS * e1 * DS_BYTES_PER_TRAINABLE,
        2: m["adapter_params"] * 4 + KEEP_CHECKPOINTS * m["adapter_params"] * DS_BYTES_PER_TRAINABLE,
        3: (m["adapter_params"] + m["lora_params"]) * 4
        + KEEP_CHECKPOINTS * (m["adapter_params"] + m["lora_params"]) * DS_BYTES_PER_TRAINABLE,
    }
    if train.merge_lora:
        ckpt[3] += m["llm_params"] * 4
    A.append(
        Assumption(
            "checkpoints",
            f"fp32 exports; DeepSpeed tags: {DS_BYTES_PER_TRAINABLE} B per trainable param, last "
            f"{KEEP_CHECKPOINTS} kept",
            "",
            "code",
            "tasks/train.py export() / save_checkpoint(exclude_frozen_parameters=True); "
            "merged LLM only with train.merge_lora",
        )
    )
    storage = [
        {
            "row": "raw audio (raw/*.flac)",
            "bytes": hours * raw_mb * 1e6,
            "basis": f"{hours:,.0f} h x {raw_mb:.1f} MB/h",
        },
        {
            "row": "shards (kept segments, tar)",
            "bytes": hours * kept * shard_mb * 1e6 + samples * ovh,
            "basis": (
                f"{hours * kept:,.0f} h x {shard_mb:.1f} MB/h + {samples / 1e6:.1f} M samples x {ovh:,.0f} B"
            ),
        },
        {
            "row": "checkpoints (stages 1-3)",
            "bytes": sum(ckpt.values()),
            "basis": "stage 1 "
            + ", ".join(
                f"{ckpt[s] / 1e9:.1f} GB" if s == 1 else f"stage {s} {ckpt[s] / 1e9:.2f} GB"
                for s in (1, 2, 3)
            ),
        },
    ]
    storage.append({"row": "total", "bytes": sum(x["bytes"] for x in storage), "basis": ""})
    loader = None
    tb = REPO / "bench" / "results" / "train_bench.json"
    if tb.is_file():
        per_worker = sorted(x["audio_s_per_s"] for x in json.loads(tb.read_text()).get("loader", []))
        if per_worker:
            need = max(x["audio_s_per_s"] for x in rows[1:4])
            med = per_worker[len(per_worker) // 2]
            loader = {
                "need_audio_s_per_s": need,
                "per_worker": med,
                "workers": math.ceil(need / med),
                "config_workers": train.num_workers,
                # loader / step per GPU at the config's workers (issue target: >= 5, the loader is not
                # what limits training)
                "ratios": {s: train.num_workers * med / rows[s]["audio_s_per_s"] for s in (1, 2, 3)},
            }
    return {
        "command": "bench/capacity.py " + " ".join(args.argv),
        "gpus": n_gpus,
        "rows": rows,
        "storage": storage,
        "loader": loader,
        "model": m,
        "rates": r,
        "epochs": epochs,
        "gpu_bench": bench,
        "zipformer": zipformer,
        "assumptions": [asdict(x) for x in A],
    }


def zipformer_row(
    args, cfg, r: dict, a, A: list, kept_audio_s: float, pad: float, peak: float, n_gpus: int, scale: float
) -> dict:
    """The Zipformer-Transducer baseline's training row: forward FLOPs counted on the model built from
    ``zipformer.*`` for one mean-length segment, x3 for forward + backward, at an assumed MFU."""
    z = cfg.zipformer
    bpe = None if args.no_measure else measure_bpe(Path(args.bpe_shards), z.vocab_size)
    ppw = a(
        f"BPE pieces per word (zipformer.vocab_size={z.vocab_size})",
        round(args.pieces_per_word or (bpe and bpe["pieces_per_word"]) or 2.0, 2),
        "pieces/word",
        "given" if args.pieces_per_word else "measured here" if bpe else "assumed",
        "--pieces-per-word"
        if args.pieces_per_word
        else (
            f"`.venv/bin/python bench/capacity.py`: sentencepiece BPE-{bpe['vocab']} trained (as "
            f"llmasr/zipformer/tokens.py does) on the train transcripts of {_rel(args.bpe_shards)} "
            f"({bpe['segments']} segments, {bpe['words']:,} words); case and punctuation are pieces too. A "
            "BPE trained on 133k h of text would merge more (--pieces-per-word, --bpe-shards)"
        )
        if bpe
        else "case and punctuation are pieces too (--pieces-per-word)",
    )
    epochs = a("zipformer epochs", z.epochs, "", "config", "zipformer.epochs (the paper: ~50)")
    tokens = round(r["segment_s"] * r["words_per_s"] * ppw)
    c = zipformer_flops(zipformer_sizes(z), r["segment_s"], tokens)
    A.append(
        Assumption(
            "Zipformer-Transducer forward FLOPs per segment",
            f"{c['forward_flops'] / 1e9:,.1f} GFLOP ({c['params'] / 1e6:.1f} M params; "
            f"{r['segment_s']:g} s = {c['fbank_frames']} fbank frames -> {c['encoder_frames']} encoder "
            f"frames; U = {tokens} tokens: "
            f"the joiner over {c['encoder_frames']} x {tokens + 1} lattice nodes x {z.vocab_size} pieces)",
            "",
            "measured here",
            "torch.utils.flop_counter.FlopCounterMode over the forward of llmasr.zipformer.model built from "
            "zipformer.* (bench/capacity.py zipformer_flops: eval mode, every layer; matmuls and "
            "convolutions; the loss recursion and element-wise ops uncounted); training = 3x forward",
        )
    )
    mfu = a(
        "Zipformer MFU" + ("" if args.mfu_zipformer else ", assumed"),
        args.mfu_zipformer or args.mfu,
        "",
        "given" if args.mfu_zipformer else "assumed",
        "--mfu-zipformer"
        if args.mfu_zipformer
        else (
            "no GPU measurement; the LLM-ASR stages' assumed MFU (--mfu). Its matmuls are 192-512 wide "
            "and the full loss's log-softmax over T' x (U+1) x vocab is memory-bound, so it may reach "
            "less (--mfu-zipformer)"
        ),
    )
    fl = 3 * c["forward_flops"] / r["segment_s"] * pad
    tput = mfu * peak * 1e12 / fl
    gpu_h = kept_audio_s * epochs / tput / 3600
    row = {
        "row": f"zipformer (transducer, {c['params'] / 1e6:.0f} M)",
        "work_h": kept_audio_s / 3600 * epochs,
        "per_gpu": f"{tput:,.0f} audio-s/s (MFU {mfu:.2f} assumed; {fl / 1e9:,.1f} GFLOP/audio-s)"
        if not args.mfu_zipformer
        else f"{tput:,.0f} audio-s/s (MFU {mfu:.2f}; {fl / 1e9:,.1f} GFLOP/audio-s)",
        "audio_s_per_s": tput,
        "gflop_per_audio_s": fl / 1e9,
        "gpu_hours": gpu_h,
        "days": gpu_h / (n_gpus * scale) / 24,
    }
    return {"row": row, "count": c, "tokens_per_segment": tokens, "epochs": epochs, "mfu": mfu, "bpe": bpe}


def _rel(path: str | Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def _num(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}" if abs(x) >= 10 ** (2 - digits) or x == 0 else f"{x:.3g}"


def fmt_bytes(b: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if b >= size:
            return f"{b / size:,.1f} {unit}"
    return f"{b:,.0f} B"


def render(res: dict) -> str:
    n = res["gpus"]
    out = [
        f"| work | audio hours | throughput per GPU | GPU-hours | days on {n}x H100 |",
        "|---|---:|---|---:|---:|",
    ]
    for x in res["rows"]:
        hrs = _num(x["work_h"]) if x["work_h"] is not None else ""
        bold = "**" if x["row"] == "total" else ""
        out.append(
            f"| {bold}{x['row']}{bold} | {hrs} | {x['per_gpu']} | {bold}{_num(x['gpu_hours'])}{bold} | "
            f"{bold}{_num(x['days'], 1)}{bold} |"
        )
    out += ["", "| storage | size | basis |", "|---|---:|---|"]
    for x in res["storage"]:
        bold = "**" if x["row"] == "total" else ""
        out.append(f"| {bold}{x['row']}{bold} | {bold}{fmt_bytes(x['bytes'])}{bold} | {x['basis']} |")
    out += ["", "Assumptions:", ""]
    for x in res["assumptions"]:
        unit = f" {x['unit']}" if x["unit"] else ""
        out.append(f"- {x['name']}: **{x['value']}{unit}** — {x['source']}: {x['where']}")
    if res["loader"]:
        lo = res["loader"]
        ratios = ", ".join(f"stage {s} {r:.1f}x" for s, r in sorted(lo["ratios"].items()))
        out += [
            "",
            (
                f"Loader check: the fastest stage needs {lo['need_audio_s_per_s']:,.0f} audio-s/s per GPU; "
                f"one loader worker (one CPU core) gave {lo['per_worker']:,.0f} audio-s/s on the 2-core CI "
                f"machine (bench/results/train_bench.json), so ~{lo['workers']} workers per GPU keep up; at "
                f"train.num_workers = {lo['config_workers']} the loaders deliver {ratios} what each GPU "
                "consumes (target >= 5x)."
            ),
        ]
    days = {x["row"]: x["days"] for x in res["rows"]}
    out += [
        "",
        (
            f"Days assume the {n} GPUs do one job at a time; labelling is independent per item "
            "(RayTaskRunner), so it can also run on more GPUs in parallel "
            f"({days['labelling (faster-whisper)']:,.1f} days on {n})."
        ),
    ]
    if res.get("zipformer"):
        out[-1] += (
            f" The zipformer row's days assume it trains on all {n}; tasks/zipformer_train.py runs one "
            f"process (one GPU) today: {n}x those days."
        )
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="capacity table (GPU-hours, days, storage) for the paper's run")
    ap.add_argument("--hours", type=float, default=190000, help="hours of audio to label (the paper: 190k)")
    ap.add_argument(
        "--kept-fraction", type=float, default=0.7, help="share of labelled audio kept by the filter"
    )
    ap.add_argument(
        "--label-rtfx",
        type=float,
        default=None,
        help="measured labelling RTFx per GPU (default: assumed 100)",
    )
    ap.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOPs utilisation of every stage")
    ap.add_argument(
        "--mfu-stage", action="append", default=[], metavar="N=x", help="MFU of one stage (repeat)"
    )
    ap.add_argument(
        "--audio-s-per-s",
        action="append",
        default=[],
        metavar="N=x",
        help="measured audio-s/s per GPU of one stage (repeat)",
    )
    ap.add_argument(
        "--from-gpu-bench", default=None, help="bench/gpu_train_bench.py's JSON: its measured MFU"
    )
    ap.add_argument(
        "--mfu-zipformer", type=float, default=None, help="MFU of the Zipformer row (default: --mfu, assumed)"
    )
    ap.add_argument(
        "--pieces-per-word",
        type=float,
        default=None,
        help="BPE pieces per word of the Zipformer's tokens (default: measured on --bpe-shards)",
    )
    ap.add_argument(
        "--bpe-shards", default=str(SMALL_SHARDS), help="shard index whose transcripts the BPE is measured on"
    )
    ap.add_argument("--segment-s", type=float, default=12.0, help="mean kept segment length (s)")
    ap.add_argument("--words-per-s", type=float, default=3.0)
    ap.add_argument("--tokens-per-word", type=float, default=1.3)
    ap.add_argument("--prompt-tokens", type=int, default=25, help="chat-template prompt tokens per segment")
    ap.add_argument("--padding", type=float, default=1.05, help="compute overhead of padding in batches")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--scaling", type=float, default=0.95, help="training efficiency on --gpus GPUs vs one")
    ap.add_argument(
        "--flac-mb-per-h", type=float, default=None, help="FLAC MB per hour (default: measured here)"
    )
    ap.add_argument(
        "--shard-overhead-bytes",
        type=float,
        default=None,
        help="tar + json bytes per sample (default: measured here)",
    )
    ap.add_argument(
        "--shards", default=str(DEMO_SHARDS), help="shard index to measure the per-sample overhead on"
    )
    ap.add_argument(
        "--no-measure",
        action="store_true",
        help="use the stated assumptions instead of measuring FLAC and shards",
    )
    ap.add_argument("--profile", default=None, help="config profile (default: the paper's top level)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeat)"
    )
    ap.add_argument("--out", default=None, help="also write the table and its inputs as JSON here")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    args.label_rtfx_given = args.label_rtfx is not None
    args.label_rtfx = args.label_rtfx if args.label_rtfx_given else 100.0
    res = compute(args)
    res["markdown"] = render(res)
    print(res["markdown"])
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1, default=str))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
