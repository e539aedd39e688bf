"""Joint CTC/LLM decoding (llmasr.ctc_prefix, eval.ctc_weight): the prefix scores are exact CTC
probabilities, greedy search follows the head where the LLM has no opinion, and generate_ids runs
it with greedy and beam search on a model with a CTC head."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from llmasr.ctc_prefix import CTCPrefixScorer, token_classes
from llmasr.model import build_model
from tiny_models import tiny_setup

V, EOS = 7, 6  # LLM ids 0..6; 6 ends
SPELLED = torch.tensor([2, 4, 5])  # the head's classes 0, 1, 2 spell LLM ids 2, 4, 5; class 3 is the blank


@pytest.fixture
def head():
    torch.manual_seed(0)
    log_probs = torch.randn(2, 6, 4).log_softmax(-1)  # (B, S, C + 1)
    return log_probs, torch.tensor([6, 4]), token_classes(SPELLED, V, torch.device("cpu"))


def follow(scorer: CTCPrefixScorer, row: int, tokens: list[int]) -> list[torch.Tensor]:
    """Feed ``tokens`` to row ``row`` (the other row copies them); the scores seen before each."""
    ids = torch.zeros(2, 0, dtype=torch.long)
    seen = []
    for token in tokens:
        out = scorer(ids, torch.zeros(2, V))  # (2, V): a uniform LLM
        seen.append(out[row])
        ids = torch.cat([ids, torch.full((2, 1), token)], dim=1)
    return seen


@pytest.mark.parametrize("target", [[2], [2, 4], [4, 4], [5, 2, 4], [2, 2]])
@pytest.mark.parametrize("row", [0, 1])
def test_a_hypothesis_scores_its_ctc_log_likelihood(head, row, target):
    log_probs, lengths, classes = head
    scorer = CTCPrefixScorer(log_probs, lengths, classes, EOS, weight=1.0, candidates=V)
    seen = follow(scorer, row, [*target, EOS])
    total = sum(float(s[t]) for s, t in zip(seen, [*target, EOS]))
    labels = torch.tensor([[int(classes[t]) for t in target]])
    expected = -F.ctc_loss(
        log_probs[row : row + 1].transpose(0, 1),
        labels,
        lengths[row : row + 1],
        torch.tensor([len(target)]),
        blank=3,
        reduction="sum",
    )
    assert total == pytest.approx(float(expected), abs=1e-4)


def brute_prefix(log_probs: torch.Tensor, length: int, prefix: list[int]) -> float:
    """log of the summed probability of every frame path whose labelling starts with ``prefix``."""
    blank = log_probs.shape[-1] - 1
    paths = []
    for path in itertools.product(range(blank + 1), repeat=length):
        labels, prev = [], None
        for c in path:
            if c != blank and c != prev:
                labels.append(c)
            prev = c
        if labels[: len(prefix)] == prefix:
            paths.append(sum(float(log_probs[t, c]) for t, c in enumerate(path)))
    return float(torch.logsumexp(torch.tensor(paths), 0))


def test_prefix_scores_equal_the_brute_force_sum_over_paths(head):
    log_probs, lengths, classes = head
    scorer = CTCPrefixScorer(log_probs, lengths, classes, EOS, weight=1.0, candidates=V)
    first = scorer(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, V))
    second = scorer(torch.tensor([[4], [4]]), torch.zeros(2, V))  # both rows chose LLM id 4 (class 1)
    for row in range(2):
        n = int(lengths[row])
        for token in (2, 4, 5):
            c = int(classes[token])
            assert float(first[row, token]) == pytest.approx(brute_prefix(log_probs[row], n, [c]), abs=1e-4)
            # increments: log p(prefix 4, token) - log p(prefix 4)
            want = brute_prefix(log_probs[row], n, [1, c]) - brute_prefix(log_probs[row], n, [1])
            assert float(second[row, token]) == pytest.approx(want, abs=1e-4)


def test_tokens_the_head_cannot_spell_are_never_chosen_unless_none_can_be(head):
    log_probs, lengths, classes = head
    scorer = CTCPrefixScorer(log_probs, lengths, classes, EOS, weight=0.5, candidates=3)
    llm = torch.full((2, V), -10.0)
    llm[0, [0, 1, 2]] = torch.tensor([5.0, 4.0, 3.0])  # row 0: the LLM's best two are unspellable
    llm[1, [0, 1, 3]] = torch.tensor([5.0, 4.0, 3.0])  # row 1: none of its best three is spellable
    out = scorer(torch.zeros(2, 0, dtype=torch.long), llm)
    assert int(out[0].argmax()) == 2
    assert torch.isinf(out[0, [0, 1]]).all()
    assert int(out[1].argmax()) == 0  # the LLM alone decides for row 1 this step
    assert torch.isfinite(out[1, [0, 1, 3]]).all() and torch.isinf(out[1, [2, 4, 5, 6]]).all()


def test_greedy_with_a_uniform_llm_spells_what_the_head_hears():
    # a head sure of "blank 2 2 blank 4 blank": the labelling is LLM ids (2, 4), then the end
    frames = [3, 0, 0, 3, 1, 3]
    log_probs = torch.full((1, 6, 4), -8.0)
    log_probs[0, torch.arange(6), torch.tensor(frames)] = 0.0
    log_probs = log_probs.log_softmax(-1)
    scorer = CTCPrefixScorer(
        log_probs, torch.tensor([6]), token_classes(SPELLED, V, torch.device("cpu")), EOS, 1.0, V
    )
    ids = torch.zeros(1, 0, dtype=torch.long)
    for _ in range(4):
        nxt = scorer(ids, torch.zeros(1, V)).argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        if int(nxt) == EOS:
            break
    assert ids[0].tolist() == [2, 4, EOS]


def test_bad_weights_are_refused(head):
    log_probs, lengths, classes = head
    for weight in (0.0, 1.5):
        with pytest.raises(ValueError, match="CTC weight"):
            CTCPrefixScorer(log_probs, lengths, classes, EOS, weight)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_ids_decodes_jointly_with_greedy_and_beam_search(setup, beams):
    torch.manual_seed(0)
    model = build_model(setup.config.model_copy(update={"adapter_norm": True, "ctc_compress": True}))
    mel = torch.randn(2, 80, 300)  # (B, M, T)
    lengths = torch.tensor([300, 200])
    alone = model.generate_ids(mel, lengths, max_new_tokens=[5, 3], num_beams=beams)
    joint = model.generate_ids(mel, lengths, max_new_tokens=[5, 3], num_beams=beams, ctc_weight=0.5)
    assert joint.shape[0] == 2 and joint.shape[1] <= 6  # each row ends at its bound + the end token
    assert alone.shape[0] == 2
    vocab = set(range(model.llm.get_input_embeddings().num_embeddings))
    assert set(joint.flatten().tolist()) <= vocab


def test_generate_ids_refuses_a_ctc_weight_without_a_head(setup):
    model = build_model(setup.config)  # no CTC head
    with pytest.raises(ValueError, match="eval.ctc_weight"):
        model.generate_ids(torch.randn(1, 80, 200), torch.tensor([200]), max_new_tokens=3, ctc_weight=0.3)


def test_config_refuses_joint_decoding_without_a_head():
    from llmasr.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.ctc_compress"):
        load_config(profile="demo", overrides=["eval.ctc_weight=0.5"])
    # stage 1 alone decodes no LLM-ASR: nothing to refuse
    assert (
        load_config(profile="demo", overrides=["eval.ctc_weight=0.5", "eval.stages=[1]"]).eval.ctc_weight
        == 0.5
    )
    assert load_config(profile="small").eval.ctc_weight == 0.5  # the small profile builds the head


def test_a_token_the_llm_bans_stays_banned_at_full_ctc_weight(head):
    log_probs, lengths, classes = head
    scorer = CTCPrefixScorer(log_probs, lengths, classes, EOS, weight=1.0, candidates=V)
    llm = torch.zeros(2, V)
    llm[:, 2] = float("-inf")  # e.g. no_repeat_ngram_size banned it
    out = scorer(torch.zeros(2, 0, dtype=torch.long), llm)
    assert not torch.isnan(out).any()
    assert torch.isneginf(out[:, 2]).all() and torch.isfinite(out[:, [4, 5]]).all()


def test_impossible_frames_and_a_wider_lm_head_do_not_break_the_scores(head):
    log_probs, lengths, classes = head
    log_probs = log_probs.clone()
    log_probs[0, 2, 3] = float("-inf")  # a blank the head rules out at frame 2
    scorer = CTCPrefixScorer(log_probs, lengths, classes, EOS, weight=1.0, candidates=V + 2)
    ids = torch.zeros(2, 0, dtype=torch.long)
    for token in (4, 2):
        out = scorer(ids, torch.zeros(2, V + 2))  # (2, V + 2): two ids past the embedding table
        assert not torch.isnan(out).any() and torch.isneginf(out[:, V:]).all()
        ids = torch.cat([ids, torch.full((2, 1), token)], dim=1)
