"""Where a stage's Prefect tasks run: the flow's own thread pool, or a Ray cluster (labelling).

    llmasr data --profile demo --set runner.kind=ray                               # a throwaway local Ray
    llmasr data --work-dir /shared/runs/mine --set runner.kind=ray --set runner.ray_address=ray://head:10001

``runner.kind: local`` (the default) runs every task in a ``ThreadPoolTaskRunner`` of the flow's
process.  ``runner.kind: ray`` sends the label tasks -- the GPU-heavy stage -- to Ray through
prefect-ray's ``RayTaskRunner``, each asking Ray for ``runner.label_gpus`` GPUs and
``runner.label_cpus`` CPUs, so a cluster of GPU nodes labels in parallel while the cheap stages stay
in the flow's process.  Ray workers write into the same work dir, so it must be on storage every
node mounts at the same path (NFS, Lustre, a shared PVC), and every node needs the project's
environment (the image built from infra/Dockerfile).  The tasks still report to Prefect: their task
runs, logs and cached states show in the UI under the data flow run.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from llmasr.config import PipelineConfig, RunnerConfig

Submit = Callable[..., Any]  # submit(task, **parameters) -> a PrefectFuture


def flow_task_runner(runner: RunnerConfig):
    """The task runner of a flow run: a thread pool of ``runner.max_workers``."""
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=runner.max_workers)


def label_gpus(cfg: PipelineConfig, cluster_gpus: float) -> float:
    """GPUs a Ray label task asks for: ``runner.label_gpus`` when set; else 1 when ``label.device``
    is cuda, or is auto and the cluster has GPUs; else 0."""
    if cfg.runner.label_gpus is not None:
        gpus = cfg.runner.label_gpus
    elif cfg.label.device == "cuda" or (cfg.label.device == "auto" and cluster_gpus > 0):
        gpus = 1.0
    else:
        gpus = 0.0
    if gpus > cluster_gpus:  # Ray would keep such tasks pending forever
        raise RuntimeError(
            f"runner.label_gpus: a label task asks for {gpus:g} GPU(s) but the Ray cluster has "
            f"{cluster_gpus:g}; add GPU nodes, or set runner.label_gpus=0 and label.device=cpu"
        )
    return gpus


@contextmanager
def label_submitter(cfg: PipelineConfig) -> Iterator[tuple[Submit, bool]]:
    """Yields ``(submit, remote)``: ``submit(task, **params)`` starts one label task where
    ``runner.kind`` says; ``remote`` is True when the tasks run in other processes (Ray).

    Futures must be resolved inside the ``with`` block: leaving it disconnects from Ray.
    """
    if cfg.runner.kind == "local":
        yield (lambda task, **params: task.submit(**params)), False
        return
    runner = _ray_runner(cfg)
    from prefect_ray.context import remote_options

    with runner:
        import ray

        gpus = label_gpus(cfg, ray.cluster_resources().get("GPU", 0.0))
        with remote_options(num_cpus=cfg.runner.label_cpus, num_gpus=gpus):
            yield (lambda task, **params: runner.submit(task, params)), True


def _ray_runner(cfg: PipelineConfig):
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as e:
        raise RuntimeError(
            "runner.kind=ray needs prefect-ray and ray: `pip install -e '.[ray]'` (or set runner.kind=local)"
        ) from e

    class CheckedRayTaskRunner(RayTaskRunner):
        """Names the config key when the cluster cannot be reached."""

        def __enter__(self):
            if cfg.runner.ray_address is not None:
                check_reachable(cfg.runner.ray_address)
            try:
                return super().__enter__()
            # Ray exits when GCS is gone
            except (ConnectionError, TimeoutError, RuntimeError, SystemExit) as e:
                raise RuntimeError(_unreachable(cfg.runner.ray_address, repr(e))) from e

    init_kwargs: dict[str, Any] = {"namespace": cfg.runner.ray_namespace, "log_to_driver": True}
    if cfg.runner.ray_address is None:  # a local Ray of our own: no dashboard, no usage stats
        init_kwargs.update(
            include_dashboard=False, num_cpus=cfg.runner.max_workers * max(cfg.runner.label_cpus, 1)
        )
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return CheckedRayTaskRunner(address=cfg.runner.ray_address, init_kwargs=init_kwargs)


def _unreachable(address: str | None, why: str) -> str:
    return (
        f"runner.ray_address={address!r}: cannot connect to a Ray cluster there ({why}); "
        "start one with `ray start --head` or leave runner.ray_address empty for a local Ray"
    )


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail in seconds, naming the key, where ``ray.init`` would retry for minutes and then exit."""
    if address == "auto":
        return  # resolved by Ray from RAY_ADDRESS or the node's own session
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RuntimeError(f"runner.ray_address={address!r}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RuntimeError(_unreachable(address, f"{host}:{port}: {e}")) from e


def worker_name() -> str:
    """Where this code runs: the Ray node id inside a Ray worker, else host:pid."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ctx = ray.get_runtime_context()
        if ctx.worker.mode != 0:  # 0 = the driver (the flow's own process)
            return f"ray-node:{ctx.get_node_id()}"
    return f"{socket.gethostname()}:{os.getpid()}"
