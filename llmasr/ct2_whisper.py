"""python -m llmasr.ct2_whisper CT2_FOLDER OUT_FOLDER  # CTranslate2 Whisper -> Hugging Face Whisper folder

Reads a CTranslate2 ``model.bin`` (binary format version 6, as ``ctranslate2.specs.model_spec.
ModelSpec._serialize`` writes it and ``models/model.cc`` reads it) and writes what
``WhisperForConditionalGeneration.from_pretrained`` and ``WhisperProcessor.from_pretrained`` load:
config.json, generation_config.json, model.safetensors (float32), the tokenizer files and
preprocessor_config.json.  No network, no ``ctranslate2`` import: the file is parsed here.

model.bin layout (little endian)::

    u32 binary_version (6) | str spec name ("WhisperSpec") | u32 spec revision (3) | u32 n_variables
    n_variables x { str name | u8 rank | rank x u32 dim | u8 dtype id | u32 n_bytes | n_bytes data }
    u32 n_aliases | n_aliases x { str alias | str variable name }
    (str = u16 length incl. the NUL | utf-8 bytes | NUL)

dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.  A quantised weight
``.../weight`` (int8 or int16) comes with ``.../weight_scale``: float weight = q / scale (a scale
per output row for int8, one scalar for int16).  Scalars (``num_heads``, ``activation``,
``pre_norm``, ...) are rank-0 variables.  An alias names a variable stored once for two uses:
Whisper's output projection is the decoder embedding (``decoder/projection/weight`` ->
``decoder/embeddings/weight``: tied, as in HF's ``proj_out``).

CTranslate2 names -> HF names (i = layer index, the same in both)::

  encoder/conv{1,2}/{weight,bias}                   model.encoder.conv{1,2}.{weight,bias}
  encoder/position_encodings/encodings (1500, D)   model.encoder.embed_positions.weight (sinusoidal)
  {enc,dec}/layer_i/self_attention/layer_norm        layers.i.self_attn_layer_norm (gamma->weight, beta->bias)
  {enc,dec}/layer_i/self_attention/linear_0 (3D, D) layers.i.self_attn.{q,k,v}_proj  (fused q|k|v)
  {enc,dec}/layer_i/self_attention/linear_1          layers.i.self_attn.out_proj
  dec/layer_i/attention/layer_norm                   layers.i.encoder_attn_layer_norm
  dec/layer_i/attention/linear_0 (D, D)              layers.i.encoder_attn.q_proj
  dec/layer_i/attention/linear_1 (2D, D)             layers.i.encoder_attn.{k,v}_proj  (fused k|v)
  dec/layer_i/attention/linear_2                     layers.i.encoder_attn.out_proj
  {enc,dec}/layer_i/ffn/layer_norm                   layers.i.final_layer_norm
  {enc,dec}/layer_i/ffn/linear_{0,1}                 layers.i.fc{1,2}
  {enc,dec}/layer_norm                               model.{encoder,decoder}.layer_norm
  decoder/embeddings/weight (V, D)                   model.decoder.embed_tokens.weight (+ proj_out, tied)
  decoder/position_encodings/encodings (448, D)     model.decoder.embed_positions.weight (learned)

HF's Whisper ``k_proj`` has no bias; CTranslate2's converter (``utils.fuse_linear``) fills the k
part of a fused bias with zeros.  A non-zero k bias would not matter either: it adds q.b_k to every
score of a query row, which softmax cancels; it is dropped (and counted in the report).
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CT2_BINARY_VERSION = 6
CT2_WHISPER_SPEC = "WhisperSpec"
_CT2_DTYPES = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
# Whisper's published sizes: d_model -> attention heads (the file stores num_heads too; this
# table cross-checks it, and names the size in messages).
WHISPER_HEADS = {384: 6, 512: 8, 768: 12, 1024: 16, 1280: 20}
WHISPER_SIZE_NAMES = {384: "tiny", 512: "base", 768: "small", 1024: "medium", 1280: "large"}
CT2_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU
MULTILINGUAL_MIN_VOCAB = 51865  # openai/whisper: n_vocab >= 51865 is multilingual (.en models: 51864)
TIME_PRECISION_S = 0.02  # one timestamp token per 20 ms, <|0.00|> .. <|30.00|>
N_TIMESTAMPS = 1501

# The files a CTranslate2 Whisper folder brings (faster-whisper's layout).
CT2_FILES = ("model.bin", "config.json", "tokenizer.json")


class CT2FormatError(ValueError):
    """model.bin is not a CTranslate2 Whisper model this reader understands."""


@dataclass
class CT2Model:
    """The parsed model.bin: variables by name (torch tensors in their stored dtype) and aliases."""

    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def raw(self, name: str) -> torch.Tensor:
        return self.variables[self.aliases.get(name, name)]

    def get(self, name: str) -> torch.Tensor:
        """A float32 weight; int8/int16 ones are dequantised with their ``_scale``."""
        value = self.raw(name)
        if value.dtype in (torch.int8, torch.int16):
            scale_name = name + "_scale"
            if not self.has(scale_name):
                raise CT2FormatError(f"{name} is {value.dtype} without {scale_name}")
            scale = self.raw(scale_name).float()
            if scale.dim() == 1:  # int8: one scale per output row
                scale = scale[:, None]
            return value.float() / scale
        return value.float()

    def scalar(self, name: str) -> int:
        return int(self.raw(name).item())

    @property
    def n_params(self) -> int:
        return sum(v.numel() for n, v in self.variables.items() if v.dim() > 0 and not n.endswith("_scale"))


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 model.bin (binary version 6); fails with CT2FormatError on anything else."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(data):
            raise CT2FormatError(f"{path}: truncated at byte {pos} (needs {n} more, file has {len(data)})")
        out = data[pos : pos + n]
        pos += n
        return out

    def u(fmt: str) -> int:
        return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

    def string() -> str:
        raw = bytes(take(u("H")))
        if not raw.endswith(b"\0"):
            raise CT2FormatError(f"{path}: a name is not NUL-terminated at byte {pos}")
        return raw[:-1].decode("utf-8")

    version = u("I")
    if version != CT2_BINARY_VERSION:
        raise CT2FormatError(
            f"{path}: CTranslate2 binary version {version}; this reader knows version {CT2_BINARY_VERSION}"
        )
    spec = string()
    revision = u("I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(u("I")):
        name = string()
        shape = [u("I") for _ in range(u("B"))]
        type_id = u("B")
        if type_id not in _CT2_DTYPES:
            raise CT2FormatError(f"{path}: {name} has unknown dtype id {type_id}")
        dtype = _CT2_DTYPES[type_id]
        n_bytes = u("I")
        expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if n_bytes != expected:
            raise CT2FormatError(f"{path}: {name} {shape} {dtype} has {n_bytes} bytes, expected {expected}")
        buf = bytearray(take(n_bytes))  # a copy: the tensor owns its memory
        variables[name] = (
            torch.frombuffer(buf, dtype=dtype).reshape(shape) if n_bytes else torch.empty(shape, dtype=dtype)
        )
    aliases = {}
    for _ in range(u("I")):
        alias = string()
        aliases[alias] = string()
    if pos != len(data):
        raise CT2FormatError(
            f"{path}: {len(data) - pos} bytes after the aliases (not a model.bin, or two concatenated)"
        )
    return CT2Model(spec, revision, variables, aliases)


# ----------------------------------------------------------------------------- conversion


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """openai/whisper's encoder position table (length, channels), float32: sin | cos halves."""
    log_inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_inc * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]  # (length, channels/2)
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def _count_layers(m: CT2Model, prefix: str) -> int:
    n = 0
    while m.has(f"{prefix}/layer_{n}/ffn/linear_0/weight"):
        n += 1
    return n


