"""The evaluation: rare words from a run's manifests, scoring and the report, the decode cache, and the
``llmasr-evaluate`` flow end to end under a real Prefect server on espeak-ng speech with three
systems (a tiny LLM-ASR checkpoint, faster-whisper tiny.en, a hypothesis file) and bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmasr.config import EvalConfig, SegmentConfig
from llmasr.layout import WorkLayout
from llmasr.records import Decision, Label, Segment, write_records
from tasks import eval_report, rare_words, scoring
from tasks import evaluate as ev
from tasks.decode import DecodeResult, System
from tasks.metrics import RareWords
from test_decode import SENTENCES, espeak_wav, make_checkpoints

# the training labels of the fixture run: every word of the "common" test set, some of "espeak"
KEPT_LABELS = [
    SENTENCES[0],  # weather ... terrace
    SENTENCES[2],  # planted tomatoes ... house
    SENTENCES[4],  # museum ... Fridays
    "The doctor said the evening meal was at nine.",
    "The nurse and the doctor walked to the garden.",
]
DROPPED_LABELS = ["Amoxicillin amoxicillin for the infection."]  # dropped by the filter: still rare
COMMON = ["The doctor walked to the garden.", "The museum opens at nine."]


def write_run_manifests(
    work_dir: Path, kept: list[str], dropped: list[str], validation: list[str] = ()
) -> None:
    layout = WorkLayout(work_dir)
    labels, decisions = [], []
    rows = (
        [(t, True, "train") for t in kept]
        + [(t, False, "train") for t in dropped]
        + [(t, True, "validation") for t in validation]
    )
    for i, (text, keep, split) in enumerate(rows):
        sid = f"item-{i:09d}"
        labels.append(Label(sid, text, -0.2, 0.01, 1.3, "en", 0.99, "tiny.en"))
        decisions.append(
            Decision(
                sid, "item", keep, [] if keep else ["caption_wer"], 0.1, len(text.split()), 1.0, 3.0, split
            )
        )
    write_records(layout.labels, labels, Label)
    write_records(layout.decisions, decisions, Decision)


# ----------------------------------------------------------------------------------- rare words


def test_a_run_trained_on_captions_counts_its_words_from_the_captions(tmp_path):
    write_run_manifests(tmp_path, ["the terrace was wet", "plain words"], ["dropped tachycardia"])
    segments = [
        Segment("item-000000000", "item", 0.0, 3.0, 3.0, " the terrace was wet in Quilter's garden "),
        Segment("item-000000001", "item", 3.0, 6.0, 3.0, None, "vad"),  # no caption: its label
        Segment("item-000000002", "item", 6.0, 9.0, 3.0, "dropped tachycardia"),  # not kept
    ]
    write_records(WorkLayout(tmp_path).segments, segments, Segment)
    texts, source = rare_words.training_texts(tmp_path, transcript="caption")
    assert texts == ["the terrace was wet in Quilter's garden", "plain words"] and "captions" in source
    assert rare_words.training_texts(tmp_path)[0] == ["the terrace was wet", "plain words"]
    rare, _, _ = rare_words.rare_word_set(tmp_path, EvalConfig(common_words=0), transcript="caption")
    assert "garden" not in rare and "tachycardia" in rare
    rare, _, _ = rare_words.rare_word_set(tmp_path, EvalConfig(common_words=0))
    assert "garden" in rare


def test_rare_words_come_from_the_kept_labels_and_the_word_list(tmp_path):
    write_run_manifests(tmp_path, KEPT_LABELS, DROPPED_LABELS, validation=["Tachycardia was seen."])
    texts, source = rare_words.training_texts(tmp_path)
    assert sorted(texts) == sorted(KEPT_LABELS + ["Tachycardia was seen."]) and "labels.parquet" in source
    assert sorted(rare_words.training_texts(tmp_path, ["train"])[0]) == sorted(KEPT_LABELS)

    (tmp_path / "words.txt").write_text("# clinic words\nterrace\nMr. Quilter\n")
    cfg = EvalConfig(word_list=str(tmp_path / "words.txt"), train_splits=["train"])
    rare, info, problems = rare_words.rare_word_set(tmp_path, cfg)
    assert not problems
    assert "amoxicillin" in rare  # only in a dropped segment
    assert "tachycardia" in rare  # only in the validation split, not trained on
    assert "doctor" not in rare and "garden" not in rare
    assert "terrace" in rare and "quilter" in rare and "mister" in rare  # the word list
    assert info["train_texts"] == len(KEPT_LABELS) and info["word_list_words"] == 3

    assert (
        info["common_words"] == 5000
        and info["common_types"] > 4500
        and info["common_source"].startswith("wordfreq ")
    )

    rare1, _, _ = rare_words.rare_word_set(tmp_path, EvalConfig(max_train_count=1, common_words=0))
    assert "museum" in rare1 and "the" not in rare1  # seen once -> rare at max_train_count=1
    rare1, info1, _ = rare_words.rare_word_set(tmp_path, EvalConfig(max_train_count=1))
    assert "museum" not in rare1 and "tachycardia" in rare1  # "museum" is a common English word
    assert info1["common_words"] == 5000


def test_common_words_never_rare_and_report_counts_each_rule(tmp_path):
    """With 5 training labels "an", "test", "against" and "among" are unseen; the 5000-common-word
    rule keeps them out of R, the word list puts "test" back, and report.md counts each part."""
    from tasks.testsets import TestUtterance

    write_run_manifests(tmp_path, KEPT_LABELS, [])
    (tmp_path / "words.txt").write_text("test\n")
    rare, info, problems = rare_words.rare_word_set(
        tmp_path, EvalConfig(word_list=str(tmp_path / "words.txt"))
    )
    assert not problems
    assert [w in rare for w in ("an", "test", "against", "among", "amoxicillin", "doctor")] == [
        False,
        True,
        False,
        False,
        True,
        False,
    ]
    utts = [
        TestUtterance("a", "a.wav", "An amoxicillin test against an infection among doctors."),
        TestUtterance("b", "b.wav", "The doctor said the test was fine."),
    ]
    prepared = ev.PreparedSet("clinic", "clinic.jsonl", utts, [], {"a": 3.0, "b": 2.0})
    result = DecodeResult(
        "sys",
        hyps={"a": "An amoxicillin test against an infection among doctors."},
        failures={"b": "RuntimeError: out of memory"},
    )
    metrics, report, _, _ = ev.score_and_write(
        tmp_path / "eval",
        tmp_path,
        [prepared],
        [ev.SystemSpec("sys", "hyps", "h.tsv")],
        {"sys": {"clinic": result}},
        rare,
        info,
        problems,
        EvalConfig().model_dump(mode="json"),
    )
    rule = metrics["test_sets"]["clinic"]["rare_rule"]
    # unseen in training: an (twice), amoxicillin, test (twice), against, infection, among, doctors, fine
    assert rule["by_count_types"] == 8 and rule["by_count_tokens"] == 10
    assert sorted(rule["common_excluded_examples"]) == [
        "against",
        "among",
        "an",
        "doctors",
        "fine",
        "infection",
    ]
    assert rule["common_excluded_types"] == 6 and rule["common_excluded_tokens"] == 7
    # "test": common, rare by the list alone
    assert rule["word_list_added_types"] == 1 and rule["word_list_added_tokens"] == 2
    assert sorted(metrics["test_sets"]["clinic"]["rare_examples"]) == ["amoxicillin", "test"]
    assert "except the 5000 most frequent English words (wordfreq " in report
    assert "rare even when common" in report and "word list: 1 words added (2 occurrences)" in report
    assert "common-word rule: 6 of them excluded (7 occurrences: an, against" in report
    # the failed utterance: scored as an empty hypothesis, and its row says why
    rows = {
        r["utt_id"]: r
        for r in map(json.loads, (tmp_path / "eval" / "clinic" / "sys.jsonl").read_text().splitlines())
    }
    assert (
        rows["b"]["error"] == "RuntimeError: out of memory"
        and rows["b"]["hyp"] == ""
        and rows["b"]["n"]["deletions"] == 7
    )
    assert rows["a"]["error"] is None
    assert (
        metrics["results"]["clinic"]["sys"]["failed"] == 1
        and metrics["results"]["clinic"]["sys"]["words"] == 15
    )

    _, info0, _ = rare_words.rare_word_set(tmp_path, EvalConfig(common_words=0))
    assert info0["common_words"] == 0 and info0["common_source"] is None


def test_rare_words_from_shards_when_the_manifests_are_gone(tmp_path):
    layout = WorkLayout(tmp_path)
    layout.shards.mkdir(parents=True)
    with tarfile.open(layout.shards / "train-000000.tar", "w") as tar:
        for i, text in enumerate(["hello world", "good morning"]):
            data = json.dumps({"text": text}).encode()
            info = tarfile.TarInfo(f"k{i}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    layout.shard_index.write_text(
        json.dumps({"version": 1, "shards": [{"path": "train-000000.tar", "split": "train"}]})
    )
    texts, source = rare_words.training_texts(tmp_path)
    assert sorted(texts) == ["good morning", "hello world"] and source.endswith("index.json")
    _, _, problems = rare_words.rare_word_set(tmp_path / "empty", EvalConfig())
    assert "no training transcripts" in problems[0] and "every reference word counts as rare" in problems[0]


# --------------------------------------------------------------------------------- report parts


def test_rates_show_counts_and_never_zero_for_nothing():
    assert eval_report.fmt_rate(0.25, 3, 12) == "25.0% (3/12)"
    assert eval_report.fmt_rate(None, 0, 0) == "n/a (0 words)"
    assert eval_report.fmt_rate(None, 2, 0) == "n/a (2/0)"  # insertions against an empty reference


class Counting(System):
    def __init__(self) -> None:
        super().__init__("counting")
        self.calls = 0

    def decode(self, audios):
        self.calls += 1
        return ["hello" for _ in audios]


def test_decode_cache_is_reused_for_the_same_pieces_and_redone_after_a_change(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(str(wav), np.zeros(16000, np.float32), 16000)
    (tmp_path / "set.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "hello"}) + "\n")
    prepared = ev.prepare_test_set("s", tmp_path / "set.jsonl", EvalConfig(), SegmentConfig())
    system, settings = Counting(), EvalConfig()
    first = ev.decode_cached(system, prepared, tmp_path / "eval", settings)
    again = ev.decode_cached(system, prepared, tmp_path / "eval", settings)
    assert system.calls == 1 and again.cached and again.hyps == first.hyps == {"a": "hello"}
    ev.decode_cached(system, prepared, tmp_path / "eval", settings, refresh=True)
    assert system.calls == 2
    sf.write(str(wav), np.zeros(8000, np.float32), 16000)  # the audio changed
    prepared = ev.prepare_test_set("s", tmp_path / "set.jsonl", EvalConfig(), SegmentConfig())
    assert not ev.decode_cached(system, prepared, tmp_path / "eval", settings).cached and system.calls == 3


def test_score_result_notes_failures_and_empty_hypotheses():
    prepared = ev.PreparedSet("s", "p", [], [], {})
    from tasks.testsets import TestUtterance

    prepared.utterances = [
        TestUtterance("a", "a.wav", "hello world"),
        TestUtterance("b", "b.wav", "bye"),
        TestUtterance("c", "c.wav", ""),
    ]
    result = DecodeResult("sys", hyps={"a": "", "c": "oops"}, failures={"b": "RuntimeError: boom"})
    s = scoring.score_result(prepared, result, RareWords({"hello": 3, "world": 2}))
    # every utterance scored: b (failed) as an empty hypothesis -> "bye" deleted
    # 3 deletions + 1 insertion
    assert s.corpus.utterances == 3 and s.corpus.n_errors == 4 and s.corpus.words == 3
    # "bye" (never in training) is rare: deleted, plus the inserted unseen "oops" -> R-WER 2/1
    assert s.corpus.rare_words == 1 and s.corpus.r_errors == 2 and s.corpus.r_wer == 2.0
    assert s.corpus.u_words == 2 and s.corpus.u_wer == 1.0  # hello world: seen in training, both deleted
    assert any(
        "b failed, scored as an empty hypothesis (1 deletions): RuntimeError: boom" in p for p in s.problems
    )
    assert any("a: empty hypothesis" in p for p in s.problems)


def test_each_evaluation_keeps_the_other_test_sets_results(tmp_path):
    """metrics.json and report.md cover every set evaluated in the work dir: a second evaluation of
    set a (another system, greedy) replaces a whole and keeps b with its systems, files, problems and
    settings; RTF says why it is missing; no chart when no rate exists."""
    from tasks.testsets import TestUtterance

    write_run_manifests(tmp_path, KEPT_LABELS, [])
    rare, info, _ = rare_words.rare_word_set(tmp_path, EvalConfig(common_words=0))
    out = tmp_path / "eval"
    a = ev.PreparedSet(
        "a", "a.jsonl", [TestUtterance("a1", "a1.wav", "The doctor walked to the garden.")], [], {"a1": 2.0}
    )
    b = ev.PreparedSet(
        "b",
        "b.jsonl",
        [TestUtterance("b1", "b1.wav", "Amoxicillin for the infection.")],
        [],
        {"b1": 2.0},
        problems=["b1.wav: clipped"],
    )
    beam8 = EvalConfig().model_dump(mode="json")
    zf = {
        "a": DecodeResult("zf", hyps={"a1": "The doctor walked to the garden."}),
        "b": DecodeResult("zf", hyps={"b1": "a moxy cillin for the infection"}),
    }
    ev.score_and_write(
        out,
        tmp_path,
        [a, b],
        [ev.SystemSpec("zf", "hyps", "zf.tsv")],
        {"zf": zf},
        rare,
        info,
        ["zf: duplicate id 'x'"],
        beam8,
    )

    fw = {"a": DecodeResult("fw", hyps={"a1": "the doctor walked"}, audio_s=2.0, decode_s=0.5, pieces=1)}
    greedy = {**beam8, "num_beams": 1}
    metrics, report, png, rows = ev.score_and_write(
        out,
        tmp_path,
        [a],
        [ev.SystemSpec("fw", "faster-whisper", "tiny.en")],
        {"fw": fw},
        rare,
        info,
        [],
        greedy,
    )
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert {name: list(per_system) for name, per_system in metrics["results"].items()} == {
        "a": ["fw"],
        "b": ["zf"],
    }
    assert metrics["results"]["b"]["zf"]["r_errors"] > 0 and metrics["results"]["a"]["fw"]["n_errors"] == 3
    assert [s["name"] for s in metrics["systems"]] == ["fw", "zf"] and (
        out / metrics["files"]["b"]["zf"]["utterances"]
    ).is_file()
    assert metrics["settings"]["num_beams"] == 1 and metrics["test_sets"]["b"]["settings"]["num_beams"] == 8
    # b's kept with it
    assert metrics["problems"] == [
        "[a] no rare words in the references: R-WER is n/a",
        "zf: duplicate id 'x'",
        "[b] b1.wav: clipped",
    ]
    assert {(r["test set"], r["system"]): r["RTF"] for r in rows} == {
        ("a", "fw"): "0.250",
        ("b", "zf"): "n/a (hyp file)",
    }
    assert (
        "| a | fw | 1 |" in report
        and "| b | zf | 1 |" in report
        and f"]({metrics['files']['b']['zf']['utterances']})" in report
    )
    b_line = next(line for line in report.splitlines() if line.startswith("- **b**"))
    assert f"Evaluated {metrics['test_sets']['b']['evaluated']}, decoded with beam 8" in b_line
    assert png is not None and (out / "wer.png").read_bytes() == png and "](wer.png)" in report

    # a set with no audio and nothing scored, alone in a new eval/: no chart, RTF says why
    empty = ev.PreparedSet("empty", "e.jsonl", [], [], {})
    _, report, png, rows = ev.score_and_write(
        tmp_path / "eval2",
        tmp_path,
        [empty],
        [ev.SystemSpec("fw", "faster-whisper", "tiny.en")],
        {"fw": {"empty": DecodeResult("fw", decode_s=0.01)}},
        rare,
        info,
        [],
        beam8,
    )
    assert png is None and not (tmp_path / "eval2" / "wer.png").exists()
    assert (
        rows[0]["RTF"] == "n/a (no audio)"
        and "No WER chart: no system has a rate to plot" in report
        and "wer.png" not in report
    )


# ---------------------------------------------------------------------------------- the flow


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """A work dir (labels manifests + a tiny stage-2 checkpoint) and two espeak-ng test sets."""
    root = tmp_path_factory.mktemp("eval-run")
    work = root / "work"
    write_run_manifests(work, KEPT_LABELS, DROPPED_LABELS)
    make_checkpoints(root / "models", work, stages=(2,))
    audio = root / "espeak"
    audio.mkdir()
    voices = ["en", "en-us", "en+f3", "en-gb-x-rp", "en-us+m1"]
    rows = [
        {"id": f"u{i}", "audio": espeak_wav(s, audio / f"u{i}.wav", voices[i]).name, "text": s}
        for i, s in enumerate(SENTENCES)
    ]
    rows.append({"id": "gone", "audio": "missing.wav", "text": "This file was never written."})
    sf.write(str(audio / "quiet.wav"), np.zeros(16000, np.float32), 16000)
    rows.append({"id": "empty_ref", "audio": "quiet.wav", "text": ""})
    (audio / "espeak.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [
        {"id": f"c{i}", "audio": espeak_wav(s, audio / f"c{i}.wav").name, "text": s}
        for i, s in enumerate(COMMON)
    ]
    (audio / "common.jsonl").write_text("".join(json.dumps(r) + "\n" for r in common))
    # external hypotheses (as from a Zipformer-Transducer): u3 is missing
    hyps = {
        "u0": SENTENCES[0],
        "u1": "The doctor prescribed a moxy cillin for the chest infection.",
        "u2": SENTENCES[2],
        "u4": SENTENCES[4],
        "empty_ref": "",
        "c0": COMMON[0],
        "c1": COMMON[1],
    }
    (root / "zipformer.tsv").write_text(
        "".join(f"{k}\t{v}\n" for k, v in hyps.items()) + "u0\tduplicate line\n"
    )
    return root, work, audio


def test_evaluate_flow_end_to_end(prefect_harness, eval_run):
    from flows.evaluate import evaluate_flow

    root, work, audio = eval_run
    broken = root / "broken-model"  # a folder without model.bin: the system fails when it loads
    broken.mkdir(exist_ok=True)
    state = evaluate_flow(
        work_dir=str(work),
        test_sets=[f"espeak={audio / 'espeak.jsonl'}", f"common={audio / 'common.jsonl'}"],
        baselines=["faster-whisper:bundled:tiny.en", f"faster-whisper:{broken}"],
        hyps=[f"zipformer={root / 'zipformer.tsv'}"],
        # default token bound
        overrides=["eval.device=cpu", "eval.compute_type=int8", "eval.batch_size=4", "eval.num_beams=2"],
        return_state=True,
    )
    assert state.is_completed(), state.message
    metrics = state.result()
    out = work / "eval"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(metrics["results"]))

    systems = ["llmasr-stage2", "faster-whisper:bundled:tiny.en", "zipformer"]
    assert [s["name"] for s in metrics["systems"]] == [*systems[:2], f"faster-whisper:{broken}", "zipformer"]
    for name in ("espeak", "common"):
        assert list(metrics["results"][name]) == systems
        for system in systems:
            m = metrics["results"][name][system]
            for key in (
                "o_wer",
                "n_wer",
                "r_wer",
                "u_wer",
                "words",
                "rare_words",
                "utterances",
                "rtf",
                "o_errors",
                "n_errors",
                "r_errors",
                "u_errors",
            ):
                assert key in m, (name, system, key)
            files = metrics["files"][name][system]
            lines = [json.loads(x) for x in (out / files["utterances"]).read_text().splitlines()]
            assert len(lines) == metrics["test_sets"][name]["utterances"]
            assert all("alignment" in x or "error" in x for x in lines)
            assert (out / files["rare_words"]).read_text().startswith("word\ttrain_count\thits\tmisses")

    esp = metrics["results"]["espeak"]
    assert metrics["test_sets"]["espeak"]["utterances"] == 6  # 5 spoken + the empty reference; "gone" skipped
    # the LLM-ASR (random weights) still gives a hypothesis for every utterance
    assert esp["llmasr-stage2"]["utterances"] == 6 and esp["llmasr-stage2"]["rtf"] > 0
    # the baseline hears espeak-ng well
    base = esp["faster-whisper:bundled:tiny.en"]
    assert base["n_wer"] < 0.35, base
    assert base["rare_words"] > 0 and base["r_wer"] is not None and base["rtf"] > 0
    assert base["words"] + 0 == base["rare_words"] + base["u_words"]
    # the hypothesis file: u3 missing -> scored as empty (its words deleted); the rest exact except u1's rare
    # word
    zf = esp["zipformer"]
    assert zf["utterances"] == 6 and zf["failed"] == 1 and zf["rtf"] is None
    # every system scored on the same words
    assert zf["words"] == base["words"] == esp["llmasr-stage2"]["words"]
    from llmasr.text import normalize

    # u3 deleted, u1's rare word
    assert zf["r_errors"] >= 1 and zf["n_errors"] >= len(normalize(SENTENCES[3]).split()) + 1
    # a test set with no rare words: R-WER n/a, never 0
    for system in systems:
        assert metrics["results"]["common"][system]["r_wer"] is None
        assert metrics["results"]["common"][system]["rare_words"] == 0
    assert metrics["test_sets"]["common"]["rare_types"] == 0
    assert (
        metrics["test_sets"]["espeak"]["rare_unseen_types"]
        == metrics["test_sets"]["espeak"]["rare_types"]
        > 0
    )
    assert "amoxicillin" in metrics["test_sets"]["espeak"]["rare_examples"]

    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| common |")]
    assert len(table) == 3 and all(line.split(" | ")[7].startswith("n/a (") for line in table)  # R-WER column
    assert "| n/a (0 words) |" in table[1]  # the baseline inserted no rare word there
    assert "| espeak | zipformer | 6 (1 failed) |" in report
    assert "RTF" in report and "## Problems" in report
    problems = report.split("## Problems", 1)[1]
    assert "missing.wav" in problems  # the missing audio file
    assert "empty_ref: empty reference" in problems
    assert (
        "zipformer: u3 failed, scored as an empty hypothesis (" in problems
        and "no hypothesis for 'u3'" in problems
    )
    assert "[common] no rare words in the references: R-WER is n/a" in problems
    assert "llmasr-stage3: no complete checkpoint" in problems
    assert (
        f"faster-whisper:{broken}: not evaluated, the system failed" in problems and "model.bin" in problems
    )
    assert "zipformer: " in problems and "duplicate id 'u0'" in problems
    assert "truly unseen in the training labels" in report
    assert (out / "wer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["eval-metrics", "eval-report"]))
        )
    assert {a.key for a in arts} == {"eval-metrics", "eval-report"}
    md = next(a for a in arts if a.key == "eval-report").data
    assert "data:image/png;base64," in md and "## Problems" in md


def test_a_set_whose_audio_cannot_be_read_stops_the_flow_before_any_system_loads(prefect_harness, tmp_path):
    """The audio is there and so is the transcript (preflight passes), but nothing decodes."""
    from flows.evaluate import evaluate_flow

    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "x.wav").write_text("not audio")
    (tmp_path / "set" / "x.txt").write_text("hello world")
    (tmp_path / "hyps.jsonl").write_text(json.dumps({"utt_id": "x", "text": "hello world"}) + "\n")
    work = tmp_path / "work"
    state = evaluate_flow(
        work_dir=str(work),
        test_sets=[f"b={tmp_path / 'set'}"],
        hyps=[f"h={tmp_path / 'hyps.jsonl'}"],
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(ev.EvalError, match=r"test set b \(.*\) has nothing to score: x: audio not readable"):
        state.result()
    assert not (work / "eval" / "metrics.json").exists() and not (work / "eval" / "b").exists()


def test_cli_evaluate_fails_early_on_bad_requests(tmp_path, capsys):
    from cli import main

    assert (
        main(
            [
                "evaluate",
                "--work-dir",
                str(tmp_path),
                "--test-set",
                f"x={tmp_path / 'nope.jsonl'}",
                "--baseline",
                "faster-whisper:bundled:tiny.en",
            ]
        )
        == 2
    )
    (tmp_path / "t.jsonl").write_text("")
    # no system
    assert main(["evaluate", "--work-dir", str(tmp_path), "--test-set", f"x={tmp_path / 't.jsonl'}"]) == 2
    assert main(["evaluate", "--work-dir", str(tmp_path), "--test-set", "no-equals-sign"]) == 2
    assert (
        main(
            [
                "evaluate",
                "--work-dir",
                str(tmp_path),
                "--test-set",
                f"x={tmp_path / 't.jsonl'}",
                "--baseline",
                "whisper:large",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "evaluate",
                "--work-dir",
                str(tmp_path),
                "--test-set",
                f"x={tmp_path / 't.jsonl'}",
                "--stages",
                "4",
            ]
        )
        == 2
    )
    err = " ".join(capsys.readouterr().err.split())
    assert "does not exist" in err and "nothing to evaluate" in err and "is not name=path" in err
    assert "faster-whisper:<model>" in err and "eval.stages" in err


def test_cli_run_checks_the_evaluation_inputs_before_any_work(tmp_path, capsys):
    from cli import main

    src = tmp_path / "audio"
    src.mkdir()
    work = tmp_path / "work"
    base = ["run", "--work-dir", str(work), "--source", str(src)]
    assert main([*base, "--test-set", f"x={tmp_path / 'nope.jsonl'}"]) == 2
    assert main(base) == 2  # no test set at all: the evaluate stage would fail after training
    (tmp_path / "t.jsonl").write_text("")
    assert main([*base, "--test-set", f"x={tmp_path / 't.jsonl'}", "--stages", "1,4"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "eval.test_sets: test set x:" in err and "no test sets" in err and "--stages must be" in err
    assert not work.exists()  # nothing ran


def test_cli_run_takes_the_evaluation_options_and_every_option_has_help(tmp_path, capsys):
    import argparse

    from cli import build_parser, main

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}
    # run = data + train + evaluate: --hyps, --greedy, --refresh too
    assert options["evaluate"] <= options["run"]
    assert [
        (name, a.option_strings or a.dest)
        for name, p in sub.choices.items()
        for a in p._actions
        if not a.help
    ] == []
    # run's --hyps reaches the checks made before any work
    (tmp_path / "audio").mkdir()
    sf.write(str(tmp_path / "audio" / "a.wav"), np.zeros(16000, np.float32), 16000)
    (tmp_path / "t.jsonl").write_text(json.dumps({"audio": "audio/a.wav", "text": "hello"}) + "\n")
    work = tmp_path / "work"
    args = [
        "run",
        "--work-dir",
        str(work),
        "--source",
        str(tmp_path / "audio"),
        "--test-set",
        f"x={tmp_path / 't.jsonl'}",
    ]
    assert main([*args, "--hyps", f"zf={tmp_path / 'nope.tsv'}", "--greedy", "--refresh"]) == 2
    assert f"eval.hyps: hypothesis file {tmp_path / 'nope.tsv'}" in " ".join(capsys.readouterr().err.split())
    assert not work.exists()


def test_demo_profile_evaluates_the_zero_shot_set_with_tiny_en():
    from flows.config import eval_values
    from llmasr.config import load_config, with_overrides

    cfg = load_config("demo")
    REPO = Path(__file__).resolve().parents[1]  # the shipped config's folder: its relative paths start there
    assert cfg.work_dir == str(REPO / "runs/demo")
    assert cfg.eval.test_sets == [f"zero_shot={REPO}/runs/demo/demo-corpus/zero_shot/manifest.jsonl"]
    assert cfg.eval.baselines == ["faster-whisper:bundled:tiny.en"]
    assert (cfg.eval.num_beams, cfg.eval.no_repeat_ngram_size) == (8, 6)
    cfg = with_overrides(cfg, values=eval_values(test_sets=["a=b"], stages=[3]))
    # the command line's: the current folder
    assert cfg.eval.test_sets == [f"a={Path.cwd() / 'b'}"] and cfg.eval.stages == [3]
