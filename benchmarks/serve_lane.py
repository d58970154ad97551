"""What the direct lane of `hosttune serve` saves: the same server with and without it
(`--no-direct-lane`), A/B.

Both servers run at once on the same model (a pool of one: the lane's case), pinned to the same
server CPU with the same OpenVINO properties; the load client runs pinned to the client CPU, one
keep-alive connection per concurrent stream. Every round runs each case once on each server (the
order alternates between rounds), so a shared machine's changing load falls on both sides alike.
Cases: JSON and binary bodies at each concurrency (default 1 and 4). The lane takes a JSON body
only up to 64 KiB (hosttune.serve.decode.JSON_INLINE_MAX): the sample model's JSON body is larger,
so its JSON rows are a control (both sides take the ASGI path); `--variant tiny` has small JSON.

    python benchmarks/serve_lane.py --rounds 5 --duration 3 --out /tmp/lane

Writes summary.json (per case: p50/p99 and throughput per round and their medians; lane against no
lane: the median of the per-round differences and a Mann-Whitney test over the rounds) and
report.html (latency CDFs, p50 and throughput per round) into --out.
"""

from __future__ import annotations

import json
import os
import sys

from common import (case_summary, command_line, compare, comparison_parser, interleaved, load, round_line, start,
                    verdicts_pre, write_json, write_rounds_report)

SIDES = ("lane", "no lane")


def json_request(meta: dict) -> tuple[bytes, dict[str, str]]:
    import numpy as np

    rng = np.random.default_rng(7)
    inputs = []
    for port in meta["inputs"]:
        shape = [d if d > 0 else 1 for d in port["shape"]]
        inputs.append({"name": port["name"], "shape": shape, "datatype": port["datatype"],
                       "data": rng.random(shape).astype(np.float32).ravel().tolist()})
    return json.dumps({"inputs": inputs}).encode(), {"Content-Type": "application/json"}


def main() -> int:
    ap = comparison_parser(__doc__, rounds=5, duration=3.0, concurrency_help="comma-separated connection counts",
                           config_help="OpenVINO properties of both servers (a pool of one: the lane's case)")
    args, out, repo = start(ap, "lane")
    from hosttune.bench.httpclient import binary_request, metadata, run
    from tests.serverproc import Server

    server_args = ("--repo", repo, "--model", args.variant, "--cpus", str(args.server_cpu), "--config", args.config)
    servers = {"lane": Server(*server_args)}
    try:
        servers["no lane"] = Server(*server_args, "--no-direct-lane")
    except BaseException:
        servers["lane"].stop()
        raise
    try:
        if "no direct lane" not in servers["no lane"].banner or "no direct lane" in servers["lane"].banner:
            sys.exit("the servers' banners do not show the lane off and on")
        if "nireq 1)" not in servers["lane"].banner:
            sys.exit(f"the model has a pool of more than one: the lane never runs ({servers['lane'].banner.strip()})")
        meta = run(metadata("127.0.0.1", servers["lane"].port, args.variant))
        bodies = {"JSON": json_request(meta), "binary": binary_request(meta)}
        print(f"{args.variant}: JSON body {len(bodies['JSON'][0])} bytes, binary body {len(bodies['binary'][0])} "
              f"bytes; servers on CPU {args.server_cpu}, client on CPU {args.client_cpu}, OpenVINO {args.config}",
              flush=True)
        os.sched_setaffinity(0, {args.client_cpu})
        cases = [(f"{fmt} c{c} {side}", fmt, c, side) for fmt in bodies for c in args.concurrency for side in SIDES]
        results: dict[str, list[dict]] = {name: [] for name, *_ in cases}
        path = f"/v2/models/{args.variant}/infer"
        for k, (name, fmt, c, side) in interleaved(cases, args.rounds):
            body, headers = bodies[fmt]
            r = run(load(servers[side].port, path, body, headers, c, args.duration, args.warmup))
            results[name].append(r)
            print(round_line(k, args.rounds, name, r), flush=True)
    finally:
        codes = [srv.stop() for srv in servers.values()]
    if any(codes):
        print(f"hosttune serve exited with {codes}", file=sys.stderr)

    summary: dict = {"command": command_line(), "variant": args.variant,
                     "rounds": args.rounds, "duration_s": args.duration, "server_cpu": args.server_cpu,
                     "client_cpu": args.client_cpu, "openvino": json.loads(args.config),
                     "body_bytes": {fmt: len(b) for fmt, (b, _) in bodies.items()}, "cases": {}, "lane_vs_off": {}}
    print()
    for name, runs in results.items():
        summary["cases"][name] = case_summary(runs)
    for fmt in bodies:
        for c in args.concurrency:
            key = f"{fmt} c{c}"
            cmp = summary["lane_vs_off"][key] = compare(results[f"{key} lane"], results[f"{key} no lane"],
                                                        "lane", "off", "lane")
            on, off = summary["cases"][f"{key} lane"], summary["cases"][f"{key} no lane"]
            print(f"{key:<10} lane vs off: p50 {on['p50_ms']:.3f} vs {off['p50_ms']:.3f} ms (per round "
                  f"{cmp['p50_ms']['lane_minus_off'] * 1e3:+.0f} us, {cmp['p50_ms']['verdict']}), p99 "
                  f"{on['p99_ms']:.3f} vs {off['p99_ms']:.3f} ms ({cmp['p99_ms']['verdict']}), "
                  f"{on['throughput']:.1f} vs {off['throughput']:.1f} req/s (per round "
                  f"{cmp['throughput']['relative']:+.1%}, "
                  f"{cmp['throughput']['verdict']})")
    write_json(out, summary)
    write_rounds_report(out, "serve lane", [
        f"<h1>hosttune serve: direct lane on and off</h1><p>{summary['command']}: {args.variant} model, "
        f"bodies {summary['body_bytes']} bytes; both servers on CPU {args.server_cpu}, client on CPU "
        f"{args.client_cpu}; {args.rounds} interleaved rounds of {args.duration} s.</p>",
        "<h2>Lane against no lane (medians of the per-round differences)</h2>",
        verdicts_pre(summary["lane_vs_off"], "lane_minus_off")], results)
    print(f"\nresults in {out} (summary.json, report.html)")
    return 1 if any(codes) else 0

if __name__ == "__main__":
    raise SystemExit(main())
