"""Isolation benchmark: does pinning by the plan protect inference from a noisy neighbour?

Four in-process benchmarks of the sample model with `hosttune bench` and the live plan:

  tuned-quiet     instance pinned to its plan CPUs (e.g. CPU 1)
  tuned-noise     + busy-loop hogs (one per CPU) confined to the housekeeping CPUs (e.g. CPU 0)
  untuned-quiet   --no-pin: instance unpinned
  untuned-noise   --no-pin --noise: instance and hogs unpinned

The cases are interleaved: each round runs every case once (one timed run each, in a rotating
order), so that the changing load of a shared machine falls evenly on all four. The rounds of a
case are then merged into one result (hosttune.bench.runner.merge_documents). Printed: p50, p99,
p99.9, max, throughput and CVs per case; the ratio of p99 under the hog to the quiet p99, both as the
ratio of the means and as the median of the per-round ratios (target for tuned: <= 1.3x); an
HTML report with all four.

    python benchmarks/bench_isolation.py --rounds 8 --duration 5 --out /tmp/iso
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from common import HOSTTUNE, add_plan_options, load_plan, median, model_repo, run_tool, wait_quiet, write_json

CASES = [("tuned-quiet", []), ("tuned-noise", ["--noise"]),
         ("untuned-quiet", ["--no-pin"]), ("untuned-noise", ["--no-pin", "--noise"])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help="model repository (default: build the sample model into --out)")
    ap.add_argument("--model", default="sample")
    ap.add_argument("--rounds", type=int, default=8, help="rounds; each runs every case once")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per timed run")
    ap.add_argument("--warmup", type=float, default=1.0, help="warmup seconds before each timed run")
    add_plan_options(ap)
    ap.add_argument("--out", default=None, help="directory for the JSON results and report.html")
    args = ap.parse_args()

    from hosttune.bench import report, stats
    from hosttune.bench.runner import merge_documents

    out = args.out or tempfile.mkdtemp(prefix="hosttune-iso-")
    os.makedirs(out, exist_ok=True)
    repo = model_repo(args.repo or os.path.join(out, "models"), args.model)
    plan, p = load_plan(args.plan, out)
    inst = p["instances"][0]
    print(f"plan: instance {inst['name']} on CPUs {inst['cpus_list']}, housekeeping {p['housekeeping']}; "
          f"model {args.model}; {args.rounds} rounds x 4 cases x {args.duration} s (warmup {args.warmup} s each)")

    per_case: dict[str, list[dict]] = {name: [] for name, _ in CASES}
    loads = []
    for k in range(args.rounds):
        loads.append(wait_quiet(args.max_load))
        order = CASES[k % len(CASES):] + CASES[:k % len(CASES)]
        for name, extra in order:
            path = os.path.join(out, f"{name}-round{k + 1}.json")
            run_tool([*HOSTTUNE, "bench", "--plan", plan, "--repo", repo, "--model", args.model,
                 "--instances", inst["name"], "--runs", "1", "--duration", str(args.duration),
                 "--warmup", str(args.warmup), "--label", name, "-o", path, *extra])
            with open(path) as f:
                per_case[name].append(json.load(f))
        print(f"round {k + 1}/{args.rounds} (load average {loads[-1]:.1f}): p99 ms " + "  ".join(
            f"{name} {per_case[name][-1]['instances'][0]['runs'][0]['latency_ms']['p99']:.2f}" for name, _ in CASES),
            flush=True)

    merged = {name: merge_documents(docs, label=name) for name, docs in per_case.items()}
    for name, doc in merged.items():
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(doc, f, indent=1)
    print(f"\n{'case':<15} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8} {'max ms':>8} {'thr/s':>8} {'CV thr':>7} "
          f"{'CV p99':>7}  verdict")
    rows = {}
    for name, _ in CASES:
        i = merged[name]["instances"][0]
        s = i["summary"]
        rows[name] = s
        print(f"{name:<15} {s['latency_ms']['p50']:>8.3f} {s['p99_ms']['mean']:>8.3f} {s['p999_ms']['mean']:>8.3f} "
              f"{s['latency_ms']['max']:>8.3f} "
              f"{s['throughput']['mean']:>8.1f} {s['throughput']['cv']:>7.1%} {s['p99_ms']['cv']:>7.1%}  {i['verdict']}")

    def ratios(noisy: str, quiet: str) -> tuple[float, float, float]:
        a, b = rows[quiet]["p99_ms"]["values"], rows[noisy]["p99_ms"]["values"]
        per_round = [y / x for x, y in zip(a, b)]
        mw = stats.mann_whitney_u(a, b)
        return stats.mean(b) / stats.mean(a), median(per_round), mw["p"]

    t_mean, t_med, t_p = ratios("tuned-noise", "tuned-quiet")
    u_mean, u_med, u_p = ratios("untuned-noise", "untuned-quiet")
    print(f"\ntuned   p99 under the hog / quiet p99: {t_mean:.2f}x (ratio of means), {t_med:.2f}x (median of "
          f"per-round ratios); target <= 1.3x: {'met' if t_med <= 1.3 else 'NOT met'}; Mann-Whitney p {t_p:.3f}")
    print(f"untuned p99 under the hog / quiet p99: {u_mean:.2f}x (ratio of means), {u_med:.2f}x (median of "
          f"per-round ratios); Mann-Whitney p {u_p:.3f}")
    print(f"under the hog, untuned p99 / tuned p99: "
          f"{rows['untuned-noise']['p99_ms']['mean'] / rows['tuned-noise']['p99_ms']['mean']:.2f}x")
    summary = {"rounds": args.rounds, "duration_s": args.duration, "load_average_per_round": loads,
               "tuned_ratio_of_means": t_mean, "tuned_median_round_ratio": t_med, "tuned_mwu_p": t_p,
               "untuned_ratio_of_means": u_mean, "untuned_median_round_ratio": u_med, "untuned_mwu_p": u_p,
               **{name: {"p50_ms": rows[name]["latency_ms"]["p50"], "p99_ms": rows[name]["p99_ms"]["mean"],
                         "p999_ms": rows[name]["p999_ms"]["mean"], "max_ms": rows[name]["max_ms"]["max"],
                         "p99_per_round": rows[name]["p99_ms"]["values"], "cv_p99": rows[name]["p99_ms"]["cv"],
                         "cv_throughput": rows[name]["throughput"]["cv"], "throughput": rows[name]["throughput"]["mean"],
                         "verdict": merged[name]["verdict"]} for name, _ in CASES}}
    write_json(out, summary)
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write(report.html_report(list(merged.items()),
                                   title="hosttune isolation benchmark: tuned vs untuned, quiet vs hog"))
    print(f"\nresults in {out} (report.html, summary.json, one JSON per case)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
