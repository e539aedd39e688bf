"""tasks.captions: WebVTT/SubRip parsing (markup, entities, YouTube's rolling captions) and writing."""

from __future__ import annotations

import os
import random
import re
import stat
from pathlib import Path

import pytest

from tasks.captions import CaptionError, Cue, parse_captions, write_vtt


def _write(tmp_path: Path, name: str, text: str, newline: str = "\n") -> Path:
    p = tmp_path / name
    p.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return p


def _joined(cues: list[Cue]) -> str:
    return " ".join(c.text for c in cues)


WEBVTT = """WEBVTT - a title
Kind: captions
Language: en

NOTE
This is a comment block
spanning two lines

STYLE
::cue {
  color: yellow;
}

intro
00:00:00.500 --> 00:00:02.000 align:start position:0%
<v Roger>Hello <c.yellow>there</c>, Tom &amp; Jerry!</v>

00:00:02.000 --> 00:00:04.250 line:90% size:50%
it<00:00:02.400><c> is</c><00:00:02.800><c> a</c> <i>test</i>
&lt;not a tag&gt;&nbsp;ok

00:00:05.000 --> 00:00:06.000
[Music]

00:00:06.000 --> 00:00:07.5
(applause)
the end
"""


def test_webvtt_header_blocks_settings_tags_and_entities(tmp_path: Path) -> None:
    cues = parse_captions(_write(tmp_path, "a.vtt", WEBVTT))
    assert [(c.start_s, c.end_s) for c in cues] == [(0.5, 2.0), (2.0, 4.25), (6.0, 7.5)]
    assert cues[0].text == "Hello there, Tom & Jerry!"
    assert cues[1].text == "it is a test <not a tag> ok"
    assert cues[2].text == "the end"  # the "(applause)" line dropped, the cue kept
    for c in cues:
        assert "align:" not in c.text and "-->" not in c.text and "<c>" not in c.text


def test_a_cue_of_only_a_bracketed_sound_is_dropped(tmp_path: Path) -> None:
    text = "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n[Music]\n\n00:00:01.000 --> 00:00:02.000\nwords\n"
    cues = parse_captions(_write(tmp_path, "m.vtt", text))
    assert cues == [Cue(1.0, 2.0, "words")]


def test_a_file_of_only_music_cues_has_no_cues_but_is_not_malformed(tmp_path: Path) -> None:
    text = "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n[Music]\n"
    assert parse_captions(_write(tmp_path, "m.vtt", text)) == []


SRT = """1
00:00:01,000 --> 00:00:02,500
Hello, world.

2
00:00:02,600 --> 00:00:04,000
Second line
continues here.

3
01:02:03,456 --> 01:02:05,000
<b>Late</b> cue
"""


def test_srt_with_comma_decimals_and_crlf(tmp_path: Path) -> None:
    cues = parse_captions(_write(tmp_path, "a.srt", SRT, newline="\r\n"))
    assert cues == [
        Cue(1.0, 2.5, "Hello, world."),
        Cue(2.6, 4.0, "Second line continues here."),
        Cue(3723.456, 3725.0, "Late cue"),
    ]


def test_srt_with_utf8_bom(tmp_path: Path) -> None:
    p = tmp_path / "bom.srt"
    p.write_bytes(b"\xef\xbb\xbf" + SRT.encode("utf-8"))
    assert len(parse_captions(p)) == 3


def test_hours_in_webvtt_timestamps(tmp_path: Path) -> None:
    text = "WEBVTT\n\n01:02:03.456 --> 01:02:04.000\nlate\n\n10:00.5 --> 10:01.25\nshort form\n"
    cues = parse_captions(_write(tmp_path, "h.vtt", text))
    assert cues == [Cue(600.5, 601.25, "short form"), Cue(3723.456, 3724.0, "late")]  # sorted by time


def test_cues_are_sorted_by_time(tmp_path: Path) -> None:
    text = "WEBVTT\n\n00:00:05.000 --> 00:00:06.000\nsecond\n\n00:00:01.000 --> 00:00:02.000\nfirst\n"
    assert [c.text for c in parse_captions(_write(tmp_path, "s.vtt", text))] == ["first", "second"]


def test_zero_length_cues_are_dropped(tmp_path: Path) -> None:
    text = "WEBVTT\n\n00:00:01.000 --> 00:00:01.000\nnothing\n\n00:00:02.000 --> 00:00:03.000\nsomething\n"
    assert parse_captions(_write(tmp_path, "z.vtt", text)) == [Cue(2.0, 3.0, "something")]


# YouTube's automatic captions as yt-dlp saves them: every cue shows the previous line again with
# the new words below it (word timings inline), separated by 10 ms cues that repeat the line alone;
# the first text line of a cue is a single space.
YOUTUBE_AUTO = """WEBVTT
Kind: captions
Language: en

00:00:00.000 --> 00:00:02.330 align:start position:0%
 
so<00:00:00.480><c> today</c><00:00:00.960><c> we're</c><00:00:01.200><c> going</c>

00:00:02.330 --> 00:00:02.340 align:start position:0%
so today we're going
 

00:00:02.340 --> 00:00:04.670 align:start position:0%
so today we're going
to<00:00:02.800><c> talk</c><00:00:03.100><c> about</c><00:00:03.500><c> rare</c>

00:00:04.670 --> 00:00:04.680 align:start position:0%
to talk about rare
 

00:00:04.680 --> 00:00:06.000 align:start position:0%
to talk about rare
words<00:00:05.000><c> and</c><00:00:05.400><c> names</c>

00:00:06.000 --> 00:00:06.010 align:start position:0%
words and names
 

00:00:06.010 --> 00:00:08.000 align:start position:0%
words and names
[Music]

00:00:08.000 --> 00:00:09.000 align:start position:0%
[Music]
 
"""  # noqa: W293 - the lines of a single space are part of the captions


