"""O-, N-, R- and U-WER on hand-computed cases (tasks.metrics), cross-checked with jiwer where it applies."""

from __future__ import annotations

import json
from collections import Counter

import jiwer
import pytest

from llmasr.text import WordErrors, normalize
from tasks.metrics import (
    AlignedWord,
    RareWords,
    RareWordStat,
    build_vocabulary,
    common_word_set,
    rare_word_report,
    score_corpus,
    score_utterance,
)

TRAIN = ["the patient has a cough", "Take the tablets twice a day.", "The dog."]


@pytest.fixture()
def rare() -> RareWords:
    return RareWords(build_vocabulary(TRAIN))


# --------------------------------------------------------------------------------------------------
# vocabulary and the rare set


def test_build_vocabulary_counts_normalised_words() -> None:
    counts = build_vocabulary(["The cat, the DOG.", "Mr. Smith has twenty one cats", None, ""])
    assert counts == Counter(
        {"the": 2, "cat": 1, "dog": 1, "mister": 1, "smith": 1, "has": 1, "21": 1, "cats": 1}
    )


def test_rare_words_default_is_never_seen(rare: RareWords) -> None:
    assert "gastroenteritis" in rare
    assert "dioralyte" in rare
    assert "the" not in rare  # seen 3 times
    assert "cough" not in rare  # seen once
    assert 5 not in rare  # not a word


def test_rare_words_max_train_count_one() -> None:
    rare1 = RareWords(build_vocabulary(TRAIN), max_train_count=1)
    assert "cough" in rare1 and "patient" in rare1 and "unseen" in rare1
    assert "the" not in rare1 and "a" not in rare1  # counts 3 and 2


def test_rare_words_user_list_is_normalised() -> None:
    rare = RareWords(build_vocabulary(TRAIN), extra=["Tablets", "Mr. Quilter"])
    assert "tablets" in rare  # seen in training, but on the word list
    assert "mister" in rare and "quilter" in rare  # "Mr." normalises to "mister"
    assert "the" not in rare


def test_rare_words_negative_threshold_means_word_list_only() -> None:
    rare = RareWords(build_vocabulary(TRAIN), max_train_count=-1, extra=["dioralyte"])
    assert "dioralyte" in rare
    assert "gastroenteritis" not in rare


def test_common_words_are_never_rare_by_count() -> None:
    """With 3 training sentences "an", "test", "against", "among" and "symptoms" are unseen, but they
    are among the 5000 most frequent English words: not rare (is21_deep_bias's convention)."""
    common = common_word_set(5000)
    rare = RareWords(build_vocabulary(TRAIN), common=common)
    for word in ("an", "test", "against", "among", "symptoms", "cause", "doctor"):
        assert word in common and word not in rare, word
    assert "gastroenteritis" in rare and "dioralyte" in rare and "quilter" in rare
    assert rare.by_count("test") and not rare.by_count("the")
    # 0 turns it off
    assert RareWords(build_vocabulary(TRAIN), common=common_word_set(0)).__contains__("test")


def test_common_word_list_is_normalised_like_the_references() -> None:
    common = common_word_set(5000)
    assert "mister" in common  # "mr"
    assert "one" in common and "1" not in common and "2" in common  # Whisper writes a lone 1 as "one"
    assert "color" in common and "colour" not in common  # British entries map to American spelling
    assert "it's" not in common and "is" in common  # "it's" normalises to "it is"
    assert all(w == w.strip() and w for w in common)
    assert 4500 < len(common) <= 5000
    assert common_word_set(0) == frozenset() and common_word_set(-1) == frozenset()


def test_word_list_words_are_rare_even_when_common() -> None:
    rare = RareWords(build_vocabulary(TRAIN), extra=["test", "Dioralyte"], common=common_word_set(5000))
    assert "test" in rare  # listed: the user's choice wins over the common-word rule
    assert "against" not in rare  # unseen but common and not listed
    s = score_utterance("u", "a test against dioralyte", "a toast against dioralight", rare)
    assert (s.r_errors, s.r_words, s.u_errors, s.u_words) == (2, 2, 0, 2)


# --------------------------------------------------------------------------------------------------
# alignment ties


