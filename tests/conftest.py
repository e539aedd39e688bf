"""Test session set-up: a private PREFECT_HOME, analytics off, shared fixtures.

Prefect reads its settings at import time, so the environment is set here, before any test module
imports prefect.  Each session gets its own PREFECT_HOME (results and the harness database do not
leak between sessions).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="llmasr-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "llmasr-torch-extensions"))

import pytest  # noqa: E402

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
