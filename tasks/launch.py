"""The training launcher: its command line (``launch_command``), its environment (``launch_env``,
``node_env_file`` for the other nodes) and its process (``run_process``; ``launch_stage`` does all
three for one stage's RUN.json).  The Zipformer-Transducer's training goes through the same
functions (``tasks.zipformer_train.launch_zipformer``: torchrun, ``module="tasks.zipformer_train"``).

    cmd = launch_command("runs/demo/logs/stage2.run.json", cfg.train)   # torchrun or deepspeed
    launch_stage("runs/demo/logs/stage2.run.json", cfg.train, Path("runs/demo/logs/stage2.log"))

One node: ``torchrun --standalone`` or DeepSpeed's launcher with ``--num_gpus``.  Several nodes
(``train.hostfile``): DeepSpeed's launcher reaches the other nodes with ``train.node_launcher``
(pdsh over ssh by default) and starts ``tasks.train`` there in the same folder with the same
Python; the environment the ranks need (OpenMP threads, DeepSpeed's accelerator, Hugging Face and
NCCL settings, ``LLMASR_*``) travels in a DeepSpeed env file (``DS_ENV_FILE``), because a remote
shell starts with a bare environment.

The launcher runs in its own process group; on timeout (a hung stage, a lost rank) or when the
caller is interrupted, the whole group gets SIGTERM, then SIGKILL, so no local rank outlives the
task (DeepSpeed's multi-node runner answers SIGTERM by pkill-ing its ranks on the other nodes).
Failures raise ``TrainingProcessError`` with the log's tail in the message.

    python -m tasks.launch build-ops     # the set-up: compile DeepSpeed's CPU op once, before any training
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TAIL_LINES = 60

log = logging.getLogger(__name__)


# Variables a rank on another node needs from the launching process (a prefix match), written to
# the DeepSpeed env file.  DeepSpeed itself forwards PYTHON* (PYTHONPATH with the launch folder).
NODE_ENV_PREFIXES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "DS_ACCELERATOR",
    "TORCH_EXTENSIONS_DIR",
    "TORCH_",
    "PYTORCH_",
    "HF_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "LLMASR_",
    "NCCL_",
    "GLOO_",
    "CUDA_DEVICE_ORDER",
)
# what each train.node_launcher needs on the launching node
NODE_LAUNCHER_PROGRAMS = {"pdsh": "pdsh", "openmpi": "mpirun", "slurm": "srun"}


class TrainingProcessError(RuntimeError):
    """The training process failed or timed out; the message ends with its log's tail."""


def _train_dict(train: Any) -> dict[str, Any]:
    return train.model_dump(mode="json") if hasattr(train, "model_dump") else dict(train)


def launch_command(
    run_json: str | Path, train: Any, python: str | None = None, module: str = "tasks.train"
) -> list[str]:
    """The command line that runs ``module`` (``tasks.train``, or ``tasks.zipformer_train``) on
    ``run_json`` with ``train.launcher`` (``train``: a TrainConfig or its dict)."""
    t = _train_dict(train)
    n = int(t.get("nproc_per_node", 1))
    py = python or sys.executable
    if t.get("launcher", "deepspeed") == "torchrun":
        return [
            py,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(n),
            "-m",
            module,
            str(run_json),
        ]
    cmd = [py, "-m", "deepspeed.launcher.runner", "--master_port", str(t.get("master_port", 29500))]
    if t.get("hostfile"):
        cmd += [
            "--hostfile",
            str(resolve_repo_path(t["hostfile"])),
            "--launcher",
            str(t.get("node_launcher", "pdsh")),
        ]
        if t.get("master_addr"):
            cmd += ["--master_addr", str(t["master_addr"])]
    else:
        cmd += ["--num_gpus", str(n)]
    return cmd + ["--module", module, str(run_json)]


def launch_env(train: Any = None, gpu: bool | None = None) -> dict[str, str]:
    """Environment additions for ``launch_command``: a cache for DeepSpeed's compiled ops and, on
    CPU, DeepSpeed's CPU accelerator and ``cpu_threads(train)`` OpenMP threads per process."""
    env = {"TORCH_EXTENSIONS_DIR": extensions_dir()}
    clear_stale_build_locks(Path(env["TORCH_EXTENSIONS_DIR"]))
    if gpu is None:
        gpu = shutil.which("nvidia-smi") is not None
    if not gpu:
        env["OMP_NUM_THREADS"] = str(cpu_threads(train))
        env["DS_ACCELERATOR"] = "cpu"
    return env


