"""A tiny offline "web site" for ingest tests: a ThreadingHTTPServer on 127.0.0.1 serving a folder.

It logs every request path, and can make chosen paths fail with 503 (or drop the connection) for
their first N requests, to exercise retries.  Media are generated locally with espeak-ng + ffmpeg.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import soundfile as sf


@dataclass
class SiteState:
    """What the handler shares with the test: the request log and the paths set to fail."""

    requests: list[str] = field(default_factory=list)
    cookies: list[str] = field(default_factory=list)  # Cookie headers received
    fail_503: dict[str, int] = field(default_factory=dict)  # path -> failures still to serve
    drop: dict[str, int] = field(default_factory=dict)  # path -> connections still to drop
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, table: dict[str, int], path: str) -> bool:
        with self.lock:
            if table.get(path, 0) > 0:
                table[path] -= 1
                return True
            return False

    def media_requests(self, suffixes: tuple[str, ...] = (".m4a",)) -> list[str]:
        with self.lock:
            return [p for p in self.requests if p.endswith(suffixes)]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.cookies.clear()
            self.fail_503.clear()
            self.drop.clear()


class _Handler(SimpleHTTPRequestHandler):
    state: SiteState

    def __init__(self, *args: Any, state: SiteState, **kwargs: Any) -> None:
        self.state = state
        super().__init__(*args, **kwargs)

    def _intercept(self) -> bool:
        path = self.path.split("?", 1)[0]
        with self.state.lock:
            self.state.requests.append(path)
            if self.headers.get("Cookie"):
                self.state.cookies.append(self.headers["Cookie"])
        if self.state.take(self.state.drop, path):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return True
        if self.state.take(self.state.fail_503, path):
            self.send_error(503, "Service Unavailable (test)")
            return True
        return False

    def do_GET(self) -> None:
        if not self._intercept():
            super().do_GET()

    def do_HEAD(self) -> None:
        if not self._intercept():
            super().do_HEAD()

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


class Site:
    """A running server; ``url(name)`` is the address of a file in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = SiteState()
        self.durations: dict[str, float] = {}  # media name -> seconds of speech
        handler = functools.partial(_Handler, state=self.state, directory=str(root))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-site", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def media_requests(self, suffixes: tuple[str, ...] = (".m4a",)) -> list[str]:
        return self.state.media_requests(suffixes)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def closed_port() -> int:
    """A local port that nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def speak(text: str, dst: Path) -> float:
    """``text`` spoken by espeak-ng, encoded by ffmpeg to ``dst`` (format from its suffix).

    Returns the duration of the speech in seconds.
    """
    wav = dst.with_suffix(".wav")
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), str(dst)],
        check=True,
        capture_output=True,
    )
    duration = float(sf.info(str(wav)).duration)
    wav.unlink()
    return duration


def vtt(text: str, end_s: float) -> str:
    end = f"00:00:{end_s:06.3f}"
    return f"WEBVTT\n\n00:00:00.000 --> {end}\n{text}\n"


def video_tag(media: str, captions: str | None) -> str:
    track = f'<track kind="captions" srclang="en" label="English" src="{captions}">' if captions else ""
    return f'<video controls src="{media}">{track}</video>'


def page(title: str, *videos: str) -> str:
    body = "\n".join(videos)
    return f"<!doctype html>\n<html><head><title>{title}</title></head>\n<body>\n{body}\n</body></html>\n"
