#!/usr/bin/env python3
"""Read what molecule verify checks, on the guest, and print it as one JSON document.

    guest_facts.py --hosttune /opt/hosttune/venv/bin/hosttune --kind ovms|systemd [--prefix hosttune-]

Standard library only (the guest's /usr/bin/python3). The plan comes from `hosttune plan --json`
on the guest; CPU lists are expanded to sorted integer lists so the playbook compares sets, and
the kernel's own strings are kept for the messages. Nothing is changed on the guest: the IRQ check
writes each IRQ's current affinity back to itself, which the kernel refuses (EIO) only for
managed IRQs, whose affinity it owns.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys


def parse_cpulist(text: str) -> list[int]:
    out: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.update(range(int(lo), int(hi) + 1))
        else:
            out.add(int(part))
    return sorted(out)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def irq_facts(isolated: set[int]) -> dict:
    """Every IRQ whose affinity includes an isolated CPU: managed (the kernel refuses a write of
    the same value) or a violation (the write is accepted: hosttune could have moved it)."""
    checked, managed, violations = 0, [], []
    for path in sorted(glob.glob("/proc/irq/[0-9]*"), key=lambda p: int(os.path.basename(p))):
        irq = int(os.path.basename(path))
        try:
            text = read(f"{path}/smp_affinity_list")
        except OSError:
            continue
        checked += 1
        cpus = set(parse_cpulist(text))
        if not cpus & isolated:
            continue
        actions = [os.path.basename(a) for a in glob.glob(f"{path}/*") if os.path.isdir(a)]
        try:
            effective = read(f"{path}/effective_affinity_list")
        except OSError:
            effective = ""
        entry = {"irq": irq, "affinity": text, "effective": effective, "actions": actions}
        try:
            with open(f"{path}/smp_affinity_list", "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            entry["write_error"] = exc.strerror
            managed.append(entry)
            continue
        violations.append(entry)
    return {"checked": checked, "managed": managed, "violations": violations}


def instance_facts(plan: dict, kind: str, prefix: str) -> list[dict]:
    out = []
    for inst in plan.get("instances", []):
        # a unit allows the inference CPUs and the node's housekeeping CPUs (serve's own threads); a
        # container (--cpuset-cpus) the inference CPUs only
        service = inst.get("service_cpus_list", "") if kind == "systemd" else ""
        allowed = ",".join(x for x in (inst["cpus_list"], service) if x)
        entry = {"name": inst["name"], "node": inst["node"], "port": inst["port"],
                 "plan_cpus": parse_cpulist(allowed), "plan_cpus_list": allowed,
                 "plan_mems": parse_cpulist(inst["mems_list"]), "plan_mems_list": inst["mems_list"]}
        if kind == "ovms":
            entry["unit"] = prefix + inst["name"]
            proc = run(["docker", "inspect", "--format", "{{.State.Pid}} {{.State.Status}}", entry["unit"]])
            pid, _, state = proc.stdout.strip().partition(" ")
        else:
            entry["unit"] = f"hosttune-instance@{inst['name'].removeprefix('node')}.service"  # the role's unit id
            proc = run(["systemctl", "show", "--property", "MainPID,ActiveState", entry["unit"]])
            props = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
            pid, state = props.get("MainPID", "0"), props.get("ActiveState", "unknown")
        entry["state"] = state
        entry["pid"] = int(pid) if pid.isdigit() else 0
        if entry["pid"] > 0:
            try:
                cgroup = read(f"/proc/{entry['pid']}/cgroup").splitlines()
                rel = next(line.split("::", 1)[1] for line in cgroup if line.startswith("0::"))
                base = "/sys/fs/cgroup" + rel
                entry["cgroup"] = base
                entry["cpus_effective"] = read(f"{base}/cpuset.cpus.effective")
                entry["mems_effective"] = read(f"{base}/cpuset.mems.effective")
                entry["cpus"] = parse_cpulist(entry["cpus_effective"])
                entry["mems"] = parse_cpulist(entry["mems_effective"])
                status = read(f"/proc/{entry['pid']}/status")
                for line in status.splitlines():
                    if line.startswith("Cpus_allowed_list:"):
                        entry["affinity"] = parse_cpulist(line.split(":", 1)[1])
                    if line.startswith("Mems_allowed_list:"):
                        entry["mems_allowed"] = parse_cpulist(line.split(":", 1)[1])
            except (OSError, StopIteration) as exc:
                entry["error"] = str(exc)
        out.append(entry)
    return out


def listeners() -> list[str]:
    proc = run(["ss", "-ltnH"])
    return sorted({line.split()[3] for line in proc.stdout.splitlines() if len(line.split()) >= 4})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosttune", required=True)
    parser.add_argument("--kind", required=True, choices=["ovms", "systemd"])
    parser.add_argument("--prefix", default="hosttune-")
    args = parser.parse_args()
    proc = run([args.hosttune, "plan", "--json"])
    if proc.returncode:
        raise SystemExit(f"hosttune plan --json failed ({proc.returncode}): {proc.stderr.strip()}")
    plan = json.loads(proc.stdout)
    isolated_text = read("/sys/devices/system/cpu/isolated")
    siblings = read("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
    sysctls = {}
    for name in plan["settings"].get("sysctls", {}).get("values", {}):
        try:
            sysctls[name] = read("/proc/sys/" + name.replace(".", "/"))
        except OSError as exc:
            sysctls[name] = f"unreadable: {exc.strerror}"
    facts = {
        "plan": plan,
        "cmdline": read("/proc/cmdline"),
        "isolated_text": isolated_text,
        "isolated": parse_cpulist(isolated_text),
        "threads_per_core": len(parse_cpulist(siblings)),
        "numa_nodes": sorted(int(os.path.basename(p)[4:]) for p in glob.glob("/sys/devices/system/node/node[0-9]*")),
        "sysctls": sysctls,
        "irqs": irq_facts(set(plan["isolated"])),
        "instances": instance_facts(plan, args.kind, args.prefix),
        "listeners": listeners(),
    }
    json.dump(facts, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
