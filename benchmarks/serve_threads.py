"""Where should `hosttune serve`'s own threads run? A served instance under the bench client's HTTP
load, its service threads (the event loop of a pool, the waiters, decoders, gRPC) either on the
housekeeping CPU (`--service-cpus` = housekeeping, the plan's default) or on the instance's own
inference CPU (`--service-cpus` = `--cpus`), quiet and with two CPU hogs on the housekeeping CPU.

    python benchmarks/serve_threads.py --rounds 3 --duration 5 [--nireq 2]

The instance runs on the last CPU of this process, the housekeeping CPU is the first; the bench
client runs there too (as `hosttune bench --mode http` puts it). Cases are interleaved per round.
Printed per case: p50, p99, p99.9 (means of the rounds), max (ms) and throughput, and the
thread-by-CPU table of thread_table.py for one quiet run of each placement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from common import HOSTTUNE, ROOT, model_repo, write_json
from tests.serverproc import Server

TABLE = os.path.join(ROOT, "molecule", "resources", "files", "thread_table.py")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help="model repository (default: build the sample model into --out)")
    ap.add_argument("--model", default="sample")
    ap.add_argument("--nireq", type=int, default=2, help="infer requests (1: the loop runs the inference inline)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("needs two CPUs")
    hk, inf = cpus[0], cpus[-1]
    out = args.out or tempfile.mkdtemp(prefix="hosttune-threads-")
    os.makedirs(out, exist_ok=True)
    repo = model_repo(args.repo or os.path.join(out, "models"), args.model)
    hint = {"PERFORMANCE_HINT": "LATENCY"} if args.nireq == 1 else {"NUM_STREAMS": 1}
    plan = {"schema": "hosttune.plan/1", "housekeeping": [hk], "instances": [{
        "name": "node0", "node": 0, "cpus": [inf], "cpus_list": str(inf), "service_cpus": [hk],
        "mems": [0], "mems_list": "0", "port": 0, "bind": "127.0.0.1", "model": args.model,
        "openvino": {**hint, "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": True},
        "ovms": {"nireq": args.nireq}}]}
    plan_path = os.path.join(out, "plan.json")
    with open(plan_path, "w") as f:
        json.dump(plan, f)
    placements = {"service-on-housekeeping": str(hk), "service-on-instance": str(inf)}
    cases = [(p, noise) for p in placements for noise in (False, True)]
    print(f"instance on CPU {inf}, housekeeping CPU {hk} (bench client, hogs); nireq {args.nireq}; "
          f"{args.rounds} rounds x {len(cases)} cases x {args.duration} s, concurrency {args.concurrency}")
    docs: dict[str, list] = {f"{p}{'-noise' if n else '-quiet'}": [] for p, n in cases}
    for k in range(args.rounds):
        order = cases[k % len(cases):] + cases[:k % len(cases)]
        for placement, noise in order:
            name = f"{placement}{'-noise' if noise else '-quiet'}"
            srv = Server("--plan", plan_path, "--plan-instance", "node0", "--repo", repo,
                         "--service-cpus", placements[placement])
            try:
                path = os.path.join(out, f"{name}-{k}.json")
                bench = [*HOSTTUNE, "bench", "--plan", plan_path, "--mode", "http", "--url", srv.url,
                         "--model", args.model, "--concurrency", str(args.concurrency), "--runs", "1",
                         "--warmup", "1", "--duration", str(args.duration), "--client-cpus", str(hk),
                         "--no-progress"] + (["--noise", "2"] if noise else []) + ["-o", path]
                if k == 0 and not noise:  # the thread table of one quiet load per placement (not timed)
                    r = subprocess.run([sys.executable, TABLE, "--instance",
                                        f"node0:{srv.proc.pid}:{inf}{':inline' if args.nireq == 1 else ''}",
                                        "--isolated", str(inf), "--warmup", "1.5",
                                        "--duration", str(args.duration), "--", *bench[:-2]],
                                       capture_output=True, text=True)
                    print(f"-- {name}, thread_table.py exit {r.returncode}\n{r.stdout}{r.stderr}")
                subprocess.run(bench, check=True, capture_output=True)
                with open(path) as f:
                    docs[name].append(json.load(f))
            finally:
                srv.stop()
        print(f"round {k + 1}/{args.rounds}: p99 ms " + "  ".join(
            f"{n} {d[-1]['instances'][0]['runs'][0]['latency_ms']['p99']:.2f}" for n, d in docs.items() if d),
            flush=True)
    print(f"\n{'case':<32} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} {'thr/s':>7}")
    summary = {}
    for name, ds in docs.items():
        runs = [d["instances"][0]["runs"][0] for d in ds]  # one run per round: mean of the rounds, max of max
        mean = lambda key: sum(r["latency_ms"][key] for r in runs) / len(runs)  # noqa: E731
        summary[name] = {"p50_ms": mean("p50"), "p99_ms": mean("p99"), "p999_ms": mean("p99.9"),
                         "max_ms": max(r["latency_ms"]["max"] for r in runs),
                         "throughput": sum(r["throughput"] for r in runs) / len(runs)}
        m = summary[name]
        print(f"{name:<32} {m['p50_ms']:>8.3f} {m['p99_ms']:>8.3f} {m['p999_ms']:>9.3f} {m['max_ms']:>8.3f} "
              f"{m['throughput']:>7.1f}")
    for p in placements:
        q, n = summary[f"{p}-quiet"], summary[f"{p}-noise"]
        print(f"{p}: under the hogs / quiet: p99 {n['p99_ms'] / q['p99_ms']:.2f}x, "
              f"p99.9 {n['p999_ms'] / q['p999_ms']:.2f}x, max {n['max_ms'] / q['max_ms']:.2f}x")
    write_json(out, summary)
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
