"""The CPUs this process may use, which is what the default worker count is made from.

`os.cpu_count()` is the machine's count: a client pinned with `taskset` (or a Kubernetes cpuset) to
8 of 16 cores started 15 workers on 8 cores (issue 15), and a container limited to two CPUs by
its quota (`docker run --cpus 2`, a pod's CPU limit) sees every core of the node. So the count is
the affinity mask, capped by the cgroup's CPU quota rounded up: a worker per core the process can
actually run on.

The quota is read where a container mounts its own cgroup: `cpu.max` (cgroup v2) or
`cpu/cpu.cfs_quota_us` over `cpu/cpu.cfs_period_us` (v1) under /sys/fs/cgroup. A file that is
missing, unreadable or says "no limit" leaves the affinity count as it is.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota_cpus(quota: str, period: str) -> float | None:
    """CPUs a cgroup quota allows (`quota` microseconds of CPU per `period`); None for no limit
    ("max" in v2, -1 in v1) or a value that is not a positive number."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None  # "max": no limit
    return q / p if q > 0 and p > 0 else None


def cgroup_cpus(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup as a number of CPUs, or None where there is none."""
    try:
        return quota_cpus(*(root / "cpu.max").read_text().split()[:2])
    except (OSError, TypeError):  # not v2, or a line without two fields
        pass
    try:
        v1 = root / "cpu"
        return quota_cpus(
            (v1 / "cpu.cfs_quota_us").read_text().strip(),
            (v1 / "cpu.cfs_period_us").read_text().strip(),
        )
    except OSError:
        return None


def usable_cpus(root: Path = CGROUP) -> int:
    """The CPUs this process may run on: its affinity mask, capped by its cgroup's quota."""
    # macOS and Windows have no affinity mask.
    has_mask = hasattr(os, "sched_getaffinity")
    n = len(os.sched_getaffinity(0)) if has_mask else (os.cpu_count() or 1)
    quota = cgroup_cpus(root)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)
