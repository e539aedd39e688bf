"""What the benchmarks report about the machine they ran on, shared by bench/*_bench.py.

``machine()``: CPU model, cores, RAM, Python, platform.  ``CpuMeter``: CPU that *other* processes
used over a span (this machine is shared; a busy neighbour makes wall-time numbers worse).
``print_metric_table``: the metric | value | target | ok table every bench ends with.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path


def _proc_field(path: str, prefix: str) -> str | None:
    try:
        return next(
            (
                line.split(":", 1)[1].strip()
                for line in Path(path).read_text().splitlines()
                if line.startswith(prefix)
            ),
            None,
        )
    except OSError:  # not Linux: leave the field unknown
        return None


def machine() -> dict:
    mem = _proc_field("/proc/meminfo", "MemTotal:")
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or "?",
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(int(mem.split()[0]) * 1024 / 1024**3, 1) if mem else 0.0,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


class CpuMeter:
    """CPU used on the machine by processes other than this one and its descendants, over a span."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
        return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        import psutil

        t = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            t += ru.ru_utime + ru.ru_stime
        # live children are not in RUSAGE_CHILDREN yet
        for child in psutil.Process().children(recursive=True):
            try:
                ct = child.cpu_times()
                t += ct.user + ct.system
            except psutil.Error:  # exited between listing and reading: already counted in RUSAGE_CHILDREN
                continue
        return t

    def stop(self) -> dict:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        busy, own = self._busy() - self.busy0, self._own() - self.own0
        other = max(0.0, busy - own)
        return {
            "wall_s": round(wall, 1),
            "own_cpu_s": round(own, 1),
            "other_cpu_s": round(other, 1),
            "machine_cores_busy": round(busy / wall, 2),
            "other_cores_avg": round(other / wall, 2),
            "loadavg_end": loadavg(),
        }


def print_metric_table(rows: list[dict]) -> None:
    """Print ``rows`` ({"metric", "value", "target", "ok": True/False/None}) as the benches' table."""
    w = [
        max(len(x[k]) for x in rows + [{"metric": "metric", "value": "value", "target": "target"}])
        for k in ("metric", "value", "target")
    ]
    print(f"{'metric':<{w[0]}} | {'value':>{w[1]}} | {'target':<{w[2]}} | ok")
    print(f"{'-' * w[0]}-+-{'-' * w[1]}-+-{'-' * w[2]}-+---")
    for x in rows:
        ok = "" if x["ok"] is None else ("yes" if x["ok"] else "NO")
        print(f"{x['metric']:<{w[0]}} | {x['value']:>{w[1]}} | {x['target']:<{w[2]}} | {ok}")