def test_youtube_rolling_auto_captions_give_each_word_once_with_its_timing(tmp_path: Path) -> None:
    cues = parse_captions(_write(tmp_path, "yt.en.vtt", YOUTUBE_AUTO))
    assert _joined(cues) == "so today we're going to talk about rare words and names"
    assert cues == [
        Cue(0.0, 2.33, "so today we're going"),
        Cue(2.34, 4.67, "to talk about rare"),
        Cue(4.68, 6.0, "words and names"),
    ]
    assert all(c.end_s - c.start_s > 0.5 for c in cues)  # no 10 ms filler survives


def test_youtube_rolling_captions_with_crlf(tmp_path: Path) -> None:
    cues = parse_captions(_write(tmp_path, "yt.vtt", YOUTUBE_AUTO, newline="\r\n"))
    assert _joined(cues) == "so today we're going to talk about rare words and names"
    assert cues[0].start_s == 0.0


# Manual captions (and SubRip) repeat a cue when the words are said again: every cue is kept.
MANUAL_REPEATS = """1
00:00:01,000 --> 00:00:01,600
No.

2
00:00:01,600 --> 00:00:02,200
No.

3
00:00:02,200 --> 00:00:03,000
I said no.

4
00:00:03,000 --> 00:00:04,000
Yes,
yes.

5
00:00:04,000 --> 00:00:05,000
Yes,
yes.
"""


@pytest.mark.parametrize("name", ["manual.srt", "manual.vtt"])
def test_manual_captions_keep_repeated_cues(tmp_path: Path, name: str) -> None:
    text = (
        MANUAL_REPEATS
        if name.endswith(".srt")
        else "WEBVTT\n\n" + re.sub(r"(\d),(\d{3})", r"\1.\2", MANUAL_REPEATS)
    )
    cues = parse_captions(_write(tmp_path, name, text))
    assert cues == [
        Cue(1.0, 1.6, "No."),
        Cue(1.6, 2.2, "No."),
        Cue(2.2, 3.0, "I said no."),
        Cue(3.0, 4.0, "Yes, yes."),
        Cue(4.0, 5.0, "Yes, yes."),
    ]


# Rolling captions where the same words are said twice: only the carried-over line is dropped.
YOUTUBE_AUTO_REPEAT = """WEBVTT
Kind: captions
Language: en

00:00:00.000 --> 00:00:01.000 align:start position:0%
 
no<00:00:00.500><c> way</c>

00:00:01.000 --> 00:00:01.010 align:start position:0%
no way
 

00:00:01.010 --> 00:00:02.000 align:start position:0%
no way
no<00:00:01.500><c> way</c>

00:00:02.000 --> 00:00:02.010 align:start position:0%
no way
 
"""  # noqa: W293 - the lines of a single space are part of the captions


def test_rolling_captions_keep_words_said_twice(tmp_path: Path) -> None:
    cues = parse_captions(_write(tmp_path, "yt.en.vtt", YOUTUBE_AUTO_REPEAT))
    assert cues == [Cue(0.0, 1.0, "no way"), Cue(1.01, 2.0, "no way")]


def test_random_bytes_are_a_caption_error(tmp_path: Path) -> None:
    p = tmp_path / "junk.vtt"
    p.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(2000)))
    with pytest.raises(CaptionError):
        parse_captions(p)


def test_text_without_timestamps_is_a_caption_error(tmp_path: Path) -> None:
    p = _write(tmp_path, "plain.srt", "just some words\n\nand more words\n")
    with pytest.raises(CaptionError, match="plain.srt"):
        parse_captions(p)


def test_empty_file_is_a_caption_error(tmp_path: Path) -> None:
    with pytest.raises(CaptionError):
        parse_captions(_write(tmp_path, "empty.vtt", ""))


def test_invalid_utf8_is_a_caption_error(tmp_path: Path) -> None:
    p = tmp_path / "latin1.srt"
    p.write_bytes("1\n00:00:01,000 --> 00:00:02,000\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(CaptionError, match="latin1.srt"):
        parse_captions(p)


def test_missing_file_is_a_caption_error(tmp_path: Path) -> None:
    with pytest.raises(CaptionError):
        parse_captions(tmp_path / "absent.vtt")


def test_caption_error_is_a_value_error() -> None:
    assert issubclass(CaptionError, ValueError)  # segment's VAD fallback catches ValueError


def test_write_vtt_round_trip(tmp_path: Path) -> None:
    cues = [
        Cue(0.0, 1.5, "first & foremost"),
        Cue(1.5, 3.001, "second"),
        Cue(3723.456, 3725.0, "an hour in"),
    ]
    out = write_vtt(tmp_path / "sub" / "x.vtt", cues)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("WEBVTT\n\n")
    assert "01:02:03.456 --> 01:02:05.000" in text
    assert parse_captions(out) == cues
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def test_write_vtt_of_parsed_youtube_captions_round_trips(tmp_path: Path) -> None:
    cues = parse_captions(_write(tmp_path, "yt.vtt", YOUTUBE_AUTO))
    assert parse_captions(write_vtt(tmp_path / "clean.vtt", cues)) == cues


def test_write_vtt_never_changes_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Atomic writes run in task threads: setting the process umask to 0, even for an instant,
    would let another thread create a world-writable file."""
    current = os.umask(0o022)
    os.umask(current)
    calls: list[int] = []

    def spy(mask: int) -> int:
        calls.append(mask)
        return current

    monkeypatch.setattr(os, "umask", spy)
    out = write_vtt(tmp_path / "u.vtt", [Cue(0.0, 1.0, "hi")])
    assert calls == []
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~current
