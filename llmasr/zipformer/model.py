"""The Zipformer-Transducer: Conv2d subsampling + Zipformer encoder (the ``zipformer`` package's),
icefall's stateless decoder and joiner, trained with the full RNN-T loss.

    from llmasr.zipformer.model import ZipformerSizes, ZipformerTransducer
    model = ZipformerTransducer(ZipformerSizes(vocab_size=500))        # icefall's Zipformer-M sizes
    loss = model(feats, feat_lens, targets, target_lens)                # (B,) RNN-T loss per utterance
    enc, enc_lens = model.encode(feats, feat_lens)                      # (B, T', encoder_out_dim), (B,)

Frame rates: fbank 100 Hz -> Conv2dSubsampling 2x (``T' = (T - 7) // 2``) -> the Zipformer's stacks
at their own rates -> its output at 2x again: 25 Hz.  The decoder sees the last ``context_size``
tokens only (stateless), blank = 0 as the start symbol.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from llmasr.zipformer.loss import rnnt_loss
from llmasr.zipformer.pkg import make_pad_mask, zipformer_modules


@dataclass
class ZipformerSizes:
    """Model sizes; the defaults are icefall's Zipformer-M (librispeech/ASR zipformer, ~65 M params
    with vocabulary 500).  Per-stack tuples have one entry per encoder stack."""

    vocab_size: int = 500
    feature_dim: int = 80
    downsampling_factor: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 4, 2])
    num_encoder_layers: list[int] = field(default_factory=lambda: [2, 2, 3, 4, 3, 2])
    encoder_dim: list[int] = field(default_factory=lambda: [192, 256, 384, 512, 384, 256])
    encoder_unmasked_dim: list[int] = field(default_factory=lambda: [192, 192, 256, 256, 256, 192])
    feedforward_dim: list[int] = field(default_factory=lambda: [512, 768, 1024, 1536, 1024, 768])
    num_heads: list[int] = field(default_factory=lambda: [4, 4, 4, 8, 4, 4])
    cnn_module_kernel: list[int] = field(default_factory=lambda: [31, 31, 15, 15, 15, 31])
    query_head_dim: int = 32
    pos_head_dim: int = 4
    value_head_dim: int = 12
    pos_dim: int = 48
    decoder_dim: int = 512
    joiner_dim: int = 512
    context_size: int = 2
    warmup_batches: float = 4000.0  # the Zipformer's layer-bypass / dropout warm-up, in batches
    ctc_loss_scale: float = 0.0  # > 0: a CTC head on the encoder, its loss x this added (icefall's --use-ctc)

    def to_dict(self) -> dict:
        return asdict(self)


class Decoder(nn.Module):
    """icefall's stateless prediction network: embedding -> grouped Conv1d over the last
    ``context_size`` tokens -> ReLU."""

    def __init__(self, vocab_size: int, decoder_dim: int, context_size: int, blank_id: int = 0) -> None:
        super().__init__()
        zf = zipformer_modules()
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        # keep the embedding magnitudes in range (icefall: they drift otherwise)
        self.balancer = zf.Balancer(
            decoder_dim,
            channel_dim=-1,
            min_positive=0.0,
            max_positive=1.0,
            min_abs=0.5,
            max_abs=1.0,
            prob=0.05,
        )
        self.conv = (
            nn.Conv1d(decoder_dim, decoder_dim, context_size, groups=decoder_dim // 4, bias=False)
            if context_size > 1
            else nn.Identity()
        )

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """(N, U) token ids -> (N, U, decoder_dim); ``need_pad``: left-pad by ``context_size - 1``
        (training); False when ``y`` is exactly the context (decoding)."""
        emb = self.balancer(self.embedding(y.long().clamp(min=0)) * (y >= 0).unsqueeze(-1))  # (N, U, D)
        if self.context_size > 1:
            emb = emb.permute(0, 2, 1)  # (N, D, U)
            if need_pad:
                emb = nn.functional.pad(emb, (self.context_size - 1, 0))  # (N, D, U + context - 1)
            emb = torch.relu(self.conv(emb)).permute(0, 2, 1)  # (N, U, D)
        return emb


class Joiner(nn.Module):
    """icefall's joiner: tanh(enc_proj(enc) + dec_proj(dec)) -> Linear to the vocabulary."""

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int) -> None:
        super().__init__()
        zf = zipformer_modules()
        self.encoder_proj = zf.ScaledLinear(encoder_dim, joiner_dim, initial_scale=0.25)
        self.decoder_proj = zf.ScaledLinear(decoder_dim, joiner_dim, initial_scale=0.25)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor, project_input: bool = True) -> torch.Tensor:
        """Broadcastable (..., encoder_dim) and (..., decoder_dim) -> (..., vocab_size) logits."""
        if project_input:
            enc, dec = self.encoder_proj(enc), self.decoder_proj(dec)
        return self.output_linear(torch.tanh(enc + dec))


