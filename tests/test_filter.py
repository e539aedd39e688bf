"""tasks.filter: every drop reason on hand-built segments and labels, and the per-item split."""

from __future__ import annotations

import pytest

from llmasr.config import FilterConfig
from llmasr.records import Label, Segment
from tasks.filter import decide, decide_all, duration_reasons, longest_ngram_run, split_of, text_reasons

CFG = FilterConfig(
    hallucination_phrases=["thanks for watching", "please subscribe"],
)

CLEAN_TEXT = "The committee approved the budget for the new library on Tuesday."


def seg(
    duration: float = 5.0, caption: str | None = CLEAN_TEXT, item: str = "vid", start: float = 10.0
) -> Segment:
    sid = f"{item}-{int(start * 1000):09d}"
    return Segment(
        sid, item, start, start + duration, duration, caption, "captions" if caption is not None else "vad"
    )


def lab(text: str = CLEAN_TEXT, **kw) -> Label:
    base = dict(
        avg_logprob=-0.2,
        no_speech_prob=0.01,
        compression_ratio=1.3,
        language="en",
        language_prob=0.99,
        model="tiny.en",
    )
    base.update(kw)
    return Label("vid-000010000", text, **base)


def reasons(
    segment: Segment | None = None, label: Label | None | str = "default", cfg: FilterConfig = CFG
) -> list[str]:
    segment = segment if segment is not None else seg()
    label = lab() if label == "default" else label
    d = decide(segment, label, "train", cfg)  # type: ignore[arg-type]
    assert d.kept == (not d.reasons)
    return d.reasons


# --------------------------------------------------------------------------------------------------
# a clean segment


def test_a_clean_segment_is_kept_with_no_reasons() -> None:
    d = decide(seg(), lab(), "validation", CFG)
    assert d.kept is True
    assert d.reasons == []
    assert d.caption_wer == 0.0
    assert d.words == 11
    assert d.type_token_ratio == pytest.approx(9 / 11)  # "the" three times
    assert (d.segment_id, d.item_id, d.duration_s, d.split) == ("vid-000010000", "vid", 5.0, "validation")


def test_caption_wer_is_on_normalised_text() -> None:
    s = seg(caption="the committee APPROVED the budget -- for the new library, on tuesday")
    d = decide(s, lab(), "train", CFG)
    assert d.caption_wer == 0.0 and d.kept
    # "Mister"/"Mr." and "twenty one"/"21" are the same after Whisper's normaliser
    d2 = decide(seg(caption="mister smith has twenty one cats"), lab("Mr. Smith has 21 cats."), "train", CFG)
    assert d2.caption_wer == 0.0


def test_caption_wer_counts_real_differences() -> None:
    d = decide(
        seg(caption="red green blue cyan magenta yellow black white grey pink"),
        lab("red green blue cyan magenta yellow black white grey ink"),
        "train",
        CFG,
    )
    assert d.caption_wer == pytest.approx(0.1)
    assert d.kept


def test_a_label_trailing_off_with_an_ellipsis_matches_its_caption() -> None:
    d = decide(
        seg(caption="and then the committee approved the budget for the"),
        lab("And then the committee approved the budget for the..."),
        "train",
        CFG,
    )
    assert d.caption_wer == 0.0
    assert d.kept


# --------------------------------------------------------------------------------------------------
# duration


def test_duration_rule_bounds() -> None:
    cfg = FilterConfig()  # [1, 20)
    assert duration_reasons(0.99, cfg) == ["too_short"]
    assert duration_reasons(1.0, cfg) == []
    assert duration_reasons(19.999, cfg) == []
    assert duration_reasons(20.0, cfg) == ["too_long"]
    assert duration_reasons(25.0, cfg) == ["too_long"]


def test_too_short_and_too_long_segments() -> None:
    assert reasons(seg(duration=0.5)) == ["too_short"]
    assert reasons(seg(duration=20.0)) == ["too_long"]


# --------------------------------------------------------------------------------------------------
# caption checks


def test_caption_mismatch() -> None:
    r = reasons(seg(caption="a completely different sentence about football and the weather today"))
    assert r == ["caption_mismatch"]


