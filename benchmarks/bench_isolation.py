"""Isolation benchmark: does pinning by the plan protect inference from a noisy neighbour?

Four in-process benchmarks of the sample model, all with `hosttune bench` and the live plan:

  tuned   quiet   instance pinned to its plan CPUs (e.g. CPU 1)
  tuned   noise   + busy-loop hogs (one per CPU) confined to the housekeeping CPUs (e.g. CPU 0)
  untuned quiet   --no-pin: instance unpinned
  untuned noise   --no-pin --noise: instance and hogs unpinned

Prints p50/p99/CV per case, the ratios noise/quiet (target: tuned p99 under the hog <= 1.3 x the
tuned quiet p99), and writes an HTML report with all cases. `--repeat K` repeats the whole set:
on a shared 2-core machine other processes add noise, so look at every repetition.

    python benchmarks/bench_isolation.py --runs 5 --duration 5 --out /tmp/iso
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HOSTTUNE = [sys.executable, "-m", "hosttune"]
CASES = [("tuned-quiet", []), ("tuned-noise", ["--noise"]),
         ("untuned-quiet", ["--no-pin"]), ("untuned-noise", ["--no-pin", "--noise"])]


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode not in (0, 1):
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help="model repository (default: build the sample model into a temp dir)")
    ap.add_argument("--model", default="sample")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--plan", help="plan JSON (default: hosttune plan --json of this host)")
    ap.add_argument("--out", default=None, help="directory for the JSON results and report.html")
    args = ap.parse_args()

    out = args.out or tempfile.mkdtemp(prefix="hosttune-iso-")
    os.makedirs(out, exist_ok=True)
    repo = args.repo
    if not repo:
        repo = os.path.join(out, "models")
        if not os.path.isdir(os.path.join(repo, args.model)):
            run([*HOSTTUNE, "model", "sample", "--repo", repo, "--variant", args.model, "--no-int8"])
    plan = args.plan
    if not plan:
        plan = os.path.join(out, "plan.json")
        with open(plan, "w") as f:
            subprocess.run([*HOSTTUNE, "plan", "--json"], stdout=f, check=True)
    with open(plan) as f:
        p = json.load(f)
    inst = p["instances"][0]
    print(f"plan: instance {inst['name']} on CPUs {inst['cpus_list']}, housekeeping {p['housekeeping']}; "
          f"model {args.model}; {args.runs} runs x {args.duration} s, warmup {args.warmup} s")

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from hosttune.bench import report, stats

    all_docs = []
    summary = []
    for rep in range(args.repeat):
        docs = {}
        for name, extra in CASES:
            path = os.path.join(out, f"{name}-{rep + 1}.json")
            run([*HOSTTUNE, "bench", "--plan", plan, "--repo", repo, "--model", args.model,
                 "--instances", inst["name"], "--runs", str(args.runs), "--duration", str(args.duration),
                 "--warmup", str(args.warmup), "--label", name, "-o", path, *extra])
            with open(path) as f:
                docs[name] = json.load(f)
            all_docs.append((f"{name} #{rep + 1}" if args.repeat > 1 else name, docs[name]))
        print(f"\nrepetition {rep + 1}/{args.repeat}")
        print(f"{'case':<15} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'thr/s':>8} {'CV thr':>7} {'CV p99':>7}  verdict")
        row = {}
        for name, _ in CASES:
            i = docs[name]["instances"][0]
            s = i["summary"]
            row[name] = s
            print(f"{name:<15} {s['latency_ms']['p50']:>8.3f} {s['p99_ms']['mean']:>8.3f} "
                  f"{s['latency_ms']['max']:>8.3f} {s['throughput']['mean']:>8.1f} {s['throughput']['cv']:>7.1%} "
                  f"{s['p99_ms']['cv']:>7.1%}  {i['verdict']}")
        t_ratio = row["tuned-noise"]["p99_ms"]["mean"] / row["tuned-quiet"]["p99_ms"]["mean"]
        u_ratio = row["untuned-noise"]["p99_ms"]["mean"] / row["untuned-quiet"]["p99_ms"]["mean"]
        mw = stats.mann_whitney_u(row["tuned-quiet"]["p99_ms"]["values"], row["tuned-noise"]["p99_ms"]["values"])
        print(f"tuned   p99 noise/quiet: {t_ratio:.2f}x (target <= 1.3x: {'met' if t_ratio <= 1.3 else 'NOT met'}; "
              f"Mann-Whitney p {mw['p']:.3f} on per-run p99)")
        print(f"untuned p99 noise/quiet: {u_ratio:.2f}x")
        print(f"untuned-noise p99 / tuned-noise p99: "
              f"{row['untuned-noise']['p99_ms']['mean'] / row['tuned-noise']['p99_ms']['mean']:.2f}x")
        summary.append({"repetition": rep + 1, "tuned_ratio": t_ratio, "untuned_ratio": u_ratio,
                        **{name: {"p50_ms": row[name]["latency_ms"]["p50"], "p99_ms": row[name]["p99_ms"]["mean"],
                                  "cv_p99": row[name]["p99_ms"]["cv"], "cv_throughput": row[name]["throughput"]["cv"],
                                  "throughput": row[name]["throughput"]["mean"]} for name, _ in CASES}})
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    page = os.path.join(out, "report.html")
    with open(page, "w") as f:
        f.write(report.html_report(all_docs, title="hosttune isolation benchmark: tuned vs untuned, quiet vs hog"))
    print(f"\nresults in {out} (report.html, summary.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
