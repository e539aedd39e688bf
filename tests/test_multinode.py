"""Training across nodes: DeepSpeed's launcher with a hostfile, reaching the nodes with pdsh over ssh.

Two "nodes" on this machine: a real sshd on 127.0.0.1 (its own host key, an authorized key made
here, no PAM; started by the test's user, root or not) and a hostfile naming it twice (``localhost``
and ``127.0.0.1``, one slot each), so DeepSpeed's runner takes its multi-node path: an ssh check,
the master address from the first host's ``hostname -I``, ``pdsh -w localhost,127.0.0.1`` running
``deepspeed.launcher.launch --node_rank=%n`` on each.  The one fake is the ssh client
configuration: ``ssh`` on PATH is a wrapper that adds ``-F`` with this test's port and key (a
cluster has them in ~/.ssh/config).

Checked: the stage trains with world size 2 on 2 nodes, and its losses equal those of the same
stage as 2 processes on one node (torchrun); the ranks' environment reaches the other node through
the DeepSpeed env file; killing the launcher as a timeout does leaves no rank on any node; a
hostfile that cannot launch fails before any compute, naming the key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from llmasr.config import TrainConfig
from tasks.checkpoints import read_stage, stage_dir
from tasks.launch import (
    cpu_threads,
    hostfile_problem,
    kill_group,
    launch_command,
    launch_env,
    launch_stage,
    node_env,
    read_hostfile,
    stage_env,
)
from tasks.train import _free_port
from test_train import records, shard_index, tiny, train_config, trainers_of, write_run  # noqa: F401 - fixtures

SSHD = Path("/usr/sbin/sshd")
REPO = Path(__file__).resolve().parents[1]


def _need(what: str) -> None:
    """Missing system parts skip the test on a developer machine; CI installs them (scripts/setup.sh)."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must install it: scripts/setup.sh)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def ssh_nodes(tmp_path_factory):
    """A running sshd on 127.0.0.1 and a folder holding an ``ssh`` that reaches it; yields that folder."""
    if not SSHD.is_file() or shutil.which("pdsh") is None or shutil.which("ssh") is None:
        _need("openssh-server, openssh-client and pdsh are needed for the multi-node test")
    d = tmp_path_factory.mktemp("ssh")
    for name in ("client_key", "host_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
    )
    (d / "ssh_config").write_text(
        f"Host *\n  Port {port}\n  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n  BatchMode yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    bin_dir = d / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {d / "ssh_config"} "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    # root's sshd needs its privilege-separation folder; a user's sshd logs in only that user
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    sshd = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "sshd.log", "w")
    )
    try:
        for _ in range(100):
            ok = (
                subprocess.run([str(bin_dir / "ssh"), "127.0.0.1", "true"], capture_output=True).returncode
                == 0
            )
            if ok or sshd.poll() is not None:
                break
            time.sleep(0.1)
        assert ok, f"sshd did not accept the test key:\n{(d / 'sshd.log').read_text()}"
        yield bin_dir
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


def _hostfile(path: Path) -> Path:
    path.write_text("# two nodes on one machine\nlocalhost slots=1\n127.0.0.1 slots=1\n")
    return path


def _stepping(metrics: Path) -> bool:
    """A training step is in the metrics log (whole lines only: the last may be half written)."""
    text = metrics.read_text() if metrics.is_file() else ""
    return any("loss" in json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines())


def _losses(work: Path, stage: int) -> list[float]:
    return [r["loss"] for r in records(work) if r["stage"] == stage and "loss" in r]


