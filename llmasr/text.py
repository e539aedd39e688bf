"""Text normalisation and word error counting shared by the filter and the evaluation.

``normalize`` is Whisper's English text normaliser (the ``whisper-normalizer`` package, a copy of
openai/whisper's ``EnglishTextNormalizer``): lower case, no punctuation, spelled-out numbers to
digits, British to American spelling, fillers ("uh", "um") removed.  N-WER and the filter's
caption WER both use it, so a caption and a label that differ only in style count as equal.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import jiwer


@functools.lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str | None) -> str:
    """Whisper's English normaliser, with runs of whitespace collapsed. None -> ''."""
    if not text:
        return ""
    return " ".join(_normalizer()(text).split())


def words(text: str | None) -> list[str]:
    """Whitespace tokens of ``text`` as written (O-WER's tokens)."""
    return (text or "").split()


@dataclass(frozen=True)
class WordErrors:
    """Edit counts of one hypothesis against one reference, on whitespace tokens."""

    substitutions: int
    deletions: int
    insertions: int
    ref_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float | None:
        """errors / reference words; None when the reference is empty (WER is undefined)."""
        return self.errors / self.ref_words if self.ref_words else None


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """Levenshtein alignment counts on whitespace tokens (jiwer). Either side may be empty."""
    ref, hyp = reference.split(), hypothesis.split()
    if not ref:
        return WordErrors(0, 0, len(hyp), 0)
    if not hyp:
        return WordErrors(0, len(ref), 0, len(ref))
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return WordErrors(out.substitutions, out.deletions, out.insertions, len(ref))


def normalized_wer(reference: str | None, hypothesis: str | None) -> float | None:
    """WER after Whisper normalisation of both sides; None when the normalised reference is empty."""
    return word_errors(normalize(reference), normalize(hypothesis)).wer


_NON_WORD = re.compile(r"[^\w']+")


def plain_words(text: str | None) -> list[str]:
    """Lower-cased word tokens without punctuation (for counting, not for scoring)."""
    return [w for w in _NON_WORD.split((text or "").lower()) if w.strip("'")]
