"""evaluate: test sets x systems -> O/N/R/U-WER, per-utterance alignments, rare-word lists, a report.

Plain functions the flow (flows/evaluate.py) strings together; a test can call them without Prefect.

    sets = [prepare_test_set(name, path, cfg.eval, cfg.segment) for name, path in ...]
    rare, info, problems = rare_word_set(work_dir, cfg.eval, cfg.shard.transcript)
    results = {system: {set: decode_cached(system, set, out_dir, settings)}}
    metrics = score_and_write(out_dir, work_dir, sets, systems, results, rare, info, problems, ...)

Files under ``<work_dir>/eval/`` (DESIGN.md, the evaluate row):

    metrics.json                       results[test_set][system] = {o_wer, n_wer, r_wer, u_wer, words,
                                       rare_words, utterances, rtf, + the error counts, failed, ...}
    report.md                          one table (systems x test sets, counts beside every rate, RTF),
                                       the rare-word set, the test sets, a Problems section
    wer.png                            N-, R- and U-WER per system and test set (none when no rate exists)

metrics.json, report.md and wer.png cover every test set evaluated in the work dir: an evaluation
replaces the sets it evaluated (all their systems) and keeps the others as an earlier run left them
(``merge_metrics``); each set records when it was evaluated, with which settings and rare-word set.
    <set>/<system>.jsonl               per utterance: ref, hyp, normalised texts, counts, alignment
    <set>/<system>.rare_words.tsv      each rare reference word: training count, hits, misses
    <set>/<system>.decode.json         the decode cache: hypotheses + the key they were made with

Rare words (DESIGN.md "Metrics (exact)"): words whose count in the training transcripts -- the
pseudo-labels of the segments the filter kept (``manifests/labels.parquet`` joined with
``manifests/decisions.parquet``; the shards' json where the manifests are gone) -- is at most
``eval.max_train_count`` and that are not among the ``eval.common_words`` most frequent English
words (``tasks.metrics.common_word_set``), plus the words of ``eval.word_list`` (rare even when
common).  report.md and metrics.json count what each rule took out or added.

An utterance a system failed on (or a hypothesis file lacks) is scored as an empty hypothesis: its
reference words are deletions, so every system is scored on the same words.  It is listed under
Problems, counted as failed in the report's table, and its row in ``<set>/<system>.jsonl`` carries
the error.  An utterance whose audio cannot be read is left out for every system (a test-set problem).
"""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmasr.atomic import atomic_path, write_json, write_text
from llmasr.config import ConfigError, EvalConfig, SegmentConfig
from llmasr.layout import WorkLayout, safe_id
from tasks import decode
from tasks.decode import DecodeResult, DecodeSettings, Piece, System
from tasks.metrics import (
    CorpusScore,
    RareWords,
    UtteranceScore,
    build_vocabulary,
    common_word_set,
    common_word_source,
    rare_word_report,
    score_corpus,
    score_utterance,
)
from tasks.parts import code_version, fingerprint
from tasks.testsets import TestSetError, TestUtterance, load_test_set

log = logging.getLogger("llmasr.evaluate")

EVAL_DIR = "eval"


class EvalError(ConfigError):
    """A bad evaluation request (unknown spec, missing test set): raised before any decoding."""


# ------------------------------------------------------------------------------------------ specs


