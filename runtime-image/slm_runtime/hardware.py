"""What the pod may use: CPU threads from the cgroup limit, not the node's core count."""

from __future__ import annotations

import math
import os
from pathlib import Path


def cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the cgroup v2 quota if set, else the affinity mask.

    Why: in a container `os.cpu_count()` reports the node's cores; starting that many decode
    threads under a 2-CPU limit makes llama.cpp's spin-waiting threads throttle each other.
    """
    available = len(os.sched_getaffinity(0))
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, min(available, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, available)