def test_caption_mismatch_threshold_is_exclusive() -> None:
    caption = "red green blue cyan magenta yellow black white grey pink"
    label = lab("red green blue cyan magenta yellow black white gray ink")  # WER 0.2 (grey/gray is spelling)
    assert decide(seg(caption=caption), label, "train", CFG).caption_wer == pytest.approx(0.1)
    label = lab("red green blue cyan magenta yellow black white grew ink")  # WER 0.2
    assert reasons(seg(caption=caption), label, FilterConfig(max_caption_wer=0.2)) == []
    assert reasons(seg(caption=caption), label, FilterConfig(max_caption_wer=0.19)) == ["caption_mismatch"]


def test_no_caption_only_when_required() -> None:
    assert reasons(seg(caption=None)) == []
    assert reasons(seg(caption=None), cfg=CFG.model_copy(update={"require_caption": True})) == ["no_caption"]
    # a caption with no words (only "[Music]") is no caption
    assert reasons(seg(caption="[Music]"), cfg=CFG.model_copy(update={"require_caption": True})) == [
        "no_caption"
    ]
    d = decide(seg(caption=None), lab(), "train", CFG)
    assert d.caption_wer is None


# --------------------------------------------------------------------------------------------------
# simplicity


def test_too_few_words() -> None:
    assert reasons(seg(caption="library budget"), lab("Library budget.")) == ["too_few_words"]


def test_low_diversity_only_counts_for_six_words_or_more() -> None:
    text = "apple banana apple cherry banana apple cherry banana"  # 3 types / 8 tokens
    assert reasons(seg(caption=text), lab(text)) == ["low_diversity"]
    short = "apple banana apple banana cherry"  # 5 words, ratio 0.6 -> and below 6 words anyway
    assert "low_diversity" not in reasons(
        seg(caption=short), lab(short), FilterConfig(min_type_token_ratio=0.9)
    )


def test_only_common_words() -> None:
    text = "yes you and me we were at the"
    assert reasons(seg(caption=text), lab(text)) == ["only_common_words"]
    # one content word is enough to keep it
    assert reasons(seg(caption=text + " yesterday"), lab(text + " yesterday")) == []


def test_fillers_only_is_an_empty_label() -> None:
    assert reasons(seg(caption=None), lab("Uh, um. Hmm.")) == ["empty_label"]


@pytest.mark.parametrize("text", ["", "   ", "...", ".", "?!", " - ", "♪ ♪", "[Music]"])
def test_empty_label(text: str) -> None:
    d = decide(seg(caption=None), lab(text), "train", CFG)
    assert d.reasons == ["empty_label"]
    assert d.words == 0 and not d.kept


def test_empty_label_with_a_caption_is_also_a_mismatch() -> None:
    assert reasons(seg(), lab("...")) == ["empty_label", "caption_mismatch"]


# --------------------------------------------------------------------------------------------------
# hallucination


def test_high_compression_ratio() -> None:
    assert reasons(seg(), lab(compression_ratio=2.5)) == ["high_compression_ratio"]
    assert reasons(seg(), lab(compression_ratio=2.4)) == []


def test_no_speech_needs_both_conditions() -> None:
    assert reasons(seg(), lab(no_speech_prob=0.9, avg_logprob=-1.5)) == ["no_speech"]
    assert reasons(seg(), lab(no_speech_prob=0.9, avg_logprob=-0.3)) == []
    assert reasons(seg(), lab(no_speech_prob=0.1, avg_logprob=-1.5)) == []


@pytest.mark.parametrize(
    ("words", "max_n", "expected"),
    [
        ("a b a b a b", 4, 3),
        ("a b a b a b", 1, 1),
        ("a b c d a b c d a b c d", 4, 3),
        ("a b c d a b c d a b c d", 3, 1),
        ("x a b c d a b c d", 4, 2),  # an n-gram starting at an odd offset
        ("go go go go", 4, 4),
        ("hello", 4, 1),
        ("", 4, 0),
        ("one two three", 4, 1),
        ("the cat sat on the mat", 4, 1),
    ],
)
def test_longest_ngram_run(words: str, max_n: int, expected: int) -> None:
    assert longest_ngram_run(words.split(), max_n) == expected


