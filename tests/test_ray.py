"""Labelling on a real Ray cluster: a head and one worker node started on 127.0.0.1 by the test.

The data flow with ``runner.kind=ray`` sends its label tasks to that cluster through prefect-ray's
RayTaskRunner; the labels must be the ones the local run (the session's reference run) wrote, the
tasks must have run on both Ray nodes, and Prefect must have seen them as the flow run's task runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import flow_args
from prefect_states import settled_task_states

pytest.importorskip("prefect_ray")
pytest.importorskip("ray")

RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict) -> None:
    proc = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=180, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"ray {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


def _alive_nodes(address: str) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(sum(n['Alive'] for n in "
        "ray.nodes()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return int(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ray_cluster(session_tmp: Path):
    """`ray start --head` plus `ray start --address` on 127.0.0.1, one CPU each; stopped after.

    Both nodes and this process (the flow's ray.init) use Ray's token authentication with the token
    conftest puts in the environment, as a real cluster shares it (RAY_AUTH_MODE, RAY_AUTH_TOKEN).
    """
    temp = Path(f"/tmp/llmasr-ray-{os.getpid()}")  # Ray's socket paths must stay short
    shutil.rmtree(temp, ignore_errors=True)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    common = ["--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    try:
        _ray(
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            *common,
            env=env,
        )
        _ray("start", f"--address={address}", "--node-ip-address=127.0.0.1", *common, env=env)
        deadline = time.monotonic() + 120
        while (n := _alive_nodes(address)) < 2:
            assert time.monotonic() < deadline, f"the Ray worker node never joined ({n} alive)"
            time.sleep(2)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(temp, ignore_errors=True)


def test_labelling_on_a_ray_cluster_matches_the_local_run(
    ray_cluster: str, reference_run, corpus: Path, session_tmp: Path
):
    from flows.data import data_flow
    from llmasr.layout import WorkLayout
    from llmasr.records import Label, read_records

    ref_work, ref_result = reference_run
    work = session_tmp / "ray-run"
    overrides = [
        "runner.kind=ray",
        f"runner.ray_address={ray_cluster}",
        "label.items_per_task=2",
        "runner.label_cpus=1",
    ]
    state = data_flow(**flow_args(corpus, work, overrides=overrides), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()

    assert result.labelled_items == ref_result.items - ref_result.failed_items
    assert result.label_workers == 2, "both Ray nodes should have labelled items"

    def by_segment(root: Path) -> dict[str, tuple[str, float]]:
        return {
            lab.segment_id: (lab.text, round(lab.avg_logprob, 3))
            for lab in read_records(WorkLayout(root).labels, Label)
        }

    ours, theirs = by_segment(work), by_segment(ref_work)
    assert ours and ours == theirs
    assert result.kept == ref_result.kept and result.shards == ref_result.shards

    ok_items = ref_result.items - ref_result.failed_items
    states = _task_states(state.state_details.flow_run_id, "label")
    assert len(states) == -(-ok_items // 2) and set(states) == {"Completed"}, states  # one task per 2 items


def _task_states(flow_run_id, prefix: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read_runs():
        with get_client(sync_client=True) as client:
            return client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return settled_task_states(read_runs, [prefix]).get(prefix, [])


def test_an_unreachable_ray_address_names_the_key(prefect_harness, corpus: Path, session_tmp: Path):
    from flows.data import data_flow

    dead = f"127.0.0.1:{_free_port()}"
    overrides = ["runner.kind=ray", f"runner.ray_address={dead}"]
    state = data_flow(**flow_args(corpus, session_tmp / "ray-dead", overrides=overrides), return_state=True)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match="runner.ray_address"):
        state.result()
