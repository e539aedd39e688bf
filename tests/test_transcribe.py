"""llmasr transcribe (tasks/transcribe.py, cli/transcribe.py): a run's trained model on real speech clips.

The run is trained here through the real trainer (torchrun, 1 CPU process, DeepSpeed ZeRO-2 on the
CPU), one step per stage on two espeak-ng sentences, from tiny random models: its text is garbage,
so the tests check what the transcripts are made of (a record per file, segments from evaluation's
VAD cut inside each file's duration, the files written), which stage decodes, and every error a
request can meet before the model loads, in-process and through the ``llmasr`` command.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmasr.audio import SAMPLE_RATE
from llmasr.config import load_config
from tasks import transcribe as tr
from tasks.captions import parse_captions
from tasks.checkpoints import read_stage, stage_dir
from tasks.decode_audio import read_audio

REAL_SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_speech"
LLMASR = Path(sys.executable).parent / "llmasr"  # the venv's console script


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A work dir with stages 1, 2 and 3 trained (1 step each) by tasks/train.py as the flow launches it."""
    from llmasr.tiny_models import tiny_setup
    from test_train import launch, train_config, write_run
    from test_train_data import SENTENCES, make_shards

    root = tmp_path_factory.mktemp("trained")
    tiny = tiny_setup(root / "models", vocab_size=512, llm_init_std=0.3)
    index = make_shards(root / "data", {"train": SENTENCES[:2]}, per_shard=2)
    work = root / "work"
    train = train_config(tiny, val_every=1000, ckpt_every=1000)
    for stage in (1, 2, 3):
        launch(write_run(work, stage, train, index, max_steps=1), train)
        assert read_stage(stage_dir(work, stage))["steps"] == 1
    return work


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A folder of real clips: JFK (44.1 kHz stereo FLAC), a LibriSpeech WAV, and a 43.7 s MP3 of four
    real utterances with a second of silence between them (longer than eval.max_piece_s: cut by VAD);
    plus notes.txt, which a folder walk leaves out."""
    folder = tmp_path_factory.mktemp("clips")
    out = {
        "jfk": Path(shutil.copy(REAL_SPEECH / "jfk.flac", folder / "jfk.flac")),
        "libri": Path(shutil.copy(REAL_SPEECH / "librispeech_1995-1837-0001.wav", folder / "libri.wav")),
    }
    gap = np.zeros(SAMPLE_RATE, np.float32)
    parts = [
        "librispeech_2412-153948-0000.flac",
        "ljspeech_LJ001-0001.flac",
        "librispeech_1995-1837-0001.wav",
        "ljspeech_LJ001-0003.flac",
    ]
    # (samples,) 16 kHz
    audio = np.concatenate([x for name in parts for x in (read_audio(REAL_SPEECH / name), gap)])
    wav = folder / "long.wav.tmp"
    sf.write(str(wav), audio, SAMPLE_RATE, format="WAV")
    out["long"] = folder / "long.mp3"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(wav),
            "-codec:a",
            "libmp3lame",
            "-q:a",
            "4",
            str(out["long"]),
        ],
        check=True,
    )
    wav.unlink()
    (folder / "notes.txt").write_text("not audio\n")
    return out


def config(work: Path, *overrides: str):
    return load_config(overrides=["eval.device=cpu", "eval.num_beams=2", *overrides], work_dir=str(work))


def check_segments(r: tr.Transcript) -> None:
    """Segments in time order, none overlapping, inside the file; the text is theirs joined."""
    ends = 0.0
    for s in r.segments:
        assert ends <= s.start_s < s.end_s <= r.duration_s + 1e-3, (r.path, s)
        ends = s.end_s
    assert r.text == " ".join(s.text for s in r.segments)


# --------------------------------------------------------------------------- transcribing


def test_stage_3_by_default_transcribes_a_folder_of_any_length_and_format(work, clips, tmp_path):
    assert tr.complete_stages(work) == [1, 2, 3] and tr.choose_stage(work) == 3
    files = tr.find_audio([clips["jfk"].parent, clips["jfk"]])  # a folder walk, and a file named twice
    assert sorted(f.name for f in files) == ["jfk.flac", "libri.wav", "long.mp3"]
    result = tr.transcribe(files, config(work), 3)
    assert result.system == "llmasr-stage3" and result.num_beams == 2 and not result.failed
    by_name = {Path(r.path).name: r for r in result.records}
    assert [r.path for r in result.records] == [str(f) for f in files]
    assert by_name["jfk.flac"].duration_s == pytest.approx(11.0, abs=0.01)
    # the encoder's frames move it by ms
    assert by_name["long.mp3"].duration_s == pytest.approx(11.66 + 9.66 + 8.73 + 9.67 + 4.0, abs=0.05)
    for r in result.records:
        assert r.stage == 3 and r.error is None and r.text.strip()
        check_segments(r)
    # one piece: the whole clip
    assert [(s.start_s, s.end_s) for s in by_name["jfk.flac"].segments] == [(0.0, 11.0)]
    long = by_name["long.mp3"].segments
    # cut by VAD into pieces of <= 30 s
    assert len(long) >= 2 and all(s.end_s - s.start_s <= 30.0 for s in long)
    assert result.pieces == 2 + len(long) and result.tokens > 0
    assert result.audio_s == pytest.approx(sum(r.duration_s for r in result.records), abs=0.01)
    assert result.rtfx and result.rtfx > 0 and "RTFx" in tr.summary(result)

    # the same records written in each format
    txt = tr.write_outputs(result.records, tmp_path / "txt", "txt")
    assert sorted(p.name for p in txt) == ["jfk.txt", "libri.txt", "long.txt"]
    assert (tmp_path / "txt" / "long.txt").read_text() == by_name["long.mp3"].text + "\n"
    srt = tr.write_outputs(result.records, tmp_path / "srt", "srt")
    for path in srt:
        record = by_name[next(n for n in by_name if Path(n).stem == path.stem)]
        cues = parse_captions(path)
        assert [t for c in cues for t in (c.start_s, c.end_s)] == pytest.approx(
            [t for s in record.segments for t in (s.start_s, s.end_s)], abs=1e-3
        )
        assert (
            all(a.end_s <= b.start_s for a, b in zip(cues, cues[1:]))
            and cues[-1].end_s <= record.duration_s + 1e-3
        )
    (jsonl,) = tr.write_outputs(result.records, tmp_path / "jsonl", "jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert jsonl.name == "transcripts.jsonl" and [row["path"] for row in rows] == [
        r.path for r in result.records
    ]
    for row, r in zip(rows, result.records):
        assert set(row) == {"path", "text", "segments", "duration_s", "stage", "error"} and row["stage"] == 3
        assert row["text"] == r.text and [(s["start"], s["end"], s["text"]) for s in row["segments"]] == [
            (s.start_s, s.end_s, s.text) for s in r.segments
        ]
    lines = tr.stdout_text(result.records).splitlines()
    assert len(lines) == 3 and all(line.split("\t")[0] == r.path for line, r in zip(lines, result.records))
    assert tr.stdout_text(result.records[:1]) == result.records[0].text  # one file: the text alone


@pytest.mark.parametrize("stage", [2, 1])
def test_stages_2_and_1_decode_with_their_own_checkpoints(work, clips, stage):
    """Stage 2: the LLM-ASR without LoRA; stage 1: Whisper with the stage-1 encoder (transformers)."""
    result = tr.transcribe([clips["libri"]], config(work, "eval.num_beams=1"), tr.choose_stage(work, stage))
    (r,) = result.records
    assert (
        result.system == f"llmasr-stage{stage}"
        and result.num_beams == 1
        and r.stage == stage
        and r.error is None
    )
    assert r.duration_s == pytest.approx(8.73, abs=0.01) and r.text.strip()
    check_segments(r)


# --------------------------------------------------------------------------- request errors


def test_errors_name_what_exists_and_the_command_that_trains_it(work, tmp_path):
    with pytest.raises(tr.TranscribeError, match="does not exist"):
        tr.choose_stage(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        tr.TranscribeError, match=r"no complete trained stage \(no stage folder.*llmasr train --work-dir"
    ):
        tr.choose_stage(empty)
    partial = tmp_path / "partial"  # stage 1 done, stage 2 started (no stage.json)
    shutil.copytree(stage_dir(work, 1), stage_dir(partial, 1))
    stage_dir(partial, 2).mkdir()
    assert tr.choose_stage(partial) == 1
    with pytest.raises(
        tr.TranscribeError, match=r"stage 3 is not complete .* \(complete: stage1\).*--stages 2,3"
    ):
        tr.choose_stage(partial, 3)
    (stage_dir(partial, 1) / "stage.json").unlink()
    with pytest.raises(tr.TranscribeError, match="stage1, stage2 started, none complete"):
        tr.choose_stage(partial)


def test_missing_and_non_audio_files_fail_before_the_model_loads(work, clips, tmp_path):
    with pytest.raises(tr.TranscribeError, match="no such file or folder: .*missing.wav"):
        tr.find_audio([clips["jfk"], tmp_path / "missing.wav"])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("# no audio here\n")
    with pytest.raises(tr.TranscribeError, match="no audio files .* in .*docs"):
        tr.find_audio([tmp_path / "docs"])
    fake = tmp_path / "fake.wav"
    fake.write_text("RIFF? no: a text file with an audio name\n")
    notes = clips["jfk"].parent / "notes.txt"
    assert tr.find_audio([notes]) == [notes]  # a file named on its own is read to find out
    with pytest.raises(tr.TranscribeError, match=r"not audio.*\(2 of 3 files\).*fake\.wav.*notes\.txt"):
        tr.plan_files([fake, clips["jfk"], notes], config(work))
    with pytest.raises(tr.TranscribeError, match="--format srt writes files: add --out"):
        tr.check_output(None, "srt")
    with pytest.raises(tr.TranscribeError, match="is a file"):
        tr.check_output(fake, "txt")


def test_output_names_keep_files_with_one_stem_apart(tmp_path):
    names = tr.output_names(["a/talk.wav", "b/talk.mp3", "b/Talk.flac", "c/other.wav"])
    assert names["c/other.wav"] == "other"
    talks = [names[p] for p in ("a/talk.wav", "b/talk.mp3", "b/Talk.flac")]
    assert len({n.casefold() for n in talks}) == 3 and all(n.casefold().startswith("talk-") for n in talks)


# --------------------------------------------------------------------------- the command


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LLMASR), "transcribe", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_cli_from_another_folder(work, clips, tmp_path):
    """Run where there is no pipeline_config.yaml (the checkout's copy is found), with relative paths."""
    shutil.copy(clips["jfk"], tmp_path / "jfk.flac")
    shutil.copy(clips["libri"], tmp_path / "libri.wav")
    bad = run_cli(tmp_path, "--work-dir", "nowhere", "jfk.flac")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: work dir") and "nowhere does not exist" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr

    # a complete stage.json without any export: loading would fail, so this error shows nothing loaded
    hollow = tmp_path / "hollow"
    stage_dir(hollow, 3).mkdir(parents=True)
    shutil.copy(stage_dir(work, 3) / "stage.json", stage_dir(hollow, 3))
    (tmp_path / "notes.wav").write_text("text\n")
    bad = run_cli(tmp_path, "--work-dir", "hollow", "jfk.flac", "notes.wav")
    last = bad.stderr.strip().splitlines()[-1]  # after the cutting bar (two files)
    assert (
        bad.returncode == 2
        and last.startswith("error: not audio")
        and "notes.wav" in last
        and "Traceback" not in bad.stderr
    )

    ok = run_cli(
        tmp_path, "--work-dir", str(work), "--set", "eval.device=cpu", "--greedy", "jfk.flac", "libri.wav"
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    lines = ok.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["jfk.flac", "libri.wav"] and all(
        line.split("\t")[1] for line in lines
    )
    assert "llmasr-stage3" in ok.stderr and "RTFx" in ok.stderr

    ok = run_cli(
        tmp_path,
        "--work-dir",
        str(work),
        "--set",
        "eval.device=cpu",
        "--stage",
        "1",
        "--num-beams",
        "2",
        "--out",
        "subs",
        "--format",
        "srt",
        "libri.wav",
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert ok.stdout == "" and "llmasr-stage1" in ok.stderr and "beam 2" in ok.stderr
    (cue,) = parse_captions(tmp_path / "subs" / "libri.srt")
    assert (cue.start_s, cue.end_s) == pytest.approx((0.0, 8.73), abs=1e-3) and cue.text