def test_equally_short_alignments_put_errors_by_the_documented_rule() -> None:
    """Reference "b c a b", hypothesis "a b c": 3 errors either deleting "b c" (then "a b" match,
    "c" inserted) or inserting "a" (then "b c" match, "a b" deleted).  The rule reads back from the
    end taking the diagonal first, so "a" matches and R (= {a}) has no error."""
    rare = RareWords({"b": 1, "c": 1})  # "a" unseen: rare
    s = score_utterance("u", "b c a b", "a b c", rare)
    assert [(a.op, a.ref, a.hyp) for a in s.alignment] == [
        ("delete", "b", None),
        ("delete", "c", None),
        ("equal", "a", "a"),
        ("equal", "b", "b"),
        ("insert", None, "c"),
    ]
    assert (s.r_errors, s.r_words, s.u_errors, s.u_words) == (0, 1, 3, 3)
    assert s.n == WordErrors(0, 2, 1, 4)


def test_among_equally_short_alignments_the_one_with_most_matches_wins() -> None:
    # 2 substitutions, or delete "quilter", match "said", insert "so": both 2 errors
    s = score_utterance("u", "quilter said", "said so", RareWords({"said": 2, "so": 2}))
    assert [(a.op, a.ref, a.hyp) for a in s.alignment] == [
        ("delete", "quilter", None),
        ("equal", "said", "said"),
        ("insert", None, "so"),
    ]
    assert (s.r_errors, s.r_words, s.u_errors, s.u_words) == (1, 1, 1, 1)


# --------------------------------------------------------------------------------------------------
# single utterances


def test_case_and_punctuation_count_for_o_wer_only(rare: RareWords) -> None:
    ref, hyp = "Hello, World.", "hello world"
    s = score_utterance("u", ref, hyp, rare)
    assert s.o == WordErrors(2, 0, 0, 2)
    assert s.n == WordErrors(0, 0, 0, 2)
    assert s.o.wer == pytest.approx(jiwer.wer(ref, hyp)) == 1.0
    assert s.n.wer == pytest.approx(jiwer.wer(normalize(ref), normalize(hyp))) == 0.0


@pytest.mark.parametrize(
    ("ref", "hyp", "o_errors", "o_words"),
    [
        ("Mr. Quilter is here", "mister quilter is here", 2, 4),  # Mr./mister, Quilter/quilter
        ("twenty one patients", "21 patients", 2, 3),  # 1 substitution + 1 deletion as written
        ("I've got a colour chart", "I have got a color chart", 3, 5),  # I've/I + insert have; colour
    ],
)
def test_normalisation_equivalences(rare: RareWords, ref: str, hyp: str, o_errors: int, o_words: int) -> None:
    s = score_utterance("u", ref, hyp, rare)
    assert (s.o.errors, s.o.ref_words) == (o_errors, o_words)
    assert s.o.wer == pytest.approx(jiwer.wer(ref, hyp))
    assert s.n.errors == 0
    assert s.n.wer == 0.0


def test_rare_reference_word_split_in_two(rare: RareWords) -> None:
    # normalised: "the patient has gastroenteritis" vs "the patient has gastro enteritis"
    s = score_utterance("a", "The patient has gastroenteritis.", "the patient has gastro enteritis", rare)
    assert s.n == WordErrors(1, 0, 1, 4)
    assert (s.r_errors, s.r_words) == (2, 1)  # the substitution (ref rare) + the insertion (hyp rare)
    assert (s.u_errors, s.u_words) == (0, 3)
    assert s.o == WordErrors(2, 0, 1, 4)  # The/the, gastroenteritis./gastro, + enteritis


def test_rare_deletion(rare: RareWords) -> None:
    s = score_utterance("b", "Take the Dioralyte tablets", "take the tablets", rare)
    assert s.alignment == [
        AlignedWord("equal", "take", "take", False),
        AlignedWord("equal", "the", "the", False),
        AlignedWord("delete", "dioralyte", None, True),
        AlignedWord("equal", "tablets", "tablets", False),
    ]
    assert (s.r_errors, s.r_words, s.u_errors, s.u_words) == (1, 1, 0, 3)
    assert s.o == WordErrors(1, 1, 0, 4)


def test_common_reference_substituted_by_rare_word_is_a_u_error(rare: RareWords) -> None:
    s = score_utterance("c", "take the tablets", "take the dioralyte", rare)
    assert s.alignment[-1] == ("substitute", "tablets", "dioralyte", False)
    assert (s.r_errors, s.r_words, s.u_errors, s.u_words) == (0, 0, 1, 3)


