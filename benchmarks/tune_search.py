"""The long run of `hosttune tune`: the whole search space (every axis) on a real plan instance,
repeated, to see whether the choice repeats and the budget holds - what the CI tests (45 s, one
axis) cannot show.

Each repetition is one `hosttune tune` with the same plan, workload and budget; the summary counts
the decisions and chosen settings over the repetitions, the wall time against the budget, and keeps
every repetition's result JSON, HTML report and overlay.

    python benchmarks/tune_search.py --repeat 3 --budget 15m --objective throughput --slo-p99-ms 20 \\
        --out /tmp/tune-long [--plan plan.json] [--plan-instance node0] [--repo REPO] [-- extra tune flags]

The sample model (+ INT8) is built into --repo first when it has none. Writes summary.json into --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

HOSTTUNE = [sys.executable, "-m", "hosttune"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--budget", default="15m")
    p.add_argument("--objective", choices=("throughput", "latency"), default="throughput")
    p.add_argument("--slo-p99-ms")
    p.add_argument("--concurrency")
    p.add_argument("--plan")
    p.add_argument("--plan-instance")
    p.add_argument("--repo", default=os.path.join(os.path.expanduser("~"), ".cache", "hosttune", "tune-models"))
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more hosttune tune flags")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not os.path.isdir(os.path.join(args.repo, "sample")):
        subprocess.run([*HOSTTUNE, "model", "sample", "--repo", args.repo], check=True, stdout=subprocess.DEVNULL)
    flags = ["--repo", args.repo, "--budget", args.budget, "--objective", args.objective]
    for name in ("slo_p99_ms", "concurrency", "plan", "plan_instance"):
        if getattr(args, name):
            flags += ["--" + name.replace("_", "-"), getattr(args, name)]
    flags += [a for a in args.extra if a != "--"]
    runs = []
    for k in range(args.repeat):
        out = os.path.join(args.out, f"run{k + 1}")
        os.makedirs(out, exist_ok=True)
        t0 = time.monotonic()
        r = subprocess.run([*HOSTTUNE, "tune", *flags, "--result", f"{out}/result.json", "--html", f"{out}/tune.html",
                            "-o", f"{out}/overlay.yaml", "--no-progress"], capture_output=True, text=True)
        wall = time.monotonic() - t0
        print(r.stdout, end="")
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return r.returncode
        with open(f"{out}/result.json") as f:
            result = json.load(f)
        chosen = result["candidates"][result["decision"]["chosen"]]
        runs.append({"run": k + 1, "wall_s": wall, "budget_s": result["budget_s"],
                     "decision": result["decision"]["decision"], "chosen": chosen["label"],
                     "reason": result["decision"]["reason"], "candidates": len(result["candidates"]),
                     "rounds": result["search"]["rounds"], "start_s": result["search"]["start_s"]})
    summary = {
        "flags": flags, "runs": runs,
        "decisions": collections.Counter(r["decision"] for r in runs),
        "chosen": collections.Counter(r["chosen"] for r in runs),
        "worst_budget_ratio": max(r["wall_s"] / r["budget_s"] for r in runs),
    }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: summary[k] for k in ("decisions", "chosen", "worst_budget_ratio")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
