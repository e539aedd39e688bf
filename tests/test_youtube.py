"""Offline tests of web ingest (tasks/youtube.py) with the real yt-dlp extractors and downloader.

A local ThreadingHTTPServer serves pages with HTML5 ``<video src=...>`` tags (yt-dlp's generic
extractor: one tag is a video, several are a playlist), espeak-ng speech as .m4a and WebVTT
captions.  Nothing is mocked in yt-dlp; the request log of the server shows what was downloaded.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from yt_dlp.networking.common import Response
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import DownloadError, ExtractorError

from llmasr.config import IngestConfig
from llmasr.layout import WorkLayout
from llmasr.records import STATUS_FAILED, STATUS_OK, Item
from tasks import youtube
from tasks.youtube import (
    choose_captions,
    cookies_from_env_or_secret,
    fetch_video,
    fetch_web_source,
    list_entries,
    load_record,
)
from webfixtures import Site, closed_port, page, speak, video_tag, vtt

SENTENCE = "the quick brown fox jumps over the lazy dog"
PLAYLIST_SENTENCES = ["one small step", "hello from the second clip", "and the third one"]
FAST = IngestConfig(backoff_s=0.01, retries=2, socket_timeout_s=5)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site")
    one_s = speak(SENTENCE, root / "one.m4a")
    (root / "one.vtt").write_text(vtt(SENTENCE, 2.0))
    (root / "one.html").write_text(page("Clip One", video_tag("one.m4a", "one.vtt")))
    tags = []
    for i, text in enumerate(PLAYLIST_SENTENCES, start=1):
        speak(text, root / f"p{i}.m4a")
        (root / f"p{i}.vtt").write_text(vtt(text, 1.0))
        tags.append(video_tag(f"p{i}.m4a", f"p{i}.vtt"))
    (root / "three.html").write_text(page("Three Clips", *tags))
    (root / "empty.html").write_text(page("No media here"))
    (root / "missing.html").write_text(page("Gone", video_tag("nothere.m4a", None)))
    speak(SENTENCE, root / "flaky.m4a")
    (root / "flaky.html").write_text(page("Flaky", video_tag("flaky.m4a", None)))
    server = Site(root)
    server.durations["one.m4a"] = one_s
    yield server
    server.close()


@pytest.fixture
def state(site: Site) -> Iterator[Site]:
    site.state.reset()
    yield site
    site.state.reset()


@pytest.fixture
def layout(tmp_path: Path) -> WorkLayout:
    return WorkLayout(tmp_path / "work")


def _raw_files(layout: WorkLayout) -> list[str]:
    return sorted(p.name for p in layout.raw.iterdir())


def test_single_page_gives_one_ok_item(state: Site, layout: WorkLayout) -> None:
    url = state.url("one.html")
    items = fetch_web_source(url, layout, FAST)

    assert len(items) == 1
    item = items[0]
    assert item.status == STATUS_OK, item.error
    assert item.item_id.startswith("html5mediaembed-one")
    assert (item.source, item.url, item.title) == (url, url, "Clip One (1)")
    assert item.path == f"raw/{item.item_id}.flac" and item.caption_path == f"raw/{item.item_id}.vtt"
    info = sf.info(str(layout.root / item.path))
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert item.duration_s == pytest.approx(info.frames / 16000)
    assert item.duration_s == pytest.approx(state.durations["one.m4a"], abs=0.1)
    assert SENTENCE in (layout.root / item.caption_path).read_text()
    assert item.caption_kind == "manual"
    assert load_record(layout, item.item_id) == item
    assert layout.ytdlp_archive.read_text().split() == [
        "html5mediaembed",
        item.item_id.removeprefix("html5mediaembed-"),
    ]
    assert not [n for n in _raw_files(layout) if n.startswith(".")], "temp files left in raw/"


def test_fetch_video_and_list_entries(state: Site, layout: WorkLayout) -> None:
    url = state.url("one.html")
    entries = list_entries(url, FAST)
    assert [(e["url"], e["title"]) for e in entries] == [(url, "Clip One (1)")]
    assert state.media_requests() == []  # listing downloads no media

    item = fetch_video(url, "my-source", layout, FAST)
    assert item.status == STATUS_OK, item.error
    assert item.item_id == entries[0]["item_id"] and item.source == "my-source"


def test_playlist_page_gives_three_items(state: Site, layout: WorkLayout) -> None:
    seen: list[tuple[int, int]] = []
    items = fetch_web_source(state.url("three.html"), layout, FAST, progress=lambda d, t: seen.append((d, t)))

    assert [i.status for i in items] == [STATUS_OK] * 3, [i.error for i in items]
    assert len({i.item_id for i in items}) == 3
    assert seen == [(1, 3), (2, 3), (3, 3)]
    for item, text in zip(items, PLAYLIST_SENTENCES):
        assert text in (layout.root / item.caption_path).read_text()  # type: ignore[operator]
        assert sf.info(str(layout.root / item.path)).samplerate == 16000  # type: ignore[operator]
    assert sorted(state.media_requests()) == ["/p1.m4a", "/p2.m4a", "/p3.m4a"]


def test_rerun_downloads_nothing(state: Site, layout: WorkLayout) -> None:
    url = state.url("three.html")
    first = fetch_web_source(url, layout, FAST)
    assert len(state.media_requests()) == 3

    state.state.reset()
    again = fetch_web_source(url, layout, FAST, known={i.item_id: i for i in first})
    assert again == first
    assert state.media_requests() == [] and state.media_requests((".vtt",)) == []

    # without `known`, the item records in raw/ are enough
    again = fetch_web_source(url, layout, FAST)
    assert again == first
    assert state.media_requests() == []


def test_rerun_refetches_when_audio_is_gone(state: Site, layout: WorkLayout) -> None:
    url = state.url("one.html")
    (first,) = fetch_web_source(url, layout, FAST)
    (layout.root / first.path).unlink()  # type: ignore[operator]
    state.state.reset()

    (again,) = fetch_web_source(url, layout, FAST, known={first.item_id: first})
    assert again == first  # archived in yt-dlp's archive, yet fetched again since the audio is gone
    assert (layout.root / again.path).is_file()  # type: ignore[operator]
    assert state.media_requests() == ["/one.m4a"]


def test_missing_media_fails_cleanly(state: Site, layout: WorkLayout) -> None:
    (item,) = fetch_web_source(state.url("missing.html"), layout, FAST)
    assert item.status == STATUS_FAILED
    assert "404" in (item.error or "") and not item.error.startswith("ERROR")  # type: ignore[union-attr]
    assert item.path is None and item.caption_path is None
    assert _raw_files(layout) == [f"{item.item_id}.item.json"]
    assert state.media_requests() == ["/nothere.m4a"]  # a 404 is not retried


def test_unreachable_url_gives_one_failed_item(layout: WorkLayout) -> None:
    url = f"http://127.0.0.1:{closed_port()}/x"
    (item,) = fetch_web_source(url, layout, FAST)
    assert item.status == STATUS_FAILED and item.item_id.startswith("url-")
    assert item.item_id == youtube.url_item_id(url)
    assert "Connection refused" in (item.error or "")
    assert _raw_files(layout) == [f"{item.item_id}.item.json"]


def test_page_without_media_fails_without_retry(state: Site, layout: WorkLayout) -> None:
    url = state.url("empty.html")
    (item,) = fetch_web_source(url, layout, FAST)
    assert item.status == STATUS_FAILED and item.item_id == youtube.url_item_id(url)
    assert "Unsupported URL" in (item.error or "")
    assert state.state.requests.count("/empty.html") == 1


def _playlist_page(site: Site, name: str, n: int = 3) -> str:
    """A page of this test's own listing ``n`` of the playlist clips (the module's pages stay as they are)."""
    tags = [video_tag(f"p{i}.m4a", f"p{i}.vtt") for i in range(1, n + 1)]
    (site.root / name).write_text(page("Listing", *tags))
    return site.url(name)


@pytest.mark.parametrize("failure", ["gone", "blip"])
def test_a_source_that_cannot_be_listed_keeps_its_earlier_items(
    state: Site, layout: WorkLayout, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    name = f"listing-{failure}.html"
    url = _playlist_page(state, name)
    try:
        first = fetch_web_source(url, layout, FAST)
        assert [i.status for i in first] == [STATUS_OK] * 3, [i.error for i in first]
        state.state.reset()
        if failure == "gone":  # the playlist was deleted: 404
            (state.root / name).unlink()
        else:  # a network blip that outlasts every retry: 503
            state.state.fail_503[f"/{name}"] = 100
        caplog.set_level(logging.INFO, logger="llmasr.ingest")
        again = fetch_web_source(url, layout, FAST, known={i.item_id: i for i in first})
    finally:
        (state.root / name).unlink(missing_ok=True)

    assert again[:3] == first  # unchanged, so their segments and shards stay
    assert all((layout.root / i.path).is_file() for i in again[:3])  # type: ignore[operator]
    (failed,) = again[3:]
    assert failed.item_id == youtube.url_item_id(url) and failed.status == STATUS_FAILED
    assert ("404" if failure == "gone" else "503") in (failed.error or "")
    assert state.media_requests() == []
    assert any("could not list" in r.getMessage() and "kept 3" in r.getMessage() for r in caplog.records)


def test_a_known_item_without_audio_is_listed_failed_when_the_source_cannot_be_listed(
    state: Site, layout: WorkLayout
) -> None:
    name = "listing-lost.html"
    url = _playlist_page(state, name)
    try:
        first = fetch_web_source(url, layout, FAST)
        (state.root / name).unlink()
        (layout.root / first[1].path).unlink()  # type: ignore[operator]
        again = fetch_web_source(url, layout, FAST, known={i.item_id: i for i in first})
    finally:
        (state.root / name).unlink(missing_ok=True)

    assert [i.item_id for i in again] == [i.item_id for i in first] + [youtube.url_item_id(url)]
    assert [again[0], again[2]] == [first[0], first[2]]
    lost = again[1]
    assert lost.status == STATUS_FAILED and lost.path is None and lost.title == first[1].title
    assert "could not be listed" in (lost.error or "") and first[1].path in (lost.error or "")  # type: ignore[operator]


def test_items_the_listing_no_longer_shows_are_kept(
    state: Site, layout: WorkLayout, caplog: pytest.LogCaptureFixture
) -> None:
    name = "listing-shrinks.html"
    url = _playlist_page(state, name)
    try:
        first = fetch_web_source(url, layout, FAST)
        assert [i.status for i in first] == [STATUS_OK] * 3, [i.error for i in first]
        _playlist_page(state, name, n=2)  # the third video was deleted or made private
        state.state.reset()
        caplog.set_level(logging.INFO, logger="llmasr.ingest")
        again = fetch_web_source(url, layout, FAST, known={i.item_id: i for i in first})
    finally:
        (state.root / name).unlink(missing_ok=True)

    assert again == first
    assert state.media_requests() == []
    kept = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kept ")]
    assert kept == [f"kept {first[2].item_id} from an earlier run: {url} no longer lists it"]


@pytest.mark.parametrize("failure", ["fail_503", "drop"])
def test_network_error_is_retried(
    state: Site, layout: WorkLayout, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    opts = IngestConfig(backoff_s=0.01, retries=1, socket_timeout_s=5)
    failures = 3  # more than yt-dlp's own retries (1 retry = 2 requests), so our loop must step in
    getattr(state.state, failure)["/flaky.m4a"] = failures
    caplog.set_level(logging.INFO, logger="llmasr.ingest")

    (item,) = fetch_web_source(state.url("flaky.html"), layout, opts)

    assert item.status == STATUS_OK, item.error
    assert len(state.media_requests()) == failures + 1
    retries = [r for r in caplog.records if r.name == "llmasr.ingest" and "retrying" in r.getMessage()]
    assert len(retries) == 1 and "attempt 1/2" in retries[0].getMessage()
    assert not [n for n in _raw_files(layout) if n.startswith(".")]


def test_network_error_gives_up_after_retries(state: Site, layout: WorkLayout) -> None:
    opts = IngestConfig(backoff_s=0.01, retries=1, socket_timeout_s=5)
    state.state.fail_503["/flaky.m4a"] = 100
    (item,) = fetch_web_source(state.url("flaky.html"), layout, opts)
    assert item.status == STATUS_FAILED and "503" in (item.error or "")
    assert len(state.media_requests()) == 4  # 2 attempts x (1 + 1 yt-dlp retry)
    assert _raw_files(layout) == [f"{item.item_id}.item.json"]


def test_too_long_fails(state: Site, layout: WorkLayout) -> None:
    opts = IngestConfig(backoff_s=0.01, max_item_duration_s=0.5)
    (item,) = fetch_web_source(state.url("one.html"), layout, opts)
    assert item.status == STATUS_FAILED
    assert (item.error or "").startswith("too long")
    assert _raw_files(layout) == [f"{item.item_id}.item.json"]  # no audio, no archive entry
    assert len(state.media_requests()) == 1  # not retried


def test_too_long_known_before_download(layout: WorkLayout) -> None:
    info = {
        "id": "x1",
        "extractor_key": "Youtube",
        "webpage_url": "https://example.invalid/v/x1",
        "title": "Long",
        "duration": 7200,
    }
    too_long = youtube._Fetch(IngestConfig(max_item_duration_s=3600))
    item = youtube._fetch_resolved(info, "src", layout, too_long)
    assert item.item_id == "youtube-x1" and item.status == STATUS_FAILED
    assert item.error and item.error.startswith("too long: 7200 s")


def test_choose_captions_prefers_manual_then_auto() -> None:
    info: dict[str, Any] = {
        "subtitles": {"de": [{}], "en-GB": [{}]},
        "automatic_captions": {"en": [{}], "fr": [{}]},
    }
    assert choose_captions(info, IngestConfig(caption_languages=["en"])) == ("en-GB", "manual")
    assert choose_captions(info, IngestConfig(caption_languages=["fr"])) == ("fr", "auto")
    assert choose_captions(info, IngestConfig(caption_languages=["fr"], allow_auto_captions=False)) is None
    assert choose_captions(info, IngestConfig(caption_languages=["es", "de"])) == ("de", "manual")
    assert choose_captions({}, IngestConfig()) is None


def test_network_error_classification() -> None:
    def http_error(status: int) -> HTTPError:
        return HTTPError(Response(io.BytesIO(b""), "http://x", {}, status=status))

    def wrapped(cause: Exception) -> DownloadError:
        try:
            raise ExtractorError("Unable to download webpage", cause=cause) from cause
        except ExtractorError as exc:
            return DownloadError(str(exc), exc_info=(type(exc), exc, None))

    assert youtube.is_network_error(wrapped(TransportError("connection reset")))
    assert youtube.is_network_error(wrapped(http_error(503)))
    assert youtube.is_network_error(wrapped(http_error(429)))
    assert not youtube.is_network_error(wrapped(http_error(404)))
    assert not youtube.is_network_error(DownloadError("ERROR: Unsupported URL: http://x"))
    assert not youtube.is_network_error(DownloadError("ERROR: [youtube] abc: Private video"))
    assert youtube.is_network_error(DownloadError("ERROR: [generic] x: Read timed out."))


# -- cookies ----------------------------------------------------------------------------------

COOKIES = "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tsecret-value-123\n"


def test_cookies_contents_in_env_go_to_a_private_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMASR_YTDLP_COOKIES", COOKIES)
    path = cookies_from_env_or_secret(IngestConfig())
    assert path is not None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Path(path).read_text() == COOKIES
    os.unlink(path)


def test_cookies_path_in_env_is_returned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "cookies.txt"
    f.write_text(COOKIES)
    monkeypatch.setenv("LLMASR_YTDLP_COOKIES", str(f))
    assert cookies_from_env_or_secret(IngestConfig()) == str(f)


def test_cookies_none_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMASR_YTDLP_COOKIES", raising=False)
    assert cookies_from_env_or_secret(IngestConfig()) is None
    monkeypatch.setenv("LLMASR_YTDLP_COOKIES", "/no/such/cookies-file")
    with pytest.raises(ValueError) as err:
        cookies_from_env_or_secret(IngestConfig())
    assert "/no/such" not in str(err.value)
    # the message names the variable, the config keys behind it, and what to do
    for part in (
        "$LLMASR_YTDLP_COOKIES",
        "ingest.cookies_env",
        "ingest.cookies_secret",
        "path of a cookies.txt file",
    ):
        assert part in str(err.value)


def test_a_secret_without_cookies_names_the_config_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    monkeypatch.delenv("LLMASR_YTDLP_COOKIES", raising=False)
    monkeypatch.setattr(Secret, "load", staticmethod(lambda name, *a, **k: Secret(value="  ")))  # type: ignore[arg-type]
    with pytest.raises(ValueError) as err:
        cookies_from_env_or_secret(IngestConfig(cookies_secret="yt-cookies"))
    assert "'yt-cookies'" in str(err.value) and "ingest.cookies_secret" in str(err.value)


def test_cookies_from_prefect_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    monkeypatch.delenv("LLMASR_YTDLP_COOKIES", raising=False)
    loaded: list[str] = []

    def fake_load(name: str, *args: object, **kwargs: object) -> Secret:
        loaded.append(name)
        return Secret(value=COOKIES)  # type: ignore[arg-type]  # pydantic coerces str

    monkeypatch.setattr(Secret, "load", staticmethod(fake_load))
    path = cookies_from_env_or_secret(IngestConfig(cookies_secret="yt-cookies"))
    assert loaded == ["yt-cookies"] and path is not None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and Path(path).read_text() == COOKIES
    os.unlink(path)


def test_cookies_are_used_but_never_logged(
    state: Site,
    layout: WorkLayout,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cookies = tmp_path / "private-cookies.txt"
    cookies.write_text(COOKIES)
    monkeypatch.setenv("LLMASR_YT_TEST_COOKIES", str(cookies))
    # the section names the variable that holds the cookies file's path
    ingest = IngestConfig(backoff_s=0.01, cookies_env="LLMASR_YT_TEST_COOKIES")
    caplog.set_level(logging.DEBUG, logger="llmasr.ingest")

    items = fetch_web_source(state.url("one.html"), layout, ingest)
    missing = fetch_web_source(state.url("missing.html"), layout, ingest)

    assert items[0].status == STATUS_OK and missing[0].status == STATUS_FAILED
    assert "session=secret-value-123" in state.state.cookies  # yt-dlp sent them
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "yt-dlp:" in logged  # yt-dlp's messages do reach our logger
    for secret in (str(cookies), "private-cookies", "secret-value-123"):
        assert secret not in logged
        assert all(secret not in repr(i) for i in items + missing)


def test_sweep_download_dirs(layout: WorkLayout) -> None:
    (layout.raw / ".dl-youtube-a-xyz").mkdir(parents=True)
    (layout.raw / ".dl-youtube-a-xyz" / "media.webm.part").write_bytes(b"x")
    (layout.raw / "youtube-a.flac").write_bytes(b"x")
    assert youtube.sweep_download_dirs(layout) == 1
    assert _raw_files(layout) == ["youtube-a.flac"]


def test_item_record_round_trip(layout: WorkLayout) -> None:
    item = Item("youtube-a", "src", "https://x/a", "raw/youtube-a.flac", 1.0, None, STATUS_OK, title="t")
    youtube._save_record(layout, item)
    assert load_record(layout, "youtube-a") == item
    assert load_record(layout, "youtube-missing") is None
