"""Server overhead of `hosttune serve`.

(1) p50 latency of the sample model over HTTP with one client, minus the in-process p50 (same
    CPUs, same OpenVINO settings): what the HTTP layer, JSON header and copies cost per request.
    Measured in paired rounds (an in-process run, then an HTTP run) and reported as the median of
    the paired differences, so that a shared machine's changing load cancels out.
(2) requests/s of the server on the trivial model (one Add) at concurrency 8: the server's own
    ceiling.
(3) CPU time per request of the server process (psutil) against the CPU time of one in-process
    inference: the overhead in CPU time, which a loaded machine disturbs far less than wall time.

The server runs as the plan's instance (pinned to its CPUs); the load client runs pinned to the
housekeeping CPUs. Everything goes through `hosttune bench` (in-process and --mode http).

    python benchmarks/serve_overhead.py --rounds 7 --runs 5 --duration 4 --out /tmp/overhead
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from common import HOSTTUNE, add_plan_options, load_plan, median, model_repo, run_tool, wait_quiet, write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help="model repository (default: build sample + trivial into a temp dir)")
    ap.add_argument("--rounds", type=int, default=7, help="paired in-process/HTTP rounds for (1)")
    ap.add_argument("--runs", type=int, default=5, help="runs of the trivial-model throughput test (2)")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=8)
    add_plan_options(ap)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still stops its server (finally)

    from hosttune.bench import report
    from tests.serverproc import Server, request

    out = args.out or tempfile.mkdtemp(prefix="hosttune-overhead-")
    os.makedirs(out, exist_ok=True)
    repo = model_repo(args.repo or os.path.join(out, "models"), "sample", "trivial")
    plan, p = load_plan(args.plan, out)
    inst = p["instances"][0]
    client_cpus = sorted(set(p["housekeeping"]) & os.sched_getaffinity(0)) or None
    bench_args = ["--plan", plan, "--repo", repo, "--instances", inst["name"],
              "--duration", str(args.duration), "--warmup", str(args.warmup)]
    print(f"server/instance on CPUs {inst['cpus_list']} ({inst['openvino']}), client on CPUs {client_cpus}")

    docs: dict[str, dict] = {}

    def bench(name: str, extra: list[str], runs: int) -> dict:
        path = os.path.join(out, f"{name}.json")
        http = "--mode" in extra  # the HTTP load client runs on the housekeeping CPUs
        run_tool([*HOSTTUNE, "bench", *bench_args, "--runs", str(runs), "--label", name, "-o", path, *extra],
            cpus=client_cpus if http else None)
        with open(path) as f:
            docs[name] = json.load(f)
        return docs[name]["instances"][0]

    def metrics(port: int) -> list[str]:
        return request(port, "GET", "/metrics", timeout=10)[1].decode().splitlines()

    def scrape(port: int) -> dict[str, float]:
        values: dict[str, float] = {}
        for line in metrics(port):
            if line.startswith(("ovms_request_time_us_", "ovms_inference_time_us_")) and 'name="sample"' in line:
                key, _, value = line.rpartition(" ")
                name = key.split("{")[0]
                if name.endswith(("_sum", "_count")):  # request time has a line per interface (REST, gRPC)
                    values[name] = values.get(name, 0.0) + float(value)
        return values

    def cpu_s(pid: int) -> float:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return t.user + t.system

    def inprocess_cpu_us(model: str) -> float:
        """CPU time (not wall time: robust on a loaded machine) of one synchronous inference,
        on the instance's CPUs with its OpenVINO settings."""
        code = (
            "import os, sys, json, time, numpy as np, openvino as ov\n"
            "cfg = json.loads(sys.argv[1]); os.sched_setaffinity(0, cfg['cpus'])\n"
            "core = ov.Core(); m = core.read_model(cfg['path'])\n"
            "c = core.compile_model(m, 'CPU', cfg['config']); r = c.create_infer_request()\n"
            "x = np.random.rand(*m.inputs[0].shape).astype(np.float32)\n"
            "[r.infer({0: x}) for _ in range(20)]\n"
            "t = time.process_time(); n = 0; end = time.monotonic() + cfg['seconds']\n"
            "while time.monotonic() < end: r.infer({0: x}); n += 1\n"
            "print((time.process_time() - t) / n * 1e6)\n")
        cfg = {"cpus": inst["cpus"], "config": inst["openvino"], "seconds": args.duration,
               "path": os.path.join(repo, model, "1", "model.xml")}
        r = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True, check=True)
        return float(r.stdout.strip().splitlines()[-1])

    def scrape_count(port: int, model: str) -> float:
        """The model's successful infer requests, over all interfaces."""
        return sum(float(line.rsplit(" ", 1)[1]) for line in metrics(port)
                   if line.startswith("ovms_requests_success{") and 'method="ModelInfer"' in line
                   and f'name="{model}"' in line)

    # (1) paired rounds: one in-process run and one HTTP run right after each other, so that the
    # load of a shared machine changes as little as possible between the two halves of a pair
    srv = Server("--plan", plan, "--plan-instance", inst["name"], "--repo", repo, "--model", "sample",
                 "--model", "trivial", "--rest_port", str(inst["port"]), "--metrics_enable")
    try:
        a, b = [], []
        m0 = scrape(inst["port"])
        c0 = cpu_s(srv.proc.pid)
        loads = []
        for k in range(args.rounds):
            loads.append(wait_quiet(args.max_load))
            a.append(bench(f"inprocess-sample-{k + 1}", ["--model", "sample"], 1)["summary"]["latency_ms"]["p50"])
            b.append(bench(f"http-sample-c1-{k + 1}", ["--mode", "http", "--model", "sample", "--concurrency", "1"],
                           1)["summary"]["latency_ms"]["p50"])
        m1 = scrape(inst["port"])
        c1 = cpu_s(srv.proc.pid)
        t0 = scrape_count(inst["port"], "trivial")
        trivial = bench(f"http-trivial-c{args.concurrency}", ["--mode", "http", "--model", "trivial",
                                                              "--concurrency", str(args.concurrency)], args.runs)
        c2 = cpu_s(srv.proc.pid)
        t1 = scrape_count(inst["port"], "trivial")
        trivial1 = bench("http-trivial-c1", ["--mode", "http", "--model", "trivial", "--concurrency", "1"], args.runs)
    finally:
        srv.stop()

    overhead = median([y - x for x, y in zip(a, b)])
    print(f"\nsample model, in-process p50 per round (ms): {' '.join(f'{v:.3f}' for v in a)}")
    print(f"sample model, HTTP c=1 p50 per round (ms):   {' '.join(f'{v:.3f}' for v in b)}")
    print(f"HTTP overhead at p50: median of the paired differences {overhead:.3f} ms "
          f"(differences {' '.join(f'{y - x:+.3f}' for x, y in zip(a, b))})")
    n = m1["ovms_request_time_us_count"] - m0.get("ovms_request_time_us_count", 0)
    req_us = (m1["ovms_request_time_us_sum"] - m0.get("ovms_request_time_us_sum", 0)) / n
    inf_us = (m1["ovms_inference_time_us_sum"] - m0.get("ovms_inference_time_us_sum", 0)) / n
    print(f"inside the server (its /metrics, {n:.0f} requests): request {req_us:.0f} us - inference "
          f"{inf_us:.0f} us = {req_us - inf_us:.0f} us per request for JSON header, binary tensors and response")
    cpu_sample = (c1 - c0) / n * 1e6
    cpu_trivial = (c2 - c1) / max(1.0, t1 - t0) * 1e6
    cpu_inproc_sample = inprocess_cpu_us("sample")
    cpu_inproc_trivial = inprocess_cpu_us("trivial")
    print(f"server CPU time per request: sample {cpu_sample:.0f} us (in-process inference {cpu_inproc_sample:.0f} us: "
          f"overhead {cpu_sample - cpu_inproc_sample:.0f} us); trivial at c={args.concurrency} {cpu_trivial:.0f} us "
          f"(in-process inference {cpu_inproc_trivial:.0f} us: overhead {cpu_trivial - cpu_inproc_trivial:.0f} us, "
          f"i.e. at most {1e6 / max(cpu_trivial, 1):.0f} req/s per server CPU)")
    print(f"trivial model over HTTP, concurrency {args.concurrency}: "
          f"{trivial['summary']['throughput']['mean']:.0f} req/s (CV {trivial['summary']['throughput']['cv']:.1%}, "
          f"runs {' '.join(f'{v:.0f}' for v in trivial['summary']['throughput']['values'])}), "
          f"p50 {trivial['summary']['latency_ms']['p50']:.3f} ms, p99 {trivial['summary']['p99_ms']['mean']:.3f} ms")
    print(f"trivial model over HTTP, concurrency 1: {trivial1['summary']['throughput']['mean']:.0f} req/s, "
          f"p50 {trivial1['summary']['latency_ms']['p50']:.3f} ms (round trip incl. client)")
    print(f"load average at the start of each round: {' '.join(f'{v:.1f}' for v in loads)}")
    summary = {"inprocess_p50_ms": a, "http_p50_ms": b, "overhead_p50_ms": overhead, "load_average_per_round": loads,
               "server_request_us": req_us, "server_inference_us": inf_us,
               "server_cpu_us_per_request_sample": cpu_sample, "inprocess_cpu_us_sample": cpu_inproc_sample,
               "server_cpu_us_per_request_trivial": cpu_trivial, "inprocess_cpu_us_trivial": cpu_inproc_trivial,
               "trivial_rps": trivial["summary"]["throughput"]["mean"], "trivial_rps_cv": trivial["summary"]["throughput"]["cv"],
               "trivial_c1_p50_ms": trivial1["summary"]["latency_ms"]["p50"], "concurrency": args.concurrency}
    write_json(out, summary)
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write(report.html_report(list(docs.items()), title="hosttune serve overhead"))
    print(f"\nresults in {out} (report.html, summary.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