@dataclass
class ConversionReport:
    """What the conversion saw: sizes, and the choices it made."""

    size: str
    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    vocab_size: int
    num_mel_bins: int
    multilingual: bool
    n_params: int
    stored_dtypes: list[str]
    dropped_k_bias_max: float  # the largest |k bias| CTranslate2 stored (0 from its own converter)
    encoder_positions: str  # "sinusoidal" (openai's table, in the file's precision) or "not sinusoidal"


def ct2_to_hf_state_dict(m: CT2Model) -> tuple[dict[str, torch.Tensor], dict[str, Any], ConversionReport]:
    """HF ``WhisperForConditionalGeneration`` tensors (float32) + WhisperConfig kwargs + report."""
    if m.spec != CT2_WHISPER_SPEC:
        raise CT2FormatError(f"spec is {m.spec!r}, not {CT2_WHISPER_SPEC!r}: not a Whisper model")
    for flag, want in (("decoder/pre_norm", 1), ("decoder/activation", CT2_GELU)):
        if m.has(flag) and m.scalar(flag) != want:
            raise CT2FormatError(f"{flag} = {m.scalar(flag)}, Whisper has {want}")
    for flag in ("decoder/alibi", "decoder/scale_embeddings"):
        if m.has(flag) and m.scalar(flag):
            raise CT2FormatError(f"{flag} is set: Whisper uses neither ALiBi nor scaled embeddings")
    conv1 = m.get("encoder/conv1/weight")  # (D, n_mels, 3)
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    embed = m.get("decoder/embeddings/weight")  # (V, D)
    vocab = int(embed.shape[0])
    n_enc, n_dec = _count_layers(m, "encoder"), _count_layers(m, "decoder")
    heads = WHISPER_HEADS.get(d_model)
    for scope in ("encoder", "decoder"):
        stored = m.scalar(f"{scope}/num_heads") if m.has(f"{scope}/num_heads") else None
        if heads is None:
            heads = stored
        elif stored is not None and stored != heads:
            raise CT2FormatError(
                f"{scope}/num_heads = {stored}, but Whisper's d_model {d_model} has {heads} heads"
            )
    if heads is None:
        raise CT2FormatError(
            f"d_model {d_model} is not a Whisper size {sorted(WHISPER_HEADS)} and the file has no num_heads"
        )
    ffn = int(m.raw("encoder/layer_0/ffn/linear_0/weight").shape[0])
    enc_pos = m.get("encoder/position_encodings/encodings")  # (1500, D)
    dec_pos = m.get("decoder/position_encodings/encodings")  # (448, D)

    sd: dict[str, torch.Tensor] = {}
    k_bias_max = 0.0

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = m.get(f"{src}/weight")
        if m.has(f"{src}/bias"):
            sd[f"{dst}.bias"] = m.get(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = m.get(f"{src}/gamma")
        sd[f"{dst}.bias"] = m.get(f"{src}/beta")

    def split(dst: str, names: list[str], src: str) -> None:
        """A fused projection (len(names) * D, D) -> one (D, D) weight per name; "k_proj" gets no bias."""
        nonlocal k_bias_max
        weights = m.get(f"{src}/weight").chunk(len(names), dim=0)
        biases = (
            m.get(f"{src}/bias").chunk(len(names), dim=0) if m.has(f"{src}/bias") else [None] * len(names)
        )
        for name, w, b in zip(names, weights, biases):
            sd[f"{dst}.{name}.weight"] = w.contiguous()
            if b is None:
                continue
            if name == "k_proj":
                k_bias_max = max(k_bias_max, float(b.abs().max()))
            else:
                sd[f"{dst}.{name}.bias"] = b.contiguous()

    e, d = "model.encoder", "model.decoder"
    for i in (1, 2):
        linear(f"{e}.conv{i}", f"encoder/conv{i}")
    # Kept as stored: openai's checkpoints hold this table in float16 too (HF's openai/whisper-*
    # carry those rounded values).  Swapping in exact float32 sinusoids moves the encoder output
    # by ~1% of its range (measured on whisper-base): the table is part of the trained weights.
    sinusoidal = float((sinusoids(*enc_pos.shape) - enc_pos).abs().max()) < 2e-3
    sd[f"{e}.embed_positions.weight"] = enc_pos
    for i in range(n_enc):
        s, t = f"encoder/layer_{i}", f"{e}.layers.{i}"
        norm(f"{t}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        split(f"{t}.self_attn", ["q_proj", "k_proj", "v_proj"], f"{s}/self_attention/linear_0")
        linear(f"{t}.self_attn.out_proj", f"{s}/self_attention/linear_1")
        norm(f"{t}.final_layer_norm", f"{s}/ffn/layer_norm")
        linear(f"{t}.fc1", f"{s}/ffn/linear_0")
        linear(f"{t}.fc2", f"{s}/ffn/linear_1")
    norm(f"{e}.layer_norm", "encoder/layer_norm")

    sd[f"{d}.embed_tokens.weight"] = embed
    sd[f"{d}.embed_positions.weight"] = dec_pos
    for i in range(n_dec):
        s, t = f"decoder/layer_{i}", f"{d}.layers.{i}"
        norm(f"{t}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        split(f"{t}.self_attn", ["q_proj", "k_proj", "v_proj"], f"{s}/self_attention/linear_0")
        linear(f"{t}.self_attn.out_proj", f"{s}/self_attention/linear_1")
        norm(f"{t}.encoder_attn_layer_norm", f"{s}/attention/layer_norm")
        split(f"{t}.encoder_attn", ["q_proj"], f"{s}/attention/linear_0")
        split(f"{t}.encoder_attn", ["k_proj", "v_proj"], f"{s}/attention/linear_1")
        linear(f"{t}.encoder_attn.out_proj", f"{s}/attention/linear_2")
        norm(f"{t}.final_layer_norm", f"{s}/ffn/layer_norm")
        linear(f"{t}.fc1", f"{s}/ffn/linear_0")
        linear(f"{t}.fc2", f"{s}/ffn/linear_1")
    norm(f"{d}.layer_norm", "decoder/layer_norm")

    # The output projection: tied to the embedding when the file aliases (or repeats) it.
    tied = True
    if "decoder/projection/weight" in m.variables:
        proj = m.get("decoder/projection/weight")
        tied = proj.shape == embed.shape and torch.equal(proj, embed)
        if not tied:
            sd["proj_out.weight"] = proj
    if m.has("decoder/projection/bias") and float(m.get("decoder/projection/bias").abs().max()) > 0:
        raise CT2FormatError("decoder/projection/bias is non-zero: Whisper's output projection has no bias")

    config = dict(
        vocab_size=vocab,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_source_positions=int(enc_pos.shape[0]),
        max_target_positions=int(dec_pos.shape[0]),
        tie_word_embeddings=tied,
        architectures=["WhisperForConditionalGeneration"],
    )
    report = ConversionReport(
        size=WHISPER_SIZE_NAMES.get(d_model, f"d_model {d_model}")
        + ("" if vocab >= MULTILINGUAL_MIN_VOCAB else ".en"),
        d_model=d_model,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        heads=heads,
        vocab_size=vocab,
        num_mel_bins=n_mels,
        multilingual=vocab >= MULTILINGUAL_MIN_VOCAB,
        n_params=m.n_params,
        stored_dtypes=sorted(
            {str(v.dtype).replace("torch.", "") for v in m.variables.values() if v.dim() > 1}
        ),
        dropped_k_bias_max=k_bias_max,
        encoder_positions="sinusoidal" if sinusoidal else "not sinusoidal",
    )
    return sd, config, report


# ------------------------------------------------------------------------------ tokenizer


def _special_ids(tokenizer_json: dict[str, Any]) -> dict[str, int]:
    return {t["content"]: int(t["id"]) for t in tokenizer_json.get("added_tokens", [])}


def build_tokenizer(ct2_dir: Path, vocab_size: int):
    """transformers' ``WhisperTokenizer`` from the shipped tokenizer.json.

    faster-whisper's tokenizer.json carries the BPE and Whisper's special tokens up to
    ``<|notimestamps|>``, but not the 1501 timestamp tokens ``<|0.00|>`` .. ``<|30.00|>`` that fill
    the model's vocabulary (HF's current openai/whisper-* tokenizers have them): they are added
    here, so ``len(tokenizer)`` is the model's vocab_size (51865 multilingual, 51864 .en), and the
    result is checked token by token against CTranslate2's vocabulary.txt when it is there.
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizer

    raw = json.loads((ct2_dir / "tokenizer.json").read_text(encoding="utf-8"))
    specials = _special_ids(raw)
    for name in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|transcribe|>"):
        if name not in specials:
            raise CT2FormatError(f"{ct2_dir / 'tokenizer.json'} has no {name}: not a Whisper tokenizer")
    backend = Tokenizer.from_str(json.dumps(raw))
    first_ts = max(specials.values()) + 1
    n_ts = vocab_size - first_ts
    if n_ts not in (0, N_TIMESTAMPS):
        raise CT2FormatError(
            f"tokenizer.json ends at id {first_ts - 1}; the model's vocabulary has {vocab_size} ids "
            f"(expected {N_TIMESTAMPS} timestamps after it)"
        )
    if n_ts:
        backend.add_tokens(
            [
                AddedToken(f"<|{i * TIME_PRECISION_S:.2f}|>", normalized=False, special=False)
                for i in range(n_ts)
            ]
        )
    if backend.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise CT2FormatError(
            f"tokenizer has {backend.get_vocab_size(with_added_tokens=True)} ids, the model {vocab_size}"
        )
    vocab_txt = ct2_dir / "vocabulary.txt"
    if vocab_txt.is_file():
        # vocabulary.txt is CTranslate2's id -> token list: the tokenizer must agree on every id.
        tokens = vocab_txt.read_text(encoding="utf-8").split("\n")
        tokens = tokens[:-1] if tokens and tokens[-1] == "" else tokens
        bad = [i for i, t in enumerate(tokens) if backend.id_to_token(i) != t]
        if len(tokens) != vocab_size or bad:
            raise CT2FormatError(
                f"tokenizer.json and vocabulary.txt disagree ({len(tokens)} tokens; first different id: "
                f"{bad[:1]})"
            )
    # Whisper's own specials (languages, tasks, ...) are "additional special tokens": decode(...,
    # skip_special_tokens=True) drops them and _decode_with_timestamps finds the first timestamp id
    # after the last of them.
    extra = [t for t, _ in sorted(specials.items(), key=lambda kv: kv[1]) if t != "<|endoftext|>"]
    return WhisperTokenizer(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=extra,
        model_max_length=1024,
    )


# ------------------------------------------------------------------------------ generation


def generation_config(ct2_config: dict[str, Any], tokenizer, report: ConversionReport) -> dict[str, Any]:
    """generation_config.json for HF's Whisper ``generate``: ids from the tokenizer, suppression
    lists and alignment heads from CTranslate2's config.json; languages for multilingual models."""
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    gen: dict[str, Any] = {
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "max_length": 448,
        "no_timestamps_token_id": ids("<|notimestamps|>"),
        "prev_sot_token_id": ids("<|startofprev|>"),
        "suppress_tokens": list(ct2_config.get("suppress_ids") or []),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin") or [220, eot]),
        "is_multilingual": report.multilingual,
        "return_timestamps": False,
        "max_initial_timestamp_index": 50,
    }
    heads = ct2_config.get("alignment_heads")
    if heads:
        gen["alignment_heads"] = [list(map(int, h)) for h in heads]
    if report.multilingual:
        lang_ids = ct2_config.get("lang_ids") or []
        gen["lang_to_id"] = {tokenizer.convert_ids_to_tokens(int(i)): int(i) for i in lang_ids}
        gen["task_to_id"] = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
        # the default prompt: English transcription, no timestamps
        gen["forced_decoder_ids"] = [
            [1, ids("<|en|>")],
            [2, ids("<|transcribe|>")],
            [3, ids("<|notimestamps|>")],
        ]
        gen["language"] = "<|en|>"
        gen["task"] = "transcribe"
    else:
        gen["forced_decoder_ids"] = [[1, ids("<|notimestamps|>")]]
    return gen


def convert(ct2_dir: str | Path, out_dir: str | Path) -> ConversionReport:
    """Write the HF Whisper folder for the CTranslate2 folder ``ct2_dir`` into ``out_dir``
    (created; files in it are overwritten).  Returns what was converted."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperProcessor

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    missing = [f for f in CT2_FILES if not (ct2_dir / f).is_file()]
    if missing:
        raise CT2FormatError(f"{ct2_dir} is not a CTranslate2 Whisper folder: no {', '.join(missing)}")
    ct2_config = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
    sd, cfg_kwargs, report = ct2_to_hf_state_dict(read_ct2_model(ct2_dir / "model.bin"))
    tokenizer = build_tokenizer(ct2_dir, report.vocab_size)
    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    config = WhisperConfig(
        **cfg_kwargs,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        # decoding settings live in generation_config.json only: transformers 5 warns when the
        # model config repeats them
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    config.dtype = "float32"  # the file's float16 weights, widened: exact
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    GenerationConfig(**generation_config(ct2_config, tokenizer, report)).save_pretrained(str(out_dir))
    tensors = {k: v.contiguous() for k, v in sd.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    # safetensors writes 0600; a shared cache wants readable files
    os.chmod(out_dir / "model.safetensors", 0o644)
    features = WhisperFeatureExtractor(feature_size=report.num_mel_bins)
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(str(out_dir))
    # preprocessor_config.json: what WhisperFeatureExtractor / stage-1 exports read
    features.save_pretrained(str(out_dir))
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse
    import dataclasses

    parser = argparse.ArgumentParser(
        prog="python -m llmasr.ct2_whisper", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument(
        "ct2_dir", help="a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json)"
    )
    parser.add_argument("out_dir", help="the Hugging Face folder to write")
    args = parser.parse_args(argv)
    try:
        report = convert(args.ct2_dir, args.out_dir)
    except CT2FormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
