"""`llmasr ui` for real: a Prefect server started by the test, the project's deployments served.

The module starts ``llmasr ui --profile demo`` on a free loopback port (its own PREFECT_HOME, no
PREFECT_API_URL), then checks through the API: the four deployments and their parameter
descriptions; a data run triggered on the deployment completes and publishes its artifacts; a
second run shows every stage task Cached; below schedule.train_after_new_hours a data run only
says training waits, past it the run triggers the train deployment (with the data run's config
and work dir; tiny steps), which trains and records what it saw, so the next data run triggers
nothing; a train run already waiting for the work dir is not triggered twice; headless Chromium
renders the flow-run page (the screenshot is kept as test-artifacts/ui-flow-run.png); SIGINT stops
the command and its server.
"""

from __future__ import annotations

import json
import os
import re
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
from prefect_states import settled_task_states

STAGES = (
    "ingest-local",
    "write-items",
    "segment",
    "write-segments",
    "label",
    "write-labels",
    "filter",
    "shard",
)
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
    # run logs at INFO reach the API (the tests read them); the runner picks up new runs within 2 s
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_RUNNER_POLL_FREQUENCY="2",
    )
    cmd = [
        sys.executable, "-m", "cli", "ui",
        "--profile", "demo", "--port", str(port), "--work-dir", str(work),
        "--set", f"demo.corpus_dir={corpus}", "--set", f"demo.n_items={N_ITEMS}",
    ]  # fmt: skip
    log = tmp / "llmasr-ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
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
    pytest.fail(
        f"deployments not registered in {timeout_s} s (have {sorted(found)}; {last}):\n{ui.log_tail()}"
    )


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


def run_data(ui: UI, work_dir: Path | None = None, overrides: list[str] = ()):
    """Trigger the data deployment with the test corpus (on the deployment's work dir unless
    ``work_dir``, with extra ``overrides``); return the finished flow run."""
    from prefect.deployments import run_deployment

    params = {
        "sources": [str(ui.corpus / "videos")],
        "overrides": [f"demo.corpus_dir={ui.corpus}", f"demo.n_items={N_ITEMS}", *overrides],
    }
    if work_dir is not None:
        params["work_dir"] = str(work_dir)
    with ui.settings():
        run = run_deployment(
            name="llmasr-data/llmasr-data",
            parameters=params,
            timeout=RUN_TIMEOUT_S,
            poll_interval=2,
            as_subflow=False,
        )
    assert run.state is not None and run.state.is_final(), (
        f"flow run {run.id} not finished in {RUN_TIMEOUT_S} s: {run.state}\n{ui.log_tail()}"
    )
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}\n{ui.log_tail()}"
    return run


def task_states(ui: UI, flow_run_id, expect: tuple[str, ...] = ()) -> dict[str, list[str]]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read_runs():
        with ui.settings(), ui.client() as client:
            return client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return settled_task_states(read_runs, expect)


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
    assert data.parameters == {
        "profile": "demo",
        "work_dir": str(ui.work),
        "overrides": [f"demo.corpus_dir={ui.corpus}", f"demo.n_items={N_ITEMS}"],
    }
    assert "llmasr" in data.tags and "profile:demo" in data.tags
    assert port_open(ui.port)


def test_ui_points_the_browser_at_this_server(ui: UI):
    """The UI's JavaScript calls the API at /ui-settings' api_url; on a port other than 4200 that
    must still be this server (the Prefect server derives it from PREFECT_SERVER_API_PORT, not --port)."""
    import urllib.request

    with urllib.request.urlopen(f"{ui.url}/ui-settings", timeout=10) as resp:
        settings = json.loads(resp.read())
    assert settings["api_url"] == ui.api_url, (
        f"the UI would call {settings['api_url']}, not {ui.api_url}: llmasr.server.start_server must pass "
        "the port to the server's settings (PREFECT_SERVER_API_HOST/PREFECT_SERVER_API_PORT or "
        "PREFECT_UI_API_URL)"
    )


def test_data_deployment_run_completes_and_publishes_artifacts(ui: UI, first_run):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.ingest import AUDIO_EXTENSIONS

    with ui.settings(), ui.client() as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[first_run.id]))
        )
    by_key = {a.key: a for a in arts if a.key}
    assert {"data-counts", "data-filter-funnel", "data-samples", "data-report", "label-progress"} <= set(
        by_key
    ), sorted(by_key)
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
    states = task_states(ui, second.id, tuple(STAGES))
    for stage in STAGES:
        assert states.get(stage) and set(states[stage]) == {"Cached"}, (stage, states.get(stage), states)


# --- training follows the data run past schedule.train_after_new_hours ---------------------------

TRAIN_RUN_TIMEOUT_S = 420


def tiny_training(models: Path) -> list[str]:
    """Overrides that keep the triggered training tiny (as tests/test_train_flow.py): the demo's
    tiny models built under ``models`` (by the train flow itself), a few steps per stage."""
    return [
        f"train.encoder={models / 'whisper'}",
        f"train.llm={models / 'llm'}",
        f"train.tokenizer={models / 'tokenizer'}",
        "train.stage1.max_steps=2",
        "train.stage2.max_steps=2",
        "train.stage3.max_steps=2",
    ]


def run_logs(ui: UI, flow_run_id, expect: str = "data run done", timeout_s: float = 30) -> str:
    """The flow run's log messages from the API (waits a little for the last batch to arrive)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout_s
    while True:
        with ui.settings(), ui.client() as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        text = "\n".join(log.message for log in logs)
        if expect in text or time.monotonic() > deadline:
            return text
        time.sleep(1)


def train_runs(ui: UI, work_dir: Path) -> list:
    """Flow runs of the llmasr-train deployment whose work_dir parameter is ``work_dir``."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    deployment_id = ui.deployments["llmasr-train"].id
    with ui.settings(), ui.client() as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
        )
    return [r for r in runs if r.parameters.get("work_dir") == str(work_dir)]


