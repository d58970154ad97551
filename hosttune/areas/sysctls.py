"""Kernel sysctls: written under /proc/sys now and persisted in a sysctl.d drop-in for the next
boot. Names and values are validated by the policy (they end up in a file systemd-sysctl parses)."""

from __future__ import annotations

import re
from typing import Any

from hosttune.areas.base import MARK, AreaItems, ConfigFile, Host, PlanContext, SysfsValue, skipped
from hosttune.sysfs import HostFS

NAME = "sysctls"
BOOT = False
DROPIN = "/etc/sysctl.d/90-hosttune.conf"
# The grammar of a sysctl name (checked by the policy): dotted words of ASCII letters, digits, _ and -.
# No glob character: systemd-sysctl expands `vm.*` in sysctl.d at boot, while the running apply
# cannot write it, so a glob would change the next boot without being applied or verified now.
SYSCTL_NAME = re.compile(r"[a-z0-9_]+(\.[A-Za-z0-9_-]+)+", re.ASCII)
# reported by `topology` so that a plan and a verify can be read beside them
REPORTED = ("kernel.numa_balancing", "kernel.timer_migration", "vm.swappiness", "vm.stat_interval",
            "kernel.sched_rt_runtime_us", "kernel.nmi_watchdog", "kernel.watchdog_cpumask")


def proc_path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


def discover(fs: HostFS, features: dict[str, Any], cpus: list[Any]) -> dict[str, Any]:
    return {NAME: {name: fs.read(proc_path(name)) for name in REPORTED}}


def show(features: dict[str, Any]) -> list[str]:
    return []


def plan(ctx: PlanContext) -> dict[str, Any]:
    values = {k: str(v) for k, v in sorted(ctx.policy["sysctls"].items())}
    if not values:
        return skipped("sysctls is empty")
    return {"status": "planned", "values": values}


def describe(setting: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting["values"].items())


def _words(value: str | None) -> str | None:
    return None if value is None else " ".join(value.split())


def items(setting: dict[str, Any], plan: dict[str, Any], host: Host) -> AreaItems:
    values = setting["values"]
    out: list[Any] = [SysfsValue(NAME, name, proc_path(name), value=value, normalize=_words)
                      for name, value in values.items()]
    persist = "\n".join([MARK] + [f"{k} = {v}" for k, v in values.items()]) + "\n"
    out.append(ConfigFile(NAME, "persistent drop-in", DROPIN, value=persist))
    return AreaItems(NAME, out)


def refresh(host: Host, records: list[dict[str, Any]]) -> list[Any]:
    return []
