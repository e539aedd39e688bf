"""tasks.shard: WebDataset tars of exactly the kept segments, an honest index, incremental and
deterministic reruns.  The work dir is built by hand (no Prefect, no labeller)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from llmasr.atomic import TMP_PREFIX
from llmasr.config import ShardConfig
from llmasr.layout import WorkLayout
from llmasr.records import STATUS_FAILED, STATUS_OK, Decision, Item, Label, Segment
from tasks.shard import write_shards

SR = 16_000
ITEM_S = 10.0
SEG_STARTS = (0.0, 2.5, 5.0, 7.5)
SEG_LEN = 2.0
CFG = ShardConfig(target_mb=64, max_samples=3, validation_fraction=0.0)


@dataclasses.dataclass
class Work:
    layout: WorkLayout
    items: list[Item]
    segments: list[Segment]
    labels: list[Label]
    decisions: list[Decision]

    def kept(self) -> set[str]:
        return {d.segment_id for d in self.decisions if d.kept}

    def dropped(self) -> set[str]:
        return {d.segment_id for d in self.decisions if not d.kept}

    def shard(self, cfg: ShardConfig = CFG) -> dict:
        return write_shards(self.layout, self.items, self.segments, self.labels, self.decisions, cfg)


def _add_item(w: Work, n: int, split: str, dropped: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    item_id = f"item{n:02d}"
    rng = np.random.default_rng(n)
    t = np.arange(int(ITEM_S * SR)) / SR
    audio = 0.3 * np.sin(2 * np.pi * (200 + 50 * n) * t) + 0.05 * rng.standard_normal(t.size)
    path = w.layout.audio(item_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.astype(np.float32), SR, format="FLAC", subtype="PCM_16")
    w.items.append(
        Item(item_id, "/src", None, w.layout.rel(path), ITEM_S, None, STATUS_OK, title=f"{item_id}.wav")
    )
    for k, start in enumerate(SEG_STARTS):
        sid = f"{item_id}-{int(start * 1000):09d}"
        w.segments.append(
            Segment(sid, item_id, start, start + SEG_LEN, SEG_LEN, f"caption {n} {k}", "captions")
        )
        w.labels.append(Label(sid, f"label {n} {k}", -0.25, 0.02, 1.4, "en", 0.98, "tiny.en"))
        kept = k not in dropped
        w.decisions.append(
            Decision(sid, item_id, kept, [] if kept else ["caption_mismatch"], 0.05, 3, 1.0, SEG_LEN, split)
        )


def make_work(root: Path, n_train: int = 4, n_validation: int = 2) -> Work:
    w = Work(WorkLayout(root), [], [], [], [])
    for n in range(n_train):
        _add_item(w, n, "train", dropped={1} if n % 2 == 0 else set())
    for n in range(n_train, n_train + n_validation):
        _add_item(w, n, "validation", dropped={3})
    # a failed item: no audio, no segments
    w.items.append(Item("broken", "/src", None, None, None, None, STATUS_FAILED, error="not audio"))
    return w


def _tars(w: Work) -> list[Path]:
    return sorted(w.layout.shards.glob("*.tar"))


def _members_by_tarfile(tar: Path) -> list[str]:
    with tarfile.open(tar) as tf:
        return tf.getnames()


def _keys_by_tarfile(w: Work) -> Counter[str]:
    keys: Counter[str] = Counter()
    for tar in _tars(w):
        names = _members_by_tarfile(tar)
        assert Counter(n.rsplit(".", 1)[1] for n in names) == Counter(
            {"flac": len(names) // 2, "json": len(names) // 2}
        )
        keys.update({n.split(".", 1)[0] for n in names})
    return keys


def _samples_by_webdataset(w: Work) -> list[dict]:
    urls = [str(p) for p in _tars(w)]
    return list(wds.WebDataset(urls, shardshuffle=False))


def _file_state(paths: list[Path]) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


def _shard_of(w: Work) -> dict[str, str]:
    out = {}
    for tar in _tars(w):
        for name in _members_by_tarfile(tar):
            out[name.split(".", 1)[0]] = tar.name
    return out


@pytest.fixture()
def work(tmp_path: Path) -> Work:
    w = make_work(tmp_path / "work")
    w.shard()
    return w


# --------------------------------------------------------------------------------------------------
# contents


def test_every_kept_segment_is_in_exactly_one_shard_and_no_dropped_one(work: Work) -> None:
    keys = _keys_by_tarfile(work)
    assert set(keys) == work.kept()
    assert all(c == 1 for c in keys.values())
    assert not set(keys) & work.dropped()
    assert len(work.dropped()) > 0  # the test has something to leave out


def test_several_shards_per_split_named_by_split(work: Work) -> None:
    names = [t.name for t in _tars(work)]
    train = [n for n in names if n.startswith("train-")]
    val = [n for n in names if n.startswith("validation-")]
    assert len(train) >= 2 and len(val) >= 2 and len(train) + len(val) == len(names)
    assert train == [f"train-{i:06d}.tar" for i in range(len(train))]
    assert val == [f"validation-{i:06d}.tar" for i in range(len(val))]
    splits = {d.segment_id: d.split for d in work.decisions}
    for tar in _tars(work):
        for name in _members_by_tarfile(tar):
            assert tar.name.startswith(splits[name.split(".", 1)[0]] + "-")


def test_webdataset_reads_every_kept_sample_once(work: Work) -> None:
    samples = _samples_by_webdataset(work)
    keys = [s["__key__"] for s in samples]
    assert sorted(keys) == sorted(work.kept())
    for s in samples:
        assert "." not in s["__key__"]
        assert {k for k in s if not k.startswith("__")} == {"flac", "json"}


def test_tar_command_lists_the_same_members(work: Work) -> None:
    for tar in _tars(work):
        out = subprocess.run(
            ["tar", "-tf", str(tar)], check=True, capture_output=True, text=True
        ).stdout.split()
        assert out == _members_by_tarfile(tar)
        assert len(out) % 2 == 0


def test_sample_json_and_audio(work: Work) -> None:
    segs = {s.segment_id: s for s in work.segments}
    labels = {lab.segment_id: lab for lab in work.labels}
    items = {it.item_id: it for it in work.items}
    seen = 0
    for s in _samples_by_webdataset(work):
        key = s["__key__"]
        meta = json.loads(s["json"])
        seg = segs[key]
        assert meta["text"] == labels[key].text
        assert meta["caption"] == seg.caption_text
        assert meta["item_id"] == seg.item_id
        assert (meta["start_s"], meta["end_s"]) == (seg.start_s, seg.end_s)
        assert set(meta["scores"]) >= {"avg_logprob", "no_speech_prob", "compression_ratio", "caption_wer"}
        assert meta["scores"]["avg_logprob"] == labels[key].avg_logprob
        audio, sr = sf.read(io.BytesIO(s["flac"]), dtype="int16")
        assert sr == SR and audio.ndim == 1
        assert abs(len(audio) - (seg.end_s - seg.start_s) * SR) <= 1
        # it is the right stretch of the right item
        source, _ = sf.read(str(work.layout.abs(items[seg.item_id].path)), dtype="int16")
        start = int(round(seg.start_s * SR))
        assert np.array_equal(audio, source[start : start + len(audio)])
        seen += 1
    assert seen == len(work.kept())


def test_index_matches_the_files(work: Work) -> None:
    index = json.loads(work.layout.shard_index.read_text(encoding="utf-8"))
    entries = index["shards"]
    assert sorted(e["path"] for e in entries) == [t.name for t in _tars(work)]
    for e in entries:
        p = work.layout.shards / e["path"]
        assert e["bytes"] == p.stat().st_size
        assert e["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
        assert e["samples"] == len(_members_by_tarfile(p)) // 2
        assert e["split"] == e["path"].split("-")[0]
    assert sum(e["samples"] for e in entries) == len(work.kept())
    assert index["splits"]["train"]["samples"] == sum(e["samples"] for e in entries if e["split"] == "train")
    assert index["splits"]["validation"]["shards"] == len([e for e in entries if e["split"] == "validation"])


def test_max_samples_and_target_mb_bound_the_shards(tmp_path: Path) -> None:
    w = make_work(tmp_path / "w", n_train=3, n_validation=0)
    index = w.shard(ShardConfig(target_mb=1000, max_samples=2))
    assert all(e["samples"] <= 2 for e in index["shards"])
    one_sample = max(e["bytes"] for e in index["shards"]) // 2
    w2 = make_work(tmp_path / "w2", n_train=3, n_validation=0)
    index2 = w2.shard(ShardConfig(target_mb=one_sample * 1.5 / (1024 * 1024), max_samples=1000))
    assert len(index2["shards"]) >= 4  # size, not the sample cap, cut these
    assert sum(e["samples"] for e in index2["shards"]) == len(w2.kept())


# --------------------------------------------------------------------------------------------------
# reruns


def test_rerun_with_the_same_inputs_rewrites_nothing(work: Work) -> None:
    before = _file_state(_tars(work))
    index_before = json.loads(work.layout.shard_index.read_text(encoding="utf-8"))
    index = work.shard()
    assert _file_state(_tars(work)) == before
    assert index == index_before
    assert json.loads(work.layout.shard_index.read_text(encoding="utf-8")) == index_before


def test_new_items_go_into_new_shards_and_old_tars_stay_byte_identical(work: Work) -> None:
    before = _file_state(_tars(work))
    old_shard_of = _shard_of(work)
    last_train = max(int(n[len("train-") : -4]) for n in before if n.startswith("train-"))
    _add_item(work, 50, "train")
    _add_item(work, 51, "train")
    index = work.shard()
    after = _file_state(_tars(work))
    for name, state in before.items():
        assert after[name] == state
    new = sorted(set(after) - set(before))
    assert new and all(n.startswith("train-") for n in new)
    assert [int(n[len("train-") : -4]) for n in new] == list(range(last_train + 1, last_train + 1 + len(new)))
    shard_of = _shard_of(work)
    assert {k: v for k, v in shard_of.items() if k in old_shard_of} == old_shard_of
    new_ids = {s.segment_id for s in work.segments if s.item_id in ("item50", "item51")}
    assert {shard_of[i] for i in new_ids} == set(new)
    keys = _keys_by_tarfile(work)
    assert set(keys) == work.kept() and all(c == 1 for c in keys.values())
    assert sorted(e["path"] for e in index["shards"]) == sorted(after)


def test_a_segment_no_longer_kept_removes_its_shard_and_reshards_the_rest(work: Work) -> None:
    shard_of = _shard_of(work)
    victim = "item01-000002500"
    victim_shard = shard_of[victim]
    mates = {k for k, v in shard_of.items() if v == victim_shard and k != victim}
    assert mates  # the shard holds other segments that must survive
    before = _file_state(_tars(work))

    work.decisions = [
        dataclasses.replace(d, kept=False, reasons=["caption_mismatch"]) if d.segment_id == victim else d
        for d in work.decisions
    ]
    index = work.shard()

    keys = _keys_by_tarfile(work)
    assert victim not in keys
    assert set(keys) == work.kept() and all(c == 1 for c in keys.values())
    new_shard_of = _shard_of(work)
    after = _file_state(_tars(work))
    # the victim's shard is gone (or its name reused for different contents); the others are untouched
    assert after.get(victim_shard, (None, None))[1] != before[victim_shard][1]
    for name, state in before.items():
        if name != victim_shard:
            assert after[name] == state
            assert all(new_shard_of[k] == name for k, v in shard_of.items() if v == name)
    assert all(new_shard_of[m] not in before or new_shard_of[m] == victim_shard for m in mates)
    for e in index["shards"]:
        assert e["sha256"] == hashlib.sha256((work.layout.shards / e["path"]).read_bytes()).hexdigest()
    assert sum(e["samples"] for e in index["shards"]) == len(work.kept())


def test_a_segment_newly_kept_is_sharded(work: Work) -> None:
    revived = "item00-000002500"
    assert revived in work.dropped()
    work.decisions = [
        dataclasses.replace(d, kept=True, reasons=[]) if d.segment_id == revived else d
        for d in work.decisions
    ]
    before = _file_state(_tars(work))
    work.shard()
    keys = _keys_by_tarfile(work)
    assert keys[revived] == 1 and set(keys) == work.kept()
    after = _file_state(_tars(work))
    assert all(after[n] == s for n, s in before.items())


def test_leftover_temp_files_and_orphan_tars_are_removed(work: Work) -> None:
    shards = work.layout.shards
    leftover = shards / f"{TMP_PREFIX}train-000009.tar.abc123"
    leftover.write_bytes(b"half a tar")
    orphan = shards / "train-000099.tar"
    orphan.write_bytes(b"not in the index")
    before = _file_state([p for p in _tars(work) if p != orphan])
    index = work.shard()
    assert not leftover.exists() and not orphan.exists()
    assert not list(shards.glob(TMP_PREFIX + "*"))
    assert _file_state(_tars(work)) == before
    assert "train-000099.tar" not in {e["path"] for e in index["shards"]}


def test_a_shard_deleted_by_hand_is_rewritten(work: Work) -> None:
    first = _tars(work)[0]
    first.unlink()
    work.shard()
    keys = _keys_by_tarfile(work)
    assert set(keys) == work.kept() and all(c == 1 for c in keys.values())


def test_identical_inputs_give_byte_identical_shards(tmp_path: Path) -> None:
    a = make_work(tmp_path / "a")
    b = make_work(tmp_path / "b")
    index_a, index_b = a.shard(), b.shard()
    tars_a, tars_b = _tars(a), _tars(b)
    assert [t.name for t in tars_a] == [t.name for t in tars_b]
    for ta, tb in zip(tars_a, tars_b):
        assert ta.read_bytes() == tb.read_bytes(), ta.name
    assert index_a == index_b
    with tarfile.open(tars_a[0]) as tf:
        for m in tf.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")


def test_nothing_kept_gives_an_empty_index(tmp_path: Path) -> None:
    w = make_work(tmp_path / "w", n_train=2, n_validation=0)
    w.decisions = [dataclasses.replace(d, kept=False, reasons=["too_short"]) for d in w.decisions]
    index = w.shard()
    assert index["shards"] == [] and _tars(w) == []
    assert json.loads(w.layout.shard_index.read_text(encoding="utf-8"))["shards"] == []


def test_a_segment_whose_split_changed_moves_to_a_shard_of_its_new_split(work: Work) -> None:
    # shard.validation_fraction changed: item00 is now a validation item
    work.decisions = [
        dataclasses.replace(d, split="validation") if d.item_id == "item00" else d for d in work.decisions
    ]
    index = work.shard()
    moved = {d.segment_id for d in work.decisions if d.item_id == "item00" and d.kept}
    shard_of = _shard_of(work)
    assert all(shard_of[sid].startswith("validation-") for sid in moved)
    keys = _keys_by_tarfile(work)
    assert set(keys) == work.kept() and all(c == 1 for c in keys.values())
    for e in index["shards"]:
        splits = {
            json.loads(s["json"])["split"]
            for s in wds.WebDataset([str(work.layout.shards / e["path"])], shardshuffle=False)
        }
        assert splits == {e["split"]}


def test_members_of_a_shard_missing_from_the_index_are_sharded_again(work: Work) -> None:
    """A run killed after shard_members.parquet was saved but before index.json: the tar the index
    does not list is an orphan, removed, and its segments are sharded again (none is lost)."""
    index = json.loads(work.layout.shard_index.read_text())
    dropped = index["shards"].pop()["path"]
    work.layout.shard_index.write_text(json.dumps(index))  # the members file still lists it
    work.shard()
    keys = _keys_by_tarfile(work)
    assert set(keys) == work.kept() and all(c == 1 for c in keys.values())
    assert dropped in {e["path"] for e in json.loads(work.layout.shard_index.read_text())["shards"]}


# --------------------------------------------------------------------------------------------------
# stale content: a sample that would now differ rewrites its shard, and only its shard


def _relabel(w: Work, item_id: str) -> set[str]:
    """label.model changed: new text, scores and model for every segment of ``item_id``."""
    w.labels = [
        dataclasses.replace(lab, text=lab.text + " relabelled", avg_logprob=-0.5, model="small.en")
        if lab.segment_id.startswith(item_id)
        else lab
        for lab in w.labels
    ]
    return {lab.segment_id for lab in w.labels if lab.segment_id.startswith(item_id)}


def _recaption(w: Work, item_id: str) -> set[str]:
    """Corrected captions with the same timing (the filter's caption_wer changes with them)."""
    w.segments = [
        dataclasses.replace(s, caption_text=f"corrected {s.caption_text}") if s.item_id == item_id else s
        for s in w.segments
    ]
    w.decisions = [
        dataclasses.replace(d, caption_wer=0.1) if d.item_id == item_id else d for d in w.decisions
    ]
    return {s.segment_id for s in w.segments if s.item_id == item_id}


def _recut(w: Work, item_id: str) -> set[str]:
    """Re-segmented with the same segment ids (same starts) but earlier ends."""
    w.segments = [
        dataclasses.replace(s, end_s=s.start_s + 1.5, duration_s=1.5) if s.item_id == item_id else s
        for s in w.segments
    ]
    return {s.segment_id for s in w.segments if s.item_id == item_id}


def _new_audio(w: Work, item_id: str) -> set[str]:
    """The item's audio file replaced (ingest converted a new source file under the same name)."""
    [item] = [it for it in w.items if it.item_id == item_id]
    t = np.arange(int(ITEM_S * SR)) / SR
    sf.write(
        str(w.layout.abs(item.path)),
        (0.2 * np.sin(2 * np.pi * 1234 * t)).astype(np.float32),
        SR,
        format="FLAC",
        subtype="PCM_16",
    )
    return {s.segment_id for s in w.segments if s.item_id == item_id}


@pytest.mark.parametrize(
    "change", [_relabel, _recaption, _recut, _new_audio], ids=lambda f: f.__name__.strip("_")
)
def test_changed_samples_rewrite_their_shards_and_other_shards_stay_byte_identical(
    work: Work, change
) -> None:
    before = _file_state(_tars(work))
    shard_of = _shard_of(work)
    changed = change(work, "item01") & work.kept()
    assert changed
    touched = {shard_of[sid] for sid in changed}

    index = work.shard()

    after = _file_state(_tars(work))
    for name, state in before.items():
        if name not in touched:
            assert after[name] == state, name  # untouched shards: same bytes, same mtime
    keys = _keys_by_tarfile(work)
    assert set(keys) == work.kept() and all(c == 1 for c in keys.values())
    # every sample in the shards is the current one: json and audio
    segs = {s.segment_id: s for s in work.segments}
    labels = {lab.segment_id: lab for lab in work.labels}
    decisions = {d.segment_id: d for d in work.decisions}
    sources = {
        it.item_id: sf.read(str(work.layout.abs(it.path)), dtype="int16")[0] for it in work.items if it.path
    }
    for s in _samples_by_webdataset(work):
        meta, seg, lab = json.loads(s["json"]), segs[s["__key__"]], labels[s["__key__"]]
        assert (meta["text"], meta["model"], meta["scores"]["avg_logprob"]) == (
            lab.text,
            lab.model,
            lab.avg_logprob,
        )
        assert (meta["caption"], meta["start_s"], meta["end_s"]) == (seg.caption_text, seg.start_s, seg.end_s)
        assert meta["scores"]["caption_wer"] == decisions[s["__key__"]].caption_wer
        audio, _ = sf.read(io.BytesIO(s["flac"]), dtype="int16")
        start = int(round(seg.start_s * SR))
        assert np.array_equal(audio, sources[seg.item_id][start : int(round(seg.end_s * SR))])
    for e in index["shards"]:
        assert e["sha256"] == hashlib.sha256((work.layout.shards / e["path"]).read_bytes()).hexdigest()
    # and a second run with the same inputs does nothing
    assert work.shard() == index and _file_state(_tars(work)) == after


def test_a_members_file_without_content_hashes_is_read_and_every_shard_rewritten(work: Work) -> None:
    """A members manifest written before content hashes: no crash; no hash means stale, so every
    shard is written again (the same inputs give the same bytes) and the hashes are recorded."""
    import pyarrow.parquet as pq

    index_before = json.loads(work.layout.shard_index.read_text(encoding="utf-8"))
    bytes_before = {p.name: p.read_bytes() for p in _tars(work)}
    members = pq.read_table(work.layout.shard_members)
    pq.write_table(members.select(["segment_id", "shard"]), work.layout.shard_members)

    index = work.shard()

    assert index == index_before
    assert {p.name: p.read_bytes() for p in _tars(work)} == bytes_before
    table = pq.read_table(work.layout.shard_members)
    assert "content" in table.column_names and table["content"].null_count == 0
    assert sorted(table["segment_id"].to_pylist()) == sorted(work.kept())
    mtimes = {p.name: p.stat().st_mtime_ns for p in _tars(work)}
    work.shard()  # hashes recorded now: nothing is rewritten
    assert {p.name: p.stat().st_mtime_ns for p in _tars(work)} == mtimes


def test_transcript_caption_trains_on_captions_keeps_labels_and_rewrites_the_shards(work: Work) -> None:
    before = _file_state(_tars(work))
    # one kept segment has no caption (cut on VAD): it keeps its label as the text
    no_caption = sorted(work.kept())[0]
    work.segments = [
        dataclasses.replace(s, caption_text=None) if s.segment_id == no_caption else s for s in work.segments
    ]
    work.shard(CFG.model_copy(update={"transcript": "caption"}))
    segs = {s.segment_id: s for s in work.segments}
    labels = {lab.segment_id: lab for lab in work.labels}
    samples = _samples_by_webdataset(work)
    assert len(samples) == len(work.kept())
    for s in samples:
        key, meta = s["__key__"], json.loads(s["json"])
        assert meta["label"] == labels[key].text
        if key == no_caption:
            assert (meta["text"], meta["text_source"]) == (labels[key].text, "label")
        else:
            assert (meta["text"], meta["text_source"]) == (segs[key].caption_text, "caption")
    assert not set(before.items()) & set(_file_state(_tars(work)).items())  # every sample changed
