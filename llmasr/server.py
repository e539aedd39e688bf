"""A local Prefect server for ``llmasr ui``: started as a subprocess, health-checked, stopped cleanly.

    llmasr ui                       # http://127.0.0.1:4200, embedded SQLite under $PREFECT_HOME
    llmasr ui --host 0.0.0.0        # reachable from other machines (warns: no authentication)
    PREFECT_API_URL=https://prefect.example/api llmasr ui   # use that server, start none

The server listens on loopback unless asked otherwise; analytics are off.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class ServerError(RuntimeError):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prefect_binary() -> str:
    return shutil.which("prefect") or str(Path(sys.executable).with_name("prefect"))


def port_in_use(host: str, port: int) -> bool:
    probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((probe, port)) == 0


def start_server(host: str = "127.0.0.1", port: int = 4200, log_path: Path | None = None) -> subprocess.Popen:
    if port_in_use(host, port):
        raise ServerError(
            f"port {port} on {host} is already in use (another Prefect server?): pick another with --port, "
            "or point PREFECT_API_URL at that server"
        )
    # the UI learns its API address from these settings, not from --port
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
    }
    env.pop("PREFECT_API_URL", None)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(
        [prefect_binary(), "server", "start", "--host", host, "--port", str(port)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_healthy(api_url: str, proc: subprocess.Popen | None = None, timeout_s: float = 120.0) -> None:
    """Poll ``<api_url>/health`` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(
                f"the Prefect server exited with status {proc.returncode} (port in use? see its log)"
            )
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise ServerError(f"the Prefect server at {api_url} did not become healthy in {timeout_s:.0f} s ({last})")


def stop_server(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
