"""Text normalisation and word error counting shared by the filter and the evaluation.

``normalize`` is OpenAI Whisper's ``EnglishTextNormalizer`` (the N-WER normaliser of DESIGN.md
"Metrics"), through transformers' port of it (``transformers.models.whisper.english_normalizer``):
lower case, bracketed and parenthesised spans removed, fillers ("hmm", "mm", "mhm", "mmm", "uh",
"um") removed, contractions expanded, spelled-out numbers and currencies to digits, British to
American spelling, punctuation removed.  N-WER and the filter's caption WER both use it, so a
caption and a label that differ only in style count as equal.

The port needs Whisper's English spelling map, which transformers reads from a Whisper tokenizer's
``normalizer.json`` on the hub; it ships here as ``whisper_english_spelling.json`` (openai/whisper's
``whisper/normalizers/english.json``, 1,739 entries, the same map as that ``normalizer.json``), so
normalising never downloads anything.  The ``whisper-normalizer`` package is not used: it adds rules
Whisper does not have (kinda -> kind of, sorta -> sort of, dunno -> do not know, cause -> because),
which would score "the cause" and "the because" as equal.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import jiwer

SPELLING_MAP = Path(__file__).with_name("whisper_english_spelling.json")


@functools.lru_cache(maxsize=1)
def spelling_map() -> dict[str, str]:
    """Whisper's British -> American spelling map (the port's ``english_spelling_mapping``)."""
    return json.loads(SPELLING_MAP.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(spelling_map())


def normalize(text: str | None) -> str:
    """Whisper's English normaliser, output unchanged (None -> '').

    The output can keep one leading or trailing space ("$ 5" -> " 5"), as Whisper's does; every
    caller splits it into words.
    """
    if not text:
        return ""
    return _normalizer()(text)


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
    """Levenshtein alignment counts on whitespace tokens (jiwer). Either side may be empty.

    The filter's caption WER uses it; the evaluation counts with its own alignment
    (``tasks.alignment``), which has the same number of errors and a documented tie rule.
    """
    ref, hyp = reference.split(), hypothesis.split()
    if not ref:
        return WordErrors(0, 0, len(hyp), 0)
    if not hyp:
        return WordErrors(0, len(ref), 0, len(ref))
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return WordErrors(out.substitutions, out.deletions, out.insertions, len(ref))
