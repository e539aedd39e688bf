"""Ingest of web sources (YouTube videos, playlists, channels, pages with HTML5 media) via yt-dlp.

yt-dlp is used only through its Python API (``yt_dlp.YoutubeDL``), never through a shell.  For each
video the best audio stream is downloaded into a private temp folder under ``raw/``, converted to
16 kHz mono FLAC with :func:`llmasr.audio.convert_to_flac16k` (atomic write) by a small yt-dlp
post-processor, and the temp folder is removed.  Captions are written as WebVTT beside the audio:
manual ones in the configured languages first, automatic ones only when allowed.

Every fetched video also gets an item record (``raw/<item_id>.item.json``) so a later run can
rebuild its :class:`~llmasr.records.Item` without network; yt-dlp's download archive
(``raw/ytdlp-archive.txt``) records the same thing in yt-dlp's own terms.

Per-video failures never raise: they come back as ``Item(status="failed", error=...)``.  Network
errors (timeouts, refused/reset connections, HTTP 5xx/429) are retried with exponential backoff;
anything else (404, unsupported URL, private video, undecodable audio, too long) fails at once.
The settings are the config's ``ingest`` section (``llmasr.config.IngestConfig``), taken as is.
The cookies file's path and contents are never logged nor put into errors.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import http.client
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yt_dlp
from yt_dlp.extractor import get_info_extractor
from yt_dlp.networking.exceptions import HTTPError as YtHTTPError
from yt_dlp.networking.exceptions import TransportError
from yt_dlp.postprocessor import PostProcessor
from yt_dlp.utils import DownloadError, YoutubeDLError

from llmasr.atomic import write_json
from llmasr.audio import AudioError, convert_to_flac16k
from llmasr.config import IngestConfig
from llmasr.layout import WorkLayout, safe_id
from llmasr.records import STATUS_FAILED, STATUS_OK, Item

log = logging.getLogger("llmasr.ingest")

Progress = Callable[[int, int], None]

_DL_PREFIX = ".dl-"  # raw/.dl-<item_id>-XXXX/: one video's downloads in progress
_MAX_NESTING = 3  # playlist -> channel tab -> videos
_MAX_ERROR_CHARS = 500
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NETWORK_MESSAGE = re.compile(
    r"HTTP Error (5\d\d|429)|timed? ?out|Connection (reset|refused|aborted)|Temporary failure in name "
    r"resolution|Remote end closed|IncompleteRead|Connection broken|URLError|TransportError|EOF occurred",
    re.IGNORECASE,
)


_NETWORK_TYPES = (
    TransportError,
    urllib.error.URLError,
    ConnectionError,
    TimeoutError,
    socket.timeout,
    http.client.IncompleteRead,
)


@dataclass(frozen=True)
class _Fetch:
    """What fetching one source reads: the config's ``ingest`` section, and the cookies file it names
    (``cookies_from_env_or_secret``, resolved once per source; never logged)."""

    ingest: IngestConfig
    cookies_file: str | None = None


def _fetch_settings(ingest: IngestConfig) -> _Fetch:
    return _Fetch(ingest, cookies_from_env_or_secret(ingest))


class _NotAVideo(RuntimeError):
    """A URL given to ``fetch_video`` that is a playlist of several videos."""


# --------------------------------------------------------------------------------------------
# yt-dlp plumbing


class _YtdlpLogger:
    """Forwards every yt-dlp message to ``llmasr.ingest`` at debug level, cookies path redacted."""

    def __init__(self, opts: _Fetch) -> None:
        self._opts = opts

    def _emit(self, msg: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("yt-dlp: %s", _redact(_ANSI.sub("", msg), self._opts))

    debug = info = warning = error = _emit


class _ToFlac16k(PostProcessor):  # type: ignore[misc]
    """yt-dlp post-processor: downloaded file -> 16 kHz mono FLAC at ``dst``; deletes the original.

    Runs before yt-dlp records the download archive, so a failed conversion is not archived.
    """

    def __init__(self, dst: Path, max_duration_s: float) -> None:
        super().__init__(None)
        self.dst = dst
        self.max_duration_s = max_duration_s
        self.duration_s: float | None = None

    def run(self, info: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        src = info["filepath"]
        self.duration_s = convert_to_flac16k(src, self.dst, max_duration_s=self.max_duration_s)
        return [src], info


def _base_params(opts: _Fetch) -> dict[str, Any]:
    def backoff(n: int) -> float:
        return opts.ingest.backoff_s * (2**n)

    params: dict[str, Any] = {
        "logger": _YtdlpLogger(opts),
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "color": {"stdout": "never", "stderr": "never"},
        "socket_timeout": opts.ingest.socket_timeout_s,
        "retries": opts.ingest.retries,
        "fragment_retries": opts.ingest.retries,
        "extractor_retries": opts.ingest.retries,
        "retry_sleep_functions": {"http": backoff, "fragment": backoff, "extractor": backoff},
        "ignoreerrors": False,
    }
    if opts.cookies_file:
        params["cookiefile"] = opts.cookies_file
    return params


def _download_params(
    opts: _Fetch, tmpdir: Path, archive: Path | None, captions: tuple[str, str] | None
) -> dict[str, Any]:
    lang, kind = captions if captions else ("", None)
    return {
        **_base_params(opts),
        "format": "bestaudio/best",
        "outtmpl": {"default": "media.%(ext)s", "subtitle": "captions.%(ext)s"},
        "paths": {"home": str(tmpdir), "temp": str(tmpdir)},
        "noplaylist": True,
        "overwrites": True,
        "download_archive": str(archive) if archive else None,
        "writesubtitles": kind == "manual",
        "writeautomaticsub": kind == "auto",
        "subtitleslangs": [lang] if lang else [],
        "subtitlesformat": "vtt/best",
        "postprocessors": [{"key": "FFmpegSubtitlesConvertor", "format": "vtt", "when": "before_dl"}],
    }


def _extract(url: str, opts: _Fetch, flat: bool) -> dict[str, Any]:
    params = {**_base_params(opts), "skip_download": True, "noplaylist": not flat}
    if flat:
        params["extract_flat"] = "in_playlist"
    with yt_dlp.YoutubeDL(params) as ydl:
        info = ydl.extract_info(url, download=False)
    if not info:
        raise DownloadError(f"no information extracted from {url}")
    return info


# --------------------------------------------------------------------------------------------
# errors and retries


def _redact(text: str, opts: _Fetch) -> str:
    """``text`` without the cookies file's path (as given, expanded or absolute)."""
    if opts.cookies_file:
        given = opts.cookies_file
        for form in sorted(
            {given, os.path.expanduser(given), os.path.abspath(os.path.expanduser(given))},
            key=len,
            reverse=True,
        ):
            text = text.replace(form, "<cookies>")
    return text


