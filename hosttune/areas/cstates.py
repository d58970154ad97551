"""Idle states (cpuidle): states whose exit latency exceeds the policy's limit are disabled on
the isolated CPUs (housekeeping CPUs may still sleep deeply and save power)."""

from __future__ import annotations

import re
from typing import Any

from hosttune import numbers
from hosttune.areas.base import CPU, AreaItems, Field, Host, PlanContext, SysfsValue, skipped, unsupported
from hosttune.sysfs import HostFS

NAME = "cstates"
BOOT = False
POLICY = (Field("cstates.max_latency_us", None, "int?", profiles={"latency": 10},
                doc="deeper idle states off on the isolated CPUs; null: leave them"),)


def _int(text: str | None) -> int | None:
    return numbers.first_int(text)


def discover(fs: HostFS, features: dict[str, Any], cpus: list[Any]) -> dict[str, Any]:
    online = [c.id for c in cpus if c.online]
    driver = fs.read(f"{CPU}/cpuidle/current_driver")
    if driver is None or driver == "none" or not online:
        return {NAME: unsupported(f"no cpuidle driver ({CPU}/cpuidle/current_driver: {driver or 'missing'})")}
    first = online[0]
    states = []
    for entry in fs.listdir(f"{CPU}/cpu{first}/cpuidle") or []:
        if not re.fullmatch(r"state[0-9]{1,9}", entry):
            continue
        s = f"{CPU}/cpu{first}/cpuidle/{entry}"
        states.append({"state": entry, "name": fs.read(f"{s}/name"), "latency_us": _int(fs.read(f"{s}/latency")),
                       "disabled": fs.read(f"{s}/disable") == "1"})
    states.sort(key=lambda s: int(s["state"][5:]))
    governor = fs.read(f"{CPU}/cpuidle/current_governor") or fs.read(f"{CPU}/cpuidle/current_governor_ro")
    return {NAME: {"status": "ok", "driver": driver, "governor": governor, "states": states}}


def show(features: dict[str, Any]) -> list[str]:
    info = features[NAME]  # the registry prints an unsupported area's reason
    names = ", ".join(f"{st['name']}({st['latency_us']}us)" for st in info["states"]) or "none"
    return [f"cstates: {info['driver']}: {names}"]


def plan(ctx: PlanContext) -> dict[str, Any]:
    limit = ctx.policy["cstates"]["max_latency_us"]
    info = ctx.features.get(NAME, {})
    if limit is None:
        return skipped("cstates.max_latency_us is null")
    if info.get("status") != "ok":
        return unsupported(info.get("reason", "no cpuidle"))
    deep = [s["state"] for s in info["states"] if s["latency_us"] is not None and s["latency_us"] > limit]
    return {"status": "planned", "disable": deep, "cpus": sorted(ctx.isolated), "max_latency_us": limit}


def describe(setting: dict[str, Any]) -> str:
    from hosttune import cpulist

    deep = ", ".join(setting["disable"]) or "none deeper than the limit"
    return f"disable {deep} on CPUs {cpulist.format(setting['cpus'])}"


def items(setting: dict[str, Any], plan: dict[str, Any], host: Host) -> AreaItems:
    return AreaItems(NAME, [SysfsValue(NAME, f"cpu{cpu} {state} disable", f"{CPU}/cpu{cpu}/cpuidle/{state}/disable",
                                       value="1")
                            for cpu in setting["cpus"] for state in setting["disable"]])


def refresh(host: Host, records: list[dict[str, Any]]) -> list[Any]:
    return []