def test_rare_reference_substituted_by_common_word_is_an_r_error(rare: RareWords) -> None:
    s = score_utterance("c2", "take the dioralyte", "take the tablets", rare)
    assert (s.r_errors, s.r_words, s.u_errors, s.u_words) == (1, 1, 0, 2)


def test_insertions_are_classified_by_the_hypothesis_word(rare: RareWords) -> None:
    common = score_utterance("d", "take tablets", "take the tablets twice", rare)
    assert (common.r_errors, common.r_words, common.u_errors, common.u_words) == (0, 0, 2, 2)
    rare_ins = score_utterance("d2", "take tablets", "take dioralyte tablets", rare)
    assert rare_ins.alignment[1] == ("insert", None, "dioralyte", True)
    assert (rare_ins.r_errors, rare_ins.r_words, rare_ins.u_errors, rare_ins.u_words) == (1, 0, 0, 2)


def test_empty_reference_is_all_insertions(rare: RareWords) -> None:
    s = score_utterance("e", "", "Dioralyte the", rare)
    assert s.o == WordErrors(0, 0, 2, 0)
    assert s.n == WordErrors(0, 0, 2, 0)
    assert s.n.wer is None
    assert (s.r_errors, s.r_words, s.u_errors, s.u_words) == (1, 0, 1, 0)


def test_empty_hypothesis_is_all_deletions(rare: RareWords) -> None:
    s = score_utterance("f", "A cough, doctor", None, rare)
    assert s.o == WordErrors(0, 3, 0, 3)
    assert s.n == WordErrors(0, 3, 0, 3)
    assert (s.r_errors, s.r_words, s.u_errors, s.u_words) == (1, 1, 2, 2)  # "doctor" never seen


def test_both_empty_is_nothing(rare: RareWords) -> None:
    s = score_utterance("g", "", "  ", rare)
    assert s.o == s.n == WordErrors(0, 0, 0, 0)
    assert (s.r_errors, s.r_words, s.u_errors, s.u_words) == (0, 0, 0, 0)
    assert s.alignment == []


def test_filler_only_hypothesis_normalises_to_nothing(rare: RareWords) -> None:
    s = score_utterance("h", "the cough", "Um, uh", rare)
    assert s.o == WordErrors(2, 0, 0, 2)
    assert s.n == WordErrors(0, 2, 0, 2)  # the normaliser drops the fillers


def test_word_list_and_threshold_change_the_split() -> None:
    counts = build_vocabulary(TRAIN)
    ref, hyp = "the patient has a cough", "the patient has cough"
    default = score_utterance("u", ref, hyp, RareWords(counts))
    assert (default.r_errors, default.r_words, default.u_errors, default.u_words) == (0, 0, 1, 5)
    once = score_utterance("u", ref, hyp, RareWords(counts, max_train_count=1))
    # patient, has, cough seen once -> rare; the (3), a (2) common; the deleted "a" is a U error
    assert (once.r_errors, once.r_words, once.u_errors, once.u_words) == (0, 3, 1, 2)
    listed = score_utterance("u", "take the tablets", "take the tablet", RareWords(counts, extra=["Tablets"]))
    assert (listed.r_errors, listed.r_words, listed.u_errors, listed.u_words) == (1, 1, 0, 2)


def test_utterance_score_to_dict_is_json(rare: RareWords) -> None:
    d = score_utterance("b", "Take the Dioralyte tablets", "take the tablets", rare).to_dict()
    back = json.loads(json.dumps(d))
    assert back["alignment"][2] == ["delete", "dioralyte", None, True]
    assert back["n"] == {"substitutions": 0, "deletions": 1, "insertions": 0, "ref_words": 4}


# --------------------------------------------------------------------------------------------------
# corpus level