def _error_text(exc: BaseException, opts: _Fetch) -> str:
    """A one-line, readable error for Item.error (no "ERROR:" prefix, no colour, no cookies path)."""
    text = _ANSI.sub("", str(exc)).strip() or type(exc).__name__
    text = re.sub(r"^(ERROR:\s*)+", "", text)
    text = re.sub(r"\s*\(caused by .*\)\s*$", "", text, flags=re.DOTALL) or text  # repeats the message
    text = " ".join(_redact(text, opts).split())
    return text[:_MAX_ERROR_CHARS]


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: yt-dlp's ``exc_info``/``cause``, Python's __cause__/__context__."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        exc_info = getattr(e, "exc_info", None)
        wrapped = [exc_info[1] if exc_info else None, getattr(e, "cause", None), e.__cause__, e.__context__]
        todo.extend(w for w in wrapped if isinstance(w, BaseException))


def _http_status(exc: BaseException) -> int | None:
    if isinstance(exc, YtHTTPError):
        return int(exc.status)
    if isinstance(exc, urllib.error.HTTPError):
        return int(exc.code)
    return None


def is_network_error(exc: BaseException) -> bool:
    """True for errors worth retrying: timeouts, connection failures, HTTP 5xx and 429."""
    for e in _causes(exc):
        status = _http_status(e)
        if status is not None:
            return status >= 500 or status == 429
        if isinstance(e, _NETWORK_TYPES):
            return True
    return bool(_NETWORK_MESSAGE.search(str(exc)))