def test_stage_trains_across_two_nodes(ssh_nodes, tiny, shard_index, tmp_path, monkeypatch):  # noqa: F811 - fixtures from test_train
    monkeypatch.setenv("PATH", f"{ssh_nodes}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LLMASR_NODE_CHECK", "forwarded")  # must reach the ranks of the other node
    hostfile = _hostfile(tmp_path / "hostfile")
    multi = train_config(
        tiny, launcher="deepspeed", hostfile=str(hostfile), master_port=_free_port(), timeout_s=600
    )
    single = train_config(tiny, launcher="torchrun", nproc_per_node=2, timeout_s=600)
    assert hostfile_problem(multi) is None

    runs = {}
    for name, train in (("nodes", multi), ("local", single)):
        work = tmp_path / name
        run_json = write_run(work, 2, train, shard_index, max_steps=4)
        launch_stage(run_json, train, work / "logs" / "stage2.log", gpu=False)
        runs[name] = work

    info = read_stage(stage_dir(runs["nodes"], 2))
    assert info["world_size"] == 2 and info["nodes"] == 2 and info["steps"] == 4
    assert read_stage(stage_dir(runs["local"], 2))["nodes"] == 1
    # the same ranks, data and seed: the same training, whichever launcher placed the ranks
    assert _losses(runs["nodes"], 2) == pytest.approx(_losses(runs["local"], 2), rel=1e-5)
    assert len(_losses(runs["nodes"], 2)) == 4

    log = (runs["nodes"] / "logs" / "stage2.log").read_text()
    assert "pdsh" in log and "localhost:" in log and "127.0.0.1:" in log  # ranks' output, prefixed by node
    env_file = runs["nodes"] / "logs" / "stage2.nodes.env"
    forwarded = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert forwarded["LLMASR_NODE_CHECK"] == "forwarded" and forwarded["DS_ACCELERATOR"] == "cpu"
    assert forwarded["OMP_NUM_THREADS"] == "1" and "PATH" not in forwarded
    # DeepSpeed puts the env file's variables in front of the command each node runs
    assert "export LLMASR_NODE_CHECK=forwarded;" in log


