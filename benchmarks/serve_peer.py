"""`hosttune serve` against the server a user would write instead (benchmarks/peer_fastapi.py:
FastAPI + OpenVINO, one compiled model, `await request.json()`, one uvicorn worker), on the same
sample model and the same JSON body (37,632 FP32 values per request).

Both servers run at once, pinned to the server CPU with the same OpenVINO properties; the load
client runs pinned to the client CPU, one keep-alive connection per concurrent stream, the body
encoded once. Every round runs each case once (the order alternates between rounds), so a shared
machine's changing load falls on both sides alike. Also measured in the same rounds: the binary
tensor path of `hosttune serve` at concurrency 1 against the in-process latency of the model (a
synchronous infer loop on the server CPU, same properties), both with the server's default and
from a second `hosttune serve` that polls for the next request after each answer
(`--idle-poll-us`, the latency profile's 1000 by default; the JSON cases run against the default).

    python benchmarks/serve_peer.py --rounds 3 --duration 5 --out /tmp/peer

Writes summary.json and report.html (latency CDFs, throughput per round) into --out. FastAPI is
pip-installed into this Python on first use (it is no dependency of hosttune).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
HOSTTUNE = [sys.executable, "-m", "hosttune"]


def pinned(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


def ensure_fastapi() -> None:
    try:
        import fastapi  # noqa: F401
    except ImportError:
        print("installing fastapi for the peer server (pip) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "fastapi"], check=True)


def sample_repo(repo: str) -> str:
    """`repo`, with the sample model built into it first if it has none."""
    if not os.path.isdir(os.path.join(repo, "sample")):
        subprocess.run([*HOSTTUNE, "model", "sample", "--repo", repo, "--no-int8"], check=True,
                       stdout=subprocess.DEVNULL)
    return repo


def start_peer(model_xml: str, config: dict, cpu: int, port: int) -> subprocess.Popen:
    env = dict(os.environ, PEER_MODEL=model_xml, PEER_CONFIG=json.dumps(config))
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "peer_fastapi:app", "--app-dir", HERE,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--log-level", "warning", "--no-access-log"],
                            env=env, preexec_fn=pinned(cpu))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("the peer server did not start")
        try:
            import http.client

            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("the peer server did not answer within 120 s")


async def load(port: int, path: str, body: bytes, headers: dict, concurrency: int, seconds: float,
               warmup: float) -> dict:
    """`concurrency` connections sending `body` back to back; latencies of the requests that start
    after the warm-up and end within the measured window."""
    from hosttune.bench.httpclient import Connection

    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds
    samples: list[float] = []
    errors = 0

    async def stream() -> None:
        nonlocal errors
        conn = Connection("127.0.0.1", port)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                status, _, _ = await conn.request("POST", path, body, headers)
                t1 = time.perf_counter()
                if status != 200:
                    errors += 1
                elif t0 >= t_start and t1 <= t_end:
                    samples.append((t1 - t0) * 1e3)
        finally:
            await conn.close()

    await asyncio.gather(*(stream() for _ in range(concurrency)))
    samples.sort()
    return {"requests": len(samples), "errors": errors, "throughput": len(samples) / seconds,
            "p50_ms": pct(samples, 50), "p99_ms": pct(samples, 99), "max_ms": samples[-1] if samples else None,
            "samples_ms": samples}


def pct(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


INPROCESS = """
import json, os, sys, time, numpy as np, openvino as ov
cfg = json.loads(sys.argv[1]); os.sched_setaffinity(0, {cfg['cpu']})
core = ov.Core(); c = core.compile_model(cfg['model'], 'CPU', cfg['config']); r = c.create_infer_request()
x = np.random.default_rng(1).random(c.inputs[0].shape).astype(np.float32)
end = time.perf_counter() + cfg['warmup']
while time.perf_counter() < end: r.infer({0: x})
out = []; end = time.perf_counter() + cfg['seconds']
while time.perf_counter() < end:
    t = time.perf_counter(); r.infer({0: x}); out.append((time.perf_counter() - t) * 1e3)
