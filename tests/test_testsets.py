"""Test-set readers (tasks.testsets): TextGrid parsing, Primock57, manifests, folders, Kincaid46 tsv."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from tasks.testsets import (
    TestSetError,
    TestUtterance,
    clean_primock_text,
    load_test_set,
    parse_textgrid,
    read_folder,
    read_kincaid46,
    read_manifest,
    read_primock57,
    read_textgrid,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PRIMOCK = SHARED / "primock57_sample"
REAL_SPEECH = SHARED / "real_speech"

needs_primock = pytest.mark.skipif(not PRIMOCK.is_dir(), reason="shared Primock57 sample not present")

# stem -> (xmax of the file, intervals incl. empty, non-empty intervals, utterances after cleaning,
#          first non-empty interval, last non-empty interval); read off the files once, by hand
SAMPLE = {
    "day1_consultation01_doctor": (
        457.92,
        "Doctor",
        97,
        53,
        51,
        (
            2.5334561157322537,
            12.499861706065632,
            "Hello? Hi. Um, should we start? Yeah, okay. <UNSURE>Hello how</UNSURE> um. Good morning sir, "
            "how can I help you this morning?",
        ),
        (454.25656307744003, 456.8911674785823, "<UNIN/> Thank you. <UNSURE>Bye bye</UNSURE>."),
    ),
    "day1_consultation01_patient": (
        457.86,
        "Patient",
        113,
        56,
        51,
        (3.9071713687564986, 4.907171368756498, "Hello, how are you?"),
        (453.4678694702582, 456.173741595649, "Okay, thank you. Bye."),
    ),
    "day2_consultation03_doctor": (
        450.84,
        "Speaker",
        103,
        54,
        46,
        (1.43893414941227, 2.97461824644805, "Hi there. Good morning!"),
        (448.103642306794, 448.817929355258, "Bye."),
    ),
}


def _wav(path: Path, seconds: float, sr: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(round(seconds * sr)), dtype=np.int16), sr, subtype="PCM_16")
    return path


# --------------------------------------------------------------------------------------------------
# TextGrid


@needs_primock
@pytest.mark.parametrize("stem", sorted(SAMPLE))
def test_read_textgrid_sample_files(stem: str) -> None:
    xmax, tier_name, n_all, n_nonempty, _, first, last = SAMPLE[stem]
    path = PRIMOCK / f"{stem}.TextGrid"
    intervals = read_textgrid(path)
    assert len(intervals) == n_nonempty
    assert intervals[0] == first
    assert intervals[-1] == last
    assert all(text and text == text.strip() for _, _, text in intervals)
    assert all(start < end for start, end, _ in intervals)
    tiers = parse_textgrid(path.read_text(encoding="utf-8"))
    assert [(t.name, t.kind, t.xmax, len(t.items)) for t in tiers] == [
        (tier_name, "IntervalTier", xmax, n_all)
    ]
    # the intervals tile the tier: each starts where the previous one ended
    items = tiers[0].items
    assert all(a[1] == b[0] for a, b in zip(items, items[1:]))


SHORT_TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

0
2.5
<exists>
2
"IntervalTier"
"words"
0
2.5
4
0
0.5
""
0.5
1.25
"he said ""hi"""
1.25
1.75
"   "
1.75
2.5
"café
ünïcode"
"TextTier"
"events"
0
2.5
1
1.0
"click"
'''

LONG_TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 3
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "TextTier"
        name = "marks"
        xmin = 0
        xmax = 3
        points: size = 1
        points [1]:
            number = 0.5
            mark = "x"
    item [2]:
        class = "IntervalTier"
        name = "Speaker"
        xmin = 0
        xmax = 3
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = 1
            text = "<UNIN/> naïve ""quoted"" [1] text"
        intervals [2]:
            xmin = 1
            xmax = 2.5
            text = ""
        intervals [3]:
            xmin = 2.5
            xmax = 3
            text = "ok"
"""


def test_read_textgrid_short_format(tmp_path: Path) -> None:
    path = tmp_path / "short.TextGrid"
    path.write_text(SHORT_TEXTGRID, encoding="utf-8")
    assert read_textgrid(path) == [(0.5, 1.25, 'he said "hi"'), (1.75, 2.5, "café\nünïcode")]
    assert read_textgrid(path, tier="words") == read_textgrid(path, tier=1)
    tiers = parse_textgrid(SHORT_TEXTGRID)
    assert [(t.name, t.kind) for t in tiers] == [("words", "IntervalTier"), ("events", "TextTier")]
    assert tiers[1].items == [(1.0, 1.0, "click")]
    with pytest.raises(TestSetError, match="not an IntervalTier"):
        read_textgrid(path, tier="events")
    with pytest.raises(TestSetError, match="no tier named"):
        read_textgrid(path, tier="phones")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-8-sig"])
def test_read_textgrid_long_format_encodings(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "long.TextGrid"
    path.write_bytes(LONG_TEXTGRID.replace("\n", "\r\n").encode(encoding))
    # the first interval tier is the default, even when a TextTier comes first
    assert read_textgrid(path) == [(0.0, 1.0, '<UNIN/> naïve "quoted" [1] text'), (2.5, 3.0, "ok")]


def test_parse_textgrid_rejects_other_files() -> None:
    with pytest.raises(TestSetError, match="not a Praat TextGrid"):
        parse_textgrid('File type = "ooTextFile"\nObject class = "Sound"\n')
    with pytest.raises(TestSetError, match="ends early"):
        parse_textgrid(SHORT_TEXTGRID[:200])


# --------------------------------------------------------------------------------------------------
# Primock57


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (
            "Hello. I, I'm Doctor <INAUDIBLE_SPEECH/>. Nice to see you.",
            "Hello. I, I'm Doctor. Nice to see you.",
        ),
        ("<UNIN/> Sorry to hear that.", "Sorry to hear that."),
        ("<UNSURE>Oh</UNSURE> <UNSURE>hey</UNSURE>, um, I've just", "Oh hey, um, I've just"),
        (
            "Okay. Fine. Um, and sir <UNIN/> <UNSURE>these</UNSURE> started",
            "Okay. Fine. Um, and sir these started",
        ),
        ("in terms of your <UNIN/>, your overall health", "in terms of your, your overall health"),
        ("So, <INAUDIBLE_SPEECH/>, what I think <UNIN/>, go on.", "So, what I think, go on."),
        ("OK? I <UNIN/>,would like you", "OK? I, would like you"),
        ("<UNIN/>", ""),
        ("<INAUDIBLE_SPEECH/>", ""),
        ("<UNIN/>, <UNSURE></UNSURE>.", ""),
        ("yes [laughs] I do (inaudible) {noise} think <INAUDIBLE> so (...)", "yes I do think so"),
        (
            "Um, yeah, it doesn't feel like -- yeah, um...yeah",
            "Um, yeah, it doesn't feel like -- yeah, um...yeah",
        ),
    ],
)
def test_clean_primock_text(raw: str, clean: str) -> None:
    assert clean_primock_text(raw) == clean


def _primock_folder(root: Path, layout: str = "split") -> Path:
    """Copies of the sample TextGrids with silent wavs of the transcripts' length."""
    grids = root / "transcripts" if layout == "split" else root
    audio = root / "audio" if layout == "split" else root
    grids.mkdir(parents=True, exist_ok=True)
    for stem, (xmax, *_rest) in SAMPLE.items():
        shutil.copy(PRIMOCK / f"{stem}.TextGrid", grids / f"{stem}.TextGrid")
        _wav(audio / f"{stem}.wav", xmax)
    return root


@needs_primock
@pytest.mark.parametrize("layout", ["split", "flat"])
def test_read_primock57(tmp_path: Path, layout: str) -> None:
    root = _primock_folder(tmp_path / "primock57", layout)
    problems: list[str] = []
    utts = read_primock57(root, problems)
    assert problems == []
    assert len(utts) == sum(v[4] for v in SAMPLE.values()) == 148
    first = utts[0]
    audio_dir = root / "audio" if layout == "split" else root
    assert first == TestUtterance(
        utt_id="day1_consultation01_doctor-00002533",
        audio_path=str(audio_dir / "day1_consultation01_doctor.wav"),
        text=(
            "Hello? Hi. Um, should we start? Yeah, okay. Hello how um. Good morning sir, how can I help you "
            "this morning?"
        ),
        start_s=2.5334561157322537,
        end_s=12.499861706065632,
        speaker="doctor",
    )
    by_stem: dict[str, list[TestUtterance]] = {}
    for u in utts:
        by_stem.setdefault(Path(u.audio_path).stem, []).append(u)
    assert {stem: len(v) for stem, v in by_stem.items()} == {stem: v[4] for stem, v in SAMPLE.items()}
    assert {u.speaker for u in by_stem["day1_consultation01_patient"]} == {"patient"}
    assert by_stem["day1_consultation01_patient"][0].utt_id == "day1_consultation01_patient-00003907"
    assert by_stem["day2_consultation03_doctor"][1].text == "Hello. I, I'm Doctor. Nice to see you."
    assert len({u.utt_id for u in utts}) == len(utts)
    assert not any("<" in u.text or ">" in u.text for u in utts)
    # load_test_set recognises the layout
    loaded, load_problems = load_test_set(str(root))
    assert loaded == utts and load_problems == []


@needs_primock
def test_read_primock57_problems(tmp_path: Path) -> None:
    root = _primock_folder(tmp_path / "p")
    (root / "audio" / "day1_consultation01_patient.wav").unlink()  # transcript without audio
    _wav(root / "audio" / "day9_consultation99_doctor.wav", 1.0)  # audio without transcript
    _wav(root / "audio" / "day2_consultation03_doctor.wav", 400.0)  # audio shorter than its transcript
    problems: list[str] = []
    utts = read_primock57(root, problems)
    assert len(problems) == 3
    assert any("day1_consultation01_patient.TextGrid" in p and "audio not found" in p for p in problems)
    assert any("day9_consultation99_doctor.wav" in p and "no transcript" in p for p in problems)
    assert any("day2_consultation03_doctor.TextGrid" in p and "end after the audio" in p for p in problems)
    stems = {Path(u.audio_path).stem for u in utts}
    assert stems == {"day1_consultation01_doctor", "day2_consultation03_doctor"}
    day2 = [u for u in utts if "day2" in u.utt_id]
    assert 0 < len(day2) < 46 and all(u.end_s <= 400.5 for u in day2)
    with pytest.raises(TestSetError, match="audio not found"):
        read_primock57(root)  # without a problems list the first problem raises


# --------------------------------------------------------------------------------------------------
# manifests


def _clips(folder: Path, *names: str) -> list[Path]:
    return [_wav(folder / name, 0.5) for name in names]


def test_read_manifest_jsonl_relative_paths(tmp_path: Path) -> None:
    _clips(tmp_path / "clips", "one.wav", "two.flac")
    manifest = tmp_path / "test.jsonl"
    rows = [
        {"audio": "clips/one.wav", "text": "Hello  there\nworld"},
        {"audio_path": "clips/two.flac", "transcript": "Second.", "id": "custom-id", "speaker": "s1"},
        {"audio": "clips/missing.wav", "text": "gone"},
        {"audio": "clips/one.wav"},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    problems: list[str] = []
    utts = read_manifest(manifest, problems)
    assert utts == [
        TestUtterance("one", str(tmp_path / "clips" / "one.wav"), "Hello there world"),
        TestUtterance("custom-id", str(tmp_path / "clips" / "two.flac"), "Second.", speaker="s1"),
    ]
    assert len(problems) == 2
    assert "test.jsonl:3" in problems[0] and "audio file not found" in problems[0]
    assert "test.jsonl:4" in problems[1] and "no transcript" in problems[1]
    with pytest.raises(TestSetError, match="audio file not found"):
        read_manifest(manifest)


def test_read_manifest_csv_segments_and_duplicates(tmp_path: Path) -> None:
    (clip,) = _clips(tmp_path / "a", "long.wav")
    manifest = tmp_path / "sub" / "m.csv"
    manifest.parent.mkdir()
    with manifest.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Path", "Transcript", "start_s", "end_s"])
        w.writerow([str(clip), 'He said "yes", twice', "0.25", "1.5"])
        w.writerow(["../a/long.wav", "again", "1.5", ""])
        w.writerow(["../a/long.wav", "same start", "1.5", "2"])
    problems: list[str] = []
    utts = read_manifest(manifest, problems)
    assert [(u.utt_id, u.text, u.start_s, u.end_s) for u in utts] == [
        ("long-00000250", 'He said "yes", twice', 0.25, 1.5),
        ("long-00001500", "again", 1.5, None),
    ]
    assert all(Path(u.audio_path).resolve() == clip.resolve() for u in utts)
    assert len(problems) == 1 and "duplicate utterance id 'long-00001500'" in problems[0]


def test_read_manifest_parquet(tmp_path: Path) -> None:
    _clips(tmp_path, "x.wav", "y.wav")
    table = pa.table({"utt_id": ["u1", None], "audio": ["x.wav", "y.wav"], "text": ["first", "second"]})
    pq.write_table(table, tmp_path / "m.parquet")
    utts, problems = load_test_set(str(tmp_path / "m.parquet"))
    assert problems == []
    assert [(u.utt_id, Path(u.audio_path).name, u.text) for u in utts] == [
        ("u1", "x.wav", "first"),
        ("y", "y.wav", "second"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("m.json", b'[{"audio": "x.wav", "text": "a"},', "not valid JSON"),
        ("m.parquet", b"PAR1 but not parquet", "cannot read this .parquet manifest"),
        ("m.csv", b"audio,text\nx.wav,\xff\xfe broken utf-8\n", "cannot read this .csv manifest"),
    ],
)
def test_an_unreadable_manifest_is_a_test_set_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, says: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(TestSetError, match=says) as err:
        load_test_set(str(tmp_path / name))
    assert str(tmp_path / name) in str(err.value)


@pytest.mark.skipif(
    not (REAL_SPEECH / "manifest.jsonl").is_file(), reason="shared real-speech clips not present"
)
def test_load_real_speech_folder_uses_its_manifest() -> None:
    utts, problems = load_test_set(str(REAL_SPEECH))
    assert problems == []
    assert len(utts) == 17
    jfk = next(u for u in utts if u.utt_id == "jfk")
    assert jfk.audio_path == str(REAL_SPEECH / "jfk.flac")
    assert jfk.text.startswith("And so my fellow Americans, ask not")


# --------------------------------------------------------------------------------------------------
# folder of audio + .txt


def test_read_folder(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _clips(root, "a.wav", "sub/b.flac")
    (root / "a.txt").write_text("first line\nsecond line\n", encoding="utf-8")
    (root / "sub" / "b.txt").write_text("\ufeffbee", encoding="utf-8")
    (root / "c.mp3").write_bytes(b"not really mp3")  # audio without a transcript
    (root / "orphan.txt").write_text("no audio", encoding="utf-8")  # transcript without audio
    (root / "notes.md").write_text("ignored", encoding="utf-8")
    problems: list[str] = []
    utts = read_folder(root, problems)
    assert utts == [
        TestUtterance("a", str(root / "a.wav"), "first line second line"),
        TestUtterance("sub/b", str(root / "sub" / "b.flac"), "bee"),
    ]
    assert len(problems) == 2
    assert "c.mp3" in problems[0] and "no transcript" in problems[0]
    assert "orphan.txt" in problems[1] and "without audio" in problems[1]
    assert load_test_set(root) == (utts, problems)


# --------------------------------------------------------------------------------------------------
# Kincaid46 tsv


def test_read_kincaid46_with_header(tmp_path: Path) -> None:
    _clips(tmp_path / "audio", "k1.wav", "k2.wav")
    tsv = tmp_path / "kincaid46.tsv"
    tsv.write_text(
        'id\taudio\ttext\nvid-1\taudio/k1.wav\tShe said "wow".\nvid-2\taudio/k2.wav\n\n', encoding="utf-8"
    )
    problems: list[str] = []
    utts = read_kincaid46(tsv, problems)
    assert utts == [TestUtterance("vid-1", str(tmp_path / "audio" / "k1.wav"), 'She said "wow".')]
    assert len(problems) == 1 and "kincaid46.tsv:3" in problems[0]


def test_read_kincaid46_without_header_from_folder(tmp_path: Path) -> None:
    _clips(tmp_path, "k1.wav", "k2.wav")
    (tmp_path / "list.tsv").write_text(
        "k1.wav\tfirst clip\nk2.wav\tsecond clip\nk3.wav\tmissing\n", encoding="utf-8"
    )
    utts, problems = load_test_set(str(tmp_path))
    assert [(u.utt_id, u.text) for u in utts] == [("k1", "first clip"), ("k2", "second clip")]
    assert len(problems) == 1 and "k3.wav" in problems[0]
    assert read_kincaid46(tmp_path / "list.tsv", []) == utts


def test_read_kincaid46_transcript_longer_than_csvs_default_field_limit(tmp_path: Path) -> None:
    """A whole video's transcript in one row: over csv's default 131,072-character field limit."""
    _clips(tmp_path, "k1.wav", "k2.wav")
    long_text = " ".join(f"word{i}" for i in range(40_000))  # ~308,000 characters
    assert len(long_text) > 131_072
    (tmp_path / "list.tsv").write_text(f"k1.wav\t{long_text}\nk2.wav\tshort\n", encoding="utf-8")
    utts, problems = load_test_set(str(tmp_path / "list.tsv"))
    assert not problems and [(u.utt_id, len(u.text)) for u in utts] == [("k1", len(long_text)), ("k2", 5)]
    # a csv manifest too
    (tmp_path / "m.csv").write_text(f'audio,text\nk1.wav,"{long_text}"\n', encoding="utf-8")
    assert read_manifest(tmp_path / "m.csv")[0].text == long_text


def test_an_unreadable_tsv_row_fails_naming_the_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.testsets as ts

    _clips(tmp_path, "k1.wav")
    (tmp_path / "list.tsv").write_text("k1.wav\tfine\nk1.wav\t" + "x" * 2000 + "\n", encoding="utf-8")
    monkeypatch.setattr(ts, "_CSV_FIELD_LIMIT", 1000)  # a row longer than whatever limit csv has
    old = csv.field_size_limit(1000)
    try:
        with pytest.raises(
            TestSetError, match=r"list\.tsv:2: cannot read this tsv row: field larger than field limit"
        ):
            read_kincaid46(tmp_path / "list.tsv", [])
    finally:
        csv.field_size_limit(old)


# --------------------------------------------------------------------------------------------------
# dispatch errors


def test_load_test_set_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="test set not found: .*nope"):
        load_test_set(str(missing))


def test_load_test_set_unknown_file_type(tmp_path: Path) -> None:
    f = tmp_path / "set.xlsx"
    f.write_bytes(b"")
    with pytest.raises(TestSetError, match="not a test set file"):
        load_test_set(str(f))
