"""`llmasr ui` for real: a Prefect server started by the test, the project's deployments served.

The module starts ``llmasr ui --profile demo`` on a free loopback port (its own PREFECT_HOME, no
PREFECT_API_URL), then checks through the API: the four deployments and their parameter
descriptions; a data run triggered on the deployment completes and publishes its artifacts; a
second run shows every stage task Cached; headless Chromium renders the flow-run page (the
screenshot is kept as test-artifacts/ui-flow-run.png); SIGINT stops the command and its server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import N_ITEMS, REPO

STAGES = ("ingest-local", "write-items", "segment", "write-segments", "label", "write-labels", "filter", "shard")
DEPLOYMENTS = ("llmasr-data", "llmasr-train", "llmasr-evaluate", "llmasr-pipeline")
RUN_TIMEOUT_S = 240
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def server_pids(port: int) -> list[int]:
    """Pids of `prefect server start ... --port <port>` (the server `llmasr ui` started)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in argv and b"start" in argv and b"--port" in argv and str(port).encode() in argv:
            pids.append(int(d.name))
    return pids


class UI:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path, work: Path, corpus: Path):
        self.proc, self.port, self.log, self.work, self.corpus = proc, port, log, work, corpus
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.url}/api"
        self.server_pids: list[int] = []

    def log_tail(self, n: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        server_log = self.work / "logs" / "prefect-server.log"
        if server_log.exists():
            text += "\n--- prefect-server.log ---\n" + server_log.read_text(errors="replace")[-n:]
        return text[-2 * n :]

    def settings(self):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        return temporary_settings({PREFECT_API_URL: self.api_url})

    def client(self):
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)


def start_ui(corpus: Path, tmp: Path) -> UI:
    port = free_port()
    work = tmp / "work"
    home = tmp / "prefect-home"
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = [
        sys.executable, "-m", "llmasr.cli", "ui", "--profile", "demo", "--port", str(port), "--work-dir", str(work),
        "--set", f"demo.corpus_dir={corpus}", "--set", f"demo.n_items={N_ITEMS}",
    ]  # fmt: skip
    log = tmp / "llmasr-ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return UI(proc, port, log, work, corpus)


def wait_deployments(ui: UI, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    found: dict = {}
    last = ""
    while time.monotonic() < deadline:
        if ui.proc.poll() is not None:
            pytest.fail(f"`llmasr ui` exited with status {ui.proc.returncode}:\n{ui.log_tail()}")
        try:
            with ui.settings(), ui.client() as client:
                found = {d.name: d for d in client.read_deployments()}
        except Exception as exc:  # not up yet
            last = repr(exc)
        if set(DEPLOYMENTS) <= set(found):
            return found
        time.sleep(1)
    pytest.fail(f"deployments not registered in {timeout_s} s (have {sorted(found)}; {last}):\n{ui.log_tail()}")


@pytest.fixture(scope="module")
def ui(corpus: Path):
    tmp = Path(tempfile.mkdtemp(prefix="llmasr-ui-"))
    ui = start_ui(corpus, tmp)
    try:
        ui.deployments = wait_deployments(ui)
        ui.server_pids = server_pids(ui.port)
        yield ui
    finally:
        if ui.proc.poll() is None:
            try:
                os.killpg(ui.proc.pid, signal.SIGINT)
                ui.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(ui.proc.pid, signal.SIGKILL)
                ui.proc.wait()
        for pid in ui.server_pids or server_pids(ui.port):  # only the server this fixture's command started
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def run_data(ui: UI):
    """Trigger the data deployment with the test corpus; return the finished flow run."""
    from prefect.deployments import run_deployment

    params = {"sources": [str(ui.corpus / "videos")], "overrides": [f"demo.corpus_dir={ui.corpus}", f"demo.n_items={N_ITEMS}"]}
    with ui.settings():
        run = run_deployment(name="llmasr-data/llmasr-data", parameters=params, timeout=RUN_TIMEOUT_S, poll_interval=2, as_subflow=False)
    assert run.state is not None and run.state.is_final(), f"flow run {run.id} not finished in {RUN_TIMEOUT_S} s: {run.state}\n{ui.log_tail()}"
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}\n{ui.log_tail()}"
    return run


def task_states(ui: UI, flow_run_id) -> dict[str, list[str]]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with ui.settings(), ui.client() as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = {}
    for tr in runs:
        states.setdefault(tr.name.rsplit("-", 1)[0], []).append(tr.state.name)  # "label-a29" -> "label"
    return states


@pytest.fixture(scope="module")
def first_run(ui: UI):
    return run_data(ui)


# --- the tests, in order: the last one stops the server ------------------------------------------


def test_ui_serves_the_four_deployments_with_parameter_descriptions(ui: UI):
    assert set(DEPLOYMENTS) <= set(ui.deployments)
    data = ui.deployments["llmasr-data"]
    props = data.parameter_openapi_schema["properties"]
    for name in ("sources", "overrides", "profile", "work_dir"):
        assert props[name].get("description"), (name, props[name])
    # the UI's "Run" button runs what `llmasr ui` was started with: its profile, work dir and --set
    assert data.parameters == {"profile": "demo", "work_dir": str(ui.work), "overrides": [f"demo.corpus_dir={ui.corpus}", f"demo.n_items={N_ITEMS}"]}
    assert "llmasr" in data.tags and "profile:demo" in data.tags
    assert port_open(ui.port)


