#!/usr/bin/env python3
"""Snapshot the values hosttune may touch on a guest, and compare a later state with it.

    snapshot.py save FILE                 # in prepare, before hosttune ever runs
    snapshot.py compare FILE --state S    # after restore; S: the state file read before restore

`save` reads every file hosttune's settings can write (sysctls, IRQ affinities, THP, cpufreq,
intel_pstate, cpuidle, the irqbalance defaults, the GRUB and sysctl.d drop-ins, grub.cfg) plus
irqbalance's unit state, and writes them as JSON (a missing file is null). `save` keeps an
existing FILE: the snapshot is of the host before the first apply, not before the latest one.

`compare` prints one JSON document: for every path the state file says hosttune changed, its value
in the snapshot, now, and what hosttune recorded as the original; plus hosttune's own files and
irqbalance's state, which must also be back as they were. One exception: when irqbalance ran
before hosttune and runs again after restore, each IRQ's affinity is irqbalance's to set. It moves
IRQs between the snapshot and the first apply (so hosttune rightly records a different original),
and again within seconds of its restart (also off CPUs that stay isolated until the reboot): those
are listed as `left_to_irqbalance`, not compared. That restore wrote each of them back is checked
from its own report (cleanup.yml). `differ` lists what is not; `cmdline`
gives /proc/cmdline then and now (equal only after the reboot that drops hosttune's arguments).
Standard library only (the guest's /usr/bin/python3); reads, never writes the host.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys

PATTERNS = [
    "/proc/sys/kernel/*", "/proc/sys/vm/*",
    "/proc/irq/default_smp_affinity", "/proc/irq/*/smp_affinity", "/proc/irq/*/smp_affinity_list",
    "/sys/kernel/mm/transparent_hugepage/*", "/sys/kernel/mm/transparent_hugepage/khugepaged/*",
    "/sys/devices/system/cpu/cpufreq/boost", "/sys/devices/system/cpu/cpufreq/policy*/*",
    "/sys/devices/system/cpu/intel_pstate/*", "/sys/devices/system/cpu/amd_pstate/*",
    "/sys/devices/system/cpu/cpu*/cpuidle/state*/disable",
    "/etc/default/irqbalance", "/etc/sysconfig/irqbalance", "/etc/default/grub",
    "/etc/default/grub.d/*", "/etc/sysctl.d/*", "/boot/grub/grub.cfg",
]
# hosttune's own files: absent before the first apply, absent again after restore
OWN_FILES = ["/etc/default/grub.d/hosttune.cfg", "/etc/sysctl.d/90-hosttune.conf"]
IRQ_AFFINITY = re.compile(r"^/proc/irq/\d+/smp_affinity(_list)?$")
# restore puts these back as a whole (the GRUB config is regenerated, irqbalance restarted)
WHOLE = ["/etc/default/irqbalance", "/boot/grub/grub.cfg", "/etc/default/grub"]


def read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # write-only or refusing files (e.g. some /proc/sys entries)
        return f"<unreadable: {exc.strerror}>"


def unit_state(unit: str) -> str:
    proc = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "unknown"


def snapshot() -> dict:
    paths = sorted({p for pattern in PATTERNS for p in glob.glob(pattern) if os.path.isfile(p)})
    return {"values": {p: read(p) for p in paths + [f for f in OWN_FILES if f not in paths]},
            "irqbalance": unit_state("irqbalance.service"), "cmdline": read("/proc/cmdline")}


def words(value: str) -> list[str]:
    """A value as the kernel means it: its words; of a choice list like THP's
    "[always] madvise never", the chosen one (hosttune records that)."""
    if "[" in value and "]" in value:
        return [value.split("[", 1)[1].split("]", 1)[0]]
    return value.split()


def same(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return words(a) == words(b)


def compare(before: dict, state: dict) -> dict:
    now_irqbalance = unit_state("irqbalance.service")
    checked, differ = [], []
    originals = state.get("originals", {})
    paths = sorted({o["path"] for o in originals.values()} | set(OWN_FILES) | set(WHOLE))
    recorded = {o["path"]: o["value"] for o in originals.values()}
    left_to_irqbalance = []
    for path in paths:
        was = before["values"].get(path, read(path) if path not in before["values"] else None)
        now = read(path)
        entry = {"path": path, "before": was, "now": now}
        if path in recorded:
            entry["recorded"] = recorded[path]
        checked.append(path)
        if path not in before["values"] and path not in OWN_FILES:
            # an IRQ that appeared after the snapshot (a new device): nothing to compare with
            continue
        if before["irqbalance"] == now_irqbalance == "active" and IRQ_AFFINITY.match(path):
            left_to_irqbalance.append(path)
            continue
        if not same(was, now) or ("recorded" in entry and entry["recorded"] is not None
                                  and not same(entry["recorded"], was)):
            differ.append(entry)
    if before["irqbalance"] != now_irqbalance:
        differ.append({"path": "irqbalance.service", "before": before["irqbalance"], "now": now_irqbalance})
    return {"checked": len(checked), "touched": len(originals), "differ": differ,
            "left_to_irqbalance": left_to_irqbalance,
            "irqbalance": now_irqbalance, "cmdline": {"before": before.get("cmdline"), "now": read("/proc/cmdline")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    save = sub.add_parser("save")
    save.add_argument("file")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("file")
    cmp_.add_argument("--state", required=True, help="hosttune's state file as read before restore")
    args = parser.parse_args()
    if args.action == "save":
        if os.path.exists(args.file):
            print(json.dumps({"saved": False, "file": args.file}))
            return 0
        data = snapshot()
        tmp = f"{args.file}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, args.file)
        print(json.dumps({"saved": True, "file": args.file, "values": len(data["values"])}))
        return 0
    with open(args.file, encoding="utf-8") as fh:
        before = json.load(fh)
    with open(args.state, encoding="utf-8") as fh:
        state = json.load(fh)
    json.dump(compare(before, state), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