print(json.dumps(out))
"""


def inprocess(model_xml: str, config: dict, cpu: int, seconds: float, warmup: float) -> dict:
    r = subprocess.run([sys.executable, "-c", INPROCESS, json.dumps({"cpu": cpu, "model": model_xml, "config": config,
                                                                    "seconds": seconds, "warmup": warmup})],
                       capture_output=True, text=True, check=True)
    samples = sorted(json.loads(r.stdout))
    return {"requests": len(samples), "errors": 0, "throughput": len(samples) / seconds, "p50_ms": pct(samples, 50),
            "p99_ms": pct(samples, 99), "max_ms": samples[-1], "samples_ms": samples}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help="model repository with the sample model (default: built into --out)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per case and round")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", default="1,4", help="comma-separated connection counts for the JSON cases")
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--config", default='{"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}',
                    help="OpenVINO properties of both servers")
    ap.add_argument("--idle-poll-us", type=int, default=1000,
                    help="--idle-poll-us of the second hosttune server (the binary case with polling)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still stops its servers (finally)
    from hosttune.bench import report
    from tests.serverproc import Server, free_port

    ensure_fastapi()
    out = args.out or tempfile.mkdtemp(prefix="hosttune-peer-")
    os.makedirs(out, exist_ok=True)
    repo = sample_repo(args.repo or os.path.join(out, "models"))
    model_xml = os.path.join(repo, "sample", "1", "model.xml")
    config = json.loads(args.config)
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    import numpy as np

    from hosttune.bench.httpclient import binary_request, run

    x = np.random.default_rng(7).random((1, 3, 112, 112)).astype(np.float32)
    json_body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                        "data": x.ravel().tolist()}]}).encode()
    json_headers = {"Content-Type": "application/json"}
    meta = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32"}]}
    bin_body, bin_headers = binary_request(meta)
    print(f"JSON body {len(json_body)} bytes ({x.size} FP32 values), binary body {len(bin_body)} bytes; "
          f"servers on CPU {args.server_cpu}, client on CPU {args.client_cpu}, OpenVINO {config}", flush=True)

    ours = Server("--repo", repo, "--model", "sample", "--cpus", str(args.server_cpu), "--config", json.dumps(config))
    polling = Server("--repo", repo, "--model", "sample", "--cpus", str(args.server_cpu), "--config",
                     json.dumps(config), "--idle-poll-us", str(args.idle_poll_us))
    peer_port = free_port()
    peer = start_peer(model_xml, config, args.server_cpu, peer_port)
    os.sched_setaffinity(0, {args.client_cpu})
    cases = [(f"{side} JSON c{c}", side, c) for c in concurrencies for side in ("hosttune", "peer")]
    poll_case = f"hosttune binary c1 poll {args.idle_poll_us} us"
    cases += [("hosttune binary c1", "binary", 1), (poll_case, "binary-poll", 1), ("in-process", "inprocess", 1)]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
    path = "/v2/models/sample/infer"
    try:
        for k in range(args.rounds):
            order = cases if k % 2 == 0 else cases[::-1]
            for name, side, c in order:
                if side == "inprocess":
                    r = inprocess(model_xml, config, args.server_cpu, args.duration, args.warmup)
                else:
                    port = {"peer": peer_port, "binary-poll": polling.port}.get(side, ours.port)
                    body, headers = (bin_body, bin_headers) if side.startswith("binary") else (json_body, json_headers)
                    r = run(load(port, path, body, headers, c, args.duration, args.warmup))
                results[name].append(r)
                print(f"round {k + 1}/{args.rounds} {name:<20} {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                      f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}  load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        codes = [ours.stop(), polling.stop()]
        peer.send_signal(signal.SIGTERM)
        peer.wait(timeout=30)
    if any(codes):
        print(f"hosttune serve exited with {codes}", file=sys.stderr)

    summary: dict = {"command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "rounds": args.rounds,
                     "duration_s": args.duration, "json_body_bytes": len(json_body), "values": int(x.size),
                     "server_cpu": args.server_cpu, "client_cpu": args.client_cpu, "openvino": config, "cases": {}}
    print()
    for name, _, _ in cases:
        runs = results[name]
        summary["cases"][name] = {
            "throughput_per_round": [r["throughput"] for r in runs], "p50_ms_per_round": [r["p50_ms"] for r in runs],
            "p99_ms_per_round": [r["p99_ms"] for r in runs], "errors": sum(r["errors"] for r in runs),
            "throughput": median([r["throughput"] for r in runs]), "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs])}
        s = summary["cases"][name]
        print(f"{name:<20} {s['throughput']:7.1f} req/s  p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms "
              f"(medians of {len(runs)} rounds)")
    verdicts = {}
    for c in concurrencies:
        a, b = results[f"hosttune JSON c{c}"], results[f"peer JSON c{c}"]
        thr = median([x["throughput"] / y["throughput"] for x, y in zip(a, b)])
        p50 = median([x["p50_ms"] / y["p50_ms"] for x, y in zip(a, b)])
        verdicts[f"c{c}"] = {"throughput_ratio": thr, "p50_ratio": p50}
        print(f"JSON c{c}: hosttune / peer throughput {thr:.2f}x, p50 {p50:.2f}x (median of the per-round ratios)")
    for name, key in (("hosttune binary c1", "binary_c1_minus_inprocess_p50_ms"),
                      (poll_case, "binary_c1_poll_minus_inprocess_p50_ms")):
        diff = median([x["p50_ms"] - y["p50_ms"] for x, y in zip(results[name], results["in-process"])])
        verdicts[key] = diff
        print(f"{name.removeprefix('hosttune ')} p50 - in-process p50: {diff:+.3f} ms (median of the per-round differences)")
    summary["ratios"] = verdicts
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    body = [f"<h1>hosttune serve vs FastAPI + OpenVINO</h1><p>{summary['command']}: sample model, JSON body of "
            f"{len(json_body)} bytes ({x.size} FP32 values); servers on CPU {args.server_cpu}, client on CPU "
            f"{args.client_cpu}; {args.rounds} interleaved rounds of {args.duration} s.</p>",
            "<pre>" + json.dumps(verdicts, indent=1) + "</pre>",
            "<h2>Latency CDF (all rounds)</h2>",
            report.svg_cdf([(name, sorted(v for r in results[name] for v in r["samples_ms"])) for name, _, _ in cases]),
            "<h2>Throughput per round</h2>",
            report.svg_bars([(name, [r["throughput"] for r in results[name]]) for name, _, _ in cases], "requests/s"),
            "<h2>p50 per round</h2>",
            report.svg_bars([(name, [r["p50_ms"] for r in results[name]]) for name, _, _ in cases], "p50 ms")]
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write("<!doctype html><meta charset='utf-8'><title>serve peer</title><body style='font-family:sans-serif'>"
                + "\n".join(body) + "</body>")
    print(f"\nresults in {out} (summary.json, report.html)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