STALE_BUILD_LOCK_S = 600.0  # DeepSpeed's one C++ op builds in ~30 s; a lock this old has no builder


def extensions_dir() -> str:
    """Where DeepSpeed's compiled ops live: TORCH_EXTENSIONS_DIR where set, else one folder per
    Python environment path and torch version (two environments sharing one folder rebuild the op
    in turn: its build file names the include paths as the environment's path spells them, so a
    symlinked environment is another folder)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.environ["TORCH_EXTENSIONS_DIR"]
    import hashlib

    import torch

    tag = hashlib.sha256(os.path.abspath(sys.prefix).encode()).hexdigest()[:8]
    return str(Path.home() / ".cache" / "llmasr-torch-extensions" / f"torch{torch.__version__}-{tag}")


def clear_stale_build_locks(folder: Path, older_than_s: float = STALE_BUILD_LOCK_S) -> list[Path]:
    """Delete op-build ``lock`` files under ``folder`` older than ``older_than_s``.  torch's builder
    (``FileBaton``) makes the lock, builds, and deletes it; a builder killed mid-build (Ctrl-C, a
    timeout) leaves it, and every later process then waits for it forever.  Returns those deleted."""
    removed = []
    for lock in folder.glob("*/lock") if folder.is_dir() else []:
        try:
            if time.time() - lock.stat().st_mtime > older_than_s:
                lock.unlink()
                removed.append(lock)
                log.warning("deleted %s: a build lock over %.0f s old (a killed build's)", lock, older_than_s)
        except FileNotFoundError:
            pass  # its builder finished meanwhile
    return removed


def cpu_threads(train: Any = None) -> int:
    """OpenMP threads per CPU training process: ``cpu_threads`` where set (> 0), else the caller's
    OMP_NUM_THREADS, else this node's usable cores shared out over its ``nproc_per_node`` processes
    (at least 1).  More threads than a process's share of the cores make the OpenMP teams of
    neighbouring processes spin against each other; the demo's tiny models want 1 (their ops are
    too small to split)."""
    t = _train_dict(train) if train is not None else {}
    if int(t.get("cpu_threads") or 0) > 0:
        return int(t["cpu_threads"])
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(t.get("nproc_per_node") or 1)))


def node_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of ``env`` the ranks on other nodes get (``NODE_ENV_PREFIXES``); values that a
    shell ``export`` line cannot carry as they are (newlines, quotes, ``$``) are left out."""
    return {
        k: v
        for k, v in sorted(env.items())
        if k.startswith(NODE_ENV_PREFIXES) and not re.search(r'[\n"$`\\]', v)
    }


def node_env_file(path: Path, env: Mapping[str, str]) -> Path:
    """Write ``node_env(env)`` as DeepSpeed's env file (``KEY=VALUE`` lines) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in node_env(env).items()), encoding="utf-8")
    return path


def resolve_repo_path(p: str | Path) -> Path:
    """A path as the user wrote it: absolute, relative to the working folder if it exists there,
    else relative to the repository (where the config's defaults such as infra/ live)."""
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (REPO / path).resolve() if (REPO / path).exists() else path


def read_hostfile(path: str | Path) -> dict[str, int]:
    """DeepSpeed hostfile -> {host: slots}: ``host slots=N`` per line, ``#`` comments.  Raises
    ValueError naming the line that is not of that form."""
    hosts: dict[str, int] = {}
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\S+)\s+slots=(\d+)", line)
        if not m or int(m.group(2)) < 1:
            raise ValueError(f"line {no}: {line!r} is not 'HOST slots=N' (N >= 1)")
        if m.group(1) in hosts:
            raise ValueError(f"line {no}: host {m.group(1)} is listed twice")
        hosts[m.group(1)] = int(m.group(2))
    if not hosts:
        raise ValueError("lists no hosts")
    return hosts


def hostfile_problem(train: Any) -> str | None:
    """What keeps ``train.hostfile`` from launching, as an error naming the key; None when fine
    (or when no hostfile is set)."""
    t = _train_dict(train)
    if not t.get("hostfile"):
        return None
    if t.get("launcher", "deepspeed") != "deepspeed":
        return (
            f"train.hostfile: set, but train.launcher is {t.get('launcher')!r}; several nodes run under "
            "DeepSpeed's launcher (train.launcher: deepspeed)"
        )
    path = resolve_repo_path(t["hostfile"])
    if not path.is_file():
        return (
            f"train.hostfile: no such file {t['hostfile']} (one 'HOST slots=N' line per node; see "
            "infra/hostfile.example)"
        )
    try:
        read_hostfile(path)
    except ValueError as exc:
        return f"train.hostfile: {path}: {exc}"
    launcher = t.get("node_launcher", "pdsh")
    program = NODE_LAUNCHER_PROGRAMS.get(launcher)
    if program and shutil.which(program) is None:
        return (
            f"train.node_launcher: {launcher} needs `{program}` on this node's PATH (e.g. apt-get install "
            "pdsh), or pick another launcher"
        )
    return None