def _with_retries(what: str, fn: Callable[[], Any], opts: _Fetch) -> Any:
    """Call ``fn``; on a network error wait ingest.backoff_s, twice that, ... and retry up to
    ingest.retries times."""
    attempts = 1 + max(0, opts.ingest.retries)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (YoutubeDLError, OSError) as exc:
            if attempt == attempts or not is_network_error(exc):
                raise
            delay = opts.ingest.backoff_s * 2 ** (attempt - 1)
            log.warning(
                "network error on %s (attempt %d/%d), retrying in %.2f s: %s",
                what,
                attempt,
                attempts,
                delay,
                _error_text(exc, opts),
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# ids, records, captions


def _item_id(extractor_key: str, video_id: str) -> str:
    return safe_id(f"{extractor_key.lower()}-{video_id}")


def _info_item_id(info: dict[str, Any]) -> str | None:
    key = info.get("extractor_key") or info.get("ie_key")
    return _item_id(str(key), str(info["id"])) if key and info.get("id") else None


def url_item_id(url: str) -> str:
    """The id of the failed item recorded for a URL that could not be listed at all."""
    return safe_id(f"url-{url}")


def _failed(item_id: str, source: str, url: str | None, error: str, title: str | None = None) -> Item:
    return Item(
        item_id=item_id,
        source=source,
        url=url,
        path=None,
        duration_s=None,
        caption_path=None,
        status=STATUS_FAILED,
        error=error,
        title=title,
    )


def _save_record(layout: WorkLayout, item: Item) -> Item:
    write_json(layout.item_record(item.item_id), dataclasses.asdict(item))
    return item


def load_record(layout: WorkLayout, item_id: str) -> Item | None:
    """The item record a previous run wrote for ``item_id`` (None if missing or unreadable)."""
    path = layout.item_record(item_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in dataclasses.fields(Item)}
        return Item(**{k: v for k, v in data.items() if k in names})
    except (OSError, ValueError, TypeError):
        return None


def _reusable(layout: WorkLayout, item: Item | None) -> bool:
    return bool(item and item.status == STATUS_OK and item.path and layout.abs(item.path).is_file())


def _existing(layout: WorkLayout, item_id: str | None, known: dict[str, Item] | None) -> Item | None:
    """An ok item whose audio is already on disk, from ``known`` or from its record file."""
    if item_id is None:
        return None
    for item in ((known or {}).get(item_id), load_record(layout, item_id)):
        if _reusable(layout, item):
            return item
    return None


def _pick_lang(tracks: dict[str, Any], lang: str) -> str | None:
    if tracks.get(lang):
        return lang
    variants = sorted(k for k, v in tracks.items() if v and k.lower().startswith(lang.lower() + "-"))
    return variants[0] if variants else None


def choose_captions(info: dict[str, Any], ingest: IngestConfig) -> tuple[str, str] | None:
    """(language, "manual"|"auto") of the captions to fetch, manual in any wanted language first."""
    kinds = [("manual", info.get("subtitles") or {})]
    if ingest.allow_auto_captions:
        kinds.append(("auto", info.get("automatic_captions") or {}))
    for kind, tracks in kinds:
        for lang in ingest.caption_languages:
            found = _pick_lang(tracks, lang)
            if found:
                return found, kind
    return None


def _in_archive(layout: WorkLayout, info: dict[str, Any]) -> bool:
    key = info.get("extractor_key") or info.get("ie_key")
    if not key or not layout.ytdlp_archive.is_file():
        return False
    line = f"{str(key).lower()} {info.get('id')}"
    return line in layout.ytdlp_archive.read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------------------------
# listing


def _is_video_ref(entry: dict[str, Any]) -> bool:
    """A flat ``url`` entry that its extractor says is a single video (so it needs no expanding)."""
    try:
        return bool(entry.get("ie_key")) and get_info_extractor(entry["ie_key"])._RETURN_TYPE == "video"
    except Exception:  # noqa: BLE001 -- unknown or broken extractor key: treat as not-a-video
        return False


def _flatten(info: dict[str, Any], opts: _Fetch, depth: int = 0) -> list[dict[str, Any]]:
    """Video entries of a flat-extracted result; nested playlists (channel tabs) are expanded."""
    if info.get("_type") not in ("playlist", "multi_video"):
        return [info]
    out: list[dict[str, Any]] = []
    for entry in info.get("entries") or []:
        if not entry:
            continue
        if entry.get("_type") == "url" and not _is_video_ref(entry) and depth < _MAX_NESTING:
            nested = _with_retries(
                entry["url"], functools.partial(_extract, entry["url"], opts, flat=True), opts
            )
            out.extend(_flatten(nested, opts, depth + 1))
        elif entry.get("_type") in ("playlist", "multi_video"):
            out.extend(_flatten(entry, opts, depth + 1))
        else:
            out.append(entry)
    return out


def _raw_entries(url: str, opts: _Fetch) -> list[dict[str, Any]]:
    info = _with_retries(url, lambda: _extract(url, opts, flat=True), opts)
    return _flatten(info, opts)


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": entry.get("id"),
        "url": entry.get("webpage_url") or entry.get("url"),
        "title": entry.get("title"),
        "item_id": _info_item_id(entry),
    }


