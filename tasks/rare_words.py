"""The rare-word set R of a run (DESIGN.md "Metrics (exact)"), for R-WER and U-WER.

R = the words whose count in the training transcripts -- the pseudo-labels of the segments the
filter kept (``manifests/labels.parquet`` joined with ``manifests/decisions.parquet``; the shards'
json where the manifests are gone), or the captions when the run trained on them -- is at most
``eval.max_train_count`` and that are not among the ``eval.common_words`` most frequent English
words (``tasks.metrics.common_word_set``), plus the words of ``eval.word_list`` (rare even when
common).  ``rare_word_set`` also describes how R was built, for metrics.json and report.md.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmasr.config import EvalConfig
from llmasr.layout import WorkLayout
from tasks.metrics import RareWords, build_vocabulary, common_word_set, common_word_source


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
            from tasks.evaluate import EvalError  # evaluate imports this module

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
