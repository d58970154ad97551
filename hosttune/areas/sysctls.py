"""Kernel sysctls: written under /proc/sys now and persisted in a sysctl.d drop-in for the next
boot. Names and values are validated by the policy (they end up in a file systemd-sysctl parses)."""

from __future__ import annotations

import re
from typing import Any

from hosttune.areas.base import MARK, AreaItems, ConfigFile, Field, Host, PlanContext, SysfsValue, policy_field, skipped
from hosttune.errors import PolicyError
from hosttune.safeyaml import brief
from hosttune.sysfs import HostFS

NAME = "sysctls"
BOOT = False
# The grammar of a sysctl name: dotted words of ASCII letters, digits, _ and -. No glob character:
# systemd-sysctl expands `vm.*` in sysctl.d at boot, while the running apply cannot write it, so a
# glob would change the next boot without being applied or verified now.
SYSCTL_NAME = re.compile(r"[a-z0-9_]+(\.[A-Za-z0-9_-]+)+", re.ASCII)
MAX_SYSCTLS, MAX_NAME_LEN, MAX_VALUE_LEN = 256, 128, 1024


def _check(value: Any, field: str) -> Any:
    """Names and values are written as `name = value` lines of /etc/sysctl.d/90-hosttune.conf and
    as /proc/sys paths: one line each, no path tricks."""
    if not isinstance(value, dict):
        raise PolicyError("must be a mapping of sysctl name to value", where=field)
    if len(value) > MAX_SYSCTLS:
        raise PolicyError(f"more than {MAX_SYSCTLS} sysctls", where=field)
    for name, setting in value.items():
        where = policy_field(f"{field}.", name)
        if not isinstance(name, str) or len(name) > MAX_NAME_LEN or not SYSCTL_NAME.fullmatch(name):
            raise PolicyError(f"sysctl names look like kernel.numa_balancing (a-z, 0-9, _, -, dots; no glob "
                              f"such as *; at most {MAX_NAME_LEN} characters)", where=where)
        if not isinstance(setting, (int, str)) or isinstance(setting, bool):
            raise PolicyError("must be an integer or a string", where=where)
        text = setting if isinstance(setting, str) else str(setting)
        # printable: no newline, NUL or other line separator; a tab may separate numbers (tcp_rmem)
        if not text.strip() or len(text) > MAX_VALUE_LEN or not text.replace("\t", " ").isprintable():
            raise PolicyError(f"must be one line of 1 to {MAX_VALUE_LEN} characters without control "
                              f"characters, got {brief(setting)}", where=where)
    return value


POLICY = (Field("sysctls", {"kernel.numa_balancing": 0, "kernel.timer_migration": 0, "vm.swappiness": 10,
                            "vm.stat_interval": 10}, "mapping", check=_check,
                doc="yours are merged over these"),)
DROPIN = "/etc/sysctl.d/90-hosttune.conf"
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