def list_entries(url: str, ingest: IngestConfig) -> list[dict[str, Any]]:
    """Flat listing of a video/playlist/channel URL: ``[{"id", "url", "title", "item_id"}]``.

    A single video gives one entry.  Raises yt-dlp's ``DownloadError`` when the URL cannot be
    listed (after retrying network errors).
    """
    return [_summary(e) for e in _raw_entries(url, _fetch_settings(ingest))]


# --------------------------------------------------------------------------------------------
# one video


def _single_video(info: dict[str, Any], opts: _Fetch) -> dict[str, Any]:
    videos = _flatten(info, opts)
    if len(videos) != 1:
        raise _NotAVideo(f"not a single video: the URL lists {len(videos)} entries (use fetch_web_source)")
    return videos[0]


def _resolve(entry: dict[str, Any], opts: _Fetch) -> dict[str, Any]:
    """Full info of a video entry (a flat ``url`` reference is extracted; a full entry is kept)."""
    if entry.get("_type") != "url":
        return entry
    return _single_video(
        _with_retries(entry["url"], lambda: _extract(entry["url"], opts, flat=False), opts), opts
    )


def _too_long(info: dict[str, Any], opts: _Fetch) -> str | None:
    duration = info.get("duration")
    limit = opts.ingest.max_item_duration_s
    if duration and float(duration) > limit:
        return f"too long: {float(duration):.0f} s > {limit:.0f} s (max_item_duration_s)"
    return None


def _download(
    info: dict[str, Any], item_id: str, layout: WorkLayout, opts: _Fetch
) -> tuple[float, Path | None, str | None]:
    """Download audio (+captions) of a resolved video; returns (duration_s, caption file, kind)."""
    captions = choose_captions(info, opts.ingest)
    # an archived video without a usable record is stale: download it again, ignoring the archive
    archive = None if _in_archive(layout, info) else layout.ytdlp_archive
    layout.raw.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f"{_DL_PREFIX}{item_id}-", dir=layout.raw))
    try:
        to_flac = _ToFlac16k(layout.audio(item_id), opts.ingest.max_item_duration_s)
        with yt_dlp.YoutubeDL(_download_params(opts, tmpdir, archive, captions)) as ydl:
            ydl.add_post_processor(to_flac, when="post_process")
            ydl.process_ie_result(dict(info), download=True)
        if to_flac.duration_s is None:
            raise DownloadError("yt-dlp downloaded nothing")
        caption_path = _store_captions(tmpdir, layout.captions(item_id)) if captions else None
        if caption_path is None:
            layout.captions(item_id).unlink(missing_ok=True)  # a previous run's, no longer listed
            return to_flac.duration_s, None, None
        return to_flac.duration_s, caption_path, captions[1] if captions else None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _store_captions(tmpdir: Path, dst: Path) -> Path | None:
    found = sorted(tmpdir.glob("captions*.vtt"))
    if not found:
        log.info("captions were listed but none was written for %s", dst.stem)
        return None
    os.replace(found[0], dst)  # same filesystem: an atomic rename
    return dst


