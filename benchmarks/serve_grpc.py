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

import contextlib
import json
import os
import sys

from common import (case_summary, command_line, compare, comparison_parser, interleaved, load, measure, round_line,
                    start, verdicts_pre, write_json, write_rounds_report)

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
    """`concurrency` channels calling ModelInfer back to back (common.measure, as `load` over HTTP)."""
    import grpc

    @contextlib.asynccontextmanager
    async def connect():
        # a subchannel pool per channel: each stream has its own connection, as on the REST side
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                             options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            call = channel.unary_unary(METHOD)  # no (de)serializers: bytes in, bytes out

            async def send() -> bool:
                try:
                    await call(request)
                except grpc.aio.AioRpcError:
                    return False
                return True

            yield send

    return await measure(connect, concurrency, seconds, warmup)


def server_times(port: int, variant: str) -> dict[str, float]:
    """The server's own sums and counts (its /metrics): request time per interface (gRPC, REST)
    and inference time, in us."""
    from tests import promtext
    from tests.serverproc import request

    families = promtext.parse(request(port, "GET", "/metrics", timeout=30)[1].decode())
    out = {}
    for family, key in (("ovms_request_time_us", "interface"), ("ovms_inference_time_us", None)):
        for sample, labels, value in families[family].samples:
            if labels.get("name") == variant and sample.endswith(("_sum", "_count")):
                out[f"{labels[key] if key else 'inference'} {sample.rsplit('_', 1)[1]}"] = value
    return out


def mean_us(before: dict, after: dict, what: str) -> float | None:
    count = after[f"{what} count"] - before[f"{what} count"]
    return (after[f"{what} sum"] - before[f"{what} sum"]) / count if count else None


def main() -> int:
    ap = comparison_parser(__doc__, rounds=5, duration=3.0, concurrency_help="comma-separated stream counts",
                           config_help="OpenVINO properties of the server")
    args, out, repo = start(ap, "grpc")
    from hosttune.bench.httpclient import binary_request, metadata, run
    from tests.serverproc import Server

    server = Server("--repo", repo, "--model", args.variant, "--cpus", str(args.server_cpu), "--config", args.config,
                    "--port", "0", "--metrics_enable")
    try:
        meta = run(metadata("127.0.0.1", server.port, args.variant))
        body, headers = binary_request(meta)
        request = grpc_request(meta, body, headers)
        print(f"{args.variant}: REST binary body {len(body)} bytes, gRPC request {len(request)} bytes; server on "
              f"CPU {args.server_cpu} ({server.banner.strip()}), client on CPU {args.client_cpu}", flush=True)
        os.sched_setaffinity(0, {args.client_cpu})
        cases = [(f"{side} c{c}", side, c) for c in args.concurrency for side in SIDES]
        results: dict[str, list[dict]] = {name: [] for name, *_ in cases}
        path = f"/v2/models/{args.variant}/infer"
        for k, (name, side, c) in interleaved(cases, args.rounds):
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
            print(round_line(k, args.rounds, name, r, width=16, extra=f"  in the server {r['server_request_us']:.0f} "
                             f"us (inference {r['server_inference_us']:.0f})"), flush=True)
    finally:
        code = server.stop()
    if code:
        print(f"hosttune serve exited with {code}", file=sys.stderr)

    summary: dict = {"command": command_line(), "variant": args.variant,
                     "rounds": args.rounds, "duration_s": args.duration, "server_cpu": args.server_cpu,
                     "client_cpu": args.client_cpu, "openvino": json.loads(args.config),
                     "bytes": {"REST binary": len(body), "gRPC": len(request)}, "cases": {}, "grpc_vs_rest": {}}
    print()
    for name, runs in results.items():
        summary["cases"][name] = {**case_summary(runs),
                                  "server_request_us_per_round": [r["server_request_us"] for r in runs],
                                  "server_inference_us_per_round": [r["server_inference_us"] for r in runs]}
    for c in args.concurrency:
        cmp = summary["grpc_vs_rest"][f"c{c}"] = compare(results[f"gRPC c{c}"], results[f"REST binary c{c}"],
                                                         "grpc", "rest", "gRPC")
        g, h = summary["cases"][f"gRPC c{c}"], summary["cases"][f"REST binary c{c}"]
        print(f"c{c}: gRPC vs REST binary: p50 {g['p50_ms']:.3f} vs {h['p50_ms']:.3f} ms (per round "
              f"{cmp['p50_ms']['grpc_minus_rest'] * 1e3:+.0f} us, {cmp['p50_ms']['verdict']}), p99 {g['p99_ms']:.3f} "
              f"vs {h['p99_ms']:.3f} ms ({cmp['p99_ms']['verdict']}), {g['throughput']:.1f} vs {h['throughput']:.1f} "
              f"req/s ({cmp['throughput']['verdict']})")
    write_json(out, summary)
    write_rounds_report(out, "serve gRPC", [
        f"<h1>hosttune serve: KServe v2 gRPC against REST binary</h1><p>{summary['command']}: {args.variant} "
        f"model, {summary['bytes']} bytes per request; server on CPU {args.server_cpu}, client on CPU "
        f"{args.client_cpu}; {args.rounds} interleaved rounds of {args.duration} s.</p>",
        verdicts_pre(summary["grpc_vs_rest"], "grpc_minus_rest")], results)
    print(f"\nresults in {out} (summary.json, report.html)")
    return 1 if code else 0

if __name__ == "__main__":
    raise SystemExit(main())
