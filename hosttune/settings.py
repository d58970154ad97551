"""The tunable settings as small units. A plan area expands into Items (one value at one path);
each Item knows how to read, compare and write itself. Apply, verify, restore and the agent all
work on these Items, so a setting is described exactly once.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hosttune import cpulist
from hosttune.errors import HosttuneError
from hosttune.sysfs import HostFS

CPU = "/sys/devices/system/cpu"
GRUB_DROPIN = "/etc/default/grub.d/hosttune.cfg"
SYSCTL_DROPIN = "/etc/sysctl.d/90-hosttune.conf"
MARK = "# managed by hosttune; `hosttune restore` removes it"


def _plain(value: str | None) -> str | None:
    return None if value is None else value.strip()


def _bracketed(value: str | None) -> str | None:
    """"always [madvise] never" -> "madvise" (the kernel's way of showing the current choice)."""
    if value is None:
        return None
    match = re.search(r"\[([^\]]+)\]", value)
    return match.group(1) if match else value.strip()


def _as_cpulist(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return cpulist.format(cpulist.parse(value))
    except HosttuneError:
        return value.strip()


def _mask_as_cpulist(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return cpulist.format(cpulist.parse_mask(value))
    except HosttuneError:
        return value.strip()


def _cpus_within(actual: str | None, planned: str | None) -> bool:
    if not actual or not planned:
        return False
    try:
        return set(cpulist.parse(actual)) <= set(cpulist.parse(planned))
    except HosttuneError:
        return False


@dataclass
class Item:
    area: str
    name: str
    path: str
    value: str | None  # what to write; None for a file means "absent"
    kind: str = "sysfs"  # sysfs: a kernel value written in place; file: a config file replaced atomically
    normalize: Callable[[str | None], str | None] = _plain
    restore_raw: bool = False  # save the raw text (not the normalized form) as the original
    # errno -> reason: a write failing so means the host cannot do it (unsupported), not an error
    unsupported_errnos: dict[int, str] = field(default_factory=dict)
    # a CPU list that is ok when it is any non-empty part of the planned one (IRQ affinities)
    within: bool = False

    @property
    def key(self) -> str:
        return self.path

    def read(self, fs: HostFS) -> str | None:
        return fs.read(self.path)

    def __post_init__(self) -> None:
        self._expected = self.normalize(self.value)  # verify compares thousands of items per check

    def actual(self, fs: HostFS) -> str | None:
        return self.normalize(self.read(fs))

    def expected(self) -> str | None:
        return self._expected

    def matches(self, raw: str | None) -> bool:
        """Whether raw text read from the host is the planned value (raw equality first: cheap)."""
        if raw is not None and self.value is not None and raw.strip() == self.value.strip():
            return True
        actual = self.normalize(raw)
        if actual == self._expected:
            return True
        return self.within and _cpus_within(actual, self._expected)

    def is_ok(self, fs: HostFS) -> bool:
        return self.matches(self.read(fs))

    def original(self, fs: HostFS) -> str | None:
        raw = self.read(fs)
        return raw if self.restore_raw or self.kind == "file" else self.normalize(raw)

    def write(self, fs: HostFS, value: str | None) -> None:
        if self.kind == "file":
            if value is None:
                fs.remove(self.path)
            else:
                fs.write_file_atomic(self.path, value if value.endswith("\n") else value + "\n")
        else:
            assert value is not None
            fs.write(self.path, value)


@dataclass
class Action:
    """A command to run after the items of an area changed (update-grub, restart irqbalance)."""

    area: str
    argv: list[str]
    why: str
    undo_argv: list[str] | None = None  # for restore, when the command is not simply re-run


@dataclass
class AreaItems:
    area: str
    items: list[Item]
    actions: list[Action] = field(default_factory=list)
    unsupported: str | None = None  # the whole area cannot be done here, and why


def build(plan: dict[str, Any], fs: HostFS) -> list[AreaItems]:
    """Expand every planned area into Items, in the order they must be applied."""
    settings = plan["settings"]
    builders: list[tuple[str, Callable[[dict[str, Any], HostFS], AreaItems]]] = [
        ("turbo", _turbo),
        ("cpufreq", _cpufreq),
        ("epp", _epp),
        ("cstates", _cstates),
        ("sysctls", _sysctls),
        ("thp", _thp),
        ("irqs", _irqs),
        ("irqbalance", _irqbalance),
    ]
    areas = []
    for area, builder in builders:
        setting = settings[area]
        if setting["status"] == "skipped":
            continue
        if setting["status"] == "unsupported":
            areas.append(AreaItems(area, [], unsupported=setting["reason"]))
            continue
        areas.append(builder(setting, fs))
    areas.append(_kernel_args(plan, fs))
    return areas


def _turbo(s: dict[str, Any], fs: HostFS) -> AreaItems:
    return AreaItems("turbo", [Item("turbo", s["switch"], s["path"], s["value"])])


def _cpufreq(s: dict[str, Any], fs: HostFS) -> AreaItems:
    items = []
    for pol in s["policies"]:
        base = f"{CPU}/cpufreq/policy{pol['id']}"
        items.append(Item("cpufreq", f"policy{pol['id']} governor", f"{base}/scaling_governor", pol["governor"]))
        if pol["min_khz"] is None:
            continue
        target = pol["min_khz"]
        current_max = fs.read(f"{base}/scaling_max_freq")
        # the kernel refuses min > max: raise max first when going up, lower min first when going down
        raising = current_max is not None and current_max.isdigit() and target > int(current_max)
        pair = [("scaling_max_freq", pol["max_khz"]), ("scaling_min_freq", target)]
        for attr, khz in (pair if raising else pair[::-1]):
            items.append(Item("cpufreq", f"policy{pol['id']} {attr}", f"{base}/{attr}", str(khz)))
    return AreaItems("cpufreq", items)


def _epp(s: dict[str, Any], fs: HostFS) -> AreaItems:
    items = [Item("epp", f"policy{pid} epp", f"{CPU}/cpufreq/policy{pid}/energy_performance_preference", s["value"],
                  unsupported_errnos={errno.EBUSY: "EPP is fixed by the performance governor"})
             for pid in s["policies"]]
    return AreaItems("epp", items)


def _cstates(s: dict[str, Any], fs: HostFS) -> AreaItems:
    items = []
    for cpu in s["cpus"]:
        for state in s["disable"]:
            path = f"{CPU}/cpu{cpu}/cpuidle/{state}/disable"
            items.append(Item("cstates", f"cpu{cpu} {state} disable", path, "1"))
    return AreaItems("cstates", items)


def _sysctls(s: dict[str, Any], fs: HostFS) -> AreaItems:
    items = [Item("sysctls", name, "/proc/sys/" + name.replace(".", "/"), value,
                  normalize=lambda v: None if v is None else " ".join(v.split()))
             for name, value in s["values"].items()]
    persist = "\n".join([MARK] + [f"{k} = {v}" for k, v in s["values"].items()]) + "\n"
    items.append(Item("sysctls", "persistent drop-in", SYSCTL_DROPIN, persist, kind="file"))
    return AreaItems("sysctls", items)


def _thp(s: dict[str, Any], fs: HostFS) -> AreaItems:
    return AreaItems("thp", [Item("thp", "transparent_hugepage enabled", "/sys/kernel/mm/transparent_hugepage/enabled",
                                  s["enabled"], normalize=_bracketed)])


def _irqs(s: dict[str, Any], fs: HostFS) -> AreaItems:
    nr_cpus = len(cpulist.parse(fs.read(f"{CPU}/possible") or "0"))
    items = [Item("irqs", "default_smp_affinity", "/proc/irq/default_smp_affinity",
                  cpulist.format_mask(s["default_affinity"], nr_cpus),
                  normalize=_mask_as_cpulist, restore_raw=True)]
    managed = {errno.EIO: "kernel-managed or per-CPU IRQ", errno.EINVAL: "IRQ cannot be moved there"}
    for pin in s["pin"]:
        items.append(Item("irqs", f"irq {pin['irq']} ({pin['name'] or '?'})", f"/proc/irq/{pin['irq']}/smp_affinity_list",
                          cpulist.format(pin["cpus"]), normalize=_as_cpulist, unsupported_errnos=managed,
                          # irqbalance (ban mode) narrows an IRQ to one CPU of the allowed set; what the
                          # plan needs is that it stays within its node's housekeeping CPUs
                          within=True))
    return AreaItems("irqs", items)


def _irqbalance(s: dict[str, Any], fs: HostFS) -> AreaItems:
    if s["mode"] == "stop":
        return AreaItems("irqbalance", [], [Action("irqbalance", ["systemctl", "disable", "--now", "irqbalance"],
                                                   "stop irqbalance", ["systemctl", "enable", "--now", "irqbalance"])])
    path = s["config"]
    current = fs.read(path) or ""
    kept = [line for line in current.splitlines()
            if not re.match(r"\s*IRQBALANCE_BANNED_CPU(S|LIST)=", line) and line != MARK]
    wanted = "\n".join(kept + [MARK, f"IRQBALANCE_BANNED_CPULIST={s['banned_cpulist']}"]) + "\n"
    return AreaItems("irqbalance", [Item("irqbalance", "banned CPUs", path, wanted, kind="file")],
                     [Action("irqbalance", ["systemctl", "try-restart", "irqbalance"], "irqbalance rereads its banned CPUs")])


def _kernel_args(plan: dict[str, Any], fs: HostFS) -> AreaItems:
    args = plan["kernel_args"]
    family = _os_family(fs)
    if family == "redhat":
        # grubby edits every boot entry in place; state keeps the args it added (see engine)
        return AreaItems("kernel_args", [], [Action("kernel_args", ["grubby", "--update-kernel=ALL", "--args=" + " ".join(args)],
                                                    "add kernel arguments", ["grubby", "--update-kernel=ALL",
                                                                             "--remove-args=" + " ".join(args)])])
    if not args:
        content = None
    else:
        content = (f"{MARK}\n# planned kernel arguments; applied by update-grub, active after a reboot\n"
                   f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT {" ".join(args)}"\n')
    return AreaItems("kernel_args", [Item("kernel_args", "GRUB drop-in", GRUB_DROPIN, content, kind="file")],
                     [Action("kernel_args", ["update-grub"], "regenerate the boot config")])


def _os_family(fs: HostFS) -> str:
    text = fs.read("/etc/os-release") or ""
    ids = " ".join(re.findall(r'^(?:ID|ID_LIKE)="?([^"\n]+)', text, re.M))
    if re.search(r"rhel|fedora|centos|rocky|alma", ids):
        return "redhat"
    return "debian"


def cmdline_missing(plan: dict[str, Any], fs: HostFS) -> list[str]:
    """Planned kernel arguments not (yet) on the running kernel's command line."""
    running = set((fs.read("/proc/cmdline") or "").split())
    return [arg for arg in plan["kernel_args"] if arg not in running]
