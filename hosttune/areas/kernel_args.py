"""Kernel command-line arguments (isolcpus, nohz_full, rcu_nocbs, irqaffinity, extras): staged
for the next boot through the host's boot loader, verified against /proc/cmdline after it.

Boot loaders, by what the host has:
  grubby        Red Hat family: added to every boot entry; the state records exactly what was
                added and replaced, and restore removes / puts back exactly those
  systemd-boot  a loader.conf on the ESP: /etc/kernel/cmdline, then kernel-install
  grub          /etc/default/grub: a drop-in in /etc/default/grub.d/ (update-grub sources it
                as shell, so every argument is checked against a strict grammar first)
  none of them  unsupported, with the reason: runtime areas still apply
Last in the registry: nothing at runtime depends on it, and it only takes effect after a reboot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hosttune import cpulist
from hosttune.areas.base import (CPU, MARK, Action, AreaItems, BootArgs, ConfigFile, Field, Host, PlanContext,
                                 unsupported)
from hosttune.errors import HosttuneError, PolicyError
from hosttune.safeyaml import brief
from hosttune.sysfs import HostFS

NAME = "kernel_args"
BOOT = True
GRUB_DEFAULTS = "/etc/default/grub"
GRUB_DROPIN = "/etc/default/grub.d/hosttune.cfg"
KERNEL_CMDLINE = "/etc/kernel/cmdline"
GRUBBY_KEY = "grubby:ALL"  # the state key of the arguments grubby keeps in every boot entry
INSTALL_CONF = "/run/hosttune/kernel-install"  # kernel-install's configuration root for a restore
LOADER_CONFS = ("/boot/efi/loader/loader.conf", "/efi/loader/loader.conf", "/boot/loader/loader.conf")
GRUBBY = ("/usr/sbin/grubby", "/sbin/grubby", "/usr/bin/grubby")
# what a kernel parameter may look like once it is written into a file another program parses
# (a shell-sourced GRUB drop-in): the policy validates extra_kernel_args against it, and the
# writer checks every argument again
KERNEL_ARG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(=[A-Za-z0-9_.,:/+=-]*)?", re.ASCII)
MAX_KERNEL_ARGS, MAX_KERNEL_ARG_LEN = 32, 256
ISOLCPUS_FLAGS = ("managed_irq", "domain", "nohz")


def _flags(value: list[Any], path: str) -> list[Any]:
    for flag in value:
        if flag not in ISOLCPUS_FLAGS:
            raise PolicyError(f"unknown isolcpus flag {brief(flag)} (known: {', '.join(ISOLCPUS_FLAGS)})", where=path)
    return value


def _extra(value: list[Any], path: str) -> list[Any]:
    if len(value) > MAX_KERNEL_ARGS:
        raise PolicyError(f"more than {MAX_KERNEL_ARGS} arguments", where=path)
    for arg in value:
        # update-grub sources the drop-in as a shell script: no $, `, \, quotes or spaces reach it
        if not isinstance(arg, str) or len(arg) > MAX_KERNEL_ARG_LEN or not KERNEL_ARG.fullmatch(arg):
            raise PolicyError(f"each argument must look like name or name=value (letters, digits, _ . - in the "
                              f"name; also , : / + = in the value; at most {MAX_KERNEL_ARG_LEN} characters), "
                              f"got {brief(arg)}", where=path)
    return value


# the isolation keys only the kernel arguments read (isolation.enabled and .cpus are the policy's:
# the CPU partition reads them too)
POLICY = (
    Field("isolation.isolcpus_flags", ["managed_irq", "domain"], "list", check=_flags,
          doc=f"of {', '.join(ISOLCPUS_FLAGS)}"),
    Field("isolation.nohz_full", True, "bool"),
    Field("isolation.rcu_nocbs", True, "bool"),
    Field("isolation.irqaffinity", True, "bool", doc="= the housekeeping CPUs"),
    Field("isolation.extra_kernel_args", [], "list", check=_extra, doc="name or name=value each"),
)


def discover(fs: HostFS, features: dict[str, Any], cpus: list[Any]) -> dict[str, Any]:
    family = features.get("os", {}).get("family")
    if family == "redhat" and any(fs.exists(p) for p in GRUBBY):
        found: dict[str, Any] = {"status": "ok", "kind": "grubby"}
    elif any(fs.exists(p) for p in LOADER_CONFS):
        found = {"status": "ok", "kind": "systemd-boot", "config": KERNEL_CMDLINE}
    elif fs.exists(GRUB_DEFAULTS):
        found = {"status": "ok", "kind": "grub", "config": GRUB_DROPIN}
    else:
        found = unsupported(f"no boot loader hosttune can manage (no {GRUB_DEFAULTS}, no systemd-boot "
                            f"loader.conf, no grubby on a Red Hat family host)")
    return {"bootloader": found}


def show(features: dict[str, Any]) -> list[str]:
    info = features.get("bootloader", {})
    if info.get("status") != "ok":
        return [f"bootloader: unsupported: {info.get('reason')}"]
    return [f"bootloader: {info['kind']}"]


def arguments(policy: dict[str, Any], housekeeping: set[int], isolated: set[int]) -> list[str]:
    iso = policy["isolation"]
    if not iso["enabled"]:
        return list(iso["extra_kernel_args"])
    iso_list = cpulist.format(isolated)
    flags = ",".join(iso["isolcpus_flags"])
    args = [f"isolcpus={flags},{iso_list}" if flags else f"isolcpus={iso_list}"]
    if iso["nohz_full"]:
        args.append(f"nohz_full={iso_list}")
    if iso["rcu_nocbs"]:
        args.append(f"rcu_nocbs={iso_list}")
    if iso["irqaffinity"]:
        args.append(f"irqaffinity={cpulist.format(housekeeping)}")
    return args + list(iso["extra_kernel_args"])


def plan(ctx: PlanContext) -> dict[str, Any]:
    args = arguments(ctx.policy, ctx.housekeeping, ctx.isolated)
    info = ctx.features.get("bootloader", {})
    if info.get("status") != "ok":
        return {**unsupported(info.get("reason", "no boot loader")), "args": args}
    return {"status": "planned", "bootloader": info["kind"], "args": args}


def plan_fields(setting: dict[str, Any]) -> dict[str, Any]:
    """Top-level plan fields this area owns (roles and the agent read plan.kernel_args)."""
    return {"kernel_args": setting.get("args", [])}


def summary(plan: dict[str, Any]) -> list[str]:
    """Above the settings in `hosttune plan`: the arguments, also when no boot loader can take them."""
    return ["kernel arguments: " + (" ".join(plan["kernel_args"]) or "(none)")]


def describe(setting: dict[str, Any]) -> str:
    return f"{' '.join(setting['args']) or '(none)'} via {setting['bootloader']}"


def _checked(args: list[str]) -> list[str]:
    for arg in args:
        if not KERNEL_ARG.fullmatch(arg):
            raise HosttuneError(f"kernel argument {arg[:80]!r} has characters a boot loader file cannot hold safely",
                                where="isolation.extra_kernel_args")
    return args


def items(setting: dict[str, Any], plan: dict[str, Any], host: Host) -> AreaItems:
    args = _checked(setting["args"])
    kind = setting["bootloader"]
    if kind == "grubby":
        return AreaItems(NAME, [BootArgs(NAME, "grubby (every boot entry)", GRUBBY_KEY, args=args)] if args else [])
    if kind == "systemd-boot":
        current = host.fs.read(KERNEL_CMDLINE)
        return AreaItems(NAME, [KernelCmdline(NAME, "kernel-install command line", KERNEL_CMDLINE,
                                              value=_systemd_boot_cmdline(current, host, args),
                                              boot_cmdline=_systemd_boot_cmdline(current, host, []).strip())])
    content = None
    if args:
        content = (f"{MARK}\n# planned kernel arguments; applied by update-grub, active after a reboot\n"
                   f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT {" ".join(args)}"\n')
    return AreaItems(NAME, [ConfigFile(NAME, "GRUB drop-in", GRUB_DROPIN, value=content)])


@dataclass
class KernelCmdline(ConfigFile):
    """/etc/kernel/cmdline. Where it did not exist, kernel-install took the running kernel's command
    line; the snapshot then also keeps that line, because after the reboot /proc/cmdline holds the
    planned arguments, and a restore that only removed the file would leave them in the entry."""

    boot_cmdline: str = ""

    def snapshot(self, host: Host, raw: str | None) -> dict[str, Any]:
        record = super().snapshot(host, raw)
        if record["value"] is None:
            record["boot_cmdline"] = self.boot_cmdline
        return record


def _systemd_boot_cmdline(current: str | None, host: Host, args: list[str]) -> str:
    """/etc/kernel/cmdline: the current arguments (the file, else the running kernel's, without the
    loader's own), the planned ones replacing any with the same name."""
    words = (current if current is not None else host.fs.read("/proc/cmdline") or "").split()
    keys = {a.split("=", 1)[0] for a in args}
    kept = [w for w in words if w.split("=", 1)[0] not in keys and not w.startswith(("BOOT_IMAGE=", "initrd="))]
    return " ".join(kept + args) + "\n"


def refresh(host: Host, records: list[dict[str, Any]]) -> list[Action]:
    paths = {r["path"] for r in records}
    if GRUB_DROPIN in paths:
        return [Action(NAME, ["update-grub"], "regenerate the boot config")]
    cmdline = next((r for r in records if r["path"] == KERNEL_CMDLINE), None)
    if cmdline is None:
        return []
    release = (host.fs.read("/proc/sys/kernel/osrelease") or "").strip()
    argv = ["kernel-install", "add", release, f"/boot/vmlinuz-{release}"]
    if host.fs.exists(KERNEL_CMDLINE) or not cmdline.get("boot_cmdline"):
        return [Action(NAME, argv, "write the boot entry with the new command line")]
    # back to "no /etc/kernel/cmdline": kernel-install would take /proc/cmdline, which holds the
    # arguments being removed; give it the line from before the first apply through its own
    # configuration root (a copy of /etc/kernel's files plus that cmdline)
    for name in host.fs.listdir("/etc/kernel") or []:
        data = host.fs.read_bytes(f"/etc/kernel/{name}")
        if data is not None and name != "cmdline":
            host.write_file(f"{INSTALL_CONF}/{name}", data, mode=0o644)
    host.write_file(f"{INSTALL_CONF}/cmdline", cmdline["boot_cmdline"] + "\n", mode=0o644)
    return [Action(NAME, argv, "write the boot entry with the command line from before hosttune",
                   env={"KERNEL_INSTALL_CONF_ROOT": host.fs.host_path(INSTALL_CONF)})]


def cmdline_missing(plan: dict[str, Any], fs: HostFS) -> list[str]:
    """Planned kernel arguments not (yet) on the running kernel's command line."""
    running = set((fs.read("/proc/cmdline") or "").split())
    return [arg for arg in plan["kernel_args"] if arg not in running]


def reboot_required(plan: dict[str, Any], fs: HostFS) -> bool:
    return plan["settings"][NAME]["status"] == "planned" and bool(cmdline_missing(plan, fs))


def reboot_after_restore(host: Host, records: list[dict[str, Any]]) -> bool:
    """Whether the records restore put back wait for a reboot: any boot configuration (the GRUB
    drop-in, /etc/kernel/cmdline, grubby's entries) does, as the running kernel keeps the arguments
    it booted with. Without the plan restore cannot tell which of those were hosttune's, so a boot
    configuration put back always asks for the reboot."""
    return any(r["path"] in (GRUB_DROPIN, KERNEL_CMDLINE)
               or (r["path"] == GRUBBY_KEY and r.get("kind") == "grubby" and bool(r.get("entries")))
               for r in records)


def _domain_isolated(plan: dict[str, Any]) -> bool:
    """Whether /sys/devices/system/cpu/isolated should list the plan's isolated CPUs: it shows only
    CPUs isolated from the scheduler domains (isolcpus= with the `domain` flag, or no flags)."""
    for arg in plan["kernel_args"]:
        if arg.startswith("isolcpus="):
            flags = [f for f in arg[len("isolcpus="):].split(",") if f and f[0] not in "0123456789"]
            return not flags or "domain" in flags
    return False


def verify_rows(plan: dict[str, Any], host: Host, row: Any) -> list[dict[str, Any]]:
    if plan["settings"][NAME]["status"] != "planned":
        return []
    missing = cmdline_missing(plan, host.fs)
    rows = [row(NAME, "running kernel command line", " ".join(plan["kernel_args"]) or "-",
                "missing: " + " ".join(missing) if missing else "all present",
                "pending-reboot" if missing else "ok", None)]
    if _domain_isolated(plan):
        text = host.fs.read(f"{CPU}/isolated") or ""
        try:
            actual = cpulist.format(cpulist.parse(text))
        except HosttuneError:
            actual = text.strip()
        expected = cpulist.format(plan["isolated"])
        status = "ok" if actual == expected else ("pending-reboot" if missing else "drift")
        rows.append(row(NAME, "isolated CPUs", expected, actual or "-", status, None))
    return rows