CORPUS = [
    # (id, ref, hyp)  -- per-utterance counts in the comments: N errors/words, R errors/words, U errors/words,
    # O errors/words
    ("a", "The patient has gastroenteritis.", "the patient has gastro enteritis"),  # N 2/4 R 2/1 U 0/3 O 3/4
    ("b", "Take the Dioralyte tablets", "take the tablets"),  # N 1/4 R 1/1 U 0/3 O 2/4
    ("c", "take the tablets", "take the dioralyte"),  # N 1/3 R 0/0 U 1/3 O 1/3
    ("d", "take tablets", "take the tablets twice"),  # N 2/2 R 0/0 U 2/2 O 2/2
    ("e", "", "dioralyte"),  # N 1/0 R 1/0 U 0/0 O 1/0
    ("f", "a cough", ""),  # N 2/2 R 0/0 U 2/2 O 2/2
    ("g", "", ""),  # nothing
]


def test_corpus_rates_are_summed_errors_over_summed_words(rare: RareWords) -> None:
    scores = [score_utterance(i, r, h, rare) for i, r, h in CORPUS]
    c = score_corpus(scores)
    assert c.utterances == 7
    assert (c.n_errors, c.words) == (9, 15)
    assert (c.r_errors, c.rare_words) == (4, 2)
    assert (c.u_errors, c.u_words) == (5, 13)
    assert (c.o_errors, c.o_words) == (11, 15)
    assert c.n_wer == pytest.approx(9 / 15)
    assert c.r_wer == pytest.approx(2.0)
    assert c.u_wer == pytest.approx(5 / 13)
    assert c.o_wer == pytest.approx(11 / 15)
    # not the mean of per-utterance rates
    per_utt = [s.n.wer for s in scores if s.n.wer is not None]
    assert c.n_wer != pytest.approx(sum(per_utt) / len(per_utt))
    # every normalised error and word is either R or U
    assert c.r_errors + c.u_errors == c.n_errors
    assert c.rare_words + c.u_words == c.words


def test_corpus_o_and_n_agree_with_jiwer(rare: RareWords) -> None:
    pairs = [(r, h) for _, r, h in CORPUS if r or h]
    c = score_corpus(score_utterance(str(i), r, h, rare) for i, (r, h) in enumerate(pairs))
    assert c.o_wer == pytest.approx(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
    assert c.n_wer == pytest.approx(
        jiwer.wer([normalize(r) for r, _ in pairs], [normalize(h) for _, h in pairs])
    )


def test_no_rare_reference_words_gives_r_wer_none(rare: RareWords) -> None:
    c = score_corpus([score_utterance("c", "take the tablets", "take the dioralyte", rare)])
    assert c.r_wer is None  # not applicable, not 0
    assert c.rare_words == 0
    assert c.u_wer == pytest.approx(1 / 3)


def test_rare_words_all_correct_gives_r_wer_zero(rare: RareWords) -> None:
    c = score_corpus([score_utterance("x", "take dioralyte", "take Dioralyte.", rare)])
    assert c.r_wer == 0.0 and c.rare_words == 1
    assert c.o_wer == pytest.approx(0.5)


def test_empty_corpus_and_insertions_only() -> None:
    empty = score_corpus([])
    assert (empty.o_wer, empty.n_wer, empty.r_wer, empty.u_wer, empty.utterances) == (
        None,
        None,
        None,
        None,
        0,
    )
    rare = RareWords(Counter())
    only_ins = score_corpus([score_utterance("e", "", "hello there", rare)])
    assert only_ins.n_wer is None and only_ins.n_errors == 2 and only_ins.words == 0


def test_corpus_to_dict_has_the_metrics_json_fields(rare: RareWords) -> None:
    d = score_corpus([score_utterance(i, r, h, rare) for i, r, h in CORPUS]).to_dict()
    json.dumps(d)
    for key in ("o_wer", "n_wer", "r_wer", "u_wer", "words", "rare_words", "utterances"):
        assert key in d
    assert d["words"] == 15 and d["rare_words"] == 2


def test_rare_word_report_hits_and_misses(rare: RareWords) -> None:
    data = CORPUS + [
        ("h", "dioralyte helps", "Dioralyte helps."),  # two rare hits
        ("i", "gastroenteritis", "gastroenteritis"),  # a hit
    ]
    report = rare_word_report(score_utterance(i, r, h, rare) for i, r, h in data)
    assert report == [
        RareWordStat("dioralyte", 1, 1),  # hit in h, deleted in b (the insertion in e is not listed)
        RareWordStat("gastroenteritis", 1, 1),  # substituted in a, hit in i
        RareWordStat("helps", 1, 0),
    ]
