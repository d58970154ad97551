"""Put the current process on an instance's CPUs and memory node(s), as the plan says, and each
kind of thread where it belongs (`Threads`, docs/isolation.md).

CPU sets come from the plan (or the command line), never computed here. Inside a systemd unit
with AllowedCPUs= or a container cpuset, the CPUs allowed to the process may be fewer than the
plan's: the kernel then runs it on the intersection (we warn), and it fails when that is empty.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from hosttune import cpulist, threads
from hosttune.errors import HosttuneError

_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237, "ppc64le": 261, "s390x": 237}
MPOL_BIND = 2


def pin_cpus(cpus: list[int], where: str = "cpus") -> list[int]:
    """sched_setaffinity to `cpus`; returns the CPUs now in use.

    The request is not limited to the current affinity: with isolcpus= the isolated CPUs are not in
    any process's default affinity, and the instance must be placed on them explicitly. The kernel
    limits the mask to the cgroup's cpuset (AllowedCPUs=, a container's --cpuset-cpus)."""
    want = set(cpus)
    try:
        os.sched_setaffinity(0, want)
    except OSError as exc:
        raise HosttuneError(f"cannot run on CPUs {cpulist.format(want)}: {exc.strerror} (check AllowedCPUs= / "
                            f"the container cpuset and that the CPUs are online)", where=where) from None
    got = os.sched_getaffinity(0)
    if got != want:
        print(f"hosttune: warning: CPUs {cpulist.format(want - got)} are not allowed to this process "
              f"(cgroup cpuset); running on {cpulist.format(got)}", file=sys.stderr)
    return sorted(got)


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


@dataclass(frozen=True)
class Threads:
    """Where an instance's threads run. `inference`: OpenVINO's stream threads (pinned one per CPU
    by OpenVINO itself, from the mask of the thread that compiles) and the event loop when it runs
    a pool of one's inference inline. `service`: everything else of ours - the event loop of a
    pool, the waiter threads, the JSON decoder threads, gRPC's threads. None: not pinned."""

    inference: tuple[int, ...] | None = None
    service: tuple[int, ...] | None = None

    def initializer(self, name: str) -> tuple[Callable[..., None], tuple[Any, ...]]:
        """(initializer, initargs) of a service thread pool."""
        return threads.initializer(self.service, name)

    def place_loop(self, inline: bool) -> None:
        """Pin the calling thread (the event loop) to the inference CPUs when it runs the
        inference itself (`inline`), else to the service CPUs."""
        cpus = self.inference if inline else self.service
        if cpus:
            threads.pin_me(cpus)

    @contextlib.contextmanager
    def spawning_service(self) -> Iterator[None]:
        """Threads started by the calling thread meanwhile (grpc's) are born on the service CPUs:
        a new thread inherits its creator's mask."""
        if not self.service:
            yield
            return
        tid = threading.get_native_id()
        before = os.sched_getaffinity(tid)
        os.sched_setaffinity(tid, set(self.service))
        try:
            yield
        finally:
            os.sched_setaffinity(tid, before)


def allowed(cpus: list[int]) -> bool:
    """Whether this process may run on any of `cpus` at all (the cgroup's cpuset, online CPUs)."""
    me = threading.get_native_id()
    before = os.sched_getaffinity(me)
    try:
        os.sched_setaffinity(me, set(cpus))
    except OSError:
        return False
    os.sched_setaffinity(me, before)
    return True


def place_service(cpus: list[int], where: str) -> None:
    """Pin every thread of the process but the calling one to the service CPUs (threads an import
    started before the instance was placed)."""
    if not allowed(cpus):
        raise HosttuneError(f"cannot run on CPUs {cpulist.format(cpus)} (check AllowedCPUs= / the container "
                            f"cpuset and that the CPUs are online)", where=where)
    threads.pin_all(cpus, skip=[threading.get_native_id()])
