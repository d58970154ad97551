"""Transparent huge pages: the `enabled` mode."""

from __future__ import annotations

import re
from typing import Any

from hosttune.areas.base import AreaItems, Field, Host, PlanContext, SysfsValue, bracketed, skipped, unsupported
from hosttune.sysfs import HostFS

NAME = "thp"
BOOT = False
ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
POLICY = (Field("thp", "never", "str", choices=("always", "madvise", "never", "keep"),
                profiles={"throughput": "madvise"},
                doc="always | madvise | never | keep"),)


def discover(fs: HostFS, features: dict[str, Any], cpus: list[Any]) -> dict[str, Any]:
    enabled = fs.read(ENABLED)
    if enabled is None:
        return {NAME: unsupported("no /sys/kernel/mm/transparent_hugepage")}
    selected = re.search(r"\[(\w+)\]", enabled)
    defrag = fs.read("/sys/kernel/mm/transparent_hugepage/defrag") or ""
    defrag_sel = re.search(r"\[([\w+]+)\]", defrag)
    return {NAME: {"status": "ok", "enabled": selected.group(1) if selected else enabled,
                   "defrag": defrag_sel.group(1) if defrag_sel else None}}


def show(features: dict[str, Any]) -> list[str]:
    info = features[NAME]  # the registry prints an unsupported area's reason
    return [f"thp: enabled={info['enabled']} defrag={info['defrag']}"]


def plan(ctx: PlanContext) -> dict[str, Any]:
    mode = ctx.policy["thp"]
    if mode == "keep":
        return skipped("thp is keep")
    info = ctx.features.get(NAME, {})
    if info.get("status") != "ok":
        return unsupported(info.get("reason", "no THP"))
    return {"status": "planned", "enabled": mode}


def describe(setting: dict[str, Any]) -> str:
    return f"enabled={setting['enabled']}"


def items(setting: dict[str, Any], plan: dict[str, Any], host: Host) -> AreaItems:
    return AreaItems(NAME, [SysfsValue(NAME, "transparent_hugepage enabled", ENABLED, value=setting["enabled"],
                                       normalize=bracketed)])


def refresh(host: Host, records: list[dict[str, Any]]) -> list[Any]:
    return []
