"""KServe v2 gRPC against REST with binary tensors, on one `hosttune serve` (--grpc-port): the same
model, process and CPU behind both.

The server is pinned to the server CPU; the load client runs pinned to the client CPU, one
connection per concurrent stream on both sides (gRPC: a channel each, with its own connection),
each request encoded once: REST sends the binary-data body with a keep-alive connection
(hosttune.bench.httpclient, as serve_peer.py and serve_lane.py), gRPC sends the serialized
ModelInferRequest (raw_input_contents) through grpc.aio without protobuf work per call. Every round
runs each case once (the order alternates between rounds), so a shared machine's changing load
falls on both sides alike.

    python benchmarks/serve_grpc.py --rounds 5 --duration 3 --out /tmp/grpc-bench

Writes summary.json (per case: p50/p99 and throughput per round and their medians, and the mean
request and inference time the server itself measured in each round, from its /metrics; gRPC
against REST: the median of the per-round differences and a Mann-Whitney test over the rounds)
and report.html into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from serve_lane import metadata, model_repo  # noqa: E402
from serve_peer import load, median, pct  # noqa: E402

SIDES = ("gRPC", "REST binary")
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def grpc_request(meta: dict, body: bytes, headers: dict) -> bytes:
    """The serialized ModelInferRequest carrying the same input bytes as the REST binary body."""
    from hosttune.serve.kserve import grpc_predict_v2_pb2 as pb

    header_len = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:header_len])
    request = pb.ModelInferRequest(model_name=meta["name"])
    offset = header_len
    for item in header["inputs"]:
        request.inputs.add(name=item["name"], datatype=item["datatype"], shape=item["shape"])
        size = item["parameters"]["binary_data_size"]
        request.raw_input_contents.append(body[offset:offset + size])
        offset += size
    return request.SerializeToString()


async def grpc_load(port: int, request: bytes, concurrency: int, seconds: float, warmup: float) -> dict:
    """`concurrency` channels calling ModelInfer back to back; latencies of the calls that start
    after the warm-up and end within the measured window (as serve_peer.load)."""
    import grpc

    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds
    samples: list[float] = []
    errors = 0

    async def stream() -> None:
        nonlocal errors
        # a subchannel pool per channel: each stream has its own connection, as on the REST side
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                             options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            call = channel.unary_unary(METHOD)  # no (de)serializers: bytes in, bytes out
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                try:
                    await call(request)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                t1 = time.perf_counter()
                if t0 >= t_start and t1 <= t_end:
                    samples.append((t1 - t0) * 1e3)

    import asyncio

    await asyncio.gather(*(stream() for _ in range(concurrency)))
    samples.sort()
    return {"requests": len(samples), "errors": errors, "throughput": len(samples) / seconds,
            "p50_ms": pct(samples, 50), "p99_ms": pct(samples, 99), "max_ms": samples[-1] if samples else None,
            "samples_ms": samples}


def server_times(port: int, variant: str) -> dict[str, float]:
    """The server's own sums and counts (its /metrics): request time per interface (gRPC, REST)
    and inference time, in us."""
    import http.client

    from tests import promtext

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        families = promtext.parse(conn.getresponse().read().decode())
    finally:
        conn.close()
    out = {}
    for family, key in (("ovms_request_time_us", "interface"), ("ovms_inference_time_us", None)):
        for sample, labels, value in families[family].samples:
            if labels.get("name") == variant and sample.endswith(("_sum", "_count")):
                out[f"{labels[key] if key else 'inference'} {sample.rsplit('_', 1)[1]}"] = value
    return out


def mean_us(before: dict, after: dict, what: str) -> float | None:
    count = after[f"{what} count"] - before[f"{what} count"]
    return (after[f"{what} sum"] - before[f"{what} sum"]) / count if count else None


def compare(grpc_runs: list[dict], rest_runs: list[dict]) -> dict:
    """gRPC against REST binary over the rounds: per-round differences and whether they are beyond
    the rounds' spread (Mann-Whitney U over the per-round values, two-sided, 5 %)."""
    from hosttune.bench import stats

    out = {}
    for key, better in (("p50_ms", -1), ("p99_ms", -1), ("throughput", 1)):
        a, b = [r[key] for r in grpc_runs], [r[key] for r in rest_runs]
        diffs = [x - y for x, y in zip(a, b)]
        test = stats.mann_whitney_u(a, b)
        verdict = ("within the per-round spread" if test["p"] >= stats.ALPHA
                   else "gRPC better" if median(diffs) * better > 0 else "gRPC worse")
        out[key] = {"grpc_minus_rest_per_round": diffs, "grpc_minus_rest": median(diffs),
                    "relative": median(diffs) / median(b) if median(b) else None, "p": test["p"], "verdict": verdict}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help="model repository (default: built into --out)")
    ap.add_argument("--variant", default="sample", help="the sample model variant to serve: sample, tiny, trivial")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per case and round")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", default="1,4", help="comma-separated stream counts")
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--config", default='{"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}',
                    help="OpenVINO properties of the server")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.rounds < 1 or args.duration <= 0:
        ap.error("--rounds and --duration must be positive")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still stops its server (finally)
    from hosttune.bench import report
    from hosttune.bench.httpclient import binary_request, run
    from tests.serverproc import Server

    out = args.out or tempfile.mkdtemp(prefix="hosttune-grpc-")
    os.makedirs(out, exist_ok=True)
    repo = model_repo(args.repo or os.path.join(out, "models"), args.variant)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    server = Server("--repo", repo, "--model", args.variant, "--cpus", str(args.server_cpu), "--config", args.config,
                    "--port", "0", "--metrics_enable")
    try:
        meta = metadata(server.port, args.variant)
        body, headers = binary_request(meta)
        request = grpc_request(meta, body, headers)
        print(f"{args.variant}: REST binary body {len(body)} bytes, gRPC request {len(request)} bytes; server on "
              f"CPU {args.server_cpu} ({server.banner.strip()}), client on CPU {args.client_cpu}", flush=True)
        os.sched_setaffinity(0, {args.client_cpu})
        cases = [(f"{side} c{c}", side, c) for c in concurrencies for side in SIDES]
        results: dict[str, list[dict]] = {name: [] for name, *_ in cases}
        path = f"/v2/models/{args.variant}/infer"
        for k in range(args.rounds):
            for name, side, c in (cases if k % 2 == 0 else cases[::-1]):
                before = server_times(server.port, args.variant)
                if side == "gRPC":
                    r = run(grpc_load(server.grpc_port, request, c, args.duration, args.warmup))
                else:
                    r = run(load(server.port, path, body, headers, c, args.duration, args.warmup))
                after = server_times(server.port, args.variant)
                # what the server itself saw: a gap the client sees beyond these is outside it
                r["server_request_us"] = mean_us(before, after, "gRPC" if side == "gRPC" else "REST")
                r["server_inference_us"] = mean_us(before, after, "inference")
                results[name].append(r)
                print(f"round {k + 1}/{args.rounds} {name:<16} {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:7.3f} "
                      f"ms  p99 {r['p99_ms']:7.3f} ms  errors {r['errors']}  in the server {r['server_request_us']:.0f} "
                      f"us (inference {r['server_inference_us']:.0f})  load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        code = server.stop()
    if code:
        print(f"hosttune serve exited with {code}", file=sys.stderr)

    summary: dict = {"command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "variant": args.variant,
                     "rounds": args.rounds, "duration_s": args.duration, "server_cpu": args.server_cpu,
                     "client_cpu": args.client_cpu, "openvino": json.loads(args.config),
                     "bytes": {"REST binary": len(body), "gRPC": len(request)}, "cases": {}, "grpc_vs_rest": {}}
    print()
    for name, *_ in cases:
        runs = results[name]
        summary["cases"][name] = {
            "throughput_per_round": [r["throughput"] for r in runs], "p50_ms_per_round": [r["p50_ms"] for r in runs],
            "p99_ms_per_round": [r["p99_ms"] for r in runs], "errors": sum(r["errors"] for r in runs),
            "throughput": median([r["throughput"] for r in runs]), "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs]),
            "server_request_us_per_round": [r["server_request_us"] for r in runs],
            "server_inference_us_per_round": [r["server_inference_us"] for r in runs]}
    for c in concurrencies:
        cmp = summary["grpc_vs_rest"][f"c{c}"] = compare(results[f"gRPC c{c}"], results[f"REST binary c{c}"])
        g, h = summary["cases"][f"gRPC c{c}"], summary["cases"][f"REST binary c{c}"]
        print(f"c{c}: gRPC vs REST binary: p50 {g['p50_ms']:.3f} vs {h['p50_ms']:.3f} ms (per round "
              f"{cmp['p50_ms']['grpc_minus_rest'] * 1e3:+.0f} us, {cmp['p50_ms']['verdict']}), p99 {g['p99_ms']:.3f} "
              f"vs {h['p99_ms']:.3f} ms ({cmp['p99_ms']['verdict']}), {g['throughput']:.1f} vs {h['throughput']:.1f} "
              f"req/s ({cmp['throughput']['verdict']})")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    names = [name for name, *_ in cases]
    page = [f"<h1>hosttune serve: KServe v2 gRPC against REST binary</h1><p>{summary['command']}: {args.variant} "
            f"model, {summary['bytes']} bytes per request; server on CPU {args.server_cpu}, client on CPU "
            f"{args.client_cpu}; {args.rounds} interleaved rounds of {args.duration} s.</p>",
            "<pre>" + json.dumps({k: {m: {"grpc_minus_rest": v["grpc_minus_rest"], "verdict": v["verdict"]}
                                      for m, v in c.items()} for k, c in summary["grpc_vs_rest"].items()}, indent=1)
            + "</pre>",
            "<h2>Latency CDF (all rounds)</h2>",
            report.svg_cdf([(name, sorted(v for r in results[name] for v in r["samples_ms"])) for name in names]),
            "<h2>p50 per round</h2>",
            report.svg_bars([(name, [r["p50_ms"] for r in results[name]]) for name in names], "p50 ms"),
            "<h2>Throughput per round</h2>",
            report.svg_bars([(name, [r["throughput"] for r in results[name]]) for name in names], "requests/s")]
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write("<!doctype html><meta charset='utf-8'><title>serve gRPC</title><body style='font-family:sans-serif'>"
                + "\n".join(page) + "</body>")
    print(f"\nresults in {out} (summary.json, report.html)")
    return 1 if code else 0


if __name__ == "__main__":
    raise SystemExit(main())
