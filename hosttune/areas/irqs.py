"""Device IRQ affinity: every movable IRQ onto the housekeeping CPUs of its device's NUMA node
(any housekeeping CPU when the node is unknown), and the default affinity for new IRQs."""

from __future__ import annotations

import errno
from typing import Any

from hosttune import cpulist
from hosttune.areas.base import (CPU, AreaItems, Field, Host, PlanContext, SysfsValue, as_cpulist,
                                 mask_as_cpulist, skipped)
from hosttune.errors import HosttuneError
from hosttune.sysfs import HostFS

NAME = "irqs"
BOOT = False
DEFAULT_AFFINITY = "/proc/irq/default_smp_affinity"
POLICY = (Field("irqs.pin", True, "bool", doc="device IRQs onto the housekeeping CPUs of their node"),)


def discover(fs: HostFS, features: dict[str, Any], cpus: list[Any]) -> dict[str, Any]:
    # the IRQs themselves are part of the topology (discovery); this is the default for new ones
    text = fs.read(DEFAULT_AFFINITY)
    try:
        default = cpulist.parse_mask(text) if text is not None else None
    except HosttuneError:
        default = None
    return {"irq_default_affinity": default}


def show(features: dict[str, Any]) -> list[str]:
    return []


def plan(ctx: PlanContext) -> dict[str, Any]:
    if not ctx.policy["irqs"]["pin"]:
        return skipped("irqs.pin is false")
    hk_by_node: dict[int | None, list[int]] = {}
    for cpu_id in sorted(ctx.housekeeping):
        hk_by_node.setdefault(ctx.topo.cpu(cpu_id).node, []).append(cpu_id)
    everywhere = sorted(ctx.housekeeping)
    pins = []
    for irq in ctx.topo.irqs:
        if irq.affinity is None:
            continue  # unreadable affinity: the kernel manages it (per-CPU or managed IRQ)
        target = hk_by_node.get(irq.node) or everywhere
        pins.append({"irq": irq.irq, "name": irq.name, "node": irq.node, "cpus": target})
    return {"status": "planned", "default_affinity": everywhere, "pin": pins}


def describe(setting: dict[str, Any]) -> str:
    return (f"{len(setting['pin'])} IRQs onto node-local housekeeping CPUs, default affinity "
            f"{cpulist.format(setting['default_affinity'])}")


MANAGED = {errno.EIO: "kernel-managed or per-CPU IRQ", errno.EINVAL: "IRQ cannot be moved there"}


def items(setting: dict[str, Any], plan: dict[str, Any], host: Host) -> AreaItems:
    nr_cpus = len(cpulist.parse(host.fs.read(f"{CPU}/possible") or "0"))
    out = [SysfsValue(NAME, "default_smp_affinity", DEFAULT_AFFINITY,
                      value=cpulist.format_mask(setting["default_affinity"], nr_cpus),
                      normalize=mask_as_cpulist, restore_raw=True)]
    texts: dict[tuple[int, ...], str] = {}  # thousands of IRQs, a few distinct CPU sets
    for pin in setting["pin"]:
        cpus = tuple(pin["cpus"])
        text = texts.get(cpus)
        if text is None:
            text = texts[cpus] = cpulist.format(cpus)
        out.append(SysfsValue(NAME, f"irq {pin['irq']} ({pin['name'] or '?'})", f"/proc/irq/{pin['irq']}/smp_affinity_list",
                              value=text, normalize=as_cpulist, unsupported_errnos=MANAGED,
                              remember_refusal=True,
                              # irqbalance (ban mode) narrows an IRQ to one CPU of the allowed set; what
                              # the plan needs is that it stays within its node's housekeeping CPUs
                              within=True))
    return AreaItems(NAME, out)


def refresh(host: Host, records: list[dict[str, Any]]) -> list[Any]:
    return []
