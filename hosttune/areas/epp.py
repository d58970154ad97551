"""Energy-performance preference (intel_pstate / amd-pstate active mode), per cpufreq policy.
After cpufreq: the performance governor fixes EPP, and the kernel then refuses writes (EBUSY)."""

from __future__ import annotations

import errno
from typing import Any

from hosttune.areas.cpufreq import policy_dir
from hosttune.areas.base import AreaItems, Field, Host, PlanContext, SysfsValue, skipped, sysfs_word, unsupported
from hosttune.errors import PolicyError
from hosttune.sysfs import HostFS

NAME = "epp"
BOOT = False
POLICY = (Field("cpufreq.epp", "performance", "str?", check=sysfs_word("an EPP name or number (a-z, 0-9, _) or null"),
                doc="an EPP name, or null to leave it"),)


def discover(fs: HostFS, features: dict[str, Any], cpus: list[Any]) -> dict[str, Any]:
    cpufreq = features.get("cpufreq", {})
    if cpufreq.get("status") != "ok":
        return {NAME: unsupported("no cpufreq driver")}
    values = sorted({p["epp"] for p in cpufreq["policies"] if p["epp"] is not None})
    if not values:
        return {NAME: unsupported(f"driver {cpufreq.get('driver')} has no energy_performance_preference")}
    return {NAME: {"status": "ok", "values": values, "available": cpufreq["policies"][0]["available_epp"]}}


def show(features: dict[str, Any]) -> list[str]:
    info = features[NAME]  # the registry prints an unsupported area's reason
    return [f"epp: {' '.join(info['values'])}"]


def plan(ctx: PlanContext) -> dict[str, Any]:
    want = ctx.policy["cpufreq"]["epp"]
    info = ctx.features.get(NAME, {})
    if want is None:
        return skipped("cpufreq.epp is null")
    if info.get("status") != "ok":
        return unsupported(info.get("reason", "no EPP"))
    if info["available"] and want not in info["available"]:
        raise PolicyError(f"EPP {want!r} is not offered (available: {' '.join(info['available'])})",
                          where="cpufreq.epp")
    policies = [p for p in ctx.features["cpufreq"]["policies"] if p["epp"] is not None]
    return {"status": "planned", "value": want, "policies": [p["id"] for p in policies]}


def describe(setting: dict[str, Any]) -> str:
    return f"{setting['value']} on {len(setting['policies'])} policies"


def items(setting: dict[str, Any], plan: dict[str, Any], host: Host) -> AreaItems:
    fixed = {errno.EBUSY: "EPP is fixed by the performance governor"}
    return AreaItems(NAME, [SysfsValue(NAME, f"policy{pid} epp",
                                       f"{policy_dir(host.fs, pid)}/energy_performance_preference",
                                       value=setting["value"], unsupported_errnos=fixed)
                            for pid in setting["policies"]])


def refresh(host: Host, records: list[dict[str, Any]]) -> list[Any]:
    return []
