"""filter: decide which pseudo-labelled segments are kept, giving every reason for each drop.

Rules (thresholds in the ``filter`` section of the config):

- duration:       ``too_short`` below min_duration_s; ``too_long`` at or above max_duration_s (< 20 s).
- caption WER:    ``caption_mismatch`` when normalised WER(caption -> label) > max_caption_wer;
                  ``no_caption`` only when require_caption is set.
- simplicity:     ``too_few_words``, ``low_diversity`` (type/token ratio, on >= 6 words),
                  ``only_common_words`` (fillers and the most common words); the paper drops
                  overly simple sentences to keep the data diverse.
- hallucination:  ``empty_label``, ``high_compression_ratio``, ``no_speech`` (Whisper's rule:
                  no_speech_prob above the limit and avg_logprob below its limit),
                  ``repetition_loop`` (an n-gram repeated max_ngram_repeats times in a row),
                  ``hallucination_phrase`` (a known phrase not present in the caption).
- language:       ``language`` when the label's language is not kept or its probability is low.
- ``not_labelled`` when a segment that passed the duration rule has no label (labelling failed).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmasr.config import FilterConfig
from llmasr.layout import stable_fraction
from llmasr.records import Decision, Label, Segment
from llmasr.text import normalize, word_errors

# Fillers and the most frequent English words: a label made only of these carries no content.
COMMON_WORDS = frozenset(
    """
    a an the and or but so to of in on at for with is are was were be been it its this that i you he
    she we they me him her us them my your our their yes no not do does did have has had okay ok oh
    uh um hmm mm yeah yep hi hello hey bye thanks thank please well right just like what
    """.split()
)

DIVERSITY_MIN_WORDS = 6  # the type/token ratio says little about shorter texts


def _words(text: str | None) -> list[str]:
    """Normalised words.  Tokens without a letter or digit are dropped: Whisper's normaliser turns
    a trailing "..." into a lone "." (so "..." would count as a word, and a label that trails off
    would differ from its caption)."""
    return [w for w in normalize(text).split() if any(ch.isalnum() for ch in w)]


def duration_reasons(duration_s: float, cfg: FilterConfig) -> list[str]:
    """The duration rule alone (the label stage uses it to skip segments that cannot be kept)."""
    reasons = []
    if duration_s < cfg.min_duration_s:
        reasons.append("too_short")
    if duration_s >= cfg.max_duration_s:
        reasons.append("too_long")
    return reasons


def longest_ngram_run(words: Sequence[str], max_n: int = 4) -> int:
    """The most times any n-gram (n = 1..max_n) repeats back to back: "a b a b a b" -> 3."""
    best = 1 if words else 0
    for n in range(1, max_n + 1):
        for start in range(n):
            run, prev = 1, None
            for i in range(start, len(words) - n + 1, n):
                gram = tuple(words[i : i + n])
                run = run + 1 if gram == prev else 1
                prev = gram
                best = max(best, run)
    return best


def text_reasons(text: str, caption: str | None, cfg: FilterConfig) -> tuple[list[str], int, float | None]:
    """Simplicity and hallucination-by-text rules. Returns (reasons, words, type_token_ratio)."""
    words = _words(text)
    norm = " ".join(words)
    if not words:
        return ["empty_label"], 0, None
    reasons = []
    ttr = len(set(words)) / len(words)
    if len(words) < cfg.min_words:
        reasons.append("too_few_words")
    if len(words) >= DIVERSITY_MIN_WORDS and ttr < cfg.min_type_token_ratio:
        reasons.append("low_diversity")
    if sum(w in COMMON_WORDS for w in words) / len(words) >= cfg.max_common_fraction:
        reasons.append("only_common_words")
    if longest_ngram_run(words) >= cfg.max_ngram_repeats:
        reasons.append("repetition_loop")
    caption_norm = " ".join(_words(caption))
    for phrase in cfg.hallucination_phrases:
        p = " ".join(_words(phrase))
        if p and f" {p} " in f" {norm} " and f" {p} " not in f" {caption_norm} ":
            reasons.append("hallucination_phrase")
            break
    return reasons, len(words), ttr


def decide(segment: Segment, label: Label | None, split: str, cfg: FilterConfig) -> Decision:
    """The decision for one segment (``label`` None when it was not labelled)."""
    reasons = duration_reasons(segment.duration_s, cfg)
    caption_wer = None
    n_words, ttr = 0, None
    if label is None:
        if not reasons:
            reasons.append("not_labelled")
    else:
        text_r, n_words, ttr = text_reasons(label.text, segment.caption_text, cfg)
        reasons += text_r
        if label.compression_ratio > cfg.max_compression_ratio:
            reasons.append("high_compression_ratio")
        if label.no_speech_prob > cfg.max_no_speech_prob and label.avg_logprob < cfg.min_avg_logprob:
            reasons.append("no_speech")
        if label.language not in cfg.languages or label.language_prob < cfg.min_language_prob:
            reasons.append("language")
        caption_words = _words(segment.caption_text)
        if caption_words:
            caption_wer = word_errors(" ".join(caption_words), " ".join(_words(label.text))).wer
            if caption_wer is not None and caption_wer > cfg.max_caption_wer:
                reasons.append("caption_mismatch")
        elif cfg.require_caption:
            reasons.append("no_caption")
    return Decision(
        segment_id=segment.segment_id,
        item_id=segment.item_id,
        kept=not reasons,
        reasons=reasons,
        caption_wer=caption_wer,
        words=n_words,
        type_token_ratio=ttr,
        duration_s=segment.duration_s,
        split=split,
    )


def split_of(item_id: str, validation_fraction: float) -> str:
    """Per item (video), by a stable hash: adding data never moves an item between splits."""
    return "validation" if stable_fraction(item_id) < validation_fraction else "train"


def decide_all(
    segments: Sequence[Segment], labels: Sequence[Label], cfg: FilterConfig, validation_fraction: float
) -> list[Decision]:
    """A decision for every segment, in the segments' order."""
    by_id = {lab.segment_id: lab for lab in labels}
    return [
        decide(s, by_id.get(s.segment_id), split_of(s.item_id, validation_fraction), cfg) for s in segments
    ]
