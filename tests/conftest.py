"""Test session set-up: a private PREFECT_HOME, analytics off, shared fixtures.

Prefect reads its settings at import time, so the environment is set here, before any test module
imports prefect.  Each session gets its own PREFECT_HOME (results and the harness database do not
leak between sessions).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="llmasr-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# as the CLI does (cli.common.prefect_defaults), but before any test imports prefect, which reads it
# once: a temporary server a flow starts gets 2 min on a loaded 2-core machine, not Prefect's 20 s
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "llmasr-torch-extensions"))
# Bundled pretrained models (llmasr.bundled): the machine's model cache, which `make setup` warms
# (python -m llmasr.bundled prepare, ~1 min on 2 cores, 1.3 GB).  Its folders are built atomically
# from checksummed packages and named by the packages' versions, so every session can share them
# instead of converting again; tests of the cache itself use folders of their own.
os.environ.setdefault("LLMASR_MODEL_CACHE", str(Path.home() / ".cache" / "llmasr" / "models"))
# Ray reads its auth mode once per process: the test cluster (tests/test_ray.py) and the flows that
# connect to it share this token, whatever ~/.ray/auth_token a local ray.init() left behind.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import pytest  # noqa: E402

from tasks.demo_corpus import generate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers: tiny_models, webfixtures


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_harness():
    """A real (temporary) Prefect server for the session's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


# --- the demo corpus and one data run, shared by the flow tests -----------------------------------

N_ITEMS = 16  # enough for every special item of the demo plan (wrong captions, VAD, specials...)


def flow_args(
    corpus: Path, work_dir: Path, extra_sources: list[Path] = (), overrides: list[str] = ()
) -> dict:
    return dict(
        profile="demo",
        work_dir=str(work_dir),
        sources=[str(corpus / "videos"), *map(str, extra_sources)],
        overrides=[f"demo.corpus_dir={corpus}", f"demo.n_items={N_ITEMS}", *overrides],
    )


@pytest.fixture(scope="session")
def corpus(session_tmp: Path) -> Path:
    return generate(session_tmp / "corpus", n_items=N_ITEMS, seed=0)


@pytest.fixture(scope="session")
def reference_run(prefect_harness, corpus: Path, session_tmp: Path):
    from flows.data import data_flow

    work = session_tmp / "ref-run"
    state = data_flow(**flow_args(corpus, work), return_state=True)
    assert state.is_completed(), state.message
    return work, state.result()
