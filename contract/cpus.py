"""CPUs this process may run on: what torch and ONNX Runtime thread pools are sized from."""
from __future__ import annotations

import os


def worker_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
