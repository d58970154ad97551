"""Hardware classes: hosts with the same hardware get the same short id, so what `hosttune tune`
measured on one of them (an overlay, hosttune.policy.check_overlay) applies to all of them.

Pure: reads a Topology or its JSON form (`hosttune topology --json`). What makes the class:
- the CPU: vendor, model name, architecture, the inference ISA flags discovery lists;
- the shape: sockets, and per NUMA node (in id order) its online cores, online CPUs and memory;
- the kernel arguments in KERNEL_ARGS (those that change what the hardware does without showing in
  the topology). hosttune's own (isolcpus, nohz_full, rcu_nocbs, irqaffinity) are not among them, so
  a host keeps its class when hosttune tunes it.
Memory is rounded up onto MEMORY_GRID_GIB: the kernel shows a little less than is installed, and the
amount it keeps varies between boots and firmware versions; installed sizes sit on the grid.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

# Kernel arguments that make hosts with the same CPUs behave differently. A policy's
# isolation.extra_kernel_args naming one of them changes the class after the reboot that applies it.
KERNEL_ARGS = ("nosmt", "mitigations", "numa", "maxcpus", "nr_cpus", "mem", "intel_pstate", "amd_pstate")
# installed memory per node, GiB: powers of two and 1.5 times them (1, 1.5, 2, 3, 4, 6, 8, 12, ...)
MEMORY_GRID_GIB = tuple(sorted({m * 2.0**e for e in range(-4, 21) for m in (1.0, 1.5)}))
PREFIX = "c-"


def _memory_gib(memory_bytes: int) -> float:
    """The smallest grid size holding the node's memory (0 for a memoryless node)."""
    gib = memory_bytes / 2**30
    if gib <= 0:
        return 0
    return next((g for g in MEMORY_GRID_GIB if g >= gib * (1 - 1e-9)), math.ceil(gib))


def _rows(topo: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str, dict[str, Any]]:
    """(cpus, nodes, kernel cmdline, cpu facts) of a Topology or its to_dict()."""
    if isinstance(topo, dict):
        return topo["cpus"], topo["nodes"], topo.get("kernel_cmdline") or "", topo.get("cpu") or {}
    cpus = [{"id": c.id, "online": c.online, "socket": c.socket, "die": c.die, "core": c.core, "node": c.node}
            for c in topo.cpus]
    nodes = [{"id": n.id, "cpus": n.cpus, "memory_bytes": n.memory_bytes} for n in topo.nodes]
    return cpus, nodes, topo.kernel_cmdline or "", topo.features.get("cpu") or {}


def _kernel_args(cmdline: str) -> list[str]:
    keep = []
    for arg in cmdline.split():
        name = arg.partition("=")[0].replace("-", "_")
        if name in KERNEL_ARGS:
            keep.append(arg)
    return sorted(set(keep))


def facts(topo: Any) -> dict[str, Any]:
    """What the class is made of, as canonical JSON-able data."""
    cpus, nodes, cmdline, cpu = _rows(topo)
    online = [c for c in cpus if c["online"]]
    node_rows = []
    for node in sorted(nodes, key=lambda n: n["id"]):
        mine = [c for c in online if c["node"] == node["id"]]
        cores = {(c["socket"], c["die"], c["core"]) if c["core"] is not None else ("cpu", c["id"]) for c in mine}
        node_rows.append({"cores": len(cores), "cpus": len(mine), "memory_gib": _memory_gib(node["memory_bytes"])})
    return {
        "cpu": {"vendor": cpu.get("vendor"), "model": cpu.get("model"), "arch": cpu.get("arch"),
                "flags": sorted(cpu.get("flags") or [])},
        "sockets": len({c["socket"] for c in online if c["socket"] is not None}),
        "nodes": node_rows,
        "kernel_args": _kernel_args(cmdline),
    }


def class_id(topo: Any) -> str:
    """c- and 12 hex digits of the SHA-256 of the facts' canonical JSON: equal for equal hardware."""
    text = json.dumps(facts(topo), sort_keys=True, separators=(",", ":"))
    return PREFIX + hashlib.sha256(text.encode()).hexdigest()[:12]


def describe(topo: Any) -> str:
    """One line a person can compare: model, sockets, nodes x cores/CPUs/memory, kernel args."""
    f = facts(topo)
    shapes: dict[str, int] = {}
    for n in f["nodes"]:
        mem = f"{n['memory_gib']:g} GiB"
        shape = f"{n['cores']}c/{n['cpus']}t/{mem}"
        shapes[shape] = shapes.get(shape, 0) + 1
    nodes = ", ".join(f"{count} x {shape}" for shape, count in shapes.items()) or "no nodes"
    args = f"; {' '.join(f['kernel_args'])}" if f["kernel_args"] else ""
    return f"{f['cpu']['model'] or 'unknown CPU'}; {f['sockets']} socket(s); nodes {nodes}{args}"