def test_a_killed_launcher_leaves_no_rank_on_any_node(ssh_nodes, tiny, shard_index, tmp_path, monkeypatch):  # noqa: F811 - fixtures from test_train
    """What the task does on train.timeout_s (``kill_group``: SIGTERM to the launcher's group, then
    SIGKILL) stops the ranks on every node: DeepSpeed's runner pkills those it started over ssh,
    which are sshd's children, not the launcher's."""
    monkeypatch.setenv("PATH", f"{ssh_nodes}{os.pathsep}{os.environ['PATH']}")
    train = train_config(
        tiny, launcher="deepspeed", hostfile=str(_hostfile(tmp_path / "hostfile")), master_port=_free_port()
    )
    work = tmp_path / "work"
    run_json = write_run(work, 2, train, shard_index, max_steps=100000)
    log = work / "logs" / "stage2.log"
    proc = subprocess.Popen(
        launch_command(run_json, train), cwd=REPO, env=stage_env(train, log, gpu=False),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    metrics = work / "logs" / "train.jsonl"
    try:
        deadline = time.time() + 600  # a guard against a hang, not a speed requirement
        while not _stepping(metrics):
            assert proc.poll() is None, f"the launcher exited ({proc.returncode}) before training"
            assert time.time() < deadline, "no training step within 10 minutes"
            time.sleep(0.5)
        # the launcher, pdsh, ssh, the launch agents, the ranks and their loader workers
        assert trainers_of(run_json)
    finally:
        kill_group(proc)
    deadline = time.time() + 60
    while trainers_of(run_json):
        assert time.time() < deadline, f"ranks outlived the killed launcher: {trainers_of(run_json)}"
        time.sleep(0.2)
    assert read_stage(stage_dir(work, 2)) is None


def test_hostfile_errors_name_the_key(tiny, tmp_path, monkeypatch):  # noqa: F811 - fixtures from test_train
    good = _hostfile(tmp_path / "hostfile")
    assert read_hostfile(good) == {"localhost": 1, "127.0.0.1": 1}
    assert "train.launcher" in hostfile_problem(train_config(tiny, launcher="torchrun", hostfile=str(good)))
    assert "no such file" in hostfile_problem(
        train_config(tiny, launcher="deepspeed", hostfile=str(tmp_path / "nope"))
    )
    bad = tmp_path / "bad"
    bad.write_text("node-1 slots=8\nnode-2 gpus=8\n")
    assert hostfile_problem(train_config(tiny, launcher="deepspeed", hostfile=str(bad))) == (
        f"train.hostfile: {bad}: line 2: 'node-2 gpus=8' is not 'HOST slots=N' (N >= 1)"
    )
    (tmp_path / "empty").write_text("# nothing\n")
    assert "lists no hosts" in hostfile_problem(
        train_config(tiny, launcher="deepspeed", hostfile=str(tmp_path / "empty"))
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no pdsh, mpirun or srun here
    problem = hostfile_problem(
        train_config(tiny, launcher="deepspeed", hostfile=str(good), node_launcher="slurm")
    )
    assert problem.startswith("train.node_launcher: slurm needs `srun`")


def test_launch_command_with_a_hostfile(tmp_path):
    hostfile = _hostfile(tmp_path / "hostfile")
    t = TrainConfig(launcher="deepspeed", hostfile=str(hostfile), master_addr="10.0.0.1", master_port=29600)
    assert launch_command("RUN.json", t, python="py") == [
        "py", "-m", "deepspeed.launcher.runner",
        "--master_port", "29600", "--hostfile", str(hostfile.resolve()), "--launcher", "pdsh",
        "--master_addr", "10.0.0.1", "--module", "tasks.train", "RUN.json",
    ]  # fmt: skip
    env = {
        "HF_HUB_OFFLINE": "1",
        "NCCL_IB_DISABLE": "1",
        "PATH": "/bin",
        "SECRET_TOKEN": "x",
        "LLMASR_BAD": 'a"b',
    }
    assert node_env(env) == {"HF_HUB_OFFLINE": "1", "NCCL_IB_DISABLE": "1"}


def test_cpu_training_threads_share_out_the_nodes_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert cpu_threads(TrainConfig(nproc_per_node=1)) == 8  # one process: every core
    assert cpu_threads(TrainConfig(nproc_per_node=3)) == 2  # each process its share, rounded down
    assert cpu_threads(TrainConfig(nproc_per_node=16)) == 1  # never 0
    assert cpu_threads({"nproc_per_node": 2}) == 4  # the zipformer section's dict
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(TrainConfig(nproc_per_node=1)) == 3  # the caller's choice
    assert cpu_threads(TrainConfig(nproc_per_node=1, cpu_threads=1)) == 1  # the config's, above all
    assert launch_env(TrainConfig(cpu_threads=5), gpu=False)["OMP_NUM_THREADS"] == "5"
    assert "OMP_NUM_THREADS" not in launch_env(TrainConfig(cpu_threads=5), gpu=True)


def test_a_killed_builds_lock_is_cleared_a_live_ones_kept(tmp_path, monkeypatch):
    from tasks.launch import clear_stale_build_locks, extensions_dir

    stale, fresh = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "other_op" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir()
        lock.touch()
    os.utime(stale, (1.0, 1.0))  # left by a build killed long ago
    assert clear_stale_build_locks(tmp_path) == [stale]
    assert not stale.exists() and fresh.exists()  # a build under way keeps its lock
    assert clear_stale_build_locks(tmp_path / "missing") == []
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_dir() == str(tmp_path)
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    here = extensions_dir()  # one folder per Python environment and torch version
    assert here == extensions_dir() and "llmasr-torch-extensions" in here and "torch" in Path(here).name


def test_the_setup_builds_deepspeeds_cpu_op_where_training_loads_it(monkeypatch):
    """`python -m tasks.launch build-ops` (scripts/setup.sh) compiles the op a CPU training process
    loads at start into the folder the launcher gives training (extensions_dir), not at first training."""
    import subprocess
    import sys

    from tasks.launch import REPO, extensions_dir

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    out = subprocess.run([sys.executable, "-m", "tasks.launch", "build-ops"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    folder = Path(out.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    assert folder.parent == Path(extensions_dir()) and list(folder.glob("*.so"))
    bad = subprocess.run([sys.executable, "-m", "tasks.launch"], cwd=REPO, env=env, capture_output=True,
                         text=True)  # fmt: skip
    assert bad.returncode != 0 and "build-ops" in bad.stderr
