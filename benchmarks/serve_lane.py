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

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from serve_peer import HOSTTUNE, load, median  # noqa: E402

SIDES = ("lane", "no lane")


def model_repo(repo: str, variant: str) -> str:
    """`repo`, with the sample model's `variant` built into it first if it has none."""
    if not os.path.isdir(os.path.join(repo, variant)):
        subprocess.run([*HOSTTUNE, "model", "sample", "--repo", repo, "--variant", variant, "--no-int8"], check=True,
                       stdout=subprocess.DEVNULL)
    return repo


def metadata(port: int, name: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/v2/models/{name}")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def json_request(meta: dict) -> tuple[bytes, dict[str, str]]:
    import numpy as np

    rng = np.random.default_rng(7)
    inputs = []
    for port in meta["inputs"]:
        shape = [d if d > 0 else 1 for d in port["shape"]]
        inputs.append({"name": port["name"], "shape": shape, "datatype": port["datatype"],
                       "data": rng.random(shape).astype(np.float32).ravel().tolist()})
    return json.dumps({"inputs": inputs}).encode(), {"Content-Type": "application/json"}


def compare(lane: list[dict], other: list[dict]) -> dict:
    """Lane against no lane over the rounds: per-round differences and whether they are beyond the
    rounds' spread (Mann-Whitney U over the per-round values, two-sided, 5 %)."""
    from hosttune.bench import stats

    out = {}
    for key, better in (("p50_ms", -1), ("p99_ms", -1), ("throughput", 1)):
        a, b = [r[key] for r in lane], [r[key] for r in other]
        diffs = [x - y for x, y in zip(a, b)]
        test = stats.mann_whitney_u(a, b)
        significant = test["p"] < stats.ALPHA
        verdict = ("within the per-round spread" if not significant
                   else "lane better" if (median(diffs) * better) > 0 else "lane worse")
        out[key] = {"lane_minus_off_per_round": diffs, "lane_minus_off": median(diffs),
                    "relative": median(diffs) / median(b) if median(b) else None,
                    "spread_lane": max(a) - min(a), "spread_off": max(b) - min(b),
                    "p": test["p"], "verdict": verdict}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help="model repository (default: built into --out)")
    ap.add_argument("--variant", default="sample", help="the sample model variant to serve: sample, tiny, trivial")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per case and round")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", default="1,4", help="comma-separated connection counts")
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--config", default='{"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}',
                    help="OpenVINO properties of both servers (a pool of one: the lane's case)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.rounds < 1 or args.duration <= 0:
        ap.error("--rounds and --duration must be positive")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still stops its servers (finally)
    from hosttune.bench import report
    from hosttune.bench.httpclient import binary_request, run
    from tests.serverproc import Server

    out = args.out or tempfile.mkdtemp(prefix="hosttune-lane-")
    os.makedirs(out, exist_ok=True)
    repo = model_repo(args.repo or os.path.join(out, "models"), args.variant)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    common = ("--repo", repo, "--model", args.variant, "--cpus", str(args.server_cpu), "--config", args.config)
    servers = {"lane": Server(*common)}
    try:
        servers["no lane"] = Server(*common, "--no-direct-lane")
    except BaseException:
        servers["lane"].stop()
        raise
    try:
        if "no direct lane" not in servers["no lane"].banner or "no direct lane" in servers["lane"].banner:
            sys.exit("the servers' banners do not show the lane off and on")
        if "nireq 1)" not in servers["lane"].banner:
            sys.exit(f"the model has a pool of more than one: the lane never runs ({servers['lane'].banner.strip()})")
        meta = metadata(servers["lane"].port, args.variant)
        bodies = {"JSON": json_request(meta), "binary": binary_request(meta)}
        print(f"{args.variant}: JSON body {len(bodies['JSON'][0])} bytes, binary body {len(bodies['binary'][0])} "
              f"bytes; servers on CPU {args.server_cpu}, client on CPU {args.client_cpu}, OpenVINO {args.config}",
              flush=True)
        os.sched_setaffinity(0, {args.client_cpu})
        cases = [(f"{fmt} c{c} {side}", fmt, c, side) for fmt in bodies for c in concurrencies for side in SIDES]
        results: dict[str, list[dict]] = {name: [] for name, *_ in cases}
        path = f"/v2/models/{args.variant}/infer"
        for k in range(args.rounds):
            for name, fmt, c, side in (cases if k % 2 == 0 else cases[::-1]):
                body, headers = bodies[fmt]
                r = run(load(servers[side].port, path, body, headers, c, args.duration, args.warmup))
                results[name].append(r)
                print(f"round {k + 1}/{args.rounds} {name:<20} {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:7.3f} "
                      f"ms  p99 {r['p99_ms']:7.3f} ms  errors {r['errors']}  load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        codes = [srv.stop() for srv in servers.values()]
    if any(codes):
        print(f"hosttune serve exited with {codes}", file=sys.stderr)

    summary: dict = {"command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "variant": args.variant,
                     "rounds": args.rounds, "duration_s": args.duration, "server_cpu": args.server_cpu,
                     "client_cpu": args.client_cpu, "openvino": json.loads(args.config),
                     "body_bytes": {fmt: len(b) for fmt, (b, _) in bodies.items()}, "cases": {}, "lane_vs_off": {}}
    print()
    for name, *_ in cases:
        runs = results[name]
        summary["cases"][name] = {
            "throughput_per_round": [r["throughput"] for r in runs], "p50_ms_per_round": [r["p50_ms"] for r in runs],
            "p99_ms_per_round": [r["p99_ms"] for r in runs], "errors": sum(r["errors"] for r in runs),
            "throughput": median([r["throughput"] for r in runs]), "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs])}
    for fmt in bodies:
        for c in concurrencies:
            key = f"{fmt} c{c}"
            cmp = summary["lane_vs_off"][key] = compare(results[f"{key} lane"], results[f"{key} no lane"])
            on, off = summary["cases"][f"{key} lane"], summary["cases"][f"{key} no lane"]
            print(f"{key:<10} lane vs off: p50 {on['p50_ms']:.3f} vs {off['p50_ms']:.3f} ms (per round "
                  f"{cmp['p50_ms']['lane_minus_off'] * 1e3:+.0f} us, {cmp['p50_ms']['verdict']}), p99 "
                  f"{on['p99_ms']:.3f} vs {off['p99_ms']:.3f} ms ({cmp['p99_ms']['verdict']}), "
                  f"{on['throughput']:.1f} vs {off['throughput']:.1f} req/s (per round "
                  f"{cmp['throughput']['relative']:+.1%}, "
                  f"{cmp['throughput']['verdict']})")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    names = [name for name, *_ in cases]
    body = [f"<h1>hosttune serve: direct lane on and off</h1><p>{summary['command']}: {args.variant} model, "
            f"bodies {summary['body_bytes']} bytes; both servers on CPU {args.server_cpu}, client on CPU "
            f"{args.client_cpu}; "
            f"{args.rounds} interleaved rounds of {args.duration} s.</p>",
            "<h2>Lane against no lane (medians of the per-round differences)</h2>",
            "<pre>" + json.dumps({k: {m: {"lane_minus_off": v["lane_minus_off"], "verdict": v["verdict"]}
                                      for m, v in c.items()} for k, c in summary["lane_vs_off"].items()}, indent=1)
            + "</pre>",
            "<h2>Latency CDF (all rounds)</h2>",
            report.svg_cdf([(name, sorted(v for r in results[name] for v in r["samples_ms"])) for name in names]),
            "<h2>p50 per round</h2>",
            report.svg_bars([(name, [r["p50_ms"] for r in results[name]]) for name in names], "p50 ms"),
            "<h2>Throughput per round</h2>",
            report.svg_bars([(name, [r["throughput"] for r in results[name]]) for name in names], "requests/s")]
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write("<!doctype html><meta charset='utf-8'><title>serve lane</title><body style='font-family:sans-serif'>"
                + "\n".join(body) + "</body>")
    print(f"\nresults in {out} (summary.json, report.html)")
    return 1 if any(codes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
