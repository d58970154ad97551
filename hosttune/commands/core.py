"""`hosttune topology`, `hosttune capture`, `hosttune plan`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hosttune import areas, cpulist
from hosttune.cliutil import add_policy, add_root, load_plan, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("topology", help="discover the host's CPU/NUMA/IRQ topology")
    add_root(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_topology)

    p = subparsers.add_parser("capture", help="pack the files discovery reads into a tarball")
    add_root(p)
    p.add_argument("-o", "--output", required=True, help="tarball to write (.tar.gz)")
    p.set_defaults(func=cmd_capture)

    p = subparsers.add_parser("plan", help="compute the tuning plan from topology and policy")
    add_root(p)
    add_policy(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plan)


def cmd_topology(args: argparse.Namespace) -> int:
    from hosttune import discovery, hwclass
    from hosttune.sysfs import HostFS

    topo = discovery.discover(HostFS.open(args.root))
    data = topo.to_dict()
    # the class `hosttune tune` overlays are keyed by (the plan carries it too)
    data["hw_class"] = {"id": hwclass.class_id(topo), "description": hwclass.describe(topo)}
    if args.json:
        print_json(data)
    else:
        print(render_topology(data))
    return 0


def render_topology(t: dict[str, Any]) -> str:
    s = t["summary"]
    cpu = t["cpu"]
    lines = [
        f"host {t['hostname']}: {s['sockets']} socket(s), {s['nodes']} NUMA node(s), {s['cores']} cores, "
        f"{s['cpus_online']} online CPUs, {s['threads_per_core']} thread(s)/core",
        f"cpu: {cpu.get('model')} ({cpu.get('arch', '?')}; {' '.join(cpu.get('flags', [])) or 'no listed ISA flags'})",
    ]
    if t.get("hw_class"):
        lines.append(f"hardware class: {t['hw_class']['id']} ({t['hw_class']['description']})")
    if s["cpus_offline"]:
        lines.append(f"offline CPUs: {cpulist.format(s['cpus_offline'])}")
    if t.get("numa", {}).get("status") == "ignored":
        lines.append(f"warning: NUMA nodes {', '.join(map(str, t['numa']['firmware_nodes']))} ignored: "
                     f"{t['numa']['reason']}; planned as one node")
    lines += [f"warning: NUMA: {w}" for w in t.get("numa", {}).get("warnings", [])]
    for node in t["nodes"]:
        dist = " ".join(f"{k}:{v}" for k, v in node["distances"].items())
        lines.append(f"node {node['id']}: cpus {cpulist.format(node['cpus']) or '-'}, "
                     f"memory {node['memory_bytes'] / 2**30:.1f} GiB, distances {dist or '-'}")
    lines.append(f"isolated: {cpulist.format(t['isolated']) or '-'}   nohz_full: {cpulist.format(t['nohz_full']) or '-'}"
                 f"   allowed to this process: {cpulist.format(t['allowed_cpus'] or []) or '?'}")
    lines.extend(areas.show(t))
    cgroup = t["cgroup"]
    lines.append(f"cgroup: unsupported: {cgroup['reason']}" if cgroup.get("status") == "unsupported"
                 else f"cgroup: v{cgroup['version']} {cgroup.get('path', '')}")
    lines.append(f"irqs: {len(t['irqs'])} (default affinity {cpulist.format(t['irq_default_affinity'] or []) or '?'})")
    lines.append(f"kernel cmdline: {t['kernel_cmdline']}")
    return "\n".join(lines)


def cmd_capture(args: argparse.Namespace) -> int:
    from hosttune import discovery, policy, sysfs

    fs = sysfs.HostFS.open(args.root)
    discovery.discover(fs)
    fs.exists(policy.CONFIG_FILE) and fs.read(policy.CONFIG_FILE)  # the host's policy, for `fleet plan`
    files, dirs = fs.recorded()
    sysfs.pack(files, dirs, args.output)
    print(f"captured {len(files)} files from {args.root} into {args.output}", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from hosttune import plan

    result = load_plan(args)
    if args.json:
        print_json(result)
    else:
        print(plan.render(result))
    return 0
