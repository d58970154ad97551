"""Benchmark: `hosttune fleet verify` across N real SSH endpoints with bounded parallelism.

Starts N sshd instances on 127.0.0.1 (tests/fleet/sshd.py; root + openssh-server needed), each "host"
with its own synthetic host tree as hosttune_root, then times the fleet verify fan-out (inventory
read once, not timed; SSH connect + policy upload + remote `hosttune verify --json` + cleanup, timed):

- single host: one host alone (median of --repeat runs)
- fleet:       all N hosts with --forks F  (ideal: ceil(N/F) host-times, not N)
- serial:      all N hosts with forks 1    (for comparison; skip with --no-serial)

All the "hosts" share this machine's CPUs, so the remote `hosttune verify` processes compete with each
other (on 2 cores, 10 at once cannot each run at full speed); --remote-delay S adds S seconds of
remote-side waiting to each host (hosttune_command sleeps first), as a host whose time is its own
(a real remote machine, or a slow network) would.

    sudo .venv/bin/python benchmarks/fleet_verify.py --hosts 20 --forks 10
    sudo .venv/bin/python benchmarks/fleet_verify.py --hosts 20 --forks 10 --remote-delay 1
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from hosttune.fleet import inventory, ops, runner  # noqa: E402
from hosttune.fleet.ssh import Options  # noqa: E402
from tests.fleet import sshd as sshd_mod  # noqa: E402
from tests.fleet.conftest import ssh_vars, write_inventory  # noqa: E402
from tests.treegen import Spec, write_tree  # noqa: E402


SERVERS: list = []


def cpu_seconds() -> float:
    """CPU used so far by this process (the controller) and the sshd endpoints, including their reaped
    children (login sessions, the remote hosttune processes)."""
    import psutil

    total = time.process_time()
    for server in SERVERS:
        t = psutil.Process(server.proc.pid).cpu_times()
        total += t.user + t.system + t.children_user + t.children_system
    return total


def timed(hosts, forks: int, options: Options) -> tuple[float, list[str], float]:
    """(wall seconds, statuses, CPU seconds used by controller + hosts)."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    results, _ = runner.run(hosts, ops.verify, forks=forks, options=options, label="verify", progress=None)
    wall = time.perf_counter() - t0
    time.sleep(0.2)  # let the sshd sessions be reaped, so their CPU is counted
    return wall, [r.status for r in results], cpu_seconds() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=20)
    ap.add_argument("--forks", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median reported)")
    ap.add_argument("--remote-delay", type=float, default=0.0, metavar="S",
                    help="seconds each host's hosttune_command waits before running (remote-side time)")
    ap.add_argument("--no-serial", action="store_true", help="skip the forks=1 comparison run")
    args = ap.parse_args()
    reason = sshd_mod.missing()
    if reason:
        print(f"fleet_verify: cannot run: {reason}", file=sys.stderr)
        return 2

    tmp = tempfile.mkdtemp(prefix="hosttune-fleet-bench.")
    key = sshd_mod.keygen(os.path.join(tmp, "id"))
    command = sshd_mod.hosttune_command()
    if args.remote_delay:
        command = f"sleep {args.remote_delay:g}; {command}"
    servers = SERVERS
    try:
        hosts_vars = {}
        for i in range(args.hosts):
            servers.append(sshd_mod.Sshd(os.path.join(tmp, f"sshd{i}"), key + ".pub").start())
            root = write_tree(os.path.join(tmp, f"root{i}"), Spec(hostname=f"host{i:02d}", irqs=8))
            hosts_vars[f"host{i:02d}"] = ssh_vars(servers[-1], key, root, command=command)
        inv = write_inventory(os.path.join(tmp, "inv"), hosts_vars,
                              group_vars={"fleet": {"hosttune_policy": {"profile": "latency"}}})
        hosts = inventory.load([inv])
        options = Options(connect_timeout=10, timeout=120)
        timed(hosts[:1], 1, options)  # warm-up: page cache, host keys

        single_runs = [timed(hosts[:1], 1, options) for _ in range(args.repeat)]
        single = statistics.median(t for t, _, _ in single_runs)
        single_cpu = statistics.median(c for _, _, c in single_runs)
        fleet_runs = [timed(hosts, args.forks, options) for _ in range(args.repeat)]
        fleet = statistics.median(t for t, _, _ in fleet_runs)
        fleet_cpu = statistics.median(c for _, _, c in fleet_runs)
        statuses = fleet_runs[-1][1]
        serial = None if args.no_serial else timed(hosts, 1, options)[0]
        load = os.getloadavg()[0]
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    waves = math.ceil(args.hosts / args.forks)
    cpus = len(os.sched_getaffinity(0))
    print(f"fleet verify: {args.hosts} sshd endpoints on 127.0.0.1, forks {args.forks}, "
          f"remote delay {args.remote_delay:g}s, {cpus} CPUs (load average {load:.1f}), median of {args.repeat}")
    print(f"  statuses:             {', '.join(f'{statuses.count(s)} {s}' for s in sorted(set(statuses)))}")
    print(f"  single host:          {single:.2f} s  ({single_cpu:.2f} CPU-s, controller + host)")
    print(f"  {args.hosts} hosts, forks {args.forks}:  {fleet:.2f} s = {fleet / single:.1f} host-times "
          f"(ideal {waves}, serial {args.hosts})")
    print(f"                        {fleet_cpu:.2f} CPU-s for all hosts: on {cpus} shared CPUs no fan-out can "
          f"take less than {fleet_cpu / cpus:.2f} s")
    if serial is not None:
        print(f"  {args.hosts} hosts, forks 1:   {serial:.2f} s = {serial / single:.1f} host-times")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
