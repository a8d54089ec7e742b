"""How many torch intra-op threads a work unit uses on the CPU.

torch starts one intra-op thread per physical core of the *machine*: not per CPU the process may use, nor per
CPU a Ray task reserved. Two processes that each run two OpenMP threads on two cores wait for each other at every
parallel region (measured on 2 cores: one dcgan unit 6× slower while another process ran; docs/benchmarks.md).
The harness chooses the count instead, first match wins:

1. an explicit count: ``bench run --threads N`` (every unit, local or Ray);
2. the CPUs a Ray task reserved: ``floor(num_cpus)``, at least 1;
3. ``OMP_NUM_THREADS`` of this process, when it is a positive integer (the usual knob, honoured as given);
4. the CPUs this process may use: its affinity mask (``os.sched_getaffinity``: ``taskset``, cpusets, Slurm),
   capped by a cgroup CPU quota rounded up (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` /
   ``cpu.cfs_period_us`` of v1: containers started with ``--cpus``).

The count changes speed, and the last bits of CPU results (sums are split differently): it is recorded with each
unit's timing and in the results' provenance.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import ConfigError

PROC_SELF = Path("/proc/self")


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and where it came from (``--threads``, ``ray reservation``, ``OMP_NUM_THREADS``, ``cpus``)."""

    count: int
    source: str


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value > 0 else None


def _mounts(mountinfo: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """``(root, mount point)`` of the cgroup v2 hierarchy and of the v1 hierarchy with the ``cpu`` controller."""
    v2 = v1 = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 1:
            continue
        where = (fields[3], fields[4].replace("\\040", " "))
        if tail[0] == "cgroup2":
            v2 = where
        elif tail[0] == "cgroup" and len(tail) >= 3 and "cpu" in tail[2].split(","):
            v1 = where
    return v2, v1


def _ancestors(mount: tuple[str, str], path: str) -> Iterator[Path]:
    """The directory of cgroup ``path`` under ``mount`` and its parents up to the mount point."""
    root, point = mount
    if root != "/" and path.startswith(root):
        path = path[len(root):]
    rel = Path(path.lstrip("/"))
    for part in (rel, *rel.parents):
        yield Path(point) / part


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(proc: Path = PROC_SELF) -> float | None:
    """CPUs this process's cgroup quota allows (the smallest along its cgroup and the parents), None if none."""
    cgroups, mountinfo = _read(proc / "cgroup"), _read(proc / "mountinfo")
    if not cgroups or not mountinfo:
        return None
    v2, v1 = _mounts(mountinfo)
    limits: list[float] = []
    for line in cgroups.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "" and v2 is not None:
            for d in _ancestors(v2, path):
                quota, _, period = (_read(d / "cpu.max") or "max").partition(" ")
                if quota != "max" and _positive_int(quota) and _positive_int(period):
                    limits.append(int(quota) / int(period))
        elif "cpu" in controllers.split(",") and v1 is not None:
            for d in _ancestors(v1, path):
                quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                if _positive_int(quota) and _positive_int(period):
                    limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def available_cpus(proc: Path = PROC_SELF) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(proc)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(cpus, 1)


def choose_threads(
    requested: int | None = None,
    *,
    reserved_cpus: float | None = None,
    environ: Mapping[str, str] | None = None,
    proc: Path = PROC_SELF,
) -> ThreadChoice:
    """The intra-op thread count of a unit (the order is in the module docstring). ``reserved_cpus``: the CPUs a
    Ray task reserved (its worker's ``OMP_NUM_THREADS`` is Ray's, so it is not consulted then)."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--threads must be a positive integer, got {requested}")
        return ThreadChoice(requested, "--threads")
    if reserved_cpus is not None:
        return ThreadChoice(max(1, math.floor(reserved_cpus)), "ray reservation")
    env = _positive_int((os.environ if environ is None else environ).get("OMP_NUM_THREADS"))
    if env is not None:
        return ThreadChoice(env, "OMP_NUM_THREADS")
    return ThreadChoice(available_cpus(proc), "cpus")


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[int]:
    """Run the block with ``count`` torch intra-op threads; the previous count is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)
