"""Server overhead of `hosttune serve`.

(1) p50 latency of the sample model over HTTP with one client, minus the in-process p50 (same
    CPUs, same OpenVINO settings): what the HTTP layer, JSON header and copies cost per request.
(2) requests/s of the server on the trivial model (one Add) at concurrency 8: the server's own
    ceiling.

The server runs as the plan's instance (pinned to its CPUs); the load client runs pinned to the
housekeeping CPUs. Everything goes through `hosttune bench` (in-process and --mode http).

    python benchmarks/serve_overhead.py --runs 5 --duration 5 --out /tmp/overhead
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HOSTTUNE = [sys.executable, "-m", "hosttune"]


def run(cmd: list[str], cpus: list[int] | None = None) -> None:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    if r.returncode not in (0, 1):
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help="model repository (default: build sample + trivial into a temp dir)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--plan", help="plan JSON (default: hosttune plan --json of this host)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from hosttune.bench import report
    from hosttune.serve.process import Server

    out = args.out or tempfile.mkdtemp(prefix="hosttune-overhead-")
    os.makedirs(out, exist_ok=True)
    repo = args.repo or os.path.join(out, "models")
    for variant in ("sample", "trivial"):
        if not os.path.isdir(os.path.join(repo, variant)):
            run([*HOSTTUNE, "model", "sample", "--repo", repo, "--variant", variant, "--no-int8"])
    plan = args.plan
    if not plan:
        plan = os.path.join(out, "plan.json")
        with open(plan, "w") as f:
            subprocess.run([*HOSTTUNE, "plan", "--json"], stdout=f, check=True)
    with open(plan) as f:
        p = json.load(f)
    inst = p["instances"][0]
    client_cpus = sorted(set(p["housekeeping"]) & os.sched_getaffinity(0)) or None
    common = ["--plan", plan, "--repo", repo, "--instances", inst["name"], "--runs", str(args.runs),
              "--duration", str(args.duration), "--warmup", str(args.warmup)]
    print(f"server/instance on CPUs {inst['cpus_list']} ({inst['openvino']}), client on CPUs {client_cpus}")

    docs = {}

    def bench(name: str, extra: list[str]) -> dict:
        path = os.path.join(out, f"{name}.json")
        http = "--mode" in extra  # the HTTP load client runs on the housekeeping CPUs
        run([*HOSTTUNE, "bench", *common, "--label", name, "-o", path, *extra], cpus=client_cpus if http else None)
        with open(path) as f:
            docs[name] = json.load(f)
        return docs[name]["instances"][0]

    inproc = bench("inprocess-sample", ["--model", "sample"])
    srv = Server("--plan", plan, "--plan-instance", inst["name"], "--repo", repo, "--model", "sample",
                 "--model", "trivial", "--port", str(inst["port"]))
    try:
        over_http = bench("http-sample-c1", ["--mode", "http", "--model", "sample", "--concurrency", "1"])
        trivial = bench(f"http-trivial-c{args.concurrency}", ["--mode", "http", "--model", "trivial",
                                                              "--concurrency", str(args.concurrency)])
        trivial1 = bench("http-trivial-c1", ["--mode", "http", "--model", "trivial", "--concurrency", "1"])
    finally:
        srv.stop()

    def p50s(i: dict) -> list[float]:
        return [r["latency_ms"]["p50"] for r in i["runs"]]

    a, b = p50s(inproc), p50s(over_http)
    med_a = sorted(a)[len(a) // 2]
    med_b = sorted(b)[len(b) // 2]
    print(f"\nsample model, in-process p50 per run (ms):   {' '.join(f'{v:.3f}' for v in a)}")
    print(f"sample model, HTTP c=1 p50 per run (ms):      {' '.join(f'{v:.3f}' for v in b)}")
    print(f"HTTP overhead at p50 (median of runs): {med_b - med_a:.3f} ms "
          f"({med_b:.3f} - {med_a:.3f}; per-run differences "
          f"{' '.join(f'{y - x:+.3f}' for x, y in zip(a, b))})")
    print(f"trivial model over HTTP, concurrency {args.concurrency}: "
          f"{trivial['summary']['throughput']['mean']:.0f} req/s (CV {trivial['summary']['throughput']['cv']:.1%}), "
          f"p50 {trivial['summary']['latency_ms']['p50']:.3f} ms, p99 {trivial['summary']['p99_ms']['mean']:.3f} ms")
    print(f"trivial model over HTTP, concurrency 1: {trivial1['summary']['throughput']['mean']:.0f} req/s, "
          f"p50 {trivial1['summary']['latency_ms']['p50']:.3f} ms (round trip incl. client)")
    summary = {"inprocess_p50_ms": a, "http_p50_ms": b, "overhead_p50_ms": med_b - med_a,
               "trivial_rps": trivial["summary"]["throughput"]["mean"], "trivial_rps_cv": trivial["summary"]["throughput"]["cv"],
               "trivial_c1_p50_ms": trivial1["summary"]["latency_ms"]["p50"], "concurrency": args.concurrency}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write(report.html_report(list(docs.items()), title="hosttune serve overhead"))
    print(f"\nresults in {out} (report.html, summary.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
