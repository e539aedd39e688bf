"""tasks.parts.code_version, the code part of every stage's cache key: it follows what the code does,
not its bytes.  A comment, a docstring or a reformat keeps every stage cached; a changed constant or
operator reruns the stage whose code it is, and only that stage."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tasks.parts import code_version, source_meaning

REPO = Path(__file__).resolve().parents[1]
LABEL_SOURCE = (REPO / "tasks" / "label.py").read_text(encoding="utf-8")


def test_comments_docstrings_and_formatting_leave_the_meaning_unchanged():
    base = source_meaning(LABEL_SOURCE)
    assert (
        "SEGMENTS_PER_CALL = 64" in LABEL_SOURCE
        and '"""Seconds of audio labelled per second of wall time."""' in LABEL_SOURCE
    )
    variants = {
        "comment appended": LABEL_SOURCE + "\n# a note for the next reader\n",
        "comment inline": LABEL_SOURCE.replace(
            "SEGMENTS_PER_CALL = 64", "SEGMENTS_PER_CALL = 64  # per call"
        ),
        "function docstring": LABEL_SOURCE.replace(
            '"""Seconds of audio labelled per second of wall time."""', '"""Audio seconds per wall second."""'
        ),
        "function docstring removed": LABEL_SOURCE.replace(
            '"""Seconds of audio labelled per second of wall time."""', ""
        ),
        "module docstring": LABEL_SOURCE.replace(
            '"""label: pseudo-label segments', '"""label: pseudo-label the segments', 1
        ),
        "reformat": LABEL_SOURCE.replace(
            "SEGMENTS_PER_CALL = 64", "SEGMENTS_PER_CALL = (\n    64\n)"
        ).replace("\n\n\n", "\n\n\n\n"),
        "quotes": LABEL_SOURCE.replace(
            'log = logging.getLogger("llmasr.label")', "log = logging.getLogger('llmasr.label')"
        ),
    }
    for what, source in variants.items():
        assert source != LABEL_SOURCE, what
        assert source_meaning(source) == base, what


def test_a_logic_change_changes_the_meaning():
    base = source_meaning(LABEL_SOURCE)
    assert "len(audio) / SAMPLE_RATE" in LABEL_SOURCE
    variants = {
        "constant": LABEL_SOURCE.replace("SEGMENTS_PER_CALL = 64", "SEGMENTS_PER_CALL = 65"),
        "operator": LABEL_SOURCE.replace("len(audio) / SAMPLE_RATE", "len(audio) // SAMPLE_RATE"),
        "name": LABEL_SOURCE.replace("SEGMENTS_PER_CALL = 64", "SEGMENTS_PER_BATCH = 64"),
        "a string that is not a docstring": LABEL_SOURCE.replace('"llmasr.label"', '"llmasr.labels"'),
    }
    for what, source in variants.items():
        assert source_meaning(source) != base, what


def test_a_package_is_versioned_by_all_its_modules():
    """A stage that names a package (a model split into modules) is keyed by every module in it."""
    assert code_version("tasks") != code_version("tasks", "llmasr.text")
    assert code_version("tasks.label") == code_version("tasks.label")


# --- the check: a comment in the labelling and the model module keeps every stage cached ---

# Every stage key of a demo data run and a demo train run, by the flows' own key functions, on a
# work dir with one captioned item (the keys stat its files; their content does not matter).
STAGE_KEYS = r"""
import json, sys
from pathlib import Path

import flows.data, llmasr.model, tasks.label
from flows.train import stage_key
from llmasr.config import load_config
from llmasr.layout import WorkLayout
from llmasr.records import STATUS_OK, Item, Segment
from tasks import label, segment
from tasks.ingest import LocalFile

work = Path(sys.argv[1])
layout = WorkLayout(work)
cfg = load_config("demo", work_dir=str(work))
audio, caption = layout.audio("vid"), layout.captions("vid")
item = Item("vid", "/src", None, layout.rel(audio), 4.0, layout.rel(caption), STATUS_OK)
segments = {"vid": [Segment("vid-000000000", "vid", 0.0, 4.0, 4.0, "hello there")]}
segment_key = segment.item_key(layout, item, cfg.segment)
label_key = label.item_key(layout, item, segments["vid"], cfg.label, cfg.filter)
filter_key = flows.data.filter_key(segment_key, label_key, cfg)
print(json.dumps({
    "loaded_from": [tasks.label.__file__, llmasr.model.__file__],
    "ingest": flows.data.ingest_key([LocalFile("vid", "/src", str(audio), str(caption))], cfg),
    "segment": segment_key,
    "label": label_key,
    "filter": filter_key,
    "shard": flows.data.shard_key(segment_key, label_key, filter_key, cfg),
    "train": [stage_key(cfg, layout, s) for s in (1, 2, 3)],
}))
"""


def _code_copy(src: Path, dst: Path) -> Path:
    """The code and config of ``src`` (the repository or a copy), copied to ``dst``: it imports
    under the same module names."""
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("flows", "tasks", "llmasr", "infra"):  # infra/: the DeepSpeed configs the train keys read
        shutil.copytree(src / package, dst / package, ignore=ignore)
    shutil.copy(src / "pipeline_config.yaml", dst)
    return dst


def _stage_keys(code_root: Path, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", STAGE_KEYS, str(work)],
        cwd=code_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    keys = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(Path(f).resolve().is_relative_to(code_root.resolve()) for f in keys.pop("loaded_from")), (
        "the copy was not imported"
    )
    return keys


def _append(code_root: Path, module: str, text: str) -> None:
    rel = Path(importlib.util.find_spec(module).origin).relative_to(REPO)  # type: ignore[union-attr, arg-type]
    with open(code_root / rel, "a", encoding="utf-8") as fh:
        fh.write(text)


def test_a_comment_in_the_labelling_and_model_modules_keeps_data_and_train_runs_cached(tmp_path: Path):
    from llmasr.layout import WorkLayout

    work = tmp_path / "work"
    layout = WorkLayout(work)
    for path, data in (
        (layout.audio("vid"), b"fLaC"),
        (layout.captions("vid"), b"WEBVTT\n"),
        (layout.shard_index, b'{"shards": []}'),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    # every variant is a copy of one snapshot of the code, so the comparison holds while the checkout changes
    original = _code_copy(REPO, tmp_path / "original")
    before = _stage_keys(original, work)
    commented = _code_copy(original, tmp_path / "commented")
    for module in ("tasks.label", "llmasr.model"):
        _append(commented, module, "\n# a comment fixed for a typo\n")
    assert _stage_keys(commented, work) == before

    changed = _code_copy(original, tmp_path / "changed")
    _append(changed, "tasks.label", "\nSEGMENTS_PER_CALL = 32\n")
    _append(changed, "llmasr.model", "\n_PROBE = 1\n")
    after = _stage_keys(changed, work)
    # the labelling code relabels, and so refilters and reshards; the model code retrains every stage
    assert {k for k in before if before[k] != after[k]} == {"label", "filter", "shard", "train"}
    assert all(a != b for a, b in zip(after["train"], before["train"]))
