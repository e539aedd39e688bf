"""Word alignment for scoring: which reference and hypothesis words pair up, chosen by a fixed rule.

Several alignments often have the same, smallest number of errors, and they can put an error on
different words (reference "a b", hypothesis "b a": is "a" or "b" the deleted word?).  R- and
U-WER classify each error by its word, so the choice must be fixed.  ``align`` takes, in order:

1. the fewest errors (substitutions + deletions + insertions): the Levenshtein distance, so N-WER
   is the WER jiwer, sclite or any Levenshtein scorer reports;
2. among those, the fewest substitutions, that is the most matched words.  This is the preference
   of the word costs of NIST sclite and of fbai-speech's is21_deep_bias ``score.py`` (the
   contextual-biasing R/U-WER scorer): correct 0, insertion 3, deletion 3, substitution 4, under
   which two alignments with the same number of errors differ by their substitutions.  (Those
   costs would also trade one more error for four fewer substitutions; rule 1 keeps the count.)
3. any tie left: is21_deep_bias ``score.py``'s dynamic programme.  Reference words are rows,
   hypothesis words columns; each cell takes the diagonal move (match or substitution) when it is
   among the best, else the insertion, else the deletion; the alignment is read back from the last
   cell.  So the words near the end pair up diagonally and the extra words go earlier: reference
   "a b", hypothesis "b a" -> delete "a", match "b", insert "a"; reference "x", hypothesis "y z" ->
   insert "y", substitute "x" -> "z".

The alignment never looks at which words are rare: every system is aligned the same way.

Rows are computed with numpy, one vector operation per reference word.  Long utterances (a
long-form transcript against its hypothesis) keep only every K-th row of costs and recompute one
block of K rows at a time while reading back, so memory stays near ``_BLOCK_CELLS`` bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Op = Literal["equal", "substitute", "delete", "insert"]
Step = tuple[Op, str | None, str | None]

_DIAG, _INS, _DEL = 0, 1, 2
# backpointers kept at once (bytes): rows per block = this // (hypothesis words + 1)
_BLOCK_CELLS = 16_000_000


def align(ref: Sequence[str], hyp: Sequence[str], block_cells: int = _BLOCK_CELLS) -> list[Step]:
    """(op, ref_word, hyp_word) steps in order, chosen by the module's rule; either side may be empty."""
    n, m = len(ref), len(hyp)
    if not n:
        return [("insert", None, h) for h in hyp]
    if not m:
        return [("delete", r, None) for r in ref]
    ids: dict[str, int] = {}
    ref_ids = np.array([ids.setdefault(w, len(ids)) for w in ref], dtype=np.int64)
    hyp_ids = np.array([ids.setdefault(w, len(ids)) for w in hyp], dtype=np.int64)
    # one integer cost ranks (errors, substitutions): an error costs w, a substitution one more,
    # and w exceeds any possible number of substitutions
    w = min(n, m) + 1
    cols = np.arange(m + 1, dtype=np.int64) * w

    def next_row(prev: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Costs of row i (reference words 1..i) from row i-1, and row i's backpointers."""
        diag = prev[:-1] + np.where(hyp_ids == ref_ids[i - 1], 0, w + 1)
        best = np.empty(m + 1, dtype=np.int64)
        best[0] = prev[0] + w
        np.minimum(diag, prev[1:] + w, out=best[1:])
        # an insertion comes from the left in the same row: row[j] = min over k <= j of best[k] + (j - k) w
        row = np.minimum.accumulate(best - cols) + cols
        back = np.full(m + 1, _DEL, dtype=np.uint8)
        back[1:] = np.where(diag == row[1:], _DIAG, np.where(row[:-1] + w == row[1:], _INS, _DEL))
        return row, back

    rows_per_block = max(1, block_cells // (m + 1))
    starts = list(range(0, n, rows_per_block))  # a block covers rows start+1 .. start+rows_per_block
    checkpoints = {0: cols.copy()}
    row = checkpoints[0]
    for i in range(1, starts[-1] + 1):
        row, _ = next_row(row, i)
        if i in starts:
            checkpoints[i] = row
    steps: list[Step] = []
    i, j = n, m
    for start in reversed(starts):
        stop = min(start + rows_per_block, n)
        back = np.empty((stop - start, m + 1), dtype=np.uint8)
        row = checkpoints.pop(start)
        for k in range(start + 1, stop + 1):
            row, back[k - start - 1] = next_row(row, k)
        while i > start:
            move = back[i - start - 1, j] if j else _DEL
            if move == _DIAG:
                i, j = i - 1, j - 1
                steps.append(("equal" if ref[i] == hyp[j] else "substitute", ref[i], hyp[j]))
            elif move == _INS:
                j -= 1
                steps.append(("insert", None, hyp[j]))
            else:
                i -= 1
                steps.append(("delete", ref[i], None))
    steps.extend(("insert", None, hyp[k]) for k in reversed(range(j)))  # row 0: what is left is inserted
    steps.reverse()
    return steps
