"""tasks.ingest for local sources: source checks, conversion to 16 kHz mono FLAC, bad files recorded
as failed (never raised), captions beside the audio, ids, and no re-conversion on a rerun."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmasr.config import IngestConfig
from llmasr.layout import WorkLayout
from llmasr.records import STATUS_FAILED, STATUS_OK, Item
from tasks.captions import parse_captions
from tasks.ingest import (
    Source,
    SourceError,
    expand_source,
    find_captions,
    ingest_local,
    local_item_id,
    read_manifest,
    resolve_sources,
)

CFG = IngestConfig(max_item_duration_s=2.0)
SRT = (
    "1\r\n"
    "00:00:00,100 --> 00:00:00,900\r\n"
    "hello there\r\n"
    "\r\n"
    "2\r\n"
    "00:00:01,000 --> 00:00:01,400\r\n"
    "general kenobi\r\n"
)


def _wav(path: Path, seconds: float, sr: int = 44_100, channels: int = 2, freq: float = 440.0) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    mono = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    sf.write(str(path), np.stack([mono] * channels, axis=1) if channels > 1 else mono, sr)
    return path


# --------------------------------------------------------------------------------------------------
# resolve_sources


def test_nonexistent_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no such folder"
    with pytest.raises(SourceError) as info:
        resolve_sources([str(tmp_path), str(missing)])
    assert str(missing) in str(info.value)


def test_every_bad_source_is_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        resolve_sources(
            ["ftp://example.com/a.mp3", str(tmp_path / "gone.wav"), "https://www.youtube.com/watch?v=abc"]
        )
    msg = str(info.value)
    assert "ftp://example.com/a.mp3" in msg and "http" in msg
    assert "gone.wav" in msg
    assert "youtube" not in msg


@pytest.mark.parametrize("bad", ["ftp://example.com/a.mp3", "file:///tmp/x.wav", "https://"])
def test_non_http_urls_are_rejected(bad: str) -> None:
    with pytest.raises(SourceError, match=re.escape(bad)):
        resolve_sources([bad])


def test_no_sources_is_an_error() -> None:
    with pytest.raises(SourceError, match="no sources"):
        resolve_sources(["", "  "])


def test_source_kinds_are_recognised(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    folder.mkdir()
    wav = _wav(folder / "a.wav", 0.5)
    manifests = []
    for name in ("list.jsonl", "list.csv", "list.txt"):
        (tmp_path / name).write_text("", encoding="utf-8")
        manifests.append(tmp_path / name)
    url = "https://www.youtube.com/playlist?list=PL123"
    got = resolve_sources([str(folder), str(wav), *map(str, manifests), url])
    assert got == [
        Source("folder", str(folder.resolve())),
        Source("file", str(wav.resolve())),
        Source("manifest", str(manifests[0].resolve())),
        Source("manifest", str(manifests[1].resolve())),
        Source("manifest", str(manifests[2].resolve())),
        Source("web", url),
    ]


def test_manifests_list_paths_relative_to_themselves_and_urls(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    a = _wav(tmp_path / "sub" / "a.wav", 0.5)
    b = _wav(tmp_path / "b.wav", 0.5)
    (tmp_path / "b.srt").write_text(SRT, encoding="utf-8")
    caps = tmp_path / "sub" / "a-captions.vtt"
    caps.write_text("WEBVTT\n\n00:00:00.000 --> 00:00:00.400\nhi\n", encoding="utf-8")
    url = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"

    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        '{"audio": "sub/a.wav", "captions": "sub/a-captions.vtt"}\n'
        "\n"
        f'{{"url": "{url}"}}\n'
        f'{{"path": "{b}"}}\n',
        encoding="utf-8",
    )
    csv_ = tmp_path / "m.csv"
    csv_.write_text(f"audio,captions\nsub/a.wav,sub/a-captions.vtt\n{url},\nb.wav,\n", encoding="utf-8")
    txt = tmp_path / "m.txt"
    txt.write_text(f"# comment\nsub/a.wav\n\n{url}\nb.wav\n", encoding="utf-8")

    for manifest in (jsonl, csv_, txt):
        (src,) = resolve_sources([str(manifest)])
        files, urls = expand_source(src)
        assert urls == [url], manifest.name
        assert [Path(f.path).resolve() for f in files] == [a.resolve(), b.resolve()], manifest.name
        assert all(f.source == str(manifest.resolve()) for f in files)
        # b.srt is found beside b.wav in every case; a's captions come from the manifest (jsonl, csv)
        assert files[1].caption_path is not None and Path(files[1].caption_path).name == "b.srt"
        if manifest is not txt:
            assert Path(files[0].caption_path).resolve() == caps.resolve()  # type: ignore[arg-type]


def test_manifest_rows_without_audio_are_rejected(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav"}\n{"title": "no audio"}\n', encoding="utf-8")
    with pytest.raises(SourceError, match="row 2"):
        read_manifest(m)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(SourceError, match="bad.jsonl:1"):
        read_manifest(bad)


def test_a_spreadsheet_csv_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    a = _wav(tmp_path / "a.wav", 0.5)
    caps = tmp_path / "a.srt"
    caps.write_text(SRT, encoding="utf-8")
    for name, text in (
        ("m.csv", "audio,captions\na.wav,a.srt\n"),
        ("m.jsonl", '{"audio": "a.wav", "captions": "a.srt"}\n'),
        ("m.txt", "a.wav\n"),
    ):
        manifest = tmp_path / name
        manifest.write_bytes(text.encode("utf-8-sig"))  # Excel's and Notepad's "UTF-8"
        (src,) = resolve_sources([str(manifest)])
        files, urls = expand_source(src)
        assert [Path(f.path) for f in files] == [a] and urls == [], name
        assert Path(files[0].caption_path) == caps, name  # type: ignore[arg-type]


def test_a_manifest_row_whose_audio_never_existed_fails_before_any_work(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", 0.5)
    m = tmp_path / "m.jsonl"
    url = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    m.write_text(
        '{"audio": "a.wav"}\n'
        f'{{"audio": "{url}"}}\n'
        '{"audio": "sub/gone.wav"}\n'
        '{"audio": "/nowhere/b.wav"}\n',
        encoding="utf-8",
    )
    with pytest.raises(SourceError) as info:
        resolve_sources([str(m)])
    msg = str(info.value)
    assert (
        f"{m.resolve()}: row 3: audio file {tmp_path.resolve() / 'sub' / 'gone.wav'} does not exist (and 1 "
        "more rows whose audio is missing)" in msg
    )
    assert "\n" not in msg and "a.wav" not in msg.replace("gone.wav", "")


def test_find_captions_beside_the_audio(tmp_path: Path) -> None:
    a = tmp_path / "Talk [abc123].wav"
    a.write_bytes(b"")
    assert find_captions(a) is None
    (tmp_path / "Talk [abc123].en.vtt").write_text("WEBVTT\n", encoding="utf-8")
    assert find_captions(a) == tmp_path / "Talk [abc123].en.vtt"  # yt-dlp's naming, brackets and all
    (tmp_path / "Talk [abc123].srt").write_text(SRT, encoding="utf-8")
    assert find_captions(a) == tmp_path / "Talk [abc123].srt"  # <stem>.srt first
    (tmp_path / "Talk [abc123].vtt").write_text("WEBVTT\n", encoding="utf-8")
    assert find_captions(a) == tmp_path / "Talk [abc123].vtt"


# --------------------------------------------------------------------------------------------------
# local_item_id


def test_local_item_id_is_stable_and_path_specific(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = tmp_path / "x" / "talk.wav", tmp_path / "y" / "talk.wav"
    assert local_item_id(a) == local_item_id(a)
    assert local_item_id(a) == local_item_id(tmp_path / "x" / ".." / "x" / "talk.wav")
    assert local_item_id(a) != local_item_id(b)
    assert local_item_id(a).startswith("talk-")
    odd = local_item_id(tmp_path / "Café talk 1.wav")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", odd), odd
    assert local_item_id(tmp_path / "../../etc.wav").count("/") == 0


# --------------------------------------------------------------------------------------------------
# ingest_local on a folder of good and bad files


@pytest.fixture()
def folder(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    files = {
        "good": _wav(d / "good.wav", 1.0),
        "empty": d / "empty.wav",
        "text": d / "notes.mp3",
        "long": _wav(d / "long.wav", 3.0, sr=16_000, channels=1),
        "cafe": _wav(d / "Café talk 1.wav", 0.8),
        "captioned": _wav(d / "captioned.wav", 1.5),
        "badcaps": _wav(d / "badcaps.wav", 1.0),
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not an mp3, just some words\n" * 20, encoding="utf-8")
    files["truncated"] = d / "truncated.mp3"
    mp3 = d / "full.mp3.src"  # not an audio extension: only the truncated copy is ingested
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:d=2",
            "-f",
            "mp3",
            str(mp3),
        ],
        check=True,
    )
    files["truncated"].write_bytes(mp3.read_bytes()[:1000])  # a few mp3 frames: still decodable
    files["garbage"] = d / "garbage.m4a"  # no container, no codec: certainly undecodable
    files["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (d / "captioned.srt").write_text(SRT, encoding="utf-8")
    (d / "badcaps.vtt").write_bytes(b"\x00\x01garbage without any timing\xff\xfe")
    (d / "readme.txt").write_text("not audio, not listed", encoding="utf-8")
    (d / ".hidden.wav").write_bytes(b"")
    return files


def _ingest(folder_: dict[str, Path], work: Path) -> tuple[list[Item], WorkLayout]:
    layout = WorkLayout(work)
    (src,) = resolve_sources([str(folder_["good"].parent)])
    files, urls = expand_source(src)
    assert urls == []
    counted: list[int] = []
    items = ingest_local(files, layout, CFG, progress=counted.append)
    assert sum(counted) == len(files)
    return items, layout


def test_every_file_is_accounted_for(folder: dict[str, Path], tmp_path: Path) -> None:
    items, _ = _ingest(folder, tmp_path / "work")
    assert sorted(it.item_id for it in items) == sorted(local_item_id(p) for p in folder.values())
    for it in items:
        assert it.status in (STATUS_OK, STATUS_FAILED)
        assert it.source == str(folder["good"].parent.resolve())
        assert it.url is None
        if it.status == STATUS_FAILED:
            assert it.error and it.path is None and it.duration_s is None and it.caption_path is None


def _by_name(items: list[Item], folder_: dict[str, Path]) -> dict[str, Item]:
    ids = {local_item_id(p): name for name, p in folder_.items()}
    return {ids[it.item_id]: it for it in items}


def test_good_file_is_converted_to_16k_mono_flac(folder: dict[str, Path], tmp_path: Path) -> None:
    items, layout = _ingest(folder, tmp_path / "work")
    good = _by_name(items, folder)["good"]
    assert good.status == STATUS_OK and good.error is None
    assert good.path == f"raw/{good.item_id}.flac"
    info = sf.info(str(layout.abs(good.path)))
    assert (info.samplerate, info.channels, info.format) == (16_000, 1, "FLAC")
    assert good.duration_s == pytest.approx(1.0, abs=0.01)
    assert info.frames / 16_000 == pytest.approx(good.duration_s, abs=0.001)
    assert good.caption_path is None and good.caption_kind is None
    assert good.title == "good.wav"


def test_bad_files_fail_with_a_reason(folder: dict[str, Path], tmp_path: Path) -> None:
    items, layout = _ingest(folder, tmp_path / "work")
    got = _by_name(items, folder)
    assert got["empty"].status == STATUS_FAILED and "empty" in got["empty"].error  # type: ignore[operator]
    assert got["text"].status == STATUS_FAILED and "not decodable" in got["text"].error  # type: ignore[operator]
    assert got["long"].status == STATUS_FAILED and "too long" in got["long"].error  # type: ignore[operator]
    for name in ("empty", "text", "long"):
        assert not layout.audio(got[name].item_id).exists()  # no half or rejected audio left behind
    assert not list(layout.raw.glob(".tmp-*"))


def test_truncated_but_decodable_file_keeps_what_decodes(folder: dict[str, Path], tmp_path: Path) -> None:
    items, layout = _ingest(folder, tmp_path / "work")
    trunc = _by_name(items, folder)["truncated"]
    # ffmpeg decodes the whole mp3 frames in the first 1000 bytes of a 2 s file (about 0.08 s); the
    # mp3's Info frame still declares 2.04 s
    assert trunc.status == STATUS_OK
    assert trunc.duration_s is not None and 0 < trunc.duration_s < 0.5
    assert trunc.error == f"truncated: the header declares 2.04 s, {trunc.duration_s:.2f} s decoded (kept)"
    assert sf.info(str(layout.abs(trunc.path))).frames / 16_000 == pytest.approx(trunc.duration_s, abs=0.001)  # type: ignore[arg-type]


def _truncated_wav(path: Path, declared_s: float, kept_s: float) -> Path:
    """A 16 kHz 16-bit WAV whose header declares ``declared_s`` and that holds ``kept_s`` (a cut copy)."""
    _wav(path, declared_s, sr=16_000, channels=1)
    data = path.read_bytes()
    start = data.index(b"data") + 8
    path.write_bytes(data[: start + int(kept_s * 16_000) * 2])
    return path


def test_truncated_wav_is_kept_with_a_note_of_declared_and_decoded_length(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    _truncated_wav(tmp_path / "in" / "cut.wav", 12.0, 0.09)
    _wav(tmp_path / "in" / "whole.wav", 1.0, sr=16_000, channels=1)
    (src,) = resolve_sources([str(tmp_path / "in")])
    files, _ = expand_source(src)
    layout = WorkLayout(tmp_path / "work")
    got = {Path(it.title).stem: it for it in ingest_local(files, layout, CFG)}
    cut = got["cut"]
    assert cut.status == STATUS_OK and cut.duration_s == pytest.approx(0.09, abs=0.002)
    assert cut.error == "truncated: the header declares 12.00 s, 0.09 s decoded (kept)"
    assert sf.info(str(layout.abs(cut.path))).frames == pytest.approx(0.09 * 16_000, abs=2)  # type: ignore[arg-type]
    assert got["whole"].status == STATUS_OK and got["whole"].error is None


def test_a_truncation_note_and_a_captions_note_are_both_kept(tmp_path: Path) -> None:
    wav = _truncated_wav(tmp_path / "cut.wav", 5.0, 1.0)
    (tmp_path / "cut.vtt").write_bytes(b"\x00garbage")
    (src,) = resolve_sources([str(wav)])
    files, _ = expand_source(src)
    (item,) = ingest_local(files, WorkLayout(tmp_path / "work"), CFG)
    assert item.status == STATUS_OK and item.error is not None
    assert item.error.startswith(
        "truncated: the header declares 5.00 s, 1.00 s decoded (kept); captions ignored ("
    )


def test_undecodable_bytes_with_an_audio_extension_fail_naming_the_file(
    folder: dict[str, Path], tmp_path: Path
) -> None:
    items, layout = _ingest(folder, tmp_path / "work")
    garbage = _by_name(items, folder)["garbage"]
    assert garbage.status == STATUS_FAILED
    assert garbage.error is not None and "not decodable" in garbage.error and "garbage.m4a" in garbage.error
    assert garbage.path is None and garbage.duration_s is None
    assert not layout.audio(garbage.item_id).exists()


def test_header_only_wav_fails_as_empty(tmp_path: Path) -> None:
    wav = tmp_path / "header_only.wav"
    sf.write(str(wav), np.zeros(0, dtype=np.float32), 16_000)  # a valid RIFF header, no frames
    (src,) = resolve_sources([str(wav)])
    files, _ = expand_source(src)
    (item,) = ingest_local(files, WorkLayout(tmp_path / "work"), CFG)
    assert item.status == STATUS_FAILED and "no audio samples" in (item.error or "")


def test_unicode_name_with_spaces_gets_a_safe_id(folder: dict[str, Path], tmp_path: Path) -> None:
    items, layout = _ingest(folder, tmp_path / "work")
    cafe = _by_name(items, folder)["cafe"]
    assert cafe.status == STATUS_OK
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cafe.item_id), cafe.item_id
    assert cafe.title == "Café talk 1.wav"
    assert layout.abs(cafe.path).name == f"{cafe.item_id}.flac"  # type: ignore[arg-type]
    assert sf.info(str(layout.abs(cafe.path))).samplerate == 16_000  # type: ignore[arg-type]


def test_srt_beside_the_audio_becomes_raw_vtt(folder: dict[str, Path], tmp_path: Path) -> None:
    items, layout = _ingest(folder, tmp_path / "work")
    cap = _by_name(items, folder)["captioned"]
    assert cap.status == STATUS_OK and cap.error is None
    assert cap.caption_path == f"raw/{cap.item_id}.vtt"
    assert cap.caption_kind == "local"
    vtt = layout.abs(cap.caption_path)
    assert vtt.read_text(encoding="utf-8").startswith("WEBVTT")
    assert [c.text for c in parse_captions(vtt)] == ["hello there", "general kenobi"]


def test_malformed_captions_keep_the_audio_and_say_so(folder: dict[str, Path], tmp_path: Path) -> None:
    items, layout = _ingest(folder, tmp_path / "work")
    bad = _by_name(items, folder)["badcaps"]
    assert bad.status == STATUS_OK
    assert bad.caption_path is None and bad.caption_kind is None
    assert bad.error is not None and "captions" in bad.error
    assert layout.abs(bad.path).is_file()  # type: ignore[arg-type]
    assert not layout.captions(bad.item_id).exists()


def test_second_run_returns_the_same_items_without_converting_again(
    folder: dict[str, Path], tmp_path: Path
) -> None:
    first, layout = _ingest(folder, tmp_path / "work")
    stamps = {it.item_id: layout.abs(it.path).stat().st_mtime_ns for it in first if it.path}
    assert len(stamps) >= 4
    second, _ = _ingest(folder, tmp_path / "work")
    assert second == first
    assert {it.item_id: layout.abs(it.path).stat().st_mtime_ns for it in second if it.path} == stamps


def test_a_changed_file_is_converted_again(folder: dict[str, Path], tmp_path: Path) -> None:
    first, layout = _ingest(folder, tmp_path / "work")
    _wav(folder["good"], 1.7)  # replaced with a longer recording
    second, _ = _ingest(folder, tmp_path / "work")
    assert _by_name(second, folder)["good"].duration_s == pytest.approx(1.7, abs=0.01)
    assert _by_name(first, folder)["good"].duration_s == pytest.approx(1.0, abs=0.01)


def test_a_deleted_flac_is_converted_again(folder: dict[str, Path], tmp_path: Path) -> None:
    first, layout = _ingest(folder, tmp_path / "work")
    good = _by_name(first, folder)["good"]
    layout.abs(good.path).unlink()  # type: ignore[arg-type]
    second, _ = _ingest(folder, tmp_path / "work")
    assert second == first
    assert layout.abs(good.path).is_file()  # type: ignore[arg-type]


def test_a_raised_duration_limit_retries_a_too_long_file(folder: dict[str, Path], tmp_path: Path) -> None:
    first, layout = _ingest(folder, tmp_path / "work")
    assert _by_name(first, folder)["long"].status == STATUS_FAILED
    (src,) = resolve_sources([str(folder["good"].parent)])
    files, _ = expand_source(src)
    again = ingest_local(files, layout, IngestConfig(max_item_duration_s=10.0))
    long_ = _by_name(again, folder)["long"]
    assert long_.status == STATUS_OK and long_.duration_s == pytest.approx(3.0, abs=0.01)


def test_a_manifest_row_whose_captions_are_missing_is_ingested_without_them(tmp_path: Path) -> None:
    a = _wav(tmp_path / "a.wav", 0.5)
    b = _wav(tmp_path / "b.wav", 0.5)
    (tmp_path / "b.srt").write_text(SRT, encoding="utf-8")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"audio": "a.wav", "captions": "a-typo.vtt"}\n{"audio": "b.wav", "captions": "b.srt"}\n',
        encoding="utf-8",
    )
    (src,) = resolve_sources([str(manifest)])
    files, _ = expand_source(src)
    layout = WorkLayout(tmp_path / "work")
    missing = tmp_path / "a-typo.vtt"

    items = ingest_local(files, layout, CFG)  # one bad row does not stop the batch

    got = {it.item_id: it for it in items}
    ia, ib = got[local_item_id(a)], got[local_item_id(b)]
    assert ia.status == STATUS_OK and layout.abs(ia.path).is_file()  # type: ignore[arg-type]
    assert ia.caption_path is None and ia.caption_kind is None  # segment cuts it by VAD
    assert ia.error == f"captions {missing} not found; segmented by VAD"
    assert ib.status == STATUS_OK and ib.error is None and ib.caption_kind == "local"
    assert ingest_local(files, layout, CFG) == items  # a rerun gives the same, without raising

    missing.write_text("WEBVTT\n\n00:00:00.000 --> 00:00:00.400\nhi\n", encoding="utf-8")
    again = {it.item_id: it for it in ingest_local(files, layout, CFG)}[ia.item_id]
    assert again.error is None and again.caption_path == f"raw/{ia.item_id}.vtt"  # picked up once it exists


def test_a_file_that_disappeared_is_failed(tmp_path: Path) -> None:
    wav = _wav(tmp_path / "soon_gone.wav", 0.5)
    (src,) = resolve_sources([str(wav)])
    files, _ = expand_source(src)
    wav.unlink()
    (item,) = ingest_local(files, WorkLayout(tmp_path / "work"), CFG)
    assert item.status == STATUS_FAILED and "disappeared" in (item.error or "")
