"""CPUs this process may run on: what torch and ONNX Runtime thread pools are sized from."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(quota: Optional[str], period: Optional[str]) -> Optional[float]:
    try:
        q, p = float(quota or "nan"), float(period or "nan")
    except ValueError:  # "max", or anything unexpected: no limit from this file
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup",
                     self_cgroup: str | os.PathLike = "/proc/self/cgroup") -> Optional[float]:
    """The CPU quota of this process's cgroup in CPUs (`docker run --cpus 2`, a Kubernetes CPU limit), or None
    when there is none. cgroup v2 (`cpu.max`: "QUOTA PERIOD" or "max PERIOD") and v1 (`cpu.cfs_quota_us`, -1 for
    none); the cgroup's own folder (on a host) and the mount root (in a container, which sees its cgroup there)."""
    root = Path(root)
    v2_paths, v1_paths = [""], [""]
    for line in (_read(Path(self_cgroup)) or "").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            v2_paths.append(path.lstrip("/"))
        elif "cpu" in controllers.split(","):
            v1_paths.append(path.lstrip("/"))
    limits = []
    for rel in v2_paths:
        fields = (_read(root / rel / "cpu.max") or "").split()
        if len(fields) == 2:
            limits.append(_ratio(*fields))
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for rel in v1_paths:
            limits.append(_ratio(_read(root / mount / rel / "cpu.cfs_quota_us"),
                                 _read(root / mount / rel / "cpu.cfs_period_us")))
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def worker_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota (rounded down, at least 1:
    more threads than the quota only get the process throttled), not the machine's count."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, math.floor(limit))
    return max(1, cpus)
