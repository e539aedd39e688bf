"""Evaluation metrics: O-WER, N-WER, R-WER and U-WER, exactly as DESIGN.md "Metrics (exact)" defines them.

- **O-WER**: WER on the texts as written (case and punctuation count), whitespace tokens.
- **N-WER**: WER after Whisper's English text normaliser (``llmasr.text.normalize``) on both sides.
- **R-WER**: on normalised text.  The rare words R are the words whose count in the training
  transcripts is at most ``max_train_count`` (default 0: never seen, the zero-shot case) and that are
  not among the ``common_words`` most frequent English words (default 5000, ``common_word_set``:
  wordfreq's English list, each entry normalised like the references; 0 = no such exclusion), plus
  the words of an optional user word list (normalised the same way), which are rare even when
  common: the list is the user's explicit choice, the common-word rule only guards the count rule
  against a small training set (fbai-speech is21_deep_bias: rare = outside the 5,000 most common
  words).  Reference and hypothesis are aligned (normalised words, ``align_words``) and

      R-WER = (substituted or deleted reference words in R + inserted hypothesis words in R)
              / (reference words in R)

- **U-WER**: the same over the words not in R.

Alignment (``tasks.alignment.align``): of all alignments, one with the fewest errors (so N-WER is the
usual Levenshtein WER); among those, one with the fewest substitutions (most matched words: the
preference of sclite's and is21_deep_bias's word costs 0/3/3/4); remaining ties as is21_deep_bias's
``score.py`` breaks them (in each cell of the dynamic programme the diagonal move first, then the
insertion, then the deletion; read back from the end).  O-WER's tokens are aligned the same way.

Classification rule: substitutions and deletions are classified by the *reference* word, insertions
(which have no reference word) by the *hypothesis* word.  So a substitution whose reference word is
common but whose hypothesis word is rare ("cat" -> "quilter") is a U error, and one whose reference
word is rare but whose hypothesis word is common is an R error.  Hence, per utterance,
``r_errors + u_errors == n.errors`` and ``r_words + u_words == n.ref_words``.

All rates are corpus-level: errors summed over the test set divided by reference words summed
(``score_corpus``).  A rate whose denominator is 0 is ``None`` (not applicable), never 0: a test set
without rare reference words has ``r_wer is None``.  An empty reference with a non-empty hypothesis
adds its insertions to the corpus numerators and nothing to the denominators; an empty hypothesis
makes every reference word a deletion; both empty contribute nothing.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Container, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from llmasr.text import WordErrors, normalize
from tasks.alignment import Op, align


def build_vocabulary(train_texts: Iterable[str | None]) -> Counter[str]:
    """Counts of normalised words over the training transcripts (the kept pseudo-labels)."""
    counts: Counter[str] = Counter()
    for text in train_texts:
        counts.update(normalize(text).split())
    return counts


@functools.lru_cache(maxsize=4)
def common_word_set(n: int) -> frozenset[str]:
    """The normalised forms of the ``n`` most frequent English words (``wordfreq.top_n_list('en', n)``).

    Each entry is normalised like the references and every word it gives is kept ("it's" gives
    "it" and "is", "one" gives "1", "mr" gives "mister"), so 5000 entries give about 4,900 words.
    ``n <= 0``: the empty set.
    """
    if n <= 0:
        return frozenset()
    from wordfreq import top_n_list

    return frozenset(w for entry in top_n_list("en", n) for w in normalize(entry).split())


def common_word_source(n: int) -> str | None:
    """Where ``common_word_set(n)`` comes from, for the report; None when the rule is off."""
    if n <= 0:
        return None
    from importlib.metadata import version

    return f"wordfreq {version('wordfreq')} top_n_list('en', {n})"


class RareWords:
    """The rare-word set R: ``word in rare`` for a *normalised* word.

    A word is rare when its training count is ``<= max_train_count`` (words never seen have count 0)
    and it is not in ``common`` (``common_word_set``), or when it is one of the ``extra`` words (a
    user word list; rare even when common).  Each ``extra`` entry is normalised with the same Whisper
    normaliser, and every word it normalises to is added ("Mr. Quilter" adds "mister" and
    "quilter").  A negative ``max_train_count`` makes R exactly the word list.
    """

    def __init__(
        self,
        counts: Mapping[str, int],
        max_train_count: int = 0,
        extra: Iterable[str] = (),
        common: Iterable[str] = (),
    ) -> None:
        self.counts: Mapping[str, int] = counts
        self.max_train_count = int(max_train_count)
        self.extra: frozenset[str] = frozenset(w for entry in extra for w in normalize(entry).split())
        self.common: frozenset[str] = frozenset(common)

    def by_count(self, word: str) -> bool:
        """The training-count rule alone (before the common-word exclusion)."""
        return self.counts.get(word, 0) <= self.max_train_count

    def __contains__(self, word: object) -> bool:
        if not isinstance(word, str):
            return False
        return word in self.extra or (self.by_count(word) and word not in self.common)

    def __repr__(self) -> str:
        return (
            f"RareWords(vocabulary={len(self.counts)}, max_train_count={self.max_train_count}, "
            f"extra={len(self.extra)}, common={len(self.common)})"
        )


class AlignedWord(NamedTuple):
    """One step of the normalised alignment: (op, ref_word, hyp_word, is_rare).

    ``is_rare`` is the class of the reference word, or of the hypothesis word for an insertion.
    """

    op: Op
    ref: str | None
    hyp: str | None
    rare: bool


@dataclass(frozen=True)
class UtteranceScore:
    """Scores of one hypothesis against one reference (counts; rates come from ``score_corpus``)."""

    utt_id: str
    ref: str
    hyp: str
    ref_norm: str
    hyp_norm: str
    o: WordErrors
    n: WordErrors
    r_errors: int
    r_words: int
    u_errors: int
    u_words: int
    alignment: list[AlignedWord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (alignment as lists)."""
        out = asdict(self)
        out["alignment"] = [list(a) for a in self.alignment]
        return out


