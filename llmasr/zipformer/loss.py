"""RNN-T loss: the full transducer loss over the (T, U+1) lattice, two implementations.

    from llmasr.zipformer.loss import rnnt_loss
    loss = rnnt_loss(logits, targets, logit_lengths, target_lengths, blank=0, impl="torch")  # (B,)

``impl="torch"``: plain PyTorch (any device, autograd gives the gradient).  Of the joiner's logits
only two numbers per lattice node matter, log P(blank | t, u) and log P(y_{u+1} | t, u); they are
gathered from the log-softmax (float64 from there on: the recursion sums hundreds of log-probs),
and the forward variable is computed one frame at a time.  Within a frame ``t`` the recursion
along ``u``

    alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + emit[t, u-1])

is a linear recurrence in log space, solved in closed form with a cumulative sum and
``logcumsumexp``:  with ``C[u] = sum_{j<u} emit[t, j]`` and ``a[k] = alpha[t-1, k] + blank[t-1, k]``,
``alpha[t, u] = C[u] + logcumsumexp_k(a[k] - C[k])[u]``.  So T vectorised steps, not T x U.
The loss of an utterance with ``T_b`` frames and ``U_b`` tokens is
``-(alpha[T_b-1, U_b] + blank[T_b-1, U_b])``.

``impl="warp"``: ``warprnnt-numba`` (NeMo's numba port of warp-transducer; CPU and CUDA kernels),
the reference the tests compare with.  Which one training uses is ``zipformer.loss``; the README
("Zipformer-Transducer baseline") gives the measurement behind the default.
"""

from __future__ import annotations

import torch


def lattice_scores(
    logits: torch.Tensor, targets: torch.Tensor, blank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, U+1, V) joiner logits, (B, U) targets -> blank (B, T, U+1) and emit (B, T, U) log-probs,
    float64."""
    logp = logits.log_softmax(dim=-1)  # (B, T, U+1, V)
    blank_lp = logp[..., blank].double()  # (B, T, U+1)
    B, T, U1, _ = logp.shape
    # the index gets a dummy last column so the gather reads logp whole (a slice of the big tensor
    # would cost a full-size zero fill in the backward); the column is dropped on the small result
    index = torch.cat([targets.long().clamp(min=0), targets.new_zeros(B, 1).long()], dim=1)  # (B, U+1)
    index = index[:, None, :, None].expand(B, T, U1, 1)  # (B, T, U+1, 1)
    emit_lp = logp.gather(-1, index).squeeze(-1)[:, :, : U1 - 1].double()  # (B, T, U)
    return blank_lp, emit_lp


def rnnt_loss_torch(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
) -> torch.Tensor:
    """Per-utterance RNN-T loss (B,), float64, by the closed-form frame recursion (module docstring)."""
    blank_lp, emit_lp = lattice_scores(logits, targets, blank)
    B, T, U1 = blank_lp.shape
    # positions past an utterance's own U_b are never read by its final score, so no masking is needed
    zero = emit_lp.new_zeros(B, T, 1)
    C = torch.cat([zero, emit_lp], dim=2).cumsum(dim=2)  # (B, T, U+1): C[b, t, u] = sum_{j<u} emit[b, t, j]
    # unbind once: indexing a frame per step would cost a full (B, T, U+1) zero fill per step backward
    blank_rows, C_rows = blank_lp.unbind(1), C.unbind(1)  # T x (B, U+1)
    alpha = C_rows[0]  # alpha[0, u] = C[0, u]: u tokens emitted at frame 0
    rows = [alpha]
    for t in range(1, T):
        a = alpha + blank_rows[t - 1]  # (B, U+1): arrive at frame t by a blank from frame t-1
        alpha = C_rows[t] + torch.logcumsumexp(a - C_rows[t], dim=1)
        rows.append(alpha)
    alphas = torch.stack(rows, dim=1)  # (B, T, U+1)
    b = torch.arange(B, device=logits.device)
    t_last = logit_lengths.long() - 1
    u_last = target_lengths.long()
    return -(alphas[b, t_last, u_last] + blank_lp[b, t_last, u_last])


def rnnt_loss_warp(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
) -> torch.Tensor:
    """Per-utterance RNN-T loss (B,) by ``warprnnt_numba`` (its CPU path takes log-probs: the log-softmax
    is applied here, as its ``RNNTLossNumba`` does)."""
    from warprnnt_numba.rnnt_loss.rnnt_pytorch import _RNNTNumba

    acts = logits if logits.is_cuda else logits.log_softmax(dim=-1)
    # numba's CPU thread pool resets the process's OpenMP thread count to the core count, which
    # torch then uses too (measured: a 1-thread training process went to 2 threads, 4x slower on a
    # busy 2-core machine); the caller's setting is put back
    threads = torch.get_num_threads()
    try:
        return _RNNTNumba.apply(
            acts.contiguous(),
            targets.int().contiguous(),
            logit_lengths.int().contiguous(),
            target_lengths.int().contiguous(),
            blank,
            "none",
            0.0,
            0.0,
        )
    finally:
        torch.set_num_threads(threads)


def rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    impl: str = "torch",
) -> torch.Tensor:
    """Per-utterance RNN-T loss (B,): ``impl`` "torch" or "warp"."""
    if impl == "torch":
        return rnnt_loss_torch(logits, targets, logit_lengths, target_lengths, blank)
    if impl == "warp":
        return rnnt_loss_warp(logits, targets, logit_lengths, target_lengths, blank)
    raise ValueError(f"unknown RNN-T loss implementation {impl!r} (torch or warp)")
