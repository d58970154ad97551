"""Put the current process on an instance's CPUs and memory node(s), as the plan says.

CPU sets come from the plan (or the command line), never computed here. Inside a systemd unit
with AllowedCPUs= or a container cpuset, the CPUs allowed to the process may be fewer than the
plan's: the process then runs on the intersection (with a warning), and fails when it is empty.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from hosttune import cpulist
from hosttune.errors import HosttuneError

_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237, "ppc64le": 261, "s390x": 237}
MPOL_BIND = 2


def pin_cpus(cpus: list[int], where: str = "cpus") -> list[int]:
    """sched_setaffinity to `cpus` ∩ the allowed CPUs; returns the CPUs now in use."""
    allowed = os.sched_getaffinity(0)
    usable = sorted(set(cpus) & allowed)
    if not usable:
        raise HosttuneError(f"none of CPUs {cpulist.format(cpus)} is allowed to this process "
                            f"(allowed: {cpulist.format(allowed)}; check AllowedCPUs= / the container cpuset)",
                            where=where)
    if len(usable) < len(set(cpus)):
        print(f"hosttune: warning: CPUs {cpulist.format(set(cpus) - allowed)} are not allowed to this "
              f"process; running on {cpulist.format(usable)}", file=sys.stderr)
    os.sched_setaffinity(0, usable)
    return usable


def bind_memory(nodes: list[int]) -> bool:
    """set_mempolicy(MPOL_BIND) to the given NUMA nodes; False (no error) where it is not possible
    (single-node hosts need nothing; a cpuset.mems limit is then the unit's job)."""
    number = _SET_MEMPOLICY.get(platform.machine())
    if number is None or not nodes:
        return False
    mask = 0
    for n in nodes:
        mask |= 1 << n
    maxnode = max(nodes) + 2
    words = (maxnode + 63) // 64
    arr = (ctypes.c_ulong * words)(*[(mask >> (64 * i)) & (2**64 - 1) for i in range(words)])
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(number, MPOL_BIND, arr, ctypes.c_ulong(maxnode))
    return rc == 0
