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

Writes summary.json and report.html (latency CDFs, p50 and throughput per round) into --out. FastAPI is
pip-installed into this Python on first use (it is no dependency of hosttune).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from common import (HERE, case_summary, command_line, comparison_parser, interleaved, load, median,
                    result, round_line, start, write_json, write_rounds_report)
from tests.serverproc import request


def pinned(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


def ensure_fastapi() -> None:
    import importlib.util

    if importlib.util.find_spec("fastapi") is None:
        print("installing fastapi for the peer server (pip) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "fastapi"], check=True)


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
            if request(port, "GET", "/v2/health/ready", timeout=2)[0] == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("the peer server did not answer within 120 s")


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
    return result(json.loads(r.stdout), 0, seconds)


def main() -> int:
    ap = comparison_parser(__doc__, rounds=3, duration=5.0,
                           concurrency_help="comma-separated connection counts for the JSON cases",
                           config_help="OpenVINO properties of both servers",
                           repo_help="model repository with the sample model (default: built into --out)",
                           variant=False)
    ap.add_argument("--idle-poll-us", type=int, default=1000,
                    help="--idle-poll-us of the second hosttune server (the binary case with polling)")
    args, out, repo = start(ap, "peer")
    from tests.serverproc import Server, free_port

    ensure_fastapi()
    model_xml = os.path.join(repo, "sample", "1", "model.xml")
    config = json.loads(args.config)

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
    cases = [(f"{side} JSON c{c}", side, c) for c in args.concurrency for side in ("hosttune", "peer")]
    poll_case = f"hosttune binary c1 poll {args.idle_poll_us} us"
    cases += [("hosttune binary c1", "binary", 1), (poll_case, "binary-poll", 1), ("in-process", "inprocess", 1)]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
    path = "/v2/models/sample/infer"
    try:
        for k, (name, side, c) in interleaved(cases, args.rounds):
            if side == "inprocess":
                r = inprocess(model_xml, config, args.server_cpu, args.duration, args.warmup)
            else:
                port = {"peer": peer_port, "binary-poll": polling.port}.get(side, ours.port)
                body, headers = (bin_body, bin_headers) if side.startswith("binary") else (json_body, json_headers)
                r = run(load(port, path, body, headers, c, args.duration, args.warmup))
            results[name].append(r)
            print(round_line(k, args.rounds, name, r, digits=2), flush=True)
    finally:
        codes = [ours.stop(), polling.stop()]
        peer.send_signal(signal.SIGTERM)
        peer.wait(timeout=30)
    if any(codes):
        print(f"hosttune serve exited with {codes}", file=sys.stderr)

    summary: dict = {"command": command_line(), "rounds": args.rounds,
                     "duration_s": args.duration, "json_body_bytes": len(json_body), "values": int(x.size),
                     "server_cpu": args.server_cpu, "client_cpu": args.client_cpu, "openvino": config, "cases": {}}
    print()
    for name, runs in results.items():
        s = summary["cases"][name] = case_summary(runs)
        print(f"{name:<20} {s['throughput']:7.1f} req/s  p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms "
              f"(medians of {len(runs)} rounds)")
    verdicts = {}
    for c in args.concurrency:
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
    write_json(out, summary)
    write_rounds_report(out, "serve peer", [
        f"<h1>hosttune serve vs FastAPI + OpenVINO</h1><p>{summary['command']}: sample model, JSON body of "
        f"{len(json_body)} bytes ({x.size} FP32 values); servers on CPU {args.server_cpu}, client on CPU "
        f"{args.client_cpu}; {args.rounds} interleaved rounds of {args.duration} s.</p>",
        "<pre>" + json.dumps(verdicts, indent=1) + "</pre>"], results)
    print(f"\nresults in {out} (summary.json, report.html)")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
