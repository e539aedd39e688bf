"""The Zipformer-Transducer's RNN-T loss (llmasr/zipformer/loss.py) against warprnnt-numba's.

.venv/bin/pytest tests/test_zipformer_loss.py
"""

from __future__ import annotations

import pytest
import torch

from llmasr.zipformer.loss import rnnt_loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_loss_equals_warprnnt_in_float64(seed: int) -> None:
    """Values and gradients agree to float64 rounding, over uneven frame and token counts (an empty
    transcript and a one-frame utterance included)."""
    g = torch.Generator().manual_seed(seed)
    B, T, U, V = 5, 9, 6, 7
    logits = torch.randn(
        B, T, U + 1, V, dtype=torch.float64, generator=g, requires_grad=True
    )  # (B, T, U+1, V)
    targets = torch.randint(1, V, (B, U), generator=g)
    t_lens = torch.tensor([9, 7, 4, 1, 9])
    u_lens = torch.tensor([6, 3, 0, 2, 1])
    ours = rnnt_loss(logits, targets, t_lens, u_lens, impl="torch")
    ref = rnnt_loss(logits, targets, t_lens, u_lens, impl="warp")
    assert torch.allclose(ours, ref.double(), rtol=0, atol=1e-12), (ours, ref)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g_ours, g_ref, rtol=0, atol=1e-12)


def test_loss_of_a_certain_path_is_zero() -> None:
    """Logits that put all mass on one alignment (emit y1 at frame 0, then blank) give loss ~0; the
    same logits with another transcript give a large loss."""
    big = 50.0
    logits = torch.zeros(1, 2, 2, 3, dtype=torch.float64)  # (B=1, T=2, U+1=2, V=3)
    logits[0, 0, 0, 2] = big  # frame 0, no token yet: emit token 2
    logits[0, 0, 1, 0] = big  # frame 0 after it: blank
    logits[0, 1, 1, 0] = big  # frame 1: blank
    lengths = torch.tensor([2]), torch.tensor([1])
    right = rnnt_loss(logits, torch.tensor([[2]]), *lengths, impl="torch")
    wrong = rnnt_loss(logits, torch.tensor([[1]]), *lengths, impl="torch")
    assert float(right) < 1e-10
    assert float(wrong) > 40
