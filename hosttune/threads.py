"""Where this process's own threads run: one thread pinned at its start (`pin_me`), every thread
of the process at once (`pin_all`), and a kernel name per thread (top -H, /proc/PID/task/TID/comm).

CPU affinity belongs to a thread, not to the process: sched_setaffinity(0) changes the calling
thread only, a thread that exists already keeps its mask, and a new thread inherits its creator's.
So each kind of thread is pinned where it starts (docs/isolation.md says where each one goes).

Reads /proc/self/task only: this process's own threads, not the host's /proc (hosttune.sysfs).
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any, Callable, Iterable

from hosttune import numbers

PR_SET_NAME = 15
COMM_MAX = 15  # a kernel thread name holds 15 bytes


def name_me(name: str) -> None:
    """Give the calling thread a kernel name (at most 15 bytes are kept)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:COMM_MAX], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def pin_me(cpus: Iterable[int] | None, name: str | None = None) -> set[int]:
    """Pin the calling thread (by its own tid) to `cpus` and name it; returns its CPUs now.
    None leaves the affinity as inherited. The kernel keeps the mask inside the cgroup's cpuset;
    an empty intersection raises OSError (EINVAL)."""
    if name:
        name_me(name)
    tid = threading.get_native_id()
    if cpus:
        os.sched_setaffinity(tid, set(cpus))
    return os.sched_getaffinity(tid)


def initializer(cpus: Iterable[int] | None, name: str) -> tuple[Callable[..., None], tuple[Any, ...]]:
    """(initializer, initargs) for a ThreadPoolExecutor whose threads run on `cpus`, named `name`."""
    return _pin_quietly, (sorted(cpus) if cpus else None, name)


def _pin_quietly(cpus: list[int] | None, name: str) -> None:
    # a pool thread cannot report an error to anyone: the CPUs were checked when the server
    # pinned its main thread to them (placement.pin_cpus), so this only fails if they went offline
    try:
        pin_me(cpus, name)
    except OSError:
        pass


def task_ids() -> list[int]:
    """The tids of this process's threads (C threads too: OpenVINO's, grpc's)."""
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task") if numbers.is_uint(t))
    except OSError:
        return [threading.get_native_id()]


def pin_all(cpus: Iterable[int], skip: Iterable[int] = ()) -> list[int]:
    """Pin every thread of the process but those in `skip` to `cpus`; returns the tids pinned
    (a thread that ended meanwhile is passed over)."""
    want, skipped, done = set(cpus), set(skip), []
    for tid in task_ids():
        if tid in skipped:
            continue
        try:
            os.sched_setaffinity(tid, want)
        except ProcessLookupError:
            continue
        done.append(tid)
    return done


def affinity_of(tid: int) -> set[int] | None:
    """A thread's CPUs, None when it has ended."""
    try:
        return os.sched_getaffinity(tid)
    except (ProcessLookupError, OSError):
        return None
