"""Named guest topologies, as data. CPU ids follow QEMU's numbering (socket-major, threads of a
core adjacent: with threads=2, CPUs 0 and 1 are siblings). Node ids must be contiguous (QEMU)."""

from __future__ import annotations

from typing import Any

from hosttune_testbed.errors import TestbedError
from hosttune_testbed.qemu import SMT_CPU_MODEL, Topology

TOPOLOGIES: dict[str, dict[str, Any]] = {
    "default": {
        "description": "2 sockets x 4 cores, no SMT, one NUMA node per socket",
        "sockets": 2, "cores": 4, "threads": 1,
        "nodes": [
            {"cpus": "0-3", "memory_mib": 1024},
            {"cpus": "4-7", "memory_mib": 1024},
        ],
    },
    "smt4n": {
        # One node per die: QEMU shares the L3 per die, so each node is its own LLC domain.
        # (With 4 cores per socket split into 2 nodes, the guest kernel WARNs at boot:
        # "sched: CPU #4's llc-sibling CPU #0 is not on the same node!")
        "description": "2 sockets x 2 dies x 2 cores x 2 threads = 16 CPUs, one NUMA node per die",
        "sockets": 2, "dies": 2, "cores": 2, "threads": 2,
        "nodes": [
            {"cpus": "0-3", "memory_mib": 512},
            {"cpus": "4-7", "memory_mib": 512},
            {"cpus": "8-11", "memory_mib": 512},
            {"cpus": "12-15", "memory_mib": 512},
        ],
    },
    "memoryless": {
        "description": "3 sockets x 2 cores; node 2 has CPUs but no memory",
        "sockets": 3, "cores": 2, "threads": 1,
        "nodes": [
            {"cpus": "0-1", "memory_mib": 1024},
            {"cpus": "2-3", "memory_mib": 1024},
            {"cpus": "4-5", "memory_mib": 0},
        ],
    },
    "sparse": {
        "description": "4 sockets x 2 cores, 2 NUMA nodes with non-contiguous CPU lists",
        "sockets": 4, "cores": 2, "threads": 1,
        "nodes": [
            {"cpus": "0-1,4-5", "memory_mib": 1024},
            {"cpus": "2-3,6-7", "memory_mib": 1024},
        ],
    },
    "offline": {
        "description": "the default shape with CPUs 0 and 5 offline after boot (cpu0_hotplug "
                       "on the kernel line lets CPU 0 go offline)",
        "sockets": 2, "cores": 4, "threads": 1,
        "nodes": [
            {"cpus": "0-3", "memory_mib": 1024},
            {"cpus": "4-7", "memory_mib": 1024},
        ],
        # Linux 6.1 lets CPU 0 go offline only with cpu0_hotplug AND an Intel CPU vendor
        # (arch_register_cpu: "CPU0 is only hotpluggable on Intel platforms"); TCG's `max`
        # says AuthenticAMD, so this topology asks for the Intel vendor.
        "cpu_model": SMT_CPU_MODEL,
        "kernel_args": "cpu0_hotplug",
        "offline": "0,5",
    },
}


def names() -> list[str]:
    return sorted(TOPOLOGIES)


def get_topology(name: str) -> Topology:
    """The named topology (TestbedError listing the names if unknown)."""
    try:
        data = TOPOLOGIES[name]
    except KeyError:
        raise TestbedError(
            f"unknown topology {name!r}; known: {', '.join(names())}"
        ) from None
    return Topology.from_dict(data, name=name)
