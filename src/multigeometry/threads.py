"""How many CPU threads torch may use: the configured number, else `OMP_NUM_THREADS`, else the CPUs this process may
really run on (its affinity mask and its cgroup's CPU quota, whichever is smaller), divided among the processes of a
node. torch's own default counts the host's cores and ignores the quota, so a container given 2 of 64 cores, or two
DDP ranks on 2 cores, oversubscribe OpenMP; on a shared 2-core machine that made training 15-20x slower."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None when
    there is no quota or no cgroup file to read."""
    v2 = root / "cpu.max"
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on: its affinity mask, capped by the cgroup's quota (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def choose_threads(configured: int = 0, processes_per_node: int = 1, environ: dict[str, str] | None = None,
                   root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """The thread count and where it came from: `configured` (> 0), else `OMP_NUM_THREADS`, else the available CPUs
    shared among `processes_per_node` processes."""
    env = os.environ if environ is None else environ
    if configured > 0:
        return configured, "train.threads"
    if raw := env.get("OMP_NUM_THREADS", "").strip():
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS={raw!r} is not a whole number of threads") from None
        if value < 1:
            raise ValueError(f"OMP_NUM_THREADS={raw!r}: at least 1 thread")
        return value, "OMP_NUM_THREADS"
    return max(1, available_cpus(root) // max(1, processes_per_node)), "available CPUs"


def apply_threads(configured: int = 0, processes_per_node: int = 1) -> int:
    """Set torch's intra-op thread count as `choose_threads` decides; returns it."""
    import torch

    threads, source = choose_threads(configured, processes_per_node)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.info("torch threads: %d (%s)", threads, source)
    return threads