class ZipformerTransducer(nn.Module):
    def __init__(self, sizes: ZipformerSizes, loss_impl: str = "torch") -> None:
        super().__init__()
        zf = zipformer_modules()
        self.sizes = sizes
        self.loss_impl = loss_impl
        self.encoder_embed = zf.Conv2dSubsampling(
            in_channels=sizes.feature_dim,
            out_channels=sizes.encoder_dim[0],
            dropout=zf.ScheduledFloat((0.0, 0.3), (20000.0, 0.1)),
        )
        self.encoder = zf.Zipformer(
            output_downsampling_factor=2,
            downsampling_factor=tuple(sizes.downsampling_factor),
            num_encoder_layers=tuple(sizes.num_encoder_layers),
            encoder_dim=tuple(sizes.encoder_dim),
            encoder_unmasked_dim=tuple(sizes.encoder_unmasked_dim),
            query_head_dim=(sizes.query_head_dim,),
            pos_head_dim=(sizes.pos_head_dim,),
            value_head_dim=(sizes.value_head_dim,),
            pos_dim=sizes.pos_dim,
            num_heads=tuple(sizes.num_heads),
            feedforward_dim=tuple(sizes.feedforward_dim),
            cnn_module_kernel=tuple(sizes.cnn_module_kernel),
            warmup_batches=sizes.warmup_batches,
        )
        self.encoder_out_dim = max(sizes.encoder_dim)
        self.decoder = Decoder(sizes.vocab_size, sizes.decoder_dim, sizes.context_size)
        self.joiner = Joiner(self.encoder_out_dim, sizes.decoder_dim, sizes.joiner_dim, sizes.vocab_size)
        # icefall's joint CTC/transducer option: the CTC loss makes the encoder spell the tokens itself,
        # which the transducer alone leaves to the decoder early on (it memorises transcripts first)
        self.ctc_output = (
            nn.Linear(self.encoder_out_dim, sizes.vocab_size) if sizes.ctc_loss_scale > 0 else None
        )

    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, feature_dim) fbank, (B,) -> (B, T', encoder_out_dim) at 25 Hz, (B,) lengths."""
        x, x_lens = self.encoder_embed(feats, feat_lens)  # (B, (T - 7) // 2, encoder_dim[0])
        mask = make_pad_mask(x_lens, x.shape[1])  # (B, T'') True = padding
        out, out_lens = self.encoder(x.permute(1, 0, 2), x_lens, mask)  # (T', B, C)
        return out.permute(1, 0, 2), out_lens  # (B, T', C)

    def forward(
        self,
        feats: torch.Tensor,
        feat_lens: torch.Tensor,
        targets: torch.Tensor,
        target_lens: torch.Tensor,
    ) -> torch.Tensor:
        """(B, T, F) fbank, (B,), (B, U) token ids (padded with 0), (B,) -> (B,) RNN-T loss per utterance
        (+ ``ctc_loss_scale`` x the CTC loss in training)."""
        enc, enc_lens = self.encode(feats, feat_lens)  # (B, T', C)
        blank = self.decoder.blank_id
        sos = torch.full((targets.shape[0], 1), blank, dtype=torch.long, device=targets.device)
        dec = self.decoder(torch.cat([sos, targets.long()], dim=1))  # (B, U+1, decoder_dim)
        logits = self.joiner(enc.unsqueeze(2), dec.unsqueeze(1))  # (B, T', U+1, V)
        loss = rnnt_loss(logits, targets, enc_lens, target_lens, blank=blank, impl=self.loss_impl)
        if self.ctc_output is not None and self.training:
            ctc_logp = self.ctc_output(enc).log_softmax(-1).transpose(0, 1)  # (T', B, V)
            ctc = nn.functional.ctc_loss(
                ctc_logp.float(),
                targets,
                enc_lens,
                target_lens,
                blank=blank,
                reduction="none",
                zero_infinity=True,
            )
            loss = loss + self.sizes.ctc_loss_scale * ctc.to(loss.dtype)
        return loss


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Tell the Zipformer's scheduled values (dropout, balancers, layer bypass) the training step, as
    icefall's train.py does before every batch."""
    for name, module in model.named_modules():
        if hasattr(module, "batch_count"):
            module.batch_count = batch_count
        if hasattr(module, "name"):
            module.name = name


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
