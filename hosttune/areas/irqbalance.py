"""irqbalance: keep it running with the isolated CPUs banned (ban), or stop it (stop). After irqs:
the pins are in place before irqbalance rereads what it may use."""

from __future__ import annotations

import re
from typing import Any

from hosttune import cpulist
from hosttune.areas.base import (MARK, Action, AreaItems, ConfigFile, Field, Host, PlanContext, ServiceState,
                                 skipped, unsupported)
from hosttune.sysfs import HostFS

NAME = "irqbalance"
BOOT = False
SERVICE = "irqbalance"
CONFIGS = ("/etc/default/irqbalance", "/etc/sysconfig/irqbalance")
POLICY = (Field("irqs.irqbalance", "ban", "str", choices=("ban", "stop", "keep"),
                doc="ban (the isolated CPUs) | stop | keep"),)


def discover(fs: HostFS, features: dict[str, Any], cpus: list[Any]) -> dict[str, Any]:
    installed = any(fs.exists(p) for p in ("/usr/sbin/irqbalance", "/usr/bin/irqbalance"))
    sockets = [e for e in fs.listdir("/run/irqbalance") or [] if e.startswith("irqbalance")]
    config = next((p for p in CONFIGS if fs.exists(p)), None)
    return {NAME: {"installed": installed, "running": bool(sockets), "config": config}}


def show(features: dict[str, Any]) -> list[str]:
    info = features[NAME]
    return [f"irqbalance: {'installed' if info['installed'] else 'not installed'}"
            f"{', running' if info['running'] else ''}"]


def plan(ctx: PlanContext) -> dict[str, Any]:
    mode = ctx.policy["irqs"]["irqbalance"]
    info = ctx.features.get(NAME, {})
    if mode == "keep":
        return skipped("irqs.irqbalance is keep")
    if not info.get("installed"):
        return unsupported("irqbalance is not installed")
    family = ctx.features.get("os", {}).get("family")
    config = info.get("config") or (CONFIGS[1] if family == "redhat" else CONFIGS[0])
    return {"status": "planned", "mode": mode, "config": config,
            "banned_cpulist": cpulist.format(ctx.isolated), "banned_mask": cpulist.format_mask(ctx.isolated)}


def describe(setting: dict[str, Any]) -> str:
    if setting["mode"] == "ban":
        return f"{setting['mode']} (banned {setting['banned_cpulist']}) via {setting['config']}"
    return setting["mode"]


def items(setting: dict[str, Any], plan: dict[str, Any], host: Host) -> AreaItems:
    if setting["mode"] == "stop":
        return AreaItems(NAME, [ServiceState(NAME, "service", f"systemd:{SERVICE}", service=SERVICE)])
    path = setting["config"]
    current = host.fs.read(path) or ""
    kept = [line for line in current.splitlines()
            if not re.match(r"\s*IRQBALANCE_BANNED_CPU(S|LIST)=", line) and line != MARK]
    wanted = "\n".join(kept + [MARK, f"IRQBALANCE_BANNED_CPULIST={setting['banned_cpulist']}"]) + "\n"
    return AreaItems(NAME, [ConfigFile(NAME, "banned CPUs", path, value=wanted)])


def refresh(host: Host, records: list[dict[str, Any]]) -> list[Action]:
    if any(r["path"] in CONFIGS for r in records):
        return [Action(NAME, ["systemctl", "try-restart", SERVICE], "irqbalance rereads its banned CPUs")]
    return []
