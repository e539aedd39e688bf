"""Transducer decoding: greedy search and modified beam search (icefall's ``modified_beam_search``:
at most one symbol per frame, hypotheses with the same tokens merged by log-add), one utterance at a
time over its encoder frames.

    from llmasr.zipformer.search import modified_beam_search, greedy_search
    ids = modified_beam_search(model, enc[i, : enc_lens[i]], beam=4)     # token ids, blank excluded
"""

from __future__ import annotations

import torch


def start_context(blank: int, context_size: int) -> list[int]:
    """The decoder's context before any token, as training sees it: the blank (the start symbol)
    after ``context_size - 1`` positions of left padding (-1: a zero embedding)."""
    return [-1] * (context_size - 1) + [blank]


@torch.no_grad()
def greedy_search(model, enc: torch.Tensor) -> list[int]:
    """(T, C) encoder frames of one utterance -> the most likely symbol per frame, blanks dropped."""
    blank, ctx = model.decoder.blank_id, model.decoder.context_size
    hyp = start_context(blank, ctx)
    enc_proj = model.joiner.encoder_proj(enc)  # (T, joiner_dim)
    dec_proj = model.joiner.decoder_proj(
        model.decoder(torch.tensor([hyp[-ctx:]]), need_pad=False)
    )  # (1, 1, J)
    for t in range(enc.shape[0]):
        logits = model.joiner(enc_proj[t], dec_proj[0, 0], project_input=False)  # (V,)
        y = int(logits.argmax())
        if y != blank:
            hyp.append(y)
            dec_proj = model.joiner.decoder_proj(model.decoder(torch.tensor([hyp[-ctx:]]), need_pad=False))
    return hyp[ctx:]


@torch.no_grad()
def modified_beam_search(model, enc: torch.Tensor, beam: int = 4) -> list[int]:
    """(T, C) encoder frames of one utterance -> the best token sequence of a ``beam``-wide search
    with at most one symbol per frame (blank keeps a hypothesis as it is)."""
    blank, ctx = model.decoder.blank_id, model.decoder.context_size
    hyps: dict[tuple[int, ...], torch.Tensor] = {
        tuple(start_context(blank, ctx)): torch.zeros((), dtype=torch.float64)
    }
    enc_proj = model.joiner.encoder_proj(enc)  # (T, joiner_dim)
    for t in range(enc.shape[0]):
        keys = list(hyps)
        contexts = torch.tensor([k[-ctx:] for k in keys])  # (H, ctx)
        dec_proj = model.joiner.decoder_proj(model.decoder(contexts, need_pad=False))[:, 0]  # (H, J)
        logits = model.joiner(enc_proj[t].unsqueeze(0), dec_proj, project_input=False)  # (H, V)
        logp = logits.log_softmax(dim=-1).double()  # (H, V)
        scores = torch.stack([hyps[k] for k in keys]).unsqueeze(1) + logp  # (H, V)
        V = scores.shape[1]
        top = scores.reshape(-1).topk(min(beam, scores.numel()))
        new: dict[tuple[int, ...], torch.Tensor] = {}
        for score, flat in zip(top.values, top.indices.tolist()):
            h, y = divmod(flat, V)
            key = keys[h] if y == blank else keys[h] + (y,)
            new[key] = torch.logaddexp(new[key], score) if key in new else score
        hyps = new
    best = max(hyps, key=lambda k: float(hyps[k]))
    return list(best[ctx:])
