#!/usr/bin/env python3
"""Where every thread of each `hosttune serve` instance runs, sampled under load.

Stdlib only: runs on a guest with its own python3 (Molecule's verify) as well as here (tests).

    thread_table.py --instance node0:1234:2-3 [--instance node1:...] [--service-process agent:PID]
                    [--isolated 2-3,6-7] [--duration 20] [--interval 0.01] [-- LOAD CMD ...]

An instance is NAME:PID:CPUS[:inline] - its inference CPUs (the plan's `cpus`), and `inline` when its
event loop runs the inference itself (a pool of one: the latency profile). A load CMD (e.g.
`hosttune bench --mode http ...`, everything after `--`) runs in the background while the
instances are sampled and is stopped at the end. Each sample reads /proc/PID/task/*/stat (state,
field 39 = the CPU it last ran on) and status (Cpus_allowed_list) of every thread.

A thread is a *service* thread when it is ours but not an inference thread: the main thread (the
event loop) unless `inline`, and every thread hosttune or grpc named (hosttune-*, grpc*, ...).
An unnamed thread allowed on the instance's CPUs is OpenVINO's (inference), one that is not is
"other" (an unnamed grpc or import thread kept off them). Printed per instance, always: each thread's role,
allowed CPUs, how often it was seen running (state R) on each CPU and its CPU time; then the
samples in which two running threads shared a CPU, and those in which that happened while another
of the instance's isolated CPUs had no running thread of the instance.

A --service-process (the agent) and the --load command itself (the bench client) belong on the
housekeeping CPUs as a whole: judged are the CPUs each thread was allowed at the last sample, and
those they were seen running on once none of them was allowed on an isolated CPU any more (the
client pins itself after it has started).

Exit 1 on a violation (docs/isolation.md):
  - a service thread seen running on an isolated CPU;
  - a thread of a --service-process or of the load seen running on, or (at the end) allowed on, an
    isolated CPU;
  - two running threads sharing one of the instance's CPUs while another of its isolated CPUs had
    none, in more than --max-imbalance of the samples (default 2%: a sample reads the threads one
    after the other, so one that finishes on one CPU and one that starts there can both read R).
Exit 2 on bad arguments or an instance that is not running; the JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

# kernel names of hosttune's threads (hosttune.threads.name_me) and of grpc's
SERVICE_NAMES = ("hosttune-", "grpc", "default-executo", "resolver-execu", "timer_manager", "event_engine",
                 "global-executor", "lifeguard")


def parse_cpus(text: str) -> list[int]:
    out: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return sorted(out)


def fmt_cpus(cpus) -> str:
    cpus = sorted(set(cpus))
    parts, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts) or "-"


def read_task(pid: int, tid: str) -> tuple[str, str, int, int, str] | None:
    """(comm, state, last cpu, utime+stime ticks, Cpus_allowed_list) or None when it ended."""
    base = f"/proc/{pid}/task/{tid}"
    try:
        with open(base + "/stat") as f:
            stat = f.read()
        with open(base + "/status") as f:
            status = f.read()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    allowed = ""
    for line in status.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            allowed = line.split(":", 1)[1].strip()
            break
    return comm, fields[0], int(fields[36]), int(fields[11]) + int(fields[12]), allowed


class Instance:
    def __init__(self, spec: str):
        parts = spec.split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "inline") or not parts[1].isdigit() \
                or not all(c.isdigit() or c in ",-" for c in parts[2]) or not parts[2]:
            raise ValueError(f"--instance {spec!r}: expected NAME:PID:CPUS[:inline]")
        self.name, self.pid, self.cpus = parts[0], int(parts[1]), parse_cpus(parts[2])
        self.inline = len(parts) == 4
        self.threads: dict[str, dict] = {}  # tid -> comm, allowed (every value seen), ran {cpu: n}, ticks
        self.samples = 0
        self.shared = 0  # samples with two running threads on one CPU of the instance
        self.imbalanced = 0  # ... while another isolated CPU of the instance had none
        self.examples: list[str] = []

    def role(self, tid: str, comm: str, allowed: set[str]) -> str:
        if tid == str(self.pid):
            return "inference (loop, inline)" if self.inline else "service (loop)"
        if comm.startswith(SERVICE_NAMES):
            return "service"
        # unnamed: OpenVINO's when it may run on the inference CPUs (some of grpc's are unnamed too)
        if any(set(parse_cpus(a)) & set(self.cpus) for a in allowed):
            return "inference"
        return "other"

    def sample(self, isolated: set[int]) -> None:
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return
        running: dict[int, list[str]] = {}
        for tid in tids:
            got = read_task(self.pid, tid)
            if got is None:
                continue
            comm, state, cpu, ticks, allowed = got
            t = self.threads.setdefault(tid, {"comm": comm, "allowed": set(), "ran": {}, "first": ticks})
            t["comm"], t["ticks"] = comm, ticks
            t["allowed"].add(allowed)
            if state == "R":
                t["ran"][cpu] = t["ran"].get(cpu, 0) + 1
                running.setdefault(cpu, []).append(tid)
        self.samples += 1
        mine = [c for c in self.cpus if c in isolated] or self.cpus
        crowded = [c for c in self.cpus if len(running.get(c, ())) > 1]
        if crowded:
            self.shared += 1
            idle = [c for c in mine if not running.get(c)]
            if idle:
                self.imbalanced += 1
                if len(self.examples) < 5:
                    self.examples.append(f"CPU {crowded[0]} ran threads {','.join(running[crowded[0]])} "
                                         f"while CPU {fmt_cpus(idle)} had none")

    def report(self, isolated: set[int], hz: int) -> dict:
        rows, service_on_isolated = [], []
        for tid, t in sorted(self.threads.items(), key=lambda kv: int(kv[0])):
            role = self.role(tid, t["comm"], t["allowed"])
            on_isolated = sorted(c for c in t["ran"] if c in isolated)
            if role.startswith("service") and on_isolated:
                service_on_isolated.append(f"{tid} ({t['comm']}) ran on isolated CPU(s) {fmt_cpus(on_isolated)}")
            rows.append({"tid": int(tid), "comm": t["comm"], "role": role, "allowed": sorted(t["allowed"]),
                         "ran": {str(c): n for c, n in sorted(t["ran"].items())},
                         "cpu_s": round((t.get("ticks", t["first"]) - t["first"]) / hz, 3)})
        return {"name": self.name, "pid": self.pid, "cpus": fmt_cpus(self.cpus), "inline": self.inline,
                "samples": self.samples, "shared_samples": self.shared, "imbalanced_samples": self.imbalanced,
                "imbalanced_examples": self.examples, "service_on_isolated": service_on_isolated, "threads": rows}


class ServiceProcess:
    """A process that belongs on the housekeeping CPUs as a whole (the agent, the bench client)."""

    def __init__(self, spec: str):
        name, _, pid = spec.rpartition(":")
        if not name or not pid.isdigit():
            raise ValueError(f"--service-process {spec!r}: expected NAME:PID")
        self.name, self.pid = name, int(pid)
        self.allowed: dict[str, str] = {}  # tid -> its Cpus_allowed_list at the last sample
        self.ran: dict[int, int] = {}

    def sample(self, isolated: set[int]) -> None:
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return
        allowed, running = {}, []  # the threads alive now: one that ended keeps no old mask here
        for tid in tids:
            got = read_task(self.pid, tid)
            if got is None:
                continue
            allowed[tid] = got[4]
            if got[1] == "R":
                running.append(got[2])
        if allowed:
            self.allowed = allowed
        # where it runs counts once no thread may use an isolated CPU any more: the load client
        # pins itself after it has started (a mask that stays on them is judged at the end)
        if not any(set(parse_cpus(a)) & isolated for a in allowed.values()):
            for cpu in running:
                self.ran[cpu] = self.ran.get(cpu, 0) + 1

    def report(self, isolated: set[int]) -> dict:
        allowed = sorted({c for a in self.allowed.values() for c in parse_cpus(a)})
        bad = sorted((set(allowed) | set(self.ran)) & isolated)
        return {"name": self.name, "pid": self.pid, "threads": len(self.allowed), "allowed": fmt_cpus(allowed),
                "ran": {str(c): n for c, n in sorted(self.ran.items())}, "on_isolated": fmt_cpus(bad) if bad else ""}


def table(rep: dict, isolated: set[int], duration: float) -> str:
    lines = [f"== {rep['name']} (pid {rep['pid']}): inference CPUs {rep['cpus']}, loop "
             f"{'runs the inference (inline)' if rep['inline'] else 'is a service thread'}; "
             f"{rep['samples']} samples in {duration:.0f} s; isolated {fmt_cpus(isolated)}"]
    cpus = sorted({int(c) for r in rep["threads"] for c in r["ran"]})
    head = f"{'tid':>8} {'comm':<16} {'role':<25} {'allowed':<14} {'cpu s':>7} " + "".join(
        f"{'cpu' + str(c) + ('*' if c in isolated else ''):>8}" for c in cpus)
    lines.append(head)
    for r in rep["threads"]:
        lines.append(f"{r['tid']:>8} {r['comm'][:16]:<16} {r['role']:<25} {'|'.join(r['allowed'])[:14]:<14} "
                     f"{r['cpu_s']:>7.2f} " + "".join(f"{r['ran'].get(str(c), ''):>8}" for c in cpus))
    n = max(rep["samples"], 1)
    lines.append(f"(counts: samples in which the thread was running (R) on that CPU; * isolated)")
    lines.append(f"two running threads on one CPU: {rep['shared_samples']} samples ({rep['shared_samples'] / n:.1%}); "
                 f"of them while another isolated CPU of the instance had none: {rep['imbalanced_samples']} "
                 f"({rep['imbalanced_samples'] / n:.1%})" + (f", e.g. {rep['imbalanced_examples'][0]}"
                                                              if rep["imbalanced_examples"] else ""))
    lines.append("service threads on isolated CPUs: " + ("; ".join(rep["service_on_isolated"]) or "none"))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    load: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, load = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instance", action="append", default=[], metavar="NAME:PID:CPUS[:inline]")
    ap.add_argument("--service-process", action="append", default=[], metavar="NAME:PID",
                    help="a process that must stay off the isolated CPUs (the agent); the --load command is one")
    ap.add_argument("--isolated", help="isolated CPUs (default: /sys/devices/system/cpu/isolated, else each "
                                       "instance's CPUs)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of sampling")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds between starting --load and sampling")
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between samples")
    ap.add_argument("--max-imbalance", type=float, default=0.02,
                    help="fraction of samples allowed to show a shared CPU beside an idle isolated one")
    ap.add_argument("--json", action="store_true", help="print the result as JSON after the tables")
    args = ap.parse_args(argv)
    try:
        instances = [Instance(s) for s in args.instance]
        services = [ServiceProcess(s) for s in args.service_process]
    except ValueError as exc:
        print(f"thread_table: {exc}", file=sys.stderr)
        return 2
    if not instances and not services:
        print("thread_table: nothing to sample (--instance, --service-process)", file=sys.stderr)
        return 2
    for what in instances + services:
        if not os.path.isdir(f"/proc/{what.pid}/task"):
            print(f"thread_table: {what.name}: no process {what.pid}", file=sys.stderr)
            return 2
    if args.isolated is not None:
        isolated = set(parse_cpus(args.isolated))
    else:
        try:
            with open("/sys/devices/system/cpu/isolated") as f:
                isolated = set(parse_cpus(f.read()))
        except OSError:
            isolated = set()
    if not isolated:  # no isolcpus: judge each instance's own CPUs as its isolated ones
        isolated = {c for inst in instances for c in inst.cpus}
    proc = None
    if load:
        proc = subprocess.Popen(load, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        services.append(ServiceProcess(f"bench client:{proc.pid}"))
        time.sleep(args.warmup)
    try:
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline:
            for inst in instances:
                inst.sample(isolated)
            for svc in services:
                svc.sample(isolated)
            time.sleep(args.interval)
    finally:
        load_rc, load_err = None, ""
        if proc is not None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                _, load_err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                _, load_err = proc.communicate()
            load_rc = proc.returncode
    hz = os.sysconf("SC_CLK_TCK")
    reports = [inst.report(isolated, hz) for inst in instances]
    failed = []
    for rep in reports:
        print(table(rep, isolated, args.duration))
        print()
        if rep["service_on_isolated"]:
            failed.append(f"{rep['name']}: a service thread ran on an isolated CPU")
        if rep["imbalanced_samples"] > args.max_imbalance * max(rep["samples"], 1):
            failed.append(f"{rep['name']}: two threads shared a CPU while another isolated CPU idled in "
                          f"{rep['imbalanced_samples']} of {rep['samples']} samples "
                          f"(more than {args.max_imbalance:.0%})")
    services_rep = [svc.report(isolated) for svc in services]
    for rep in services_rep:
        print(f"== {rep['name']} (pid {rep['pid']}): {rep['threads']} threads allowed on CPUs {rep['allowed']}, "
              f"seen running on " + (", ".join(f"cpu{c} x{n}" for c, n in rep["ran"].items()) or "-")
              + (f"; ON ISOLATED CPU(S) {rep['on_isolated']}" if rep["on_isolated"] else ""))
        if rep["on_isolated"]:
            failed.append(f"{rep['name']}: allowed on or running on isolated CPU(s) {rep['on_isolated']}")
    if proc is not None:
        err = load_err.strip()[-300:]
        stopped = load_rc in (-signal.SIGTERM, 128 + signal.SIGTERM)
        print(f"load: {' '.join(load)} -> exit {load_rc}" + (" (stopped at the end)" if stopped else "")
              + (f": {err}" if err else ""))
        # without load the tables prove nothing: the load must have run until it was stopped, and
        # every instance's inference must have been seen running
        if not stopped:
            failed.append(f"the load ended on its own (exit {load_rc}) before the sampling did: no load was measured")
        for rep in reports:
            if not any(t["role"].startswith("inference") and sum(t["ran"].values()) for t in rep["threads"]):
                failed.append(f"{rep['name']}: no inference thread was seen running under the load")
    if args.json:
        print(json.dumps({"isolated": sorted(isolated), "instances": reports, "services": services_rep,
                          "failed": failed}))
    for line in failed:
        print(f"thread_table: FAIL {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
