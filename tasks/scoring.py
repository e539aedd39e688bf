"""Scoring one system on one test set: its hypotheses -> per-utterance scores, the corpus rates
(``tasks.metrics``), metrics.json's row, ``<set>/<system>.jsonl`` and ``<set>/<system>.rare_words.tsv``.

An utterance the system failed on (or a hypothesis file lacks) is scored as an empty hypothesis: its
reference words are deletions, so every system is scored on the same words.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmasr.atomic import write_text
from tasks.decode import DecodeResult
from tasks.metrics import (
    CorpusScore,
    RareWords,
    UtteranceScore,
    rare_word_report,
    score_corpus,
    score_utterance,
)

if TYPE_CHECKING:  # evaluate imports this module
    from tasks.evaluate import PreparedSet


def utterance_error(result: DecodeResult, utt_id: str) -> str | None:
    """Why a system has no hypothesis for an utterance (it is then scored as an empty one); None if
    it has one."""
    if utt_id in result.failures:
        return result.failures[utt_id]
    return None if result.hyps.get(utt_id) is not None else "no hypothesis"


@dataclass
class SystemScores:
    """One system on one test set, scored."""

    system: str
    test_set: str
    scores: list[UtteranceScore]
    corpus: CorpusScore
    result: DecodeResult
    problems: list[str]


def score_result(prepared: PreparedSet, result: DecodeResult, rare: RareWords) -> SystemScores:
    """Score every utterance of the test set.  One the system failed on or has no hypothesis for is
    scored as an empty hypothesis (its reference words are deletions, as sclite scores a missing
    hypothesis), so every system is scored on the same words; failures and empty hypotheses are
    noted in ``problems``."""
    problems: list[str] = [f"{result.system}: {p}" for p in result.problems]
    scores: list[UtteranceScore] = []
    for u in prepared.utterances:
        hyp = result.hyps.get(u.utt_id)
        why = utterance_error(result, u.utt_id)
        if why is not None:
            score = score_utterance(u.utt_id, u.text, "", rare)
            problems.append(
                f"{result.system}: {u.utt_id} failed, scored as an empty hypothesis ({score.n.ref_words} "
                f"deletions): {why}"
            )
        else:
            score = score_utterance(u.utt_id, u.text, hyp, rare)
            if not hyp.strip() and score.n.ref_words:
                problems.append(
                    f"{result.system}: {u.utt_id}: empty hypothesis (scored: its {score.n.ref_words} "
                    "reference words are deletions)"
                )
        scores.append(score)
    return SystemScores(result.system, prepared.name, scores, score_corpus(scores), result, problems)


def reference_words(prepared: PreparedSet) -> Counter[str]:
    """Occurrences of each word in the normalised references of a test set."""
    from llmasr.text import normalize

    out: Counter[str] = Counter()
    for u in prepared.utterances:
        out.update(normalize(u.text).split())
    return out


def rare_rule_counts(words: Counter[str], rare: RareWords) -> dict[str, Any]:
    """What each part of the rare-word rule did to a test set's reference words (types and tokens):
    passed the training-count rule, excluded from those as common, added by the word list alone."""
    by_count = {w for w in words if rare.max_train_count >= 0 and rare.by_count(w)}
    common = {w for w in by_count if w in rare.common and w not in rare.extra}
    listed = {w for w in words if w in rare.extra and (w not in by_count or w in rare.common)}

    def tokens(ws: set[str]) -> int:
        return int(sum(words[w] for w in ws))

    return {
        "by_count_types": len(by_count),
        "by_count_tokens": tokens(by_count),
        "common_excluded_types": len(common),
        "common_excluded_tokens": tokens(common),
        "common_excluded_examples": sorted(common, key=lambda w: (-words[w], w))[:12],
        "word_list_added_types": len(listed),
        "word_list_added_tokens": tokens(listed),
    }


def metrics_row(s: SystemScores) -> dict[str, Any]:
    """The metrics.json entry of one system on one test set."""
    out = s.corpus.to_dict()
    r = s.result
    out.update(
        {
            "rtf": None if r.rtf is None else round(r.rtf, 4),
            "audio_s": round(r.audio_s, 3),
            "decode_s": None if r.decode_s is None else round(r.decode_s, 3),
            "tokens": r.tokens,
            "tokens_per_s": None if r.tokens_per_s is None else round(r.tokens_per_s, 2),
            "pieces": r.pieces,
            "failed": len(r.failures),
            # scored as empty
            "failed_utterances": sum(1 for sc in s.scores if utterance_error(r, sc.utt_id) is not None),
            "cached": r.cached,
        }
    )
    return out


# ---------------------------------------------------------------------------------------- writing


def write_utterances(path: Path, s: SystemScores, prepared: PreparedSet) -> Path:
    """``<set>/<system>.jsonl``: one JSON line per utterance, with its scores and ``error``: None, or
    why the system failed on it (then it was scored as an empty hypothesis: ``hyp`` is "")."""
    by_id = {sc.utt_id: sc for sc in s.scores}
    lines = []
    for u in prepared.utterances:
        row: dict[str, Any] = {
            "utt_id": u.utt_id,
            "audio": u.audio_path,
            "start_s": u.start_s,
            "end_s": u.end_s,
            "duration_s": round(prepared.durations.get(u.utt_id, 0.0), 3),
        }
        if u.utt_id in by_id:
            row.update(by_id[u.utt_id].to_dict())
        else:  # not scored (score_result scores every utterance; kept for a partial SystemScores)
            row.update({"ref": u.text, "hyp": None})
        row["error"] = utterance_error(s.result, u.utt_id)
        lines.append(json.dumps(row, ensure_ascii=False))
    return write_text(path, "".join(line + "\n" for line in lines))


def write_rare_words(path: Path, s: SystemScores, rare: RareWords) -> Path:
    """``<set>/<system>.rare_words.tsv``: word, training count, hits, misses (most missed first)."""
    rows = ["word\ttrain_count\thits\tmisses"]
    rows += [
        f"{st.word}\t{rare.counts.get(st.word, 0)}\t{st.hits}\t{st.misses}"
        for st in rare_word_report(s.scores)
    ]
    return write_text(path, "\n".join(rows) + "\n")
