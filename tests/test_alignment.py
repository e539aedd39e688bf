"""tasks.alignment: the fewest errors, then the most matches, then is21_deep_bias's move order."""

from __future__ import annotations

import functools
import random

import jiwer
import pytest

from tasks.alignment import align


def _all_alignments(ref: tuple[str, ...], hyp: tuple[str, ...]) -> list[list[tuple]]:
    @functools.cache
    def go(i: int, j: int) -> list[tuple]:
        if i == len(ref) and j == len(hyp):
            return [()]
        out = []
        if i < len(ref) and j < len(hyp):
            op = "equal" if ref[i] == hyp[j] else "substitute"
            out += [((op, ref[i], hyp[j]),) + rest for rest in go(i + 1, j + 1)]
        if j < len(hyp):
            out += [(("insert", None, hyp[j]),) + rest for rest in go(i, j + 1)]
        if i < len(ref):
            out += [(("delete", ref[i], None),) + rest for rest in go(i + 1, j)]
        return out

    return [list(a) for a in go(0, 0)]


def _counts(steps: list[tuple]) -> tuple[int, int]:
    """(errors, substitutions)"""
    return sum(op != "equal" for op, _, _ in steps), sum(op == "substitute" for op, _, _ in steps)


def _scalar_reference(ref: list[str], hyp: list[str]) -> list[tuple]:
    """The rule written out cell by cell, as is21_deep_bias's score.py loops (costs as (errors, subs))."""
    n, m = len(ref), len(hyp)
    cost = [[(0, 0)] * (m + 1) for _ in range(n + 1)]
    back = [[""] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        for j in range(m + 1):
            if i == 0 and j == 0:
                continue
            if i == 0:
                cost[i][j], back[i][j] = (cost[i][j - 1][0] + 1, cost[i][j - 1][1]), "ins"
                continue
            if j == 0:
                cost[i][j], back[i][j] = (cost[i - 1][j][0] + 1, cost[i - 1][j][1]), "del"
                continue
            e, s = cost[i - 1][j - 1]
            best, move = ((e, s) if ref[i - 1] == hyp[j - 1] else (e + 1, s + 1)), "diag"
            ins = (cost[i][j - 1][0] + 1, cost[i][j - 1][1])
            if ins < best:
                best, move = ins, "ins"
            dele = (cost[i - 1][j][0] + 1, cost[i - 1][j][1])
            if dele < best:
                best, move = dele, "del"
            cost[i][j], back[i][j] = best, move
    out: list[tuple] = []
    i, j = n, m
    while i or j:
        move = back[i][j]
        if move == "diag":
            i, j = i - 1, j - 1
            out.append(("equal" if ref[i] == hyp[j] else "substitute", ref[i], hyp[j]))
        elif move == "ins":
            j -= 1
            out.append(("insert", None, hyp[j]))
        else:
            i -= 1
            out.append(("delete", ref[i], None))
    return out[::-1]


def _random_pair(rng: random.Random, max_len: int, vocab: str) -> tuple[list[str], list[str]]:
    ref = [rng.choice(vocab) for _ in range(rng.randint(0, max_len))]
    hyp = [rng.choice(vocab) for _ in range(rng.randint(0, max_len))]
    return ref, hyp


def test_documented_examples() -> None:
    assert align(["a", "b"], ["b", "a"]) == [
        ("delete", "a", None),
        ("equal", "b", "b"),
        ("insert", None, "a"),
    ]
    assert align(["x"], ["y", "z"]) == [("insert", None, "y"), ("substitute", "x", "z")]
    # two substitutions or a deletion, a match and an insertion: both 2 errors; the match wins
    assert align(["a", "b"], ["b", "c"]) == [
        ("delete", "a", None),
        ("equal", "b", "b"),
        ("insert", None, "c"),
    ]
    assert (
        align([], ["a"]) == [("insert", None, "a")]
        and align(["a"], []) == [("delete", "a", None)]
        and align([], []) == []
    )


def test_fewest_errors_then_fewest_substitutions_over_every_alignment() -> None:
    rng = random.Random(0)
    for _ in range(400):
        ref, hyp = _random_pair(rng, 4, "abc")
        got = align(ref, hyp)
        assert [s[1] for s in got if s[1] is not None] == ref and [
            s[2] for s in got if s[2] is not None
        ] == hyp
        assert _counts(got) == min(_counts(a) for a in _all_alignments(tuple(ref), tuple(hyp))), (
            ref,
            hyp,
            got,
        )


def test_error_count_is_jiwers() -> None:
    rng = random.Random(1)
    for _ in range(300):
        ref, hyp = _random_pair(rng, 12, "abcd")
        if not ref or not hyp:
            continue
        out = jiwer.process_words(" ".join(ref), " ".join(hyp))
        assert _counts(align(ref, hyp))[0] == out.substitutions + out.deletions + out.insertions


def test_ties_follow_the_scalar_rule() -> None:
    rng = random.Random(2)
    for _ in range(500):
        ref, hyp = _random_pair(rng, 9, "abc")  # three words: many equally short alignments
        assert align(ref, hyp) == _scalar_reference(ref, hyp), (ref, hyp)


@pytest.mark.parametrize("block_cells", [1, 7, 64])
def test_long_inputs_read_back_in_blocks_give_the_same_alignment(block_cells: int) -> None:
    rng = random.Random(3)
    for _ in range(40):
        ref, hyp = _random_pair(rng, 30, "abcde")
        assert align(ref, hyp, block_cells=block_cells) == align(ref, hyp), (ref, hyp)


def test_a_long_form_transcript_aligns_quickly() -> None:
    rng = random.Random(4)
    vocab = [f"w{i}" for i in range(3000)]
    ref = [rng.choice(vocab) for _ in range(3000)]
    hyp = [w if rng.random() > 0.1 else rng.choice(vocab) for w in ref if rng.random() > 0.03]
    steps = align(ref, hyp, block_cells=1_000_000)  # 4 blocks of rows
    assert [s[1] for s in steps if s[1] is not None] == ref and [
        s[2] for s in steps if s[2] is not None
    ] == hyp
    assert steps == align(ref, hyp)
