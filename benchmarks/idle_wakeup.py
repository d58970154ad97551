"""What a sleeping CPU costs the next inference: the sample model's synchronous infer() on one
CPU, back to back, after a sleep, after a busy wait of the same length, and after copying a
request-sized buffer. A server's CPU sleeps between two requests of a back-to-back client; this is
the measurement behind `hosttune serve --idle-poll-us` (docs/serve-and-bench.md; its runs are in
docs/measurements.md).

    python benchmarks/idle_wakeup.py --rounds 4 --gap-us 300 --out /tmp/wakeup

Every round runs each case once (1500 inferences each, p50 of each); writes summary.json and
report.html (p50 per round and case) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from common import LATENCY, command_line, json_object, median, model_repo, write_json, write_page

CASES = ("back to back", "after a sleep", "after a busy wait", "after a 150 kB copy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help="model repository with the sample model (default: built into --out)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--count", type=int, default=1500, help="inferences per case and round")
    ap.add_argument("--gap-us", type=int, default=300, help="sleep / busy wait before each inference")
    ap.add_argument("--cpu", type=int, default=1)
    ap.add_argument("--config", type=json_object, default=LATENCY)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.rounds < 1 or args.count < 10 or not 0 < args.gap_us <= 10**6:
        ap.error("--rounds >= 1, --count >= 10, --gap-us 1..1000000")
    import numpy as np
    import openvino as ov

    from hosttune.bench import report

    out = args.out or tempfile.mkdtemp(prefix="hosttune-wakeup-")
    os.makedirs(out, exist_ok=True)
    repo = model_repo(args.repo or os.path.join(out, "models"))
    os.sched_setaffinity(0, {args.cpu})
    compiled = ov.Core().compile_model(os.path.join(repo, "sample", "1", "model.xml"), "CPU", json.loads(args.config))
    req = compiled.create_infer_request()
    x = np.random.default_rng(1).random(compiled.inputs[0].shape).astype(np.float32)
    scratch = bytearray(x.nbytes)
    gap = args.gap_us / 1e6

    def before(case: str) -> None:
        if case == "after a sleep":
            time.sleep(gap)
        elif case == "after a busy wait":
            end = time.perf_counter() + gap
            while time.perf_counter() < end:
                pass
        elif case == "after a 150 kB copy":
            scratch[:] = bytes(len(scratch))

    def p50(case: str) -> float:
        took = []
        for _ in range(args.count):
            before(case)
            t = time.perf_counter()
            req.infer({0: x})
            took.append((time.perf_counter() - t) * 1e6)
        return median(took)

    p50("back to back")  # warm-up
    results: dict[str, list[float]] = {case: [] for case in CASES}
    for k in range(args.rounds):
        for case in CASES if k % 2 == 0 else CASES[::-1]:
            results[case].append(p50(case))
            print(f"round {k + 1}/{args.rounds} {case:<20} p50 {results[case][-1]:7.1f} us", flush=True)
    summary = {"command": command_line(), "cpu": args.cpu,
               "gap_us": args.gap_us, "openvino": json.loads(args.config),
               "p50_us_per_round": results, "p50_us": {c: median(v) for c, v in results.items()}}
    print()
    for case, value in summary["p50_us"].items():
        print(f"{case:<20} p50 {value:7.1f} us (median of {args.rounds} rounds)")
    write_json(out, summary)
    write_page(out, "idle wake-up", [
        f"<h1>Inference after an idle CPU</h1><p>{summary['command']}: sample model on CPU {args.cpu}, "
        f"gap {args.gap_us} us</p><pre>{json.dumps(summary['p50_us'], indent=1)}</pre>",
        report.svg_bars(list(results.items()), "p50 us")])
    print(f"\nresults in {out} (summary.json, report.html)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
