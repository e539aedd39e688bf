"""The data flow end to end on a small espeak-ng demo corpus, under a real Prefect server.

One reference run (session fixture) is checked against DESIGN's invariants; then: a second run
does no work and shows Cached states; two new items are labelled alone and leave old shards
byte-identical; the caption-WER filter drops the wrong captions; kill -9 in the middle of
labelling and of sharding, then a rerun, gives the same files as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import N_ITEMS, REPO, flow_args  # fixtures corpus and reference_run live there too
from llmasr.layout import WorkLayout
from llmasr.records import STATUS_OK, Decision, Item, Label, Segment, read_records
from prefect_states import settled_task_states
from tasks.captions import Cue, parse_captions, write_vtt
from tasks.demo_corpus import ESPEAK_RATE, speak


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shard_contents(layout: WorkLayout) -> dict[str, list[str]]:
    """shard name -> sample keys, read back with tarfile."""
    out = {}
    index = json.loads(layout.shard_index.read_text())
    for entry in index["shards"]:
        with tarfile.open(layout.shards / entry["path"]) as tar:
            names = tar.getnames()
        keys = sorted({n.split(".", 1)[0] for n in names})
        assert sorted(n for n in names) == sorted([f"{k}.flac" for k in keys] + [f"{k}.json" for k in keys])
        out[entry["path"]] = keys
    return out


def check_invariants(layout: WorkLayout, n_source_files: int) -> None:
    items = read_records(layout.items, Item)
    segments = read_records(layout.segments, Segment)
    decisions = read_records(layout.decisions, Decision)
    # every item accounted for: processed, or listed with its error
    assert len(items) == n_source_files
    for it in items:
        if it.status == STATUS_OK:
            assert layout.abs(it.path).is_file()
        else:
            assert it.error, it
    ok_ids = {i.item_id for i in items if i.status == STATUS_OK}
    assert {s.item_id for s in segments} <= ok_ids
    # every segment of a processed item has exactly one decision
    assert sorted(d.segment_id for d in decisions) == sorted(s.segment_id for s in segments)
    # every kept segment in exactly one shard, nothing else in any shard
    kept = sorted(d.segment_id for d in decisions if d.kept)
    in_shards = [k for keys in shard_contents(layout).values() for k in keys]
    assert sorted(in_shards) == kept
    index = json.loads(layout.shard_index.read_text())
    for e in index["shards"]:
        assert sha256(layout.shards / e["path"]) == e["sha256"]
    # splits are per item
    split_of = {}
    for d in decisions:
        assert split_of.setdefault(d.item_id, d.split) == d.split
    # nothing half-written left behind
    assert not list(layout.root.rglob(".tmp-*"))


def source_files(*folders: Path) -> int:
    from tasks.ingest import AUDIO_EXTENSIONS

    return sum(1 for f in folders for p in f.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)


def test_reference_run_meets_the_invariants(reference_run, corpus: Path):
    work, result = reference_run
    layout = WorkLayout(work)
    check_invariants(layout, source_files(corpus / "videos"))
    assert result.failed_items == 2  # broken.wav (0 bytes) and not_audio.mp3
    failed = {i.title: i.error for i in read_records(layout.items, Item) if i.status != STATUS_OK}
    assert "0 bytes" in failed["broken.wav"]
    assert "not decodable" in failed["not_audio.mp3"]
    assert result.kept > 0 and result.shards > 0
    labels = read_records(layout.labels, Label)
    assert all(lab.model == "bundled:tiny.en" for lab in labels)
    # the shards open with plain webdataset
    import webdataset as wds

    urls = [str(layout.shards / e["path"]) for e in json.loads(layout.shard_index.read_text())["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == result.kept
    meta = json.loads(samples[0]["json"])
    assert {"text", "caption", "item_id", "start_s", "end_s", "scores"} <= set(meta)


def test_filter_drops_wrong_captions_and_keeps_right_ones(reference_run, corpus: Path):
    work, _ = reference_run
    layout = WorkLayout(work)
    plan = json.loads((corpus / "corpus.json").read_text())["items"]
    purpose = {p["name"]: p["purpose"] for p in plan}
    title_of = {i.item_id: Path(i.title).stem for i in read_records(layout.items, Item)}
    segs = {s.segment_id: s for s in read_records(layout.segments, Segment)}
    by_purpose: dict[str, list[Decision]] = {}
    for d in read_records(layout.decisions, Decision):
        by_purpose.setdefault(purpose[title_of[d.item_id]], []).append(d)
    wrong = by_purpose["wrong_captions"]
    assert wrong and all("caption_mismatch" in d.reasons and not d.kept for d in wrong)
    clean = [d for d in by_purpose["clean"] if segs[d.segment_id].caption_text]
    mismatched = [d for d in clean if "caption_mismatch" in d.reasons]
    # tiny.en mishears some espeak-ng words; the right captions must still nearly all pass
    assert len(mismatched) <= 0.15 * len(clean), [(d.segment_id, d.caption_wer) for d in mismatched]
    assert max(d.caption_wer for d in wrong) > min(d.caption_wer for d in clean if d.kept)
    # every special item trips its rule
    specials = {r for d in by_purpose["filter_specials"] for r in d.reasons}
    assert {"too_short", "repetition_loop", "only_common_words"} <= specials
    assert any("hallucination_phrase" in d.reasons for d in by_purpose["thanks_for_watching"])
    assert any("too_long" in d.reasons for d in by_purpose["long_cue"])
    assert all(segs[d.segment_id].cut_by == "vad" for d in by_purpose["no_captions"])


def _task_states(flow_run_id, expect: tuple[str, ...] = ()) -> dict[str, list[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read_runs():
        with get_client(sync_client=True) as client:
            return client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return settled_task_states(read_runs, expect)


def test_second_run_does_no_work_and_shows_cached_states(reference_run, corpus: Path, capsys):
    from flows.data import data_flow

    work, first = reference_run
    layout = WorkLayout(work)
    before = {
        p: p.stat().st_mtime_ns
        for p in layout.root.rglob("*")
        if p.is_file() and ".prefect-results" not in p.parts and p.name != ".llmasr.lock"
    }
    state = data_flow(**flow_args(corpus, work), return_state=True)
    second = state.result()
    assert second.labelled_items == 0
    assert (second.items, second.segments, second.kept, second.shards) == (
        first.items,
        first.segments,
        first.kept,
        first.shards,
    )
    stages = (
        "ingest-local",
        "write-items",
        "segment",
        "write-segments",
        "label",
        "write-labels",
        "filter",
        "shard",
    )
    states = _task_states(state.state_details.flow_run_id, stages)
    for stage in stages:
        assert states.get(stage) and set(states[stage]) == {"Cached"}, (stage, states.get(stage))
    after = {p: p.stat().st_mtime_ns for p in before}
    changed = [str(p) for p in before if after[p] != before[p] and "reports" not in p.parts]
    assert changed == []
    from cli.data import print_summary

    capsys.readouterr()
    print_summary(str(work), second)  # the CLI's table after the rerun: labels cached, no "RTFx 0.0"
    table = capsys.readouterr().err
    assert "label RTFx" in table and "cached" in table and "0.0" not in table


def _extra_items(folder: Path) -> Path:
    """Two new 'videos' with captions, unlike anything in the corpus."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = [
        [
            "The lighthouse keeper painted the stairs bright blue.",
            "Every visitor counted the steps on the way up.",
        ],
        ["Our robot vacuum got stuck under the sofa again.", "We rescued it and emptied the dust bin."],
    ]
    for n, sentences in enumerate(texts):
        pieces, cues, t = [np.zeros(ESPEAK_RATE // 2, np.float32)], [], 0.5
        for s in sentences:
            audio = speak(s, "en", 150, folder)
            cues.append(Cue(round(t, 3), round(t + len(audio) / ESPEAK_RATE, 3), s))
            pieces += [audio, np.zeros(int(1.5 * ESPEAK_RATE), np.float32)]
            t += len(audio) / ESPEAK_RATE + 1.5
        sf.write(folder / f"extra_{n}.wav", np.concatenate(pieces), ESPEAK_RATE)
        write_vtt(folder / f"extra_{n}.vtt", cues)
    (folder / "speak.wav").unlink()
    return folder


def test_new_items_are_labelled_alone_and_old_shards_stay(reference_run, corpus: Path, session_tmp: Path):
    from flows.data import data_flow

    ref, first = reference_run
    work = session_tmp / "grown-run"
    shutil.copytree(ref, work)
    layout = WorkLayout(work)
    old = {e["path"]: e["sha256"] for e in json.loads(layout.shard_index.read_text())["shards"]}
    extra = _extra_items(session_tmp / "extra")
    result = data_flow(**flow_args(corpus, work, [extra]))
    assert result.labelled_items == 2
    assert result.items == first.items + 2
    index = {e["path"]: e for e in json.loads(layout.shard_index.read_text())["shards"]}
    for name, digest in old.items():
        assert index[name]["sha256"] == digest and sha256(layout.shards / name) == digest
    assert len(index) > len(old)
    new_keys = [k for name, keys in shard_contents(layout).items() if name not in old for k in keys]
    assert new_keys and all(k.startswith("extra_") for k in new_keys)
    check_invariants(layout, source_files(corpus / "videos", extra))


def test_corrected_captions_with_the_same_timing_refilter_and_reshard(
    reference_run, corpus: Path, session_tmp: Path
):
    """An item's captions change text but not timing (re-fetched, corrected): its segments keep
    their ids and times and its labels are reused, but the filter must compare the labels with the
    new captions and the shards must carry them; shards without the item stay byte-identical."""
    from flows.data import data_flow

    ref, first = reference_run
    work = session_tmp / "recaptioned-run"
    shutil.copytree(ref, work)
    layout = WorkLayout(work)
    segments = read_records(layout.segments, Segment)
    kept = {d.segment_id for d in read_records(layout.decisions, Decision) if d.kept}
    captioned = {s.item_id for s in segments if s.segment_id in kept and s.cut_by == "captions"}
    item = min(
        (i for i in read_records(layout.items, Item) if i.item_id in captioned), key=lambda i: i.item_id
    )
    mine = {s.segment_id: s for s in segments if s.item_id == item.item_id}
    shards_before = shard_contents(layout)
    untouched = {
        name: sha256(layout.shards / name)
        for name, keys in shards_before.items()
        if not set(keys) & set(mine)
    }
    assert untouched and len(untouched) < len(shards_before)

    # the captions of the item, as ingest left them in raw/: same cues, words that were never said
    caption_file = layout.abs(item.caption_path)
    wrong = "purple elephants quietly juggle seven frozen pineapples"
    write_vtt(caption_file, [Cue(c.start_s, c.end_s, wrong) for c in parse_captions(caption_file)])

    state = data_flow(**flow_args(corpus, work), return_state=True)
    result = state.result()
    states = _task_states(state.state_details.flow_run_id, ("label", "write-segments", "filter", "shard"))
    assert result.labelled_items == 0 and set(states["label"]) == {"Cached"}  # the audio did not change
    assert (
        "Cached" not in states["write-segments"]
        and "Cached" not in states["filter"]
        and "Cached" not in states["shard"]
    )

    new_segs = {s.segment_id: s for s in read_records(layout.segments, Segment) if s.item_id == item.item_id}
    assert {k: (s.start_s, s.end_s) for k, s in new_segs.items()} == {
        k: (s.start_s, s.end_s) for k, s in mine.items()
    }
    assert all(wrong in s.caption_text for s in new_segs.values())
    decisions = {d.segment_id: d for d in read_records(layout.decisions, Decision)}
    for sid in new_segs:
        assert not decisions[sid].kept and "caption_mismatch" in decisions[sid].reasons, decisions[sid]
    in_shards = {k for keys in shard_contents(layout).values() for k in keys}
    assert not in_shards & set(new_segs)
    assert result.kept == first.kept - len(set(mine) & kept)
    for name, digest in untouched.items():
        assert sha256(layout.shards / name) == digest, name
    check_invariants(layout, source_files(corpus / "videos"))


def test_missing_source_fails_before_any_work(prefect_harness, corpus: Path, session_tmp: Path):
    from flows.data import data_flow
    from tasks.ingest import SourceError

    work = session_tmp / "bad-source"
    with pytest.raises(SourceError, match="does-not-exist"):
        data_flow(
            profile="demo",
            work_dir=str(work),
            sources=[str(session_tmp / "does-not-exist")],
            overrides=[f"demo.corpus_dir={corpus}", f"demo.n_items={N_ITEMS}"],
        )
    assert not (work / "raw").exists() and not (work / "manifests").exists()


# --- kill -9 and rerun -------------------------------------------------------------------------


def _cli(corpus: Path, work: Path, overrides: list[str] = ()) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "cli",
        "data",
        "--profile",
        "demo",
        "--work-dir",
        str(work),
        "--source",
        str(corpus / "videos"),
    ]
    for ov in [f"demo.corpus_dir={corpus}", f"demo.n_items={N_ITEMS}", *overrides]:
        args += ["--set", ov]
    return args


def _env() -> dict:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or "", "OMP_NUM_THREADS": "1"}


