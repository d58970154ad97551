"""Other tuning daemons: tuned (on by default on the Red Hat family) and power-profiles-daemon
rewrite governors, EPP and sysctls when they (re)start, so hosttune and they would undo each
other. Per policy (`managers: {tuned: stop | keep | refuse, ...}`) one is stopped and disabled (a
change like any other: saved, verified, started again by restore), kept with a warning, or the
plan is refused while it runs. First in the registry: stopped before the values they rewrite.

Found through files only, so a capture shows them too: the binary, systemd's per-unit
invocation link under /run/systemd/units (present while the unit runs), the enablement link,
and the daemon's own profile file."""

from __future__ import annotations

from typing import Any

from hosttune.areas.base import AreaItems, Field, Host, PlanContext, ServiceState, skipped
from hosttune.errors import PolicyError
from hosttune.sysfs import HostFS

NAME = "managers"
BOOT = False
KNOWN = {
    "tuned": {"binaries": ("/usr/sbin/tuned",), "profile": "/etc/tuned/active_profile", "pid": "/run/tuned/tuned.pid"},
    "power-profiles-daemon": {"binaries": ("/usr/libexec/power-profiles-daemon", "/usr/lib/power-profiles-daemon",
                                           "/usr/lib/power-profiles-daemon/power-profiles-daemon"),
                              "profile": "/var/lib/power-profiles-daemon/state.ini", "pid": None},
}
# per daemon: stop (and restore starts it again) | keep (with a warning) | refuse (no plan while it runs)
POLICY = tuple(Field(f"managers.{service}", "stop", "str", choices=("stop", "keep", "refuse"),
                     doc="stop | keep (warned) | refuse") for service in KNOWN)
WANTS = ("/etc/systemd/system/multi-user.target.wants", "/etc/systemd/system/graphical.target.wants")


def _profile(text: str | None) -> str | None:
    if text is None:
        return None
    for line in text.splitlines():  # state.ini: "Profile=balanced"; active_profile: the name alone
        key, sep, value = line.partition("=")
        if sep and key.strip() == "Profile":
            return value.strip()
    return text.strip() or None


def discover(fs: HostFS, features: dict[str, Any], cpus: list[Any]) -> dict[str, Any]:
    found = {}
    for service, where in KNOWN.items():
        if not any(fs.exists(b) for b in where["binaries"]):
            continue
        active = fs.exists(f"/run/systemd/units/invocation:{service}.service") or bool(
            where["pid"] and fs.exists(where["pid"]))
        enabled = any(fs.exists(f"{d}/{service}.service") for d in WANTS)
        found[service] = {"active": active, "enabled": enabled, "profile": _profile(fs.read(where["profile"]))}
    return {NAME: found}


def show(features: dict[str, Any]) -> list[str]:
    found = features.get(NAME, {})
    if not found:
        return ["managers: no tuned or power-profiles-daemon"]
    return [f"managers: " + ", ".join(
        f"{svc} {'running' if info['active'] else 'stopped'}{', enabled' if info['enabled'] else ''}"
        f"{', profile ' + info['profile'] if info['profile'] else ''}" for svc, info in found.items())]


def plan(ctx: PlanContext) -> dict[str, Any]:
    found = ctx.features.get(NAME, {})
    if not found:
        return skipped("no tuned or power-profiles-daemon installed")
    stop, warnings = [], []
    for service, info in found.items():
        mode = ctx.policy["managers"].get(service, "stop")
        running = f"{service} is running" + (f" (profile {info['profile']})" if info["profile"] else "")
        if mode == "refuse" and info["active"]:
            raise PolicyError(f"{running}; it rewrites governors, EPP and sysctls when it restarts "
                              f"(stop it, or set managers.{service}: stop)", where=f"managers.{service}")
        if mode == "stop":
            stop.append(service)
        elif info["active"] or info["enabled"]:
            warnings.append(f"{running if info['active'] else service + ' is enabled'} and kept "
                            f"(managers.{service}: keep): it may rewrite what hosttune sets when it restarts")
    if not stop:
        return {**skipped("every tuning daemon found is kept"), "warnings": warnings}
    return {"status": "planned", "stop": stop, "found": found, "warnings": warnings}


def describe(setting: dict[str, Any]) -> str:
    return "stop and disable " + ", ".join(setting["stop"])


def items(setting: dict[str, Any], plan: dict[str, Any], host: Host) -> AreaItems:
    return AreaItems(NAME, [ServiceState(NAME, f"{service} service", f"systemd:{service}", service=service)
                            for service in setting["stop"]])


def refresh(host: Host, records: list[dict[str, Any]]) -> list[Any]:
    return []