def launch_stage(
    run_json: str | Path,
    train: Any,
    log_path: Path,
    on_line: Callable[[str], None] | None = None,
    gpu: bool | None = None,
) -> None:
    """Run ``tasks.train`` on ``run_json`` as the flow does: ``launch_command`` in the repository
    folder, the caller's environment plus ``launch_env`` and, with a hostfile, a DeepSpeed env file
    beside ``log_path`` for the other nodes.  Raises TrainingProcessError (see ``run_process``)."""
    t = _train_dict(train)
    env = stage_env(t, log_path, gpu=gpu)
    run_process(
        launch_command(run_json, t),
        env,
        log_path,
        float(t.get("timeout_s", 7 * 24 * 3600.0)),
        on_line=on_line,
        cwd=REPO,
    )


def stage_env(train: Any, log_path: Path, gpu: bool | None = None) -> dict[str, str]:
    """The launcher's environment: the caller's plus ``launch_env``, the repository on PYTHONPATH
    and, with a hostfile, ``DS_ENV_FILE`` naming the env file written beside ``log_path``."""
    t = _train_dict(train)
    env = {**os.environ, **launch_env(t, gpu=gpu)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if t.get("hostfile"):
        env["DS_ENV_FILE"] = str(node_env_file(log_path.with_suffix(".nodes.env"), env).resolve())
    return env


def run_process(
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    timeout_s: float,
    on_line: Callable[[str], None] | None = None,
    cwd: Path | None = None,
    timeout_key: str = "train.timeout_s",
) -> None:
    """Run ``cmd`` in a new process group, tee its output to ``log_path`` and ``on_line``.

    Raises TrainingProcessError on a non-zero exit or after ``timeout_s`` (the group is killed;
    the message names the setting, ``timeout_key``).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                log.write(line + "\n")
                log.flush()
                if on_line:
                    on_line(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout_s
        timed_out = False
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                kill_group(proc)
            reader.join(timeout=10)
    if timed_out:
        raise TrainingProcessError(
            f"training exceeded {timeout_key}={timeout_s:.0f} s and was killed; last lines:\n"
            + "\n".join(tail)
        )
    if proc.returncode != 0:
        raise TrainingProcessError(
            f"training failed (exit {proc.returncode}); last lines:\n" + "\n".join(tail)
        )


def kill_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace_s``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # ranks that ignored SIGTERM, and their children
    except ProcessLookupError:
        pass
    proc.wait()


def die_with_launcher() -> None:
    """Linux: get SIGKILL when the launcher process dies.  torchrun starts each worker in a session
    of its own, so killing the launcher's process group (a timeout, a cancelled flow run) would
    otherwise leave the workers training on; this way a killed launcher takes them with it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no glibc: nothing to do
        return
    if os.getppid() == 1:  # the launcher died before prctl
        os._exit(1)


def build_ops(gpu: bool | None = None) -> str:
    """Compile (or find compiled) the C++ op DeepSpeed's CPU accelerator loads when a training process
    starts (its shared-memory collectives), into ``extensions_dir()``: the first training after a
    fresh set-up otherwise pays the build (~30-60 s on 2 cores).  Returns the op's folder; on a GPU
    machine nothing is built (DeepSpeed's CUDA accelerator loads no op at start) and it returns ""."""
    if gpu is None:
        gpu = shutil.which("nvidia-smi") is not None
    if gpu:
        return ""
    env = launch_env(gpu=False)
    os.environ.update({k: env[k] for k in ("TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR")})
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    builder.load(verbose=False)
    return str(Path(env["TORCH_EXTENSIONS_DIR"]) / builder.NAME)


if __name__ == "__main__":
    if sys.argv[1:] != ["build-ops"]:
        sys.exit("usage: python -m tasks.launch build-ops")
    print(f"DeepSpeed's CPU op: {build_ops() or 'not needed (a GPU machine)'}")