def _kill_when(cmd: list[str], ready, timeout_s: float = 300) -> None:
    """Start ``cmd``; SIGKILL its whole process group as soon as ``ready()`` is true."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(
                    f"run ended (rc={proc.returncode}) before the kill point: "
                    f"{proc.stderr.read().decode()[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail("kill point not reached in time")
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _same_outputs(a: WorkLayout, b: WorkLayout) -> None:
    for path, cls in ((a.items, Item), (a.segments, Segment), (a.labels, Label), (a.decisions, Decision)):
        rel = path.relative_to(a.root)
        ra = [r for r in read_records(path, cls)]
        rb = [r for r in read_records(b.root / rel, cls)]
        if cls is Item:  # the source paths are the same; nothing else may differ
            assert ra == rb
        else:
            assert sorted(ra, key=lambda r: r.segment_id) == sorted(rb, key=lambda r: r.segment_id), rel
    assert json.loads(a.shard_index.read_text()) == json.loads(b.shard_index.read_text())
    assert sorted(p.name for p in a.shards.iterdir()) == sorted(p.name for p in b.shards.iterdir())


def test_kill_during_labelling_then_rerun_gives_the_same_files(
    reference_run, corpus: Path, session_tmp: Path
):
    ref, _ = reference_run
    work = session_tmp / "killed-label"
    layout = WorkLayout(work)
    total = sum(1 for i in read_records(WorkLayout(ref).items, Item) if i.status == STATUS_OK)

    def labelling_half_done() -> bool:
        parts = layout.parts / "labels"
        return parts.is_dir() and 1 <= len(list(parts.glob("*.parquet"))) < total

    _kill_when(_cli(corpus, work), labelling_half_done)
    assert not layout.labels.exists()  # killed before the manifest
    killed = json.loads((work / ".llmasr.lock").read_text())  # kill -9 left its lock file behind
    rerun = _run(_cli(corpus, work))
    # taken over, logged
    assert (
        f"left by pid {killed['pid']} (llmasr-data on " in rerun.stderr
        and "which no longer runs" in rerun.stderr
    )
    assert not (work / ".llmasr.lock").exists()
    check_invariants(layout, source_files(corpus / "videos"))
    _same_outputs(WorkLayout(ref), layout)


def test_kill_during_sharding_then_rerun_gives_the_same_files(reference_run, corpus: Path, session_tmp: Path):
    ref, _ = reference_run
    small = ["shard.max_samples=1"]  # many one-sample shards: a kill lands mid-way
    uninterrupted, killed = session_tmp / "shard-whole", session_tmp / "shard-killed"
    for w in (uninterrupted, killed):
        shutil.copytree(ref, w)
        shutil.rmtree(w / "shards")
        (w / "manifests" / "shard_members.parquet").unlink()
    _run(_cli(corpus, uninterrupted, small))
    layout = WorkLayout(killed)
    n_total = len(json.loads(WorkLayout(uninterrupted).shard_index.read_text())["shards"])

    def sharding_half_done() -> bool:
        return layout.shards.is_dir() and 2 <= len(list(layout.shards.glob("*.tar"))) < n_total - 2

    _kill_when(_cli(corpus, killed, small), sharding_half_done)
    _run(_cli(corpus, killed, small))
    check_invariants(layout, source_files(corpus / "videos"))
    _same_outputs(WorkLayout(uninterrupted), layout)
    for e in json.loads(layout.shard_index.read_text())["shards"]:
        assert sha256(layout.shards / e["path"]) == sha256(WorkLayout(uninterrupted).shards / e["path"])


def test_a_failing_url_is_recorded_and_the_rest_proceeds(reference_run, corpus: Path, session_tmp: Path):
    import socket

    from flows.data import data_flow

    ref, first = reference_run
    work = session_tmp / "bad-url-run"
    shutil.copytree(ref, work)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/watch?v=nothing"
    result = data_flow(**flow_args(corpus, work, [url], overrides=["ingest.retries=0"]))
    assert result.items == first.items + 1 and result.failed_items == first.failed_items + 1
    assert (result.kept, result.shards) == (first.kept, first.shards)
    [bad] = [i for i in read_records(WorkLayout(work).items, Item) if i.source == url]
    assert bad.status == "failed" and bad.error
