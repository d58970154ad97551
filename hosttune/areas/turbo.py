"""Turbo (boost) switch: intel_pstate/no_turbo, or cpufreq/boost (acpi-cpufreq, amd-pstate in
passive mode). Before cpufreq in the registry: switching turbo changes the frequency range the
lock is taken from."""

from __future__ import annotations

from typing import Any

from hosttune.areas.base import CPU, AreaItems, Field, Host, PlanContext, SysfsValue, skipped, unsupported
from hosttune.sysfs import HostFS

NAME = "turbo"
BOOT = False
POLICY = (Field("cpufreq.turbo", "off", "str", choices=("off", "on", "keep"), profiles={"throughput": "keep"},
                doc="off | on | keep"),)


def discover(fs: HostFS, features: dict[str, Any], cpus: list[Any]) -> dict[str, Any]:
    no_turbo = fs.read(f"{CPU}/intel_pstate/no_turbo")
    if no_turbo is not None:
        return {NAME: {"status": "ok", "switch": "intel_pstate", "path": f"{CPU}/intel_pstate/no_turbo",
                       "enabled": no_turbo.strip() == "0", "pstate_status": fs.read(f"{CPU}/intel_pstate/status")}}
    boost = fs.read(f"{CPU}/cpufreq/boost")
    if boost is not None:
        return {NAME: {"status": "ok", "switch": "cpufreq-boost", "path": f"{CPU}/cpufreq/boost",
                       "enabled": boost.strip() == "1"}}
    amd = fs.read(f"{CPU}/amd_pstate/status")
    if amd is not None:
        return {NAME: {**unsupported(f"amd_pstate in {amd} mode exposes no global boost switch"),
                       "switch": "amd_pstate", "pstate_status": amd}}
    return {NAME: unsupported("no turbo switch (no intel_pstate/no_turbo, cpufreq/boost or amd_pstate)")}


def show(features: dict[str, Any]) -> list[str]:
    info = features[NAME]  # the registry prints an unsupported area's reason
    return [f"turbo: {'on' if info['enabled'] else 'off'} ({info['switch']})"]


def plan(ctx: PlanContext) -> dict[str, Any]:
    mode = ctx.policy["cpufreq"]["turbo"]
    info = ctx.features.get(NAME, {})
    if mode == "keep":
        return skipped("cpufreq.turbo is keep")
    if info.get("status") != "ok":
        return unsupported(info.get("reason", "no turbo switch"))
    on = mode == "on"
    value = ("0" if on else "1") if info["switch"] == "intel_pstate" else ("1" if on else "0")
    return {"status": "planned", "switch": info["switch"], "path": info["path"], "value": value}


def describe(setting: dict[str, Any]) -> str:
    return f"{setting['switch']}: write {setting['value']} to {setting['path']}"


def items(setting: dict[str, Any], plan: dict[str, Any], host: Host) -> AreaItems:
    return AreaItems(NAME, [SysfsValue(NAME, setting["switch"], setting["path"], value=setting["value"])])


def refresh(host: Host, records: list[dict[str, Any]]) -> list[Any]:
    return []
