"""The `small` profile's corpus (tasks/small_corpus.py) at a tiny size, and the profile itself.

A few short videos and a few test sentences (~10 s of espeak-ng work in all): videos with captions,
both test-set manifests and corpus.json; the same bytes for the same seed whatever the worker count;
rare words of the zero-shot set in no training sentence; the profile validates.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from llmasr.config import ConfigError, DemoConfig
from tasks import small_corpus
from tasks.captions import parse_captions
from tasks.demo_corpus import ZERO_SHOT_SENTENCES, generate_corpus
from tasks.ingest import expand_source, resolve_sources

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng (scripts/setup.sh installs it)"
)

TINY = {"hours": 0.006, "heldout": 3, "zero_shot": 3, "video_s": [6.0, 10.0], "seed": 7}


def _tiny(out: Path, workers: int, **kw) -> Path:
    demo = DemoConfig.model_validate(
        {"kind": "small", "corpus_dir": str(out), "workers": workers, **{**TINY, **kw}}
    )
    return generate_corpus(demo)  # the data flow's path (flows/data.py make_demo_corpus)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("small") / "corpus", workers=2)


def _manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_tiny_corpus_has_videos_with_captions_test_sets_and_a_record(corpus: Path) -> None:
    record = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))
    items = record["items"]
    assert record["settings"]["kind"] == "small" and record["settings"]["seed"] == TINY["seed"]
    assert record["counts"]["videos"] == len(items) >= 1
    assert record["hours"]["videos_speech"] >= TINY["hours"]  # generated until the real speech reaches it
    assert not (corpus.parent / "corpus.partial").exists()
    for item in items:
        audio = corpus / "videos" / f"{item['name']}{item['ext']}"
        info = sf.info(str(audio))
        assert info.samplerate == small_corpus.RATE and info.channels == 1
        assert abs(info.duration - item["duration_s"]) < 0.1
        assert item["voice"] in small_corpus.VOICES
        assert small_corpus.SPEED_WPM[0] <= item["speed"] <= small_corpus.SPEED_WPM[1]
        assert small_corpus.PITCH[0] <= item["pitch"] <= small_corpus.PITCH[1]
        if item["captions"] is None:
            continue
        cues = parse_captions(corpus / "videos" / f"{item['name']}.{item['captions']}")
        assert [c.text for c in cues] == (item["caption_texts"] or item["sentences"])
        assert all(0 < c.start_s < c.end_s <= info.duration for c in cues)
        assert all(a.end_s < b.start_s for a, b in zip(cues, cues[1:]))
    # the data flow's ingest sees each video with its captions
    files, _ = expand_source(resolve_sources([str(corpus / "videos")])[0])
    assert len(files) == len(items)
    assert sum(f.caption_path is not None for f in files) == sum(i["captions"] is not None for i in items)
    # a few faults, as in the demo: no captions (VAD), another video's captions (caption WER)
    faults = {i["fault"]: i for i in items}
    assert faults["no_captions"]["captions"] is None
    assert faults["wrong_captions"]["caption_texts"] != faults["wrong_captions"]["sentences"]
    assert record["counts"]["faults"]["none"] == len(items) - 2

    heldout = _manifest(corpus / "heldout" / "manifest.jsonl")
    zero = _manifest(corpus / "zero_shot" / "manifest.jsonl")
    assert len(heldout) == TINY["heldout"] == record["counts"]["heldout"]
    assert len(zero) == TINY["zero_shot"] + len(ZERO_SHOT_SENTENCES) == record["counts"]["zero_shot"]
    assert [r["text"] for r in zero][TINY["zero_shot"] :] == ZERO_SHOT_SENTENCES
    for folder, rows in (("heldout", heldout), ("zero_shot", zero)):
        for row in rows:
            assert sf.info(str(corpus / folder / row["audio"])).duration > 1.0
    spoken = {s for i in items for s in i["sentences"]}
    assert not spoken & {r["text"] for r in heldout + zero}


def test_same_seed_same_bytes_whatever_the_workers_and_a_rerun_is_cached(
    corpus: Path, tmp_path: Path
) -> None:
    again = _tiny(tmp_path / "again", workers=1)
    assert _digests(again) == _digests(corpus)
    stamp = (again / "corpus.json").stat().st_mtime_ns
    assert (
        _tiny(tmp_path / "again", workers=1) == again and (again / "corpus.json").stat().st_mtime_ns == stamp
    )
    other = _tiny(tmp_path / "other", workers=2, seed=8, heldout=1, zero_shot=1)
    assert (
        json.loads((other / "corpus.json").read_text())["items"]
        != json.loads((corpus / "corpus.json").read_text())["items"]
    )


def test_zero_shot_rare_words_occur_in_no_training_sentence(corpus: Path) -> None:
    from tasks.metrics import common_word_set

    pool = small_corpus.fortune_sentences()
    assert len(pool) > 7000
    assert all(
        small_corpus.MIN_WORDS <= len(s.split()) <= small_corpus.MAX_WORDS
        and s[0].isupper()
        and s[-1] in ".!?"
        for s in pool
    )
    common = common_word_set(5000)
    split = small_corpus.split_text(pool, 150, 120, random.Random(0), common, ZERO_SHOT_SENTENCES)
    assert len(split.heldout) == 150 and len(split.zero_shot) == 120 + len(ZERO_SHOT_SENTENCES)
    rare = set(split.rare_words)
    assert {"amoxicillin", "electrocardiogram"} <= rare
    for s in split.zero_shot[:120]:  # every fortune zero-shot sentence brings at least one rare word
        assert small_corpus.words(s) - common and small_corpus.words(s) - common <= rare
    for s in split.train:
        assert not small_corpus.words(s) & rare, s
    assert not set(split.train) & (set(split.heldout) | set(split.zero_shot))
    assert len(split.train) > 7000  # choosing the rare words cost the training text little
    # and in a generated corpus: what the videos speak holds none of its rare words
    record = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))
    spoken = set().union(*(small_corpus.words(s) for i in record["items"] for s in i["sentences"]))
    assert record["rare_words"] and not spoken & set(record["rare_words"])


def test_an_existing_folder_that_is_not_a_corpus_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="demo.corpus_dir"):
        small_corpus.generate(out, **TINY)
    assert (out / "notes.txt").read_text() == "keep me" and not out.with_name("mine.partial").exists()