def test_ui_points_the_browser_at_this_server(ui: UI):
    """The UI's JavaScript calls the API at /ui-settings' api_url; on a port other than 4200 that
    must still be this server (the Prefect server derives it from PREFECT_SERVER_API_PORT, not --port)."""
    import urllib.request

    with urllib.request.urlopen(f"{ui.url}/ui-settings", timeout=10) as resp:
        settings = json.loads(resp.read())
    assert settings["api_url"] == ui.api_url, (
        f"the UI would call {settings['api_url']}, not {ui.api_url}: llmasr.server.start_server must pass the port "
        "to the server's settings (PREFECT_SERVER_API_HOST/PREFECT_SERVER_API_PORT or PREFECT_UI_API_URL)"
    )


def test_data_deployment_run_completes_and_publishes_artifacts(ui: UI, first_run):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.ingest import AUDIO_EXTENSIONS

    with ui.settings(), ui.client() as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[first_run.id])))
    by_key = {a.key: a for a in arts if a.key}
    assert {"data-counts", "data-filter-funnel", "data-samples", "data-report", "label-progress"} <= set(by_key), sorted(by_key)
    counts = by_key["data-counts"].data
    rows = {r["stage"]: r for r in (json.loads(counts) if isinstance(counts, str) else counts)}
    assert list(rows) == ["ingest", "segment", "label", "filter", "shard"]
    n_files = sum(1 for p in (ui.corpus / "videos").rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    assert rows["ingest"]["count"] == n_files and "2 failed" in rows["ingest"]["detail"]
    assert rows["segment"]["count"] > 0 and 0 < rows["filter"]["count"] <= rows["segment"]["count"]
    assert rows["shard"]["count"] > 0
    funnel = by_key["data-filter-funnel"].data
    funnel = json.loads(funnel) if isinstance(funnel, str) else funnel
    assert funnel[0]["reason"] == "total segments" and funnel[0]["segments"] == rows["segment"]["count"]
    assert "# Data run" in by_key["data-report"].data
    assert (ui.work / "shards").is_dir()


def test_second_deployment_run_shows_cached_stage_tasks(ui: UI, first_run):
    second = run_data(ui)
    assert second.id != first_run.id
    states = task_states(ui, second.id)
    for stage in STAGES:
        assert states.get(stage) and set(states[stage]) == {"Cached"}, (stage, states.get(stage), states)


def chromium(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(binary).exists():
        pytest.fail("chromium is not installed: run `bash scripts/setup.sh` (it installs Debian's chromium package)")
    profile = tempfile.mkdtemp(prefix="llmasr-chromium-")
    try:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout_s)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_chromium_renders_the_flow_run_page(ui: UI, first_run, tmp_path: Path):
    import re

    from PIL import Image

    url = f"{ui.url}/runs/flow-run/{first_run.id}"
    shot = tmp_path / "ui-flow-run.png"
    res = chromium(f"--screenshot={shot}", "--window-size=1400,900", "--virtual-time-budget=15000", "--run-all-compositor-stages-before-draw", url)
    assert shot.is_file(), f"no screenshot (status {res.returncode}):\n{res.stderr[-3000:]}"
    keep = REPO / "test-artifacts" / "ui-flow-run.png"  # kept for a look, also when a check below fails
    keep.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, keep)
    # the rendered DOM names the run: the SPA loaded and read the run from the API
    dom = chromium("--virtual-time-budget=15000", "--dump-dom", url).stdout
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    assert first_run.name in dom, f"flow run name {first_run.name!r} not in the rendered page: {text[:600]!r}"
    with Image.open(shot) as img:
        assert img.size == (1400, 900)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50, f"{len(colours)} colours: a blank page?"
    assert shot.stat().st_size > 20_000, shot.stat().st_size


def test_sigint_stops_ui_and_its_server(ui: UI):
    assert ui.proc.poll() is None, ui.log_tail()
    assert ui.server_pids, "the Prefect server process was not found"
    os.killpg(ui.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    try:
        rc = ui.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`llmasr ui` still running 60 s after SIGINT:\n{ui.log_tail()}")
    assert rc == 0, f"exit status {rc}:\n{ui.log_tail()}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (port_open(ui.port) or server_pids(ui.port)):
        time.sleep(0.5)
    assert not port_open(ui.port), "the server port still accepts connections"
    assert server_pids(ui.port) == [], "the Prefect server process is still running"


# --- cheap: the warning for a non-loopback bind ---------------------------------------------------


def test_is_loopback():
    from llmasr.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.10") and not is_loopback("example.com")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_ui_warns_when_bound_beyond_loopback(host: str, warned: bool, tmp_path: Path, monkeypatch, capsys):
    from llmasr import cli, server

    def no_server(*a, **kw):
        raise _Stop

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(server, "start_server", no_server)
    with pytest.raises(_Stop):
        cli.main(["ui", "--profile", "demo", "--host", host, "--port", "1", "--work-dir", str(tmp_path)])
    err = " ".join(capsys.readouterr().err.split())
    assert ("reachable from other machines" in err) is warned, err
    if warned:
        assert "no authentication" in err
