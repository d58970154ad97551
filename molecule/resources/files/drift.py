#!/usr/bin/env python3
"""Change tuned values behind the agent's back and time how long it takes to put them back.

    drift.py --hosttune BIN [--port 9477] [--timeout 150]

Writes a planned sysctl (vm.swappiness) to another value and one device IRQ's affinity to every
online CPU (isolated ones included), then polls both every second until the agent has written the
plan's values back, and reads the agent's /metrics before and after. irqbalance, which the plan
keeps running with the isolated CPUs banned, would move that IRQ off them on its own within
seconds: it is frozen (SIGSTOP) while this waits, so that the repair measured is the agent's.
Prints one JSON document: the IRQ, the values, seconds until each was repaired (null: not within
--timeout), and the agent's drift_events / reapplied counters per area before and after.
Standard library only (the guest's python3).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

SYSCTL = "vm.swappiness"


def read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()


def write(path: str, value: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(value)


def counters(port: int) -> dict[str, dict[str, float]]:
    """{"drift_events": {area: n}, "reapplied": {area: n}} from the agent's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[str, float]] = {"drift_events": {}, "reapplied": {}}
    for line in text.splitlines():
        for key in out:
            prefix = f"hosttune_{key}_total{{area=\""
            if line.startswith(prefix):
                area = line[len(prefix):].split('"', 1)[0]
                out[key][area] = float(line.rsplit(" ", 1)[1])
    return out


def cpulist(cpus: list[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def parse(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def movable_irq(pins: list[dict], everything: str) -> tuple[str, list[int]] | None:
    """A device IRQ (one with a handler) that sits where the plan pins it and whose affinity the
    kernel lets us set (not managed): its smp_affinity_list path and planned CPUs."""
    for pin in pins:
        path = f"/proc/irq/{pin['irq']}/smp_affinity_list"
        if not pin["name"] or not os.path.exists(path) or parse(read(path)) != sorted(pin["cpus"]):
            continue
        try:
            write(path, everything)
        except OSError:
            continue  # managed (EIO) or otherwise immovable
        return path, sorted(pin["cpus"])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosttune", required=True)
    parser.add_argument("--port", type=int, default=9477)
    parser.add_argument("--timeout", type=float, default=150)
    args = parser.parse_args()
    plan = json.loads(subprocess.run([args.hosttune, "plan", "--json"], capture_output=True, text=True,
                                     check=True).stdout)
    planned = str(plan["settings"]["sysctls"]["values"][SYSCTL])
    sysctl_path = "/proc/sys/" + SYSCTL.replace(".", "/")
    online = read("/sys/devices/system/cpu/online")
    before = counters(args.port)

    irqbalance = [int(p) for p in subprocess.run(["pidof", "irqbalance"], capture_output=True,
                                                  text=True).stdout.split()]
    for pid in irqbalance:
        os.kill(pid, signal.SIGSTOP)
    try:
        result = drift_and_wait(args, plan, sysctl_path, planned, online)
    finally:
        for pid in irqbalance:
            os.kill(pid, signal.SIGCONT)
    time.sleep(2)  # the counters are updated at the end of the check that repaired
    after = counters(args.port)
    result.update({key: {area: {"before": before[key].get(area, 0.0), "after": n} for area, n in after[key].items()}
                   for key in after})
    result["irqbalance_frozen"] = irqbalance
    json.dump(result, sys.stdout)
    return 0


def drift_and_wait(args: argparse.Namespace, plan: dict, sysctl_path: str, planned: str, online: str) -> dict:
    started = time.monotonic()
    write(sysctl_path, "61" if planned != "61" else "62")
    found = movable_irq(plan["settings"]["irqs"].get("pin", []), online)
    irq_path, irq_cpus = found if found else (None, [])
    pending = {"sysctl": sysctl_path}
    if irq_path:
        pending["irq"] = irq_path
    repaired: dict[str, float | None] = {key: None for key in pending}
    while pending and time.monotonic() - started < args.timeout:
        time.sleep(1)
        for key, path in list(pending.items()):
            done = read(path) == planned if key == "sysctl" else parse(read(path)) == irq_cpus
            if done:
                repaired[key] = round(time.monotonic() - started, 1)
                del pending[key]
    return {"sysctl": {"path": sysctl_path, "planned": planned, "now": read(sysctl_path)},
            "irq": {"path": irq_path, "planned": cpulist(irq_cpus), "now": read(irq_path) if irq_path else None},
            "repaired_after_s": repaired}


if __name__ == "__main__":
    sys.exit(main())