def test_repetition_loop() -> None:
    text = "we will go to the park and to the park and to the park and"
    assert "repetition_loop" in reasons(seg(caption=text), lab(text))
    two = "we will go to the park and to the park and then home"  # twice is not a loop
    assert "repetition_loop" not in reasons(seg(caption=two), lab(two))


def test_hallucination_phrase_dropped_when_absent_from_the_caption() -> None:
    label = lab("The committee approved the budget. Thanks for watching!")
    assert "hallucination_phrase" in reasons(seg(caption=None), label)
    # the same words said in the video (and captioned) are kept
    caption = "the committee approved the budget thanks for watching"
    assert reasons(seg(caption=caption), label) == []


def test_hallucination_phrase_matches_whole_words_only() -> None:
    label = lab("Please subscribers read the committee budget today.")
    assert "hallucination_phrase" not in reasons(seg(caption=None), label)


# --------------------------------------------------------------------------------------------------
# language and missing labels


def test_language_rules() -> None:
    assert reasons(seg(), lab(language="de")) == ["language"]
    assert reasons(seg(), lab(language_prob=0.3)) == ["language"]
    assert reasons(seg(), lab(language="de"), FilterConfig(languages=["en", "de"])) == []


def test_not_labelled() -> None:
    d = decide(seg(), None, "train", CFG)
    assert d.reasons == ["not_labelled"] and not d.kept
    # a segment dropped for its duration was never meant to be labelled
    assert decide(seg(duration=25.0), None, "train", CFG).reasons == ["too_long"]


def test_several_reasons_are_listed_together() -> None:
    label = lab("go go go go", compression_ratio=3.0, no_speech_prob=0.9, avg_logprob=-2.0, language="fr")
    d = decide(seg(duration=0.4), label, "train", CFG)
    assert not d.kept
    assert d.reasons == [
        "too_short",
        "repetition_loop",
        "high_compression_ratio",
        "no_speech",
        "language",
        "caption_mismatch",
    ]
    assert len(d.reasons) == len(set(d.reasons))


def test_text_reasons_returns_word_count_and_ratio() -> None:
    r, n, ttr = text_reasons("Apple apple banana.", None, CFG)
    assert (r, n, ttr) == ([], 3, pytest.approx(2 / 3))


# --------------------------------------------------------------------------------------------------
# splits


def test_split_is_stable_and_close_to_the_fraction() -> None:
    ids = [f"video{i:05d}" for i in range(2000)]
    first = [split_of(i, 0.1) for i in ids]
    assert first == [split_of(i, 0.1) for i in ids]
    share = first.count("validation") / len(ids)
    assert abs(share - 0.1) < 0.03
    assert set(first) == {"train", "validation"}
    assert all(split_of(i, 0.0) == "train" for i in ids[:200])


def test_growing_the_fraction_only_moves_items_into_validation() -> None:
    ids = [f"v{i}" for i in range(500)]
    small = {i for i in ids if split_of(i, 0.05) == "validation"}
    large = {i for i in ids if split_of(i, 0.2) == "validation"}
    assert small <= large


def test_all_segments_of_an_item_share_its_split() -> None:
    segments = [seg(item=f"item{i}", start=float(t)) for i in range(60) for t in range(0, 40, 8)]
    labels = [Label(s.segment_id, CLEAN_TEXT, -0.2, 0.01, 1.3, "en", 0.99, "m") for s in segments]
    decisions = decide_all(segments, labels, CFG, validation_fraction=0.3)
    assert [d.segment_id for d in decisions] == [s.segment_id for s in segments]
    by_item: dict[str, set[str]] = {}
    for d in decisions:
        by_item.setdefault(d.item_id, set()).add(d.split)
    assert all(len(v) == 1 for v in by_item.values())
    assert {next(iter(v)) for v in by_item.values()} == {"train", "validation"}
    assert all(d.kept for d in decisions)
    # decide_all finds labels by segment id, not by position
    reordered = decide_all(segments, list(reversed(labels)), CFG, 0.3)
    assert reordered == decisions
    # a segment without a label is not_labelled
    assert decide_all(segments[:1], [], CFG, 0.3)[0].reasons == ["not_labelled"]