def parse_named(spec: str, what: str = "test set") -> tuple[str, str]:
    """``name=path`` -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise EvalError(f"{what} {spec!r} is not name=path; write e.g. primock57=/data/primock57")
    return name.strip(), path.strip()


@dataclass(frozen=True)
class SystemSpec:
    """A system to evaluate: kind 'llmasr' (target: stage folder), 'faster-whisper' (target: model
    spec), 'transformers' (target: Whisper model spec, or the stage-1 folder), 'zipformer' (target:
    checkpoints/zipformer) or 'hyps' (target: hypothesis file)."""

    name: str
    kind: str
    target: str


def system_specs(work_dir: str | Path, cfg: EvalConfig) -> tuple[list[SystemSpec], list[str]]:
    """The systems of a run: each complete stage checkpoint of ``cfg.stages`` ("llmasr-stage1":
    Whisper with the stage-1 encoder, through transformers; "llmasr-stage2", "llmasr-stage3": the
    LLM-ASR), "zipformer" (the Zipformer-Transducer, where ``checkpoints/zipformer`` is complete),
    the faster-whisper and transformers Whisper baselines, the hypothesis files.
    Returns (specs, notes): a note for each stage asked for but not (completely) trained."""
    from tasks.checkpoints import read_stage, stage_dir

    specs: list[SystemSpec] = []
    notes: list[str] = []
    for stage in cfg.stages:
        folder = stage_dir(work_dir, stage)
        if read_stage(folder) is None:
            notes.append(f"llmasr-stage{stage}: no complete checkpoint in {folder} (not evaluated)")
            continue
        # stage 1: its Whisper export (fine-tuned encoder + Whisper's decoder) through transformers
        specs.append(
            SystemSpec(f"llmasr-stage{stage}", "transformers" if stage == 1 else "llmasr", str(folder))
        )
    from tasks.zipformer_decode import read_model_json, zipformer_dir

    if read_model_json(zipformer_dir(work_dir)) is not None:  # the baseline trained on the same shards
        specs.append(SystemSpec("zipformer", "zipformer", str(zipformer_dir(work_dir))))
    for spec in cfg.baselines:
        if spec.startswith(decode.FASTER_WHISPER_PREFIX):
            specs.append(SystemSpec(spec, "faster-whisper", spec[len(decode.FASTER_WHISPER_PREFIX) :]))
        elif spec.startswith(decode.TRANSFORMERS_PREFIX):
            specs.append(SystemSpec(spec, "transformers", spec[len(decode.TRANSFORMERS_PREFIX) :]))
        else:
            raise EvalError(
                f"baseline {spec!r}: write faster-whisper:<model> or transformers:<Whisper checkpoint>, e.g. "
                "faster-whisper:large-v2"
            )
    specs += hyp_specs(cfg)
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EvalError(
            f"eval.hyps / eval.baselines: system names must be distinct, got {dupes} twice (rename one: "
            "--hyps OTHER=PATH)"
        )
    return specs, notes


def hyp_specs(cfg: EvalConfig) -> list[SystemSpec]:
    """The hypothesis-file systems of ``eval.hyps``; a file that does not exist raises EvalError."""
    specs = []
    for spec in cfg.hyps:
        name, path = parse_named(spec, "hypothesis file")
        if not Path(path).expanduser().is_file():
            raise EvalError(
                f"eval.hyps: hypothesis file {path} (from {spec!r}) does not exist (fix it with --hyps "
                "NAME=PATH)"
            )
        specs.append(SystemSpec(name, "hyps", path))
    return specs


def make_systems(specs: Sequence[SystemSpec], settings: DecodeSettings) -> list[System]:
    return [decode.make_system(s.kind, s.name, s.target, settings) for s in specs]


# ------------------------------------------------------------------------------------ rare words


def training_texts(
    work_dir: str | Path, splits: Sequence[str] | None = None, transcript: str = "label"
) -> tuple[list[str], str | None]:
    """The training transcripts of a run: the kept segments' texts as the shards hold them
    (``shard.transcript``: the pseudo-labels, or the captions where there are some).

    From ``manifests/labels.parquet`` + ``manifests/decisions.parquet`` (kept, in ``splits`` when
    given; with ``manifests/segments.parquet`` for the captions); else from the shards
    (``shards/index.json`` and each sample's ``.json`` text).  Returns (texts, where they came from);
    (``[]``, None) when the run has neither.
    """
    from llmasr.records import Decision, Label, Segment, read_records
    from tasks.shard import sample_text

    layout = WorkLayout(Path(work_dir))
    wanted = set(splits) if splits else None
    if layout.labels.is_file() and layout.decisions.is_file():
        kept = {
            d.segment_id
            for d in read_records(layout.decisions, Decision)
            if d.kept and (wanted is None or d.split in wanted)
        }
        labels = [lab for lab in read_records(layout.labels, Label) if lab.segment_id in kept]
        if transcript == "caption":
            segments = {s.segment_id: s for s in read_records(layout.segments, Segment)}
            texts = [sample_text(segments[lab.segment_id], lab, transcript) for lab in labels]
            return texts, f"{layout.segments} captions, else {layout.labels} (kept in {layout.decisions})"
        return [lab.text for lab in labels], f"{layout.labels} (kept in {layout.decisions})"
    if layout.shard_index.is_file():
        index = json.loads(layout.shard_index.read_text(encoding="utf-8"))
        texts = []
        for entry in index.get("shards", []):
            if wanted is not None and entry.get("split") not in wanted:
                continue
            with tarfile.open(layout.shards / entry["path"]) as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".json"):
                        data = json.loads(tar.extractfile(member).read().decode("utf-8"))  # type: ignore[union-attr]
                        texts.append(data.get("text") or "")
        return texts, str(layout.shard_index)
    return [], None


def read_word_list(path: str | Path) -> list[str]:
    """Entries of a word-list file: one word or phrase per line; '#' starts a comment."""
    out = []
    for line in Path(path).expanduser().read_text(encoding="utf-8-sig").splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            out.append(entry)
    return out


def rare_word_set(
    work_dir: str | Path, cfg: EvalConfig, transcript: str = "label"
) -> tuple[RareWords, dict[str, Any], list[str]]:
    """R for a run: (RareWords, a description for metrics.json and the report, problems).
    ``transcript``: the run's ``shard.transcript`` (which text it trained on)."""
    problems: list[str] = []
    texts, source = training_texts(work_dir, cfg.train_splits, transcript)
    counts = build_vocabulary(texts)
    extra: list[str] = []
    if cfg.word_list:
        if not Path(cfg.word_list).expanduser().is_file():
            raise EvalError(f"eval.word_list: no such file {cfg.word_list}")
        extra = read_word_list(cfg.word_list)
    if source is None:
        problems.append(
            f"no training transcripts in {Path(work_dir)} (no manifests/labels.parquet + decisions.parquet, "
            "no shards): "
            + (
                "every reference word counts as rare"
                if cfg.max_train_count >= 0
                else "rare words are the word list alone"
            )
        )
    elif not texts:
        problems.append(
            f"no training transcripts in {source}"
            + (f" for eval.train_splits={list(cfg.train_splits)}" if cfg.train_splits else "")
            + ": every reference word counts as rare"
        )
    if problems and cfg.max_train_count >= 0 and cfg.common_words > 0:
        problems[-1] += f" except the {cfg.common_words} most common English words (eval.common_words)"
    common = common_word_set(cfg.common_words) if cfg.max_train_count >= 0 else frozenset()
    rare = RareWords(counts, cfg.max_train_count, extra, common)
    info = {
        "source": source,
        "train_texts": len(texts),
        "train_words": int(sum(counts.values())),
        "vocabulary": len(counts),
        "max_train_count": cfg.max_train_count,
        "train_splits": list(cfg.train_splits) if cfg.train_splits else None,
        "word_list": cfg.word_list,
        "word_list_words": len(rare.extra),
        "common_words": cfg.common_words if common else 0,
        "common_source": common_word_source(cfg.common_words) if common else None,
        "common_types": len(common),
    }
    return rare, info, problems


# ------------------------------------------------------------------------------------- test sets


@dataclass
class PreparedSet:
    """A test set read, checked and cut into pieces."""

    name: str
    path: str
    utterances: list[TestUtterance]
    pieces: list[Piece]
    durations: dict[str, float]
    problems: list[str] = field(default_factory=list)

    @property
    def audio_s(self) -> float:
        return float(sum(self.durations.values()))

    def pieces_key(self) -> str:
        return fingerprint(
            [
                (
                    p.utt_id,
                    p.index,
                    p.audio_path,
                    round(p.start_s, 3),
                    round(p.end_s, 3),
                    _stamp(p.audio_path),
                )
                for p in self.pieces
            ],
            sorted(u.utt_id for u in self.utterances),
        )


def _stamp(path: str) -> list[int] | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def prepare_test_set(name: str, path: str | Path, cfg: EvalConfig, segment_cfg: SegmentConfig) -> PreparedSet:
    """Read a test set (``tasks.testsets.load_test_set``) and plan its pieces (``decode.plan_pieces``).

    Entries the reader skips (missing audio, no transcript, ...) and utterances whose audio cannot be
    read become problems; an empty reference is kept (a hypothesis then scores as insertions) and noted.
    """
    try:
        utts, problems = load_test_set(path)
    except (FileNotFoundError, TestSetError) as exc:
        raise EvalError(f"test set {name}: {exc}") from exc
    problems = list(problems)
    for u in utts:
        if not u.text.strip():
            problems.append(f"{u.utt_id}: empty reference (scored: any hypothesis words count as insertions)")
    kept, pieces, durations = decode.plan_pieces(utts, cfg.max_piece_s, segment_cfg, problems)
    if not kept:
        problems.append(f"no utterance of {path} could be read: nothing to score")
    return PreparedSet(name, str(path), kept, pieces, durations, problems)


# ---------------------------------------------------------------------------------------- decode


def set_dir(out_dir: Path, set_name: str) -> Path:
    return out_dir / safe_id(set_name)


def system_file(out_dir: Path, set_name: str, system: str, suffix: str) -> Path:
    return set_dir(out_dir, set_name) / f"{safe_id(system)}{suffix}"


def decode_key(system: System, prepared: PreparedSet) -> str:
    return fingerprint(
        "decode",
        system.identity(),
        prepared.pieces_key(),
        code_version("tasks.decode", "llmasr.model", "llmasr.generation", "tasks.whisper_hf"),
    )


def decode_cached(
    system: System,
    prepared: PreparedSet,
    out_dir: Path,
    settings: DecodeSettings,
    refresh: bool = False,
    progress=None,
) -> DecodeResult:
    """``decode.run_system``, reusing ``<set>/<system>.decode.json`` when it was made from the same
    pieces by the same system and settings (hypothesis files are always read afresh)."""
    if not system.needs_audio:
        return decode.run_system(system, prepared.utterances, prepared.pieces, prepared.durations, settings)
    key = decode_key(system, prepared)
    cache = system_file(out_dir, prepared.name, system.name, ".decode.json")
    if not refresh and cache.is_file():
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
            if data.get("key") == key:
                result = DecodeResult.from_dict(data)
                result.cached = True
                log.info("%s on %s: reusing %s", system.name, prepared.name, cache)
                return result
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable decode cache %s: %s", cache, exc)
    result = decode.run_system(
        system, prepared.utterances, prepared.pieces, prepared.durations, settings, progress
    )
    result.key = key
    write_json(cache, result.to_dict())
    return result


# --------------------------------------------------------------------------------------- scoring


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


# ---------------------------------------------------------------------------------------- report


def fmt_rate(rate: float | None, errors: int, words: int) -> str:
    """'12.3% (45/366)'; 'n/a (0 words)' where there is nothing to divide by -- never 0."""
    if rate is None:
        return f"n/a ({errors}/{words})" if errors else "n/a (0 words)"
    return f"{100 * rate:.1f}% ({errors}/{words})"


def rtf_label(row: dict[str, Any], kind: str | None) -> str:
    """The RTF cell: the ratio, or why there is none (a hypothesis file has no decoding time, a set
    without audio nothing to divide by)."""
    if row.get("rtf") is not None:
        return f"{row['rtf']:.3f}" + (" (cached)" if row.get("cached") else "")
    if kind == "hyps" or row.get("decode_s") is None:
        return "n/a (hyp file)"
    return "n/a (no audio)" if not row.get("audio_s") else "n/a"


def report_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's table: one row per test set x system of ``metrics`` (every set in it), every
    rate with its counts."""
    kinds = {s["name"]: s["kind"] for s in metrics["systems"]}
    rows = []
    for set_name, per_system in metrics["results"].items():
        total = metrics["test_sets"].get(set_name, {}).get("utterances", 0)
        for system, m in per_system.items():
            failed = m.get("failed_utterances", m.get("failed", 0))
            rows.append(
                {
                    "test set": set_name,
                    "system": system,
                    "utts": f"{total} ({failed} failed)" if failed else str(total),
                    "words": m["words"],
                    "rare words": m["rare_words"],
                    "O-WER": fmt_rate(m["o_wer"], m["o_errors"], m["o_words"]),
                    "N-WER": fmt_rate(m["n_wer"], m["n_errors"], m["words"]),
                    "R-WER": fmt_rate(m["r_wer"], m["r_errors"], m["rare_words"]),
                    "U-WER": fmt_rate(m["u_wer"], m["u_errors"], m["u_words"]),
                    "RTF": rtf_label(m, kinds.get(system)),
                }
            )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no results)\n"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        out.append("| " + " | ".join(str(row[c]).replace("|", "\\|").replace("\n", " ") for c in cols) + " |")
    return "\n".join(out) + "\n"


def render_report(
    metrics: dict[str, Any], rows: Sequence[dict[str, Any]], plot_name: str | None = "wer.png"
) -> str:
    """report.md: the table, how R was built, each test set's rare words, the problems, the files."""
    info = metrics["rare_words"]
    lines = [f"# Evaluation: `{metrics['work_dir']}`", ""]
    lines.append(
        "Systems: " + ", ".join(f"`{s['name']}` ({s['kind']})" for s in metrics["systems"]) + "."
        if metrics["systems"]
        else "Systems: none."
    )
    s = metrics["settings"]
    lines += [
        f"Decoding: {_decoding_text(s)}.",
        "",
        "## Results",
        "",
        "Corpus-level rates, errors/words beside each (O-WER on words as written, N-/R-/U-WER on "
        "Whisper-normalised words; R = rare words, U = the rest). R-WER is n/a where a test set has no rare "
        "reference words. RTF = decode time / audio time. Every test set evaluated in this work dir is here; "
        "a set's results are those of its latest evaluation (when, below).",
        "",
        markdown_table(rows),
    ]
    if plot_name:
        lines += [f"![WER per system and test set]({plot_name})", ""]
    else:
        lines += ["No WER chart: no system has a rate to plot (no reference words were scored).", ""]
    lines += ["## Rare words", "", _rare_rule_text(info), ""]
    for name, ts in metrics["test_sets"].items():
        lines.append(_test_set_text(name, ts, info, s))
    lines += ["", "## Problems", ""]
    problems = metrics["problems"]
    lines += [f"- {p}" for p in problems] if problems else ["None."]
    lines += ["", "## Files", ""]
    for name, per_system in metrics["files"].items():
        for system, files in per_system.items():
            lines.append(f"- {name} / {system}: " + ", ".join(f"[{k}]({v})" for k, v in files.items()))
    return "\n".join(lines) + "\n"


def _decoding_text(s: dict[str, Any]) -> str:
    return (
        f"beam {s['num_beams']}, no repeated {s['no_repeat_ngram_size']}-grams, new tokens <= "
        f"ceil({s['tokens_per_second']:g} x seconds) + {s['min_new_tokens']} (cap {s['max_new_tokens']}); "
        f"utterances over {s['max_piece_s']:g} s cut by VAD"
    )


def _rare_rule_text(info: dict[str, Any]) -> str:
    """How R was built (metrics.json's ``rare_words``), as one sentence."""
    if info["max_train_count"] >= 0:
        rule = (
            "never seen in"
            if info["max_train_count"] == 0
            else f"seen at most {info['max_train_count']} times in"
        )
        base = f"R = the words {rule} the training transcripts"
    else:
        base = "R = the words of the word list alone"
    src = (
        f"{info['train_texts']} kept pseudo-labels, {info['train_words']} words, {info['vocabulary']} "
        f"distinct, from {info['source']}"
        if info["source"]
        else "no training transcripts found"
    )
    if info.get("common_words"):
        base += (
            f" ({src}), except the {info['common_words']} most frequent English words "
            f"({info['common_source']}, {info['common_types']} words once normalised), which are never rare "
            "by count"
        )
    else:
        base += f" ({src})" + (
            "; no common-word exclusion (eval.common_words 0)" if info["max_train_count"] >= 0 else ""
        )
    return (
        base
        + (
            f"; plus the {info['word_list_words']} words of the word list `{info['word_list']}`, rare even "
            "when common"
            if info["word_list"]
            else ""
        )
        + "."
    )


def _test_set_text(name: str, ts: dict[str, Any], info: dict[str, Any], settings: dict[str, Any]) -> str:
    """A test set's line: its audio and rare words, when it was evaluated, and how that differs from
    the latest evaluation's settings or rare-word set (a set kept from an earlier one)."""
    unseen = ts["rare_unseen_types"]
    rule = ts["rare_rule"]
    excluded = rule["common_excluded_examples"]
    own_info = ts.get("rare_words") or info
    when = f" Evaluated {ts['evaluated']}" if ts.get("evaluated") else ""
    if ts.get("settings") not in (None, settings):
        when += f", decoded with {_decoding_text(ts['settings'])}"
    if own_info != info:
        when += f", scored with the rare-word set of that evaluation ({_rare_rule_text(own_info)[:-1]})"
    return (
        f"- **{name}** (`{ts['path']}`): {ts['utterances']} utterances, {ts['audio_s']:.1f} s of audio; "
        f"{ts['rare_types']} distinct rare words ({ts['rare_tokens']} occurrences) in the references, "
        f"{unseen} of them truly unseen in the training labels"
        + (
            f": {', '.join(ts['rare_examples'])}"
            + (" ..." if ts["rare_types"] > len(ts["rare_examples"]) else "")
            if ts["rare_examples"]
            else ""
        )
        + f". Training-count rule: {rule['by_count_types']} words ({rule['by_count_tokens']} occurrences)"
        + (
            f"; common-word rule: {rule['common_excluded_types']} of them excluded "
            f"({rule['common_excluded_tokens']} occurrences"
            + (
                f": {', '.join(excluded)}" + (" ..." if rule["common_excluded_types"] > len(excluded) else "")
                if excluded
                else ""
            )
            + ")"
            if own_info.get("common_words")
            else ""
        )
        + (
            f"; word list: {rule['word_list_added_types']} words added ({rule['word_list_added_tokens']} "
            "occurrences)"
            if own_info["word_list"]
            else ""
        )
        + "."
        + (when + "." if when else "")
    )


WER_KEYS = (("n_wer", "N-WER"), ("r_wer", "R-WER"), ("u_wer", "U-WER"))


def wer_plot_png(results: dict[str, dict[str, dict[str, Any]]]) -> bytes | None:
    """Grouped bars: N-, R- and U-WER (%) of each system, one panel per test set of ``results``
    (metrics.json's: set -> system -> row); n/a rates marked.  None when no rate exists at all
    (nothing was scored): an empty chart says nothing."""
    if not any(
        m.get(key) is not None
        for per_system in results.values()
        for m in per_system.values()
        for key, _ in WER_KEYS
    ):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = 150.0  # bars above this (a random or looping model) are clipped and labelled with their value
    names = [n for n, per_system in results.items() if per_system]
    fig, axes = plt.subplots(1, len(names), figsize=(max(5.0, 4.5 * len(names)), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        mine = list(results[name].items())
        width = 0.8 / len(mine)
        values_all = []
        for k, (system, m) in enumerate(mine):
            values = [m.get(key) for key, _ in WER_KEYS]
            values_all += [v for v in values if v is not None]
            xs = [i + (k - (len(mine) - 1) / 2) * width for i in range(len(WER_KEYS))]
            bars = ax.bar(
                xs, [min(100 * v, top) if v is not None else 0.0 for v in values], width, label=system
            )
            for x, v, bar in zip(xs, values, bars):
                if v is None:
                    ax.text(x, 0.5, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                    bar.set_alpha(0.0)
                elif 100 * v > top:
                    ax.text(
                        x,
                        top,
                        f"{100 * v:.0f}%",
                        ha="center",
                        va="top",
                        fontsize=7,
                        rotation=90,
                        color="white",
                    )
        ax.set_xticks(range(len(WER_KEYS)), [label for _, label in WER_KEYS])
        ax.set_title(name)
        ax.set_ylabel("WER (%)")
        highest = max((100 * v for v in values_all), default=0.0)
        ax.set_ylim(0, top if highest > top else max(10.0, 1.15 * highest))  # all-zero bars still get an axis
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- writing


def utterance_error(result: DecodeResult, utt_id: str) -> str | None:
    """Why a system has no hypothesis for an utterance (it is then scored as an empty one); None if
    it has one."""
    if utt_id in result.failures:
        return result.failures[utt_id]
    return None if result.hyps.get(utt_id) is not None else "no hypothesis"


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


def score_and_write(
    out_dir: Path,
    work_dir: str | Path,
    sets: Sequence[PreparedSet],
    specs: Sequence[SystemSpec],
    results: dict[str, dict[str, DecodeResult]],
    rare: RareWords,
    rare_info: dict[str, Any],
    problems: Sequence[str],
    settings: dict[str, Any],
) -> tuple[dict[str, Any], str, bytes | None, list[dict[str, Any]]]:
    """Score every (test set, system) result and write the per-system files, then metrics.json,
    report.md and wer.png over these sets and those an earlier evaluation left in ``out_dir``
    (``merge_metrics``).  ``results[system][test_set]``; a system missing there (failed to load) is
    skipped (``problems`` says why).  Returns (metrics, report markdown, plot png or None when there
    is no rate to plot, table rows)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    all_problems = list(problems)
    metrics: dict[str, Any] = {
        "work_dir": str(Path(work_dir).resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "rare_words": rare_info,
        "systems": [{"name": s.name, "kind": s.kind, "target": s.target} for s in specs],
        "test_sets": {},
        "results": {},
        "files": {},
    }
    for prepared in sets:
        words = reference_words(prepared)
        counts = Counter({w: c for w, c in words.items() if w in rare})
        unseen = sorted(w for w in counts if rare.counts.get(w, 0) == 0)
        metrics["test_sets"][prepared.name] = {
            "path": prepared.path,
            "utterances": len(prepared.utterances),
            "pieces": len(prepared.pieces),
            "audio_s": round(prepared.audio_s, 3),
            "rare_types": len(counts),
            "rare_tokens": int(sum(counts.values())),
            "rare_unseen_types": len(unseen),
            "rare_examples": [w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))][:12],
            "rare_rule": rare_rule_counts(words, rare),
            "problems": list(prepared.problems),
        }
        all_problems += [f"[{prepared.name}] {p}" for p in prepared.problems]
        if prepared.utterances and not counts:
            all_problems.append(f"[{prepared.name}] no rare words in the references: R-WER is n/a")
        metrics["results"][prepared.name] = {}
        metrics["files"][prepared.name] = {}
        for spec in specs:
            result = results.get(spec.name, {}).get(prepared.name)
            if result is None:
                continue
            s = score_result(prepared, result, rare)
            all_problems += [f"[{prepared.name}] {p}" for p in s.problems]
            jsonl = write_utterances(system_file(out_dir, prepared.name, spec.name, ".jsonl"), s, prepared)
            tsv = write_rare_words(system_file(out_dir, prepared.name, spec.name, ".rare_words.tsv"), s, rare)
            metrics["results"][prepared.name][spec.name] = metrics_row(s)
            metrics["files"][prepared.name][spec.name] = {
                "utterances": jsonl.relative_to(out_dir).as_posix(),
                "rare_words": tsv.relative_to(out_dir).as_posix(),
            }
    metrics["problems"] = all_problems
    for name, ts in metrics["test_sets"].items():  # what a later evaluation of other sets keeps beside them
        others = [f"[{n}]" for n in metrics["test_sets"] if n != name]
        ts.update(evaluated=metrics["created"], settings=settings, rare_words=rare_info,
                  run_problems=[p for p in all_problems if not p.startswith(tuple(others))])  # fmt: skip
    metrics = merge_metrics(read_metrics(out_dir), metrics)
    png = wer_plot_png(metrics["results"])
    if png is None:
        (out_dir / "wer.png").unlink(missing_ok=True)  # an earlier chart would describe other results
    else:
        with atomic_path(out_dir / "wer.png") as tmp:
            tmp.write_bytes(png)
    rows = report_rows(metrics)
    report = render_report(metrics, rows, "wer.png" if png is not None else None)
    write_json(out_dir / "metrics.json", _json_safe(metrics))
    write_text(out_dir / "report.md", report)
    return metrics, report, png, rows


def read_metrics(out_dir: Path) -> dict[str, Any] | None:
    """The metrics.json an earlier evaluation left in ``out_dir``; None if none (or unreadable: logged)."""
    path = out_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data.get("test_sets"), dict) and isinstance(data.get("results"), dict):
            return data
        log.warning("%s has no test_sets/results: starting a new one", path)
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("ignoring unreadable %s (%s): starting a new one", path, exc)
    return None


def merge_metrics(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """One metrics.json over every test set evaluated in the work dir: ``new``'s sets (all their
    systems) replace the same sets of ``old``; ``old``'s other sets stay as they were, in their
    place, with their problems and systems.  The top level's settings and rare_words are the newest
    evaluation's (each set keeps its own)."""
    if not old:
        return new
    kept = [n for n in old["test_sets"] if n not in new["test_sets"]]
    if not kept:
        return new
    order = list(old["test_sets"]) + [n for n in new["test_sets"] if n not in old["test_sets"]]
    pick = lambda field, name: (new if name in new["test_sets"] else old).get(field, {}).get(name, {})  # noqa: E731
    merged = {
        **new,
        **{field: {n: pick(field, n) for n in order} for field in ("test_sets", "results", "files")},
    }
    problems: list[str] = []
    for name in order:
        ts = merged["test_sets"][name]
        # an earlier metrics.json without run_problems: its problems about this set, by their prefix
        own = (
            ts.get("run_problems", [p for p in old.get("problems", []) if p.startswith(f"[{name}]")])
            if name in kept
            else ts["run_problems"]
        )
        problems += [p for p in own if p not in problems]
    merged["problems"] = problems
    used = {system for per_system in merged["results"].values() for system in per_system}
    new_names = {s["name"] for s in new["systems"]}
    merged["systems"] = list(new["systems"]) + [
        s for s in old.get("systems", []) if s["name"] in used and s["name"] not in new_names
    ]
    return merged


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