def align_words(ref_words: list[str], hyp_words: list[str]) -> list[tuple[Op, str | None, str | None]]:
    """(op, ref_word, hyp_word) steps of the scoring alignment (``tasks.alignment.align``: fewest
    errors, then most matches, then is21_deep_bias's move order); either side may be empty."""
    return align(ref_words, hyp_words)


def _step_counts(steps: list[tuple[Op, str | None, str | None]]) -> WordErrors:
    ops = Counter(op for op, _, _ in steps)
    return WordErrors(ops["substitute"], ops["delete"], ops["insert"], len(steps) - ops["insert"])


def score_utterance(utt_id: str, ref: str | None, hyp: str | None, rare: Container[str]) -> UtteranceScore:
    """O, N, R and U error counts of ``hyp`` against ``ref`` (R = ``rare``, normalised words)."""
    ref, hyp = ref or "", hyp or ""
    ref_norm, hyp_norm = normalize(ref), normalize(hyp)
    steps = align_words(ref_norm.split(), hyp_norm.split())

    alignment: list[AlignedWord] = []
    subs = dels = ins = 0
    r_errors = r_words = u_errors = u_words = 0
    for op, r, h in steps:
        is_rare = (h if op == "insert" else r) in rare
        alignment.append(AlignedWord(op, r, h, is_rare))
        if op != "insert":
            if is_rare:
                r_words += 1
            else:
                u_words += 1
        if op == "equal":
            continue
        if op == "substitute":
            subs += 1
        elif op == "delete":
            dels += 1
        else:
            ins += 1
        if is_rare:
            r_errors += 1
        else:
            u_errors += 1

    n = WordErrors(subs, dels, ins, r_words + u_words)
    return UtteranceScore(
        utt_id=utt_id,
        ref=ref,
        hyp=hyp,
        ref_norm=ref_norm,
        hyp_norm=hyp_norm,
        o=_step_counts(align_words(ref.split(), hyp.split())),
        n=n,
        r_errors=r_errors,
        r_words=r_words,
        u_errors=u_errors,
        u_words=u_words,
        alignment=alignment,
    )


def _rate(errors: int, words: int) -> float | None:
    return errors / words if words else None


@dataclass(frozen=True)
class CorpusScore:
    """Corpus-level rates (errors summed / reference words summed); None where the denominator is 0.

    ``words`` counts normalised reference words (the denominator of N-, R- and U-WER), ``o_words``
    whitespace tokens as written (O-WER's denominator).
    """

    o_wer: float | None
    n_wer: float | None
    r_wer: float | None
    u_wer: float | None
    words: int
    rare_words: int
    utterances: int
    o_words: int
    o_errors: int
    n_errors: int
    r_errors: int
    u_errors: int
    u_words: int
    o: WordErrors
    n: WordErrors

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the fields of eval/metrics.json plus the counts behind each rate)."""
        return asdict(self)


def _sum_errors(items: list[WordErrors]) -> WordErrors:
    return WordErrors(
        sum(e.substitutions for e in items),
        sum(e.deletions for e in items),
        sum(e.insertions for e in items),
        sum(e.ref_words for e in items),
    )


def score_corpus(scores: Iterable[UtteranceScore]) -> CorpusScore:
    """Sum the per-utterance counts and divide once (corpus-level rates)."""
    scores = list(scores)
    o = _sum_errors([s.o for s in scores])
    n = _sum_errors([s.n for s in scores])
    r_errors = sum(s.r_errors for s in scores)
    r_words = sum(s.r_words for s in scores)
    u_errors = sum(s.u_errors for s in scores)
    u_words = sum(s.u_words for s in scores)
    return CorpusScore(
        o_wer=_rate(o.errors, o.ref_words),
        n_wer=_rate(n.errors, n.ref_words),
        r_wer=_rate(r_errors, r_words),
        u_wer=_rate(u_errors, u_words),
        words=n.ref_words,
        rare_words=r_words,
        utterances=len(scores),
        o_words=o.ref_words,
        o_errors=o.errors,
        n_errors=n.errors,
        r_errors=r_errors,
        u_errors=u_errors,
        u_words=u_words,
        o=o,
        n=n,
    )


class RareWordStat(NamedTuple):
    """How often one rare reference word was recognised (hits) and missed (substituted or deleted)."""

    word: str
    hits: int
    misses: int


def rare_word_report(scores: Iterable[UtteranceScore]) -> list[RareWordStat]:
    """Per rare reference word: hits (aligned 'equal') and misses (substituted or deleted).

    Rare words inserted by the hypothesis are not listed (they have no reference occurrence).  Sorted
    by misses (most first), then hits (most first), then the word.
    """
    hits: Counter[str] = Counter()
    misses: Counter[str] = Counter()
    for score in scores:
        for step in score.alignment:
            if not step.rare or step.ref is None:
                continue
            if step.op == "equal":
                hits[step.ref] += 1
            else:
                misses[step.ref] += 1
    words = set(hits) | set(misses)
    stats = [RareWordStat(w, hits[w], misses[w]) for w in words]
    return sorted(stats, key=lambda s: (-s.misses, -s.hits, s.word))