def wait_flow_run(ui: UI, flow_run_id, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        with ui.settings(), ui.client() as client:
            run = client.read_flow_run(flow_run_id)
        if (run.state and run.state.is_final()) or time.monotonic() > deadline:
            return run
        time.sleep(2)


def test_below_the_threshold_training_waits(ui: UI, first_run):
    """The module's work dir holds minutes of kept audio, never trained: a 1000 h threshold is not reached."""
    run = run_data(ui, overrides=["schedule.train_after_new_hours=1000"])  # stages Cached: nothing new to do
    logs = run_logs(ui, run.id, expect="training waits")
    assert re.search(
        r"(\d+\.\d+) h of new kept audio since the last training \(< 1000\.00 h\): training waits", logs
    ), logs
    assert "triggered" not in logs, logs
    assert train_runs(ui, ui.work) == []


def test_a_waiting_train_run_is_not_triggered_twice(ui: UI, first_run):
    """A train run for the work dir already scheduled (e.g. waiting for GPUs): the data run past the
    threshold says so and triggers no second one."""
    from datetime import UTC, datetime, timedelta

    from prefect.states import Scheduled

    later = datetime.now(UTC) + timedelta(days=1)  # far enough that the runner leaves it alone
    with ui.settings(), ui.client() as client:
        waiting = client.create_flow_run_from_deployment(
            ui.deployments["llmasr-train"].id,
            parameters={"work_dir": str(ui.work)},
            state=Scheduled(scheduled_time=later),
        )
    try:
        run = run_data(ui, overrides=["schedule.train_after_new_hours=0.0001"])
        logs = run_logs(ui, run.id, expect="not triggering another")
        assert (
            f"already Scheduled for this work dir (flow run {waiting.id}): not triggering another" in logs
        ), logs
        assert [r.id for r in train_runs(ui, ui.work)] == [waiting.id]
    finally:
        with ui.settings(), ui.client() as client:
            client.delete_flow_run(waiting.id)


def test_new_hours_trigger_the_train_deployment_once(ui: UI, first_run):
    """A fresh work dir past a tiny threshold: the deployed data run triggers llmasr-train on that
    work dir with its own config; the training completes and records the hours it saw, so a second
    data run (nothing new) triggers no other training."""
    from tasks import checkpoints

    work = ui.work.parent / "work-train-trigger"
    overrides = ["schedule.train_after_new_hours=0.0001", *tiny_training(ui.work.parent / "demo-models")]
    data = run_data(ui, work_dir=work, overrides=overrides)
    logs = run_logs(ui, data.id, expect="triggered")
    assert "triggered llmasr-train/llmasr-train (flow run" in logs, logs

    found = train_runs(ui, work)
    assert len(found) == 1, (found, logs)
    train = found[0]
    assert str(train.id) in logs
    assert train.parameters["profile"] == "demo"
    # the data run's config, tiny steps included
    assert train.parameters["overrides"] == data.parameters["overrides"]
    assert train.created >= data.created

    train = wait_flow_run(ui, train.id, TRAIN_RUN_TIMEOUT_S)
    assert train.state.is_final(), (
        f"train run {train.id} not finished in {TRAIN_RUN_TIMEOUT_S} s: {train.state}\n{ui.log_tail()}"
    )
    assert train.state.is_completed(), (
        f"{train.state.name}: {train.state.message}\n"
        f"{run_logs(ui, train.id, expect='')[-4000:]}\n"
        f"{ui.log_tail()}"
    )
    for stage in (1, 2, 3):
        info = checkpoints.read_stage(checkpoints.stage_dir(work, stage))
        assert info is not None and info["steps"] == 2, (stage, info)
    index = json.loads((work / "shards" / "index.json").read_text())
    assert checkpoints.train_audio_s(index) > 0
    assert json.loads(checkpoints.trained_on_path(work).read_text())[
        "train_audio_s"
    ] == checkpoints.train_audio_s(index)

    again = run_data(ui, work_dir=work, overrides=overrides)
    logs = run_logs(ui, again.id, expect="training waits")
    assert "0.00 h of new kept audio since the last training" in logs and "training waits" in logs, logs
    assert "triggered" not in logs, logs
    assert [r.id for r in train_runs(ui, work)] == [train.id]


def chromium(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(binary).exists():
        pytest.fail(
            "chromium is not installed: run `bash scripts/setup.sh` (it installs Debian's chromium package)"
        )
    profile = tempfile.mkdtemp(prefix="llmasr-chromium-")
    try:
        return subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_chromium_renders_the_flow_run_page(ui: UI, first_run, tmp_path: Path):
    from PIL import Image

    url = f"{ui.url}/runs/flow-run/{first_run.id}"
    shot = tmp_path / "ui-flow-run.png"
    res = chromium(
        f"--screenshot={shot}",
        "--window-size=1400,900",
        "--virtual-time-budget=15000",
        "--run-all-compositor-stages-before-draw",
        url,
    )
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

    assert (
        is_loopback("127.0.0.1")
        and is_loopback("localhost")
        and is_loopback("::1")
        and is_loopback("127.0.0.2")
    )
    assert (
        not is_loopback("0.0.0.0")
        and not is_loopback("::")
        and not is_loopback("192.168.1.10")
        and not is_loopback("example.com")
    )


class _Stop(Exception):
    pass


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_ui_warns_when_bound_beyond_loopback(host: str, warned: bool, tmp_path: Path, monkeypatch, capsys):
    import cli
    from llmasr import server

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
