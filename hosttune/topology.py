"""The picture of a host: plain data, built by hosttune.discovery, consumed by hosttune.plan.

The JSON form is stable and versioned (`schema`). Anything a host lacks is reported as
{"status": "unsupported", "reason": ...} rather than left out or guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

SCHEMA = "hosttune.topology/1"


def unsupported(reason: str) -> dict[str, Any]:
    return {"status": "unsupported", "reason": reason}


def _row(record: Any) -> dict[str, Any]:
    """A Cpu or Irq as a JSON object. Not dataclasses.asdict, which deep-copies every list element:
    3 million copies (16 s) for the affinities of 4,096 IRQs on a 768-CPU host."""
    return {f.name: (list(v) if isinstance(v := getattr(record, f.name), list) else v) for f in fields(record)}


@dataclass
class Cpu:
    id: int
    online: bool
    socket: int | None  # physical_package_id; None when the kernel does not say (offline CPU)
    die: int | None
    core: int | None  # core_id: unique only within a socket (and die)
    node: int | None
    siblings: list[int]  # SMT siblings of its core, itself included

    @property
    def core_key(self) -> tuple:
        """A key that identifies the physical core host-wide."""
        return (self.socket, self.die, self.core) if self.core is not None else ("cpu", self.id)


@dataclass
class Node:
    id: int
    cpus: list[int]  # CPUs of the node (online or not)
    memory_bytes: int
    distances: dict[int, int] = field(default_factory=dict)


@dataclass
class Irq:
    irq: int
    name: str  # actions (device names) from /proc/interrupts
    affinity: list[int] | None  # smp_affinity_list; None when unreadable
    node: int | None  # NUMA node of the device (/proc/irq/N/node), None when unknown (-1)


@dataclass
class Topology:
    hostname: str
    cpus: list[Cpu]
    nodes: list[Node]
    irqs: list[Irq]
    kernel_cmdline: str
    isolated: list[int]
    nohz_full: list[int]
    allowed_cpus: list[int] | None  # CPUs allowed to this process (cgroup cpuset + affinity)
    allowed_mems: list[int] | None
    features: dict[str, Any]  # cpu model/isa, cpufreq, turbo, epp, cstates, irqbalance, cgroup, ...

    @property
    def online_cpus(self) -> list[int]:
        return [c.id for c in self.cpus if c.online]

    @property
    def offline_cpus(self) -> list[int]:
        return [c.id for c in self.cpus if not c.online]

    def cpu(self, cpu_id: int) -> Cpu:
        return self._by_id()[cpu_id]

    def _by_id(self) -> dict[int, Cpu]:
        cached = self.__dict__.get("_cpu_index")
        if cached is None:
            cached = {c.id: c for c in self.cpus}
            self.__dict__["_cpu_index"] = cached
        return cached

    @property
    def sockets(self) -> list[int]:
        return sorted({c.socket for c in self.cpus if c.socket is not None})

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "hostname": self.hostname,
            "summary": {
                "sockets": len(self.sockets),
                "nodes": len(self.nodes),
                "cores": len({c.core_key for c in self.cpus if c.online}),
                "cpus_online": len(self.online_cpus),
                "cpus_offline": self.offline_cpus,
                "threads_per_core": max((len(c.siblings) for c in self.cpus if c.online), default=0),
            },
            "cpus": [_row(c) for c in self.cpus],
            "nodes": [
                {"id": n.id, "cpus": n.cpus, "memory_bytes": n.memory_bytes,
                 "distances": {str(k): v for k, v in n.distances.items()}}
                for n in self.nodes
            ],
            "kernel_cmdline": self.kernel_cmdline,
            "isolated": self.isolated,
            "nohz_full": self.nohz_full,
            "allowed_cpus": self.allowed_cpus,
            "allowed_mems": self.allowed_mems,
            "irqs": [_row(i) for i in self.irqs],
            **self.features,
        }