def sweep_download_dirs(layout: WorkLayout) -> int:
    """Remove the ``raw/.dl-*`` temp folders a killed run left behind; returns how many.

    Only call it when no other ingest is running on the same work dir.
    """
    if not layout.raw.is_dir():
        return 0
    stale = [p for p in layout.raw.glob(f"{_DL_PREFIX}*") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def _fetch_resolved(info: dict[str, Any], source: str, layout: WorkLayout, opts: _Fetch) -> Item:
    item_id = _info_item_id(info) or safe_id(f"web-{info.get('webpage_url') or info.get('url')}")
    url = info.get("webpage_url") or info.get("original_url") or info.get("url")
    title = info.get("title")
    too_long = _too_long(info, opts)
    if too_long:
        return _save_record(layout, _failed(item_id, source, url, too_long, title))
    try:
        duration, caption_path, kind = _with_retries(
            item_id, lambda: _download(info, item_id, layout, opts), opts
        )
    except (YoutubeDLError, AudioError, OSError) as exc:  # anything else: see _fetch_entry
        log.info("failed %s: %s", item_id, _error_text(exc, opts))
        return _save_record(layout, _failed(item_id, source, url, _error_text(exc, opts), title))
    item = Item(
        item_id=item_id,
        source=source,
        url=url,
        path=layout.rel(layout.audio(item_id)),
        duration_s=duration,
        caption_path=layout.rel(caption_path) if caption_path else None,
        status=STATUS_OK,
        title=title,
        caption_kind=kind,
    )
    log.info("fetched %s (%.1f s, captions: %s)", item_id, duration, kind)
    return _save_record(layout, item)


def _fetch_entry(
    entry: dict[str, Any], source: str, layout: WorkLayout, opts: _Fetch, known: dict[str, Item] | None
) -> Item:
    """One entry -> Item; every failure becomes a failed Item (one bad video never stops a channel)."""
    existing = _existing(layout, _info_item_id(entry), known)
    if existing:
        return existing
    try:
        info = _resolve(entry, opts)
        return _existing(layout, _info_item_id(info), known) or _fetch_resolved(info, source, layout, opts)
    except Exception as exc:  # noqa: BLE001 -- the per-video boundary
        item_id = _info_item_id(entry) or url_item_id(str(entry.get("url")))
        log.info("failed %s: %s", item_id, _error_text(exc, opts))
        return _save_record(
            layout, _failed(item_id, source, entry.get("url"), _error_text(exc, opts), entry.get("title"))
        )


def fetch_video(entry_url: str, source: str, layout: WorkLayout, ingest: IngestConfig) -> Item:
    """Download one video's audio + captions into ``layout.raw``; return its Item.

    Status ok, or failed with ``error`` -- never raises for per-video failures.  A video whose ok
    record and audio are already in ``raw/`` is returned as recorded (after one metadata request).
    """
    return _fetch_entry({"_type": "url", "url": entry_url}, source, layout, _fetch_settings(ingest), None)


# --------------------------------------------------------------------------------------------
# one source URL


def fetch_web_source(
    url: str,
    layout: WorkLayout,
    ingest: IngestConfig,
    known: dict[str, Item] | None = None,
    progress: Progress | None = None,
) -> list[Item]:
    """All items of one URL (a video, playlist, channel or page with HTML5 media).

    ``known`` is this source's items from the last run.  Entries whose item is in ``known`` (or has
    a record in ``raw/``) with status ok and audio on disk are returned as-is without downloading.
    Known ok items the listing no longer shows (deleted or private videos) are carried forward, so
    their segments and shards stay.  A URL that cannot be listed at all (unreachable, unsupported)
    gives one failed Item with id ``url_item_id(url)`` instead of raising, plus the known items.
    ``progress(n_done, n_total)`` is called after each entry.  ``ingest`` is the config's section;
    a bad cookies setting in it raises ``ValueError`` before anything is fetched.
    """
    opts = _fetch_settings(ingest)
    try:
        entries = _raw_entries(url, opts)
    except Exception as exc:  # noqa: BLE001 -- a source that cannot be listed is one failed item
        error = _error_text(exc, opts)
        kept = _carry_forward(layout, url, known, set(), f"{url} could not be listed")
        log.warning("could not list %s: %s (kept %d items of earlier runs)", url, error, len(kept))
        return kept + [_save_record(layout, _failed(url_item_id(url), url, url, error))]
    items: list[Item] = []
    for n, entry in enumerate(entries, start=1):
        items.append(_fetch_entry(entry, url, layout, opts, known))
        if progress is not None:
            progress(n, len(entries))
    return items + _carry_forward(layout, url, known, {i.item_id for i in items}, f"{url} no longer lists it")


def _carry_forward(
    layout: WorkLayout, url: str, known: dict[str, Item] | None, listed: set[str], why: str
) -> list[Item]:
    """The items of ``known`` not in ``listed`` that stay: ok items with audio on disk, as they were.

    A network blip or a deleted video must not drop data an earlier run fetched ("nothing is lost").
    Known ok items whose audio is gone can be neither kept nor fetched: they are listed as failed.
    Known failed items not listed again are dropped (they never had data); so is the url item of
    an earlier listing failure.
    """
    out: list[Item] = []
    for item_id, item in sorted((known or {}).items()):
        if item_id in listed or item.status != STATUS_OK:
            continue
        if _reusable(layout, item):
            log.info("kept %s from an earlier run: %s", item_id, why)
            out.append(item)
        else:
            log.warning("%s: %s and its audio %s is missing; listed as failed", item_id, why, item.path)
            out.append(
                _failed(item_id, url, item.url, f"{why} and its audio {item.path} is missing", item.title)
            )
    return out


# --------------------------------------------------------------------------------------------
# cookies


def _looks_like_cookies(value: str) -> bool:
    return "\t" in value or "\n" in value or value.lstrip().startswith("#")


def _write_private(contents: str) -> str:
    """Write ``contents`` to a new 0600 temp file (removed at exit) and return its path."""
    fd, path = tempfile.mkstemp(prefix="llmasr-cookies-", suffix=".txt")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(contents if contents.endswith("\n") else contents + "\n")
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    atexit.register(lambda: Path(path).unlink(missing_ok=True))
    return path


def cookies_from_env_or_secret(ingest: IngestConfig) -> str | None:
    """Path of a Netscape cookies file for yt-dlp, or None when ``ingest`` configures no cookies.

    ``$<ingest.cookies_env>`` may hold a path to an existing file (returned as is) or the file's
    contents (written to a 0600 temp file).  Otherwise, with ``ingest.cookies_secret``, the Prefect
    Secret block of that name is loaded and its value written likewise.  Nothing about the cookies is
    logged.
    """
    env_var, secret_block = ingest.cookies_env, ingest.cookies_secret
    value = os.environ.get(env_var, "").strip()
    if value:
        if os.path.isfile(value):
            return value
        if _looks_like_cookies(value):
            return _write_private(value)
        # never echo the value: it may be the cookies themselves
        raise ValueError(
            f"${env_var} (named by the config key ingest.cookies_env) is neither the path of an existing "
            "file nor Netscape cookies-file contents: set it to the path of a cookies.txt file or to that "
            "file's text, or unset it (optionally naming a Prefect Secret block in ingest.cookies_secret "
            "instead)"
        )
    if secret_block:
        from prefect.blocks.system import Secret

        secret = Secret.load(secret_block, _sync=True).get()  # type: ignore[call-arg,union-attr]  # sync even in async code
        if not isinstance(secret, str) or not secret.strip():
            raise ValueError(
                f"Prefect Secret block {secret_block!r} (named by the config key ingest.cookies_secret) does "
                "not hold cookies-file text: store a Netscape cookies.txt file's contents in it, or unset "
                "ingest.cookies_secret"
            )
        return _write_private(secret)
    return None
