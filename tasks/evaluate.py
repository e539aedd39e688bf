"""evaluate: test sets x systems -> O/N/R/U-WER, per-utterance alignments, rare-word lists, a report.

Plain functions the flow (flows/evaluate.py) strings together; a test can call them without Prefect.

    sets = [prepare_test_set(name, path, cfg.eval, cfg.segment) for name, path in ...]
    rare, info, problems = rare_word_set(work_dir, cfg.eval, cfg.shard.transcript)
    results = {system: {set: decode_cached(system, set, out_dir, cfg.eval)}}
    metrics = score_and_write(out_dir, work_dir, sets, systems, results, rare, info, problems, ...)

Here: the systems of a run (``system_specs``), test sets read and cut into pieces
(``prepare_test_set``), the decode cache (``decode_cached``) and ``score_and_write``.  The parts it
uses: decoding (``tasks.decode``), the rare-word set (``tasks.rare_words``), scoring one system
(``tasks.scoring``), report.md and wer.png (``tasks.eval_report``).

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

An utterance a system failed on (or a hypothesis file lacks) is scored as an empty hypothesis: its
reference words are deletions, so every system is scored on the same words.  It is listed under
Problems, counted as failed in the report's table, and its row in ``<set>/<system>.jsonl`` carries
the error.  An utterance whose audio cannot be read is left out for every system (a test-set problem).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmasr.atomic import atomic_path, write_json, write_text
from llmasr.config import ConfigError, EvalConfig, SegmentConfig
from llmasr.layout import safe_id
from tasks import decode
from tasks.decode import DecodeResult, System
from tasks.eval_report import render_report, report_rows, wer_plot_png
from tasks.metrics import RareWords
from tasks.parts import code_version, fingerprint
from tasks.pieces import Piece, plan_pieces
from tasks.rare_words import rare_word_set as rare_word_set  # the flow calls it as ev.rare_word_set
from tasks.scoring import (
    metrics_row,
    rare_rule_counts,
    reference_words,
    score_result,
    write_rare_words,
    write_utterances,
)
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


def make_systems(specs: Sequence[SystemSpec], settings: EvalConfig) -> list[System]:
    return [decode.make_system(s.kind, s.name, s.target, settings) for s in specs]


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
    """Read a test set (``tasks.testsets.load_test_set``) and plan its pieces (``tasks.pieces.plan_pieces``).

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
    kept, pieces, durations = plan_pieces(utts, cfg.max_piece_s, segment_cfg, problems)
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
        code_version(*decode.DECODE_CODE),
    )


def decode_cached(
    system: System,
    prepared: PreparedSet,
    out_dir: Path,
    settings: EvalConfig,
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


# ---------------------------------------------------------------------------------------- writing


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
