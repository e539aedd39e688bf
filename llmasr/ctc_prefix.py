"""Joint CTC / LLM decoding: the adapter's CTC head scores every token the LLM proposes.

    model.generate_ids(mel, lengths, ctc_weight=0.3)       # eval.ctc_weight in pipeline_config.yaml

The LLM alone, on little speech, writes fluent words where the speech is unclear (substitutions it
can defend as language).  The CTC head (``train.ctc_compress``) spells the same transcript in the
same LLM tokens from the speech alone.  Hybrid CTC/attention decoding (Watanabe et al. 2017,
"Hybrid CTC/Attention Architecture for End-to-End Speech Recognition"; ESPnet's
``CTCPrefixScorer``) ranks each candidate extension ``h = g + c`` of a hypothesis ``g`` by

    (1 - w) * log p_llm(c | g, speech) + w * (log p_ctc(h...) - log p_ctc(g...))

where ``log p_ctc(h...)`` is the CTC *prefix* probability: every alignment of the speech frames
whose labelling starts with ``h``.  Its increments sum, over a finished hypothesis, to the CTC
log-likelihood of the whole transcript (the end token scores ``log p_ctc(g)`` of the complete
labelling), so a hypothesis the speech does not support is pushed down whatever the LLM prefers.

``CTCPrefixScorer`` is a transformers ``LogitsProcessor``: it works with greedy search and beam
search alike (rows = inputs x beams), scores only the LLM's ``candidates`` best tokens per row
(the rest get -inf), and keeps the forward variables of every live prefix between steps.
A token the head cannot spell (``train.ctc_vocab: transcripts`` restricts it) has CTC
probability 0 and is never chosen, except where none of a row's candidates can be spelled: that
row then follows the LLM alone for the step (its CTC state stays as it was).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

NEG_INF = float("-inf")


class CTCPrefixScorer(LogitsProcessor):
    """Add the CTC prefix score of each candidate token to the LLM's log-probabilities.

    ``log_probs`` (B, S, C + 1): the CTC head's log-probabilities per input, blank last;
    ``lengths`` (B,): valid frames per input; ``token_to_class`` (V,): each LLM token id's class in
    the head (-1: the head cannot spell it); ``eos_token_id``: the LLM's end token (scores the
    complete labelling); ``weight`` in (0, 1]: the CTC share ``w``; ``candidates``: tokens scored per
    row per step (the LLM's best, before the CTC term).  ``input_ids`` seen by ``__call__`` hold the
    new tokens only (a decoder-only LLM fed ``inputs_embeds``), rows in input order, each input's
    beams consecutive (transformers' ``repeat_interleave``).
    """

    def __init__(
        self,
        log_probs: torch.Tensor,
        lengths: torch.Tensor,
        token_to_class: torch.Tensor,
        eos_token_id: int,
        weight: float,
        candidates: int = 8,
    ) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"the CTC weight must be in (0, 1], got {weight}")
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        # (B, S, C + 1); finite, so that the closed form's cumulative sums never meet inf - inf
        self.log_probs = log_probs.float().clamp(min=-1e4)
        self.lengths = lengths.to(torch.long).to(log_probs.device)  # (B,)
        self.blank = log_probs.shape[-1] - 1
        self.token_to_class = token_to_class.to(torch.long).to(log_probs.device)  # (V,)
        self.eos = int(eos_token_id)
        self.weight = float(weight)
        self.candidates = int(candidates)
        batch, frames = log_probs.shape[:2]
        t = torch.arange(frames, device=log_probs.device)
        self.valid = t[None, :] < self.lengths[:, None]  # (B, S)
        # The empty prefix: no label emitted, every frame so far blank.
        blank_lp = self.log_probs[:, :, self.blank].masked_fill(~self.valid, 0.0)  # (B, S)
        empty_b = torch.cumsum(blank_lp, dim=1)  # (B, S): log P(frames 0..t all blank)
        empty_n = torch.full_like(empty_b, NEG_INF)
        self._empty_n, self._empty_b = empty_n, empty_b
        # prefix state by (input, prefix tokens): (r_n (S,), r_b (S,), prefix score, last class)
        self.states: dict[tuple[int, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor, float, int]] = {
            (b, ()): self._empty(b) for b in range(batch)
        }

    def _empty(self, b: int) -> tuple[torch.Tensor, torch.Tensor, float, int]:
        """The empty prefix of input ``b``: nothing emitted, every frame blank (score log 1 = 0)."""
        return self._empty_n[b], self._empty_b[b], 0.0, -1

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows = scores.shape[0]  # B or B * num_beams
        batch = self.log_probs.shape[0]
        if rows % batch:
            raise ValueError(f"{rows} rows for {batch} inputs")
        beams = rows // batch
        inputs = torch.arange(rows, device=scores.device) // beams  # (R,): each row's input
        llm = scores.float().log_softmax(-1)  # (R, V): greedy passes logits, beam search log-probs
        if llm.shape[-1] > self.token_to_class.numel():  # an LM head wider than the embedding table
            extra = llm.shape[-1] - self.token_to_class.numel()
            self.token_to_class = torch.cat([self.token_to_class, self.token_to_class.new_full((extra,), -1)])
        k = min(self.candidates, llm.shape[-1])
        cand_lp, cand = llm.topk(k, dim=-1)  # (R, K), (R, K)
        prefixes = [tuple(row) for row in input_ids.tolist()]
        r_n_g, r_b_g, psi_g, last_g = [], [], [], []
        for r, (b, prefix) in enumerate(zip(inputs.tolist(), prefixes)):
            state = self.states.get((b, prefix))
            if state is None:
                if self.eos not in prefix:
                    raise KeyError(f"no CTC prefix state for row {r}'s prefix {prefix}")
                # a finished row (its end token chosen or forced): generate pads it, its scores are unused
                state = self._empty(b)
            r_n_g.append(state[0])
            r_b_g.append(state[1])
            psi_g.append(state[2])
            last_g.append(state[3])
        r_n_g = torch.stack(r_n_g)  # (R, S)
        r_b_g = torch.stack(r_b_g)  # (R, S)
        psi_g = torch.tensor(psi_g, dtype=torch.float32, device=scores.device)  # (R,)
        last_g = torch.tensor(last_g, device=scores.device)  # (R,)
        empty = torch.tensor([len(p) == 0 for p in prefixes], device=scores.device)  # (R,)

        classes = self.token_to_class[cand]  # (R, K): -1 where the head cannot spell it
        is_eos = cand == self.eos
        # only the candidates' columns are gathered: the whole (R, S, C + 1) copy costs more than the rest
        x_c = self.log_probs[inputs[:, None], :, classes.clamp(min=0)].transpose(
            1, 2
        )  # (R, K, S) -> (R, S, K)
        x_blank = self.log_probs[inputs, :, self.blank]  # (R, S)
        valid = self.valid[inputs]  # (R, S)

        # phi_t: the prefix g complete at frame t, ready for c (only via a blank when c repeats g's last).
        total_g = torch.logaddexp(r_n_g, r_b_g)  # (R, S)
        phi = torch.where(
            (classes == last_g[:, None])[:, None, :], r_b_g[:, :, None], total_g[:, :, None]
        )  # (R, S, K)
        # The recursions over frames t, in closed form (cumulative log-sums, no loop over frames):
        #   r_n[t] = x_c[t] + logaddexp(r_n[t-1], phi[t-1])     h ends at t on c
        #   r_b[t] = x_b[t] + logaddexp(r_b[t-1], r_n[t-1])     h ends at t on a blank
        #   psi    = logsumexp(r_n[0], phi[t-1] + x_c[t] for valid t >= 1)   the prefix probability of h
        # with r_n[0] = x_c[0] for an empty g (else -inf) and r_b[0] = -inf.  Unrolled with X = cumsum(x):
        #   r_n[t] = X[t] + logaddexp(r_n[0] - X[0], logcumsumexp_{s <= t-1}(phi[s] - X[s])), same for r_b.
        x_c, phi = x_c.double(), phi.double()
        x_b = x_blank.double()[:, :, None]  # (R, S, 1)
        start = torch.where(empty[:, None], 0.0, NEG_INF).to(x_c)  # (R, 1): r_n[0] - X[0]
        big_x = torch.cumsum(x_c, dim=1)  # (R, S, K)
        r_n = torch.cat(
            [
                (start + x_c[:, 0])[:, None],
                big_x[:, 1:]
                + torch.logaddexp(start[:, None], torch.logcumsumexp(phi[:, :-1] - big_x[:, :-1], 1)),
            ],
            dim=1,
        )  # (R, S, K)
        big_b = torch.cumsum(x_b, dim=1)  # (R, S, 1)
        r_b = torch.cat(
            [
                torch.full_like(r_n[:, :1], NEG_INF),
                big_b[:, 1:] + torch.logcumsumexp(r_n[:, :-1] - big_b[:, :-1], 1),
            ],
            dim=1,
        )  # (R, S, K)
        steps = (phi[:, :-1] + x_c[:, 1:]).masked_fill(~valid[:, 1:, None], NEG_INF)  # (R, S - 1, K)
        psi = torch.logaddexp(r_n[:, 0], torch.logsumexp(steps, dim=1)).float()  # (R, K)
        r_n, r_b = r_n.float(), r_b.float()
        last_frame = (self.lengths[inputs] - 1)[:, None]  # (R, 1)
        end = total_g.gather(1, last_frame)  # (R, 1): log P(the labelling is exactly g)
        psi = torch.where(is_eos, end.expand_as(psi), psi)
        psi = torch.where((classes < 0) & ~is_eos, torch.full_like(psi, NEG_INF), psi)  # (R, K)

        # a prefix the CTC cannot explain (more labels than frames) leaves that row to the LLM
        delta = torch.where(
            torch.isfinite(psi_g)[:, None], psi - psi_g[:, None], torch.full_like(psi, NEG_INF)
        )
        joint = (1.0 - self.weight) * cand_lp + self.weight * delta  # (R, K)
        joint = joint.masked_fill(torch.isneginf(cand_lp), NEG_INF)  # banned by the LLM's rules (0 x -inf)
        spellable = torch.isfinite(joint).any(-1)  # (R,): a row with none follows the LLM alone
        joint = torch.where(spellable[:, None], joint, cand_lp)
        out = torch.full_like(llm, NEG_INF).scatter(1, cand, joint)  # (R, V)

        # keep every candidate's state: the next call finds each surviving prefix among them
        step = len(prefixes[0]) + 1
        self.states = {key: s for key, s in self.states.items() if len(key[1]) == step - 1}
        own = (spellable[:, None] & (classes >= 0) & ~is_eos).tolist()  # (R, K): the candidate's own state
        cand_l, classes_l, psi_l = cand.tolist(), classes.tolist(), psi.tolist()
        psi_g_l, last_g_l, inputs_l = psi_g.tolist(), last_g.tolist(), inputs.tolist()
        r_n, r_b = r_n.unbind(0), r_b.unbind(0)  # R x (S, K)
        for r, prefix in enumerate(prefixes):
            for j in range(k):
                key = (inputs_l[r], (*prefix, cand_l[r][j]))
                if key in self.states:
                    continue
                if own[r][j]:
                    self.states[key] = (r_n[r][:, j], r_b[r][:, j], psi_l[r][j], classes_l[r][j])
                else:  # the end token, or a step the CTC had no say in: g's state carries over
                    self.states[key] = (r_n_g[r], r_b_g[r], psi_g_l[r], last_g_l[r])
        return out.to(scores.dtype)


def token_classes(ctc_tokens: torch.Tensor | None, vocab_size: int, device: torch.device) -> torch.Tensor:
    """(V,) each LLM token id's class in a CTC head: the id itself for a head over the whole
    vocabulary (``ctc_tokens`` None), else its position in ``ctc_tokens`` and -1 for the rest."""
    if ctc_tokens is None:
        return torch.arange(vocab_size, device=device)
    classes = torch.full((vocab_size,), -1, dtype=torch.long, device=device)
    classes[ctc_tokens.to(device)] = torch.arange(ctc_tokens.numel(), device=device)
    return classes
