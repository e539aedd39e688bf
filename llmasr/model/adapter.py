"""The adapter (``Adapter``): k stacked encoder frames -> the LLM's embedding width, with an
optional CTC head that compresses its output to about one embedding per token; and its files
(``save_adapter`` / ``load_adapter``).

    (B, T/2, D_enc)  --Adapter-->  (B, T/2//k, D_llm)       [k frames -> 1 embed]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
# the names earlier versions wrote (the adapter was called the projector): still read
FORMER_FILES = ("projector.json", "projector.safetensors")

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
ADAPTER_KINDS = ("mlp", "linear")


class Adapter(nn.Module):
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
        if kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter kind must be one of {ADAPTER_KINDS}, got {kind!r}")
        if k < 1:
            raise ValueError(f"adapter k must be >= 1, got {k}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"adapter activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if norm_to is not None and not norm_to > 0:
            raise ValueError(f"adapter norm_to must be > 0, got {norm_to}")
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
            raise ValueError("this adapter has no CTC head (train.ctc_compress: false)")
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
            raise ValueError(f"adapter expects encoder width {self.d_enc}, got {dim}")
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
            raise ValueError("this adapter has no CTC head (train.ctc_compress: false)")
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


def save_adapter(adapter: Adapter, path: str | Path) -> Path:
    """Write ``adapter.safetensors`` + ``adapter.json`` into folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    save_file(tensors, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (path / ADAPTER_CONFIG).write_text(json.dumps(adapter.config_dict(), indent=2) + "\n")
    return path


def adapter_files(path: str | Path) -> tuple[Path, Path] | None:
    """The config and weights files of the adapter folder ``path``: ``adapter.json`` +
    ``adapter.safetensors``, or ``projector.json`` + ``projector.safetensors`` as earlier versions
    wrote them; None when it has neither pair."""
    path = Path(path)
    for config, weights in ((ADAPTER_CONFIG, ADAPTER_WEIGHTS), FORMER_FILES):
        if (path / config).is_file() and (path / weights).is_file():
            return path / config, path / weights
    return None


def load_adapter(path: str | Path, device: str | torch.device = "cpu") -> Adapter:
    """Inverse of ``save_adapter`` (a folder an earlier version wrote, ``projector.*``, loads too)."""
    files = adapter_files(path)
    if files is None:
        raise FileNotFoundError(
            f"{path} has no {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS} (written by save_adapter)"
        )
    config, weights = files
    adapter = Adapter(**json.loads(config.read_text()))
    adapter.load_state_dict(load_file(str(weights), device=str(device)))
    return adapter.to(device)
