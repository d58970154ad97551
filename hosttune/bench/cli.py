"""`hosttune bench [run]` and `hosttune bench compare A.json B.json`.

Light imports only at the top: openvino is imported by the worker processes and handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from hosttune import numbers
from hosttune.bench.stats import JUDGES
from hosttune.errors import HosttuneError


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from hosttune.cliutil import add_policy, add_root

    add_root(p)
    add_policy(p)
    p.add_argument("--plan", metavar="FILE", help="a saved plan JSON instead of computing it from --root/--policy")
    p.add_argument("--instances", metavar="NAMES", help="comma-separated plan instances (default: all)")
    p.add_argument("--mode", choices=("inprocess", "http"), default="inprocess",
                   help="inprocess: OpenVINO in a worker pinned to each instance's CPUs (like benchmark_app); "
                        "http: against the running instances (like OVMS's benchmark client)")
    p.add_argument("--repo", help="model repository (default: $HOSTTUNE_MODEL_REPO or /var/lib/hosttune/models)")
    p.add_argument("--model", help="model name (default: the instance's model from the plan)")
    p.add_argument("--runs", type=numbers.arg_uint(0, 10_000), default=5, help="timed runs (default 5)")
    p.add_argument("--warmup", type=numbers.arg_udecimal(0, 86400), default=2.0, metavar="S", help="warmup seconds before the runs (default 2)")
    p.add_argument("--duration", type=numbers.arg_udecimal(0, 86400), default=10.0, metavar="S", help="seconds per run (default 10)")
    p.add_argument("--api", choices=("sync", "async"),
                   help="inprocess: sync (LATENCY, one stream) or async (THROUGHPUT, the plan's streams); "
                        "default from the instance's PERFORMANCE_HINT / NUM_STREAMS")
    p.add_argument("--concurrency", type=numbers.arg_uint(0, 4096), default=1, help="http: concurrent connections per instance (default 1)")
    p.add_argument("--client-cpus", metavar="LIST|all",
                   help="http: CPUs of the load client (default: the plan's housekeeping CPUs, so the client "
                        "does not compete with the instances; all with --no-pin)")
    p.add_argument("--url", action="append", metavar="HOST:PORT",
                   help="http: benchmark these endpoints instead of the plan's instances (repeatable)")
    p.add_argument("--noise", nargs="?", type=numbers.arg_uint(0, 4096), const=-1, default=0, metavar="N",
                   help="run N busy-loop hogs during the benchmark (default N: one per allowed CPU); "
                        "confined to the housekeeping CPUs, unconfined with --no-pin")
    p.add_argument("--no-pin", action="store_true",
                   help="baseline: neither the instances (inprocess) nor the hogs are pinned")
    p.add_argument("--label", help="a name for this result (shown by compare and the report)")
    p.add_argument("-o", "--output", metavar="FILE.json", help="write the result JSON here")
    p.add_argument("--html", metavar="FILE.html", help="write the self-contained HTML report here")
    p.add_argument("--json", action="store_true", help="print the result JSON on stdout (table on stderr)")
    p.add_argument("--fail-unstable", action="store_true", help="exit 1 when the verdict is unstable or unsure")
    p.add_argument("--judge", choices=JUDGES, default="p99",
                   help="the per-run tail latency the stability verdict judges, beside throughput (default p99; "
                        "p99.9 wants >= 10000 inferences per run)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    g = p.add_argument_group("runtime comparison (in-process, one instance's CPUs and memory node)")
    g.add_argument("--runtime", metavar="LIST",
                   help="compare runtimes on the same ONNX model: openvino,onnxruntime,tvm "
                        "(onnxruntime:parallel for ORT_PARALLEL); interleaved rounds, outputs checked first")
    g.add_argument("--onnx", metavar="FILE.onnx", help="--runtime: this ONNX file instead of the repository model")
    g.add_argument("--inflight", metavar="LIST", default="1",
                   help="--runtime: concurrent inferences to measure at, e.g. 1,2 (default 1)")
    g.add_argument("--cache-dir", metavar="DIR",
                   help="--runtime: TVM libraries and ONNX exports (default ~/.cache/hosttune)")
    g.add_argument("--rtol", type=numbers.arg_udecimal(0, 1), default=1e-3, help="--runtime: output check tolerance (default 1e-3)")
    g.add_argument("--atol", type=numbers.arg_udecimal(0, 1e6), default=1e-5, help="--runtime: output check tolerance (default 1e-5)")
    g.add_argument("--no-int8", action="store_true", help="--runtime: leave out the <model>-int8 OpenVINO row")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="repeated-run stability benchmark (in-process or over HTTP)",
                              description="Repeated runs with warmup; statistics per run and across runs, "
                                          "a stability verdict, the system state beside the numbers.")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)
    sub = p.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    r = sub.add_parser("run", help="run the benchmark (the default)")
    _add_run_options(r)
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("compare", help="compare two results side by side with significance tests")
    c.add_argument("a", metavar="A.json")
    c.add_argument("b", metavar="B.json")
    c.add_argument("--alpha", type=numbers.arg_udecimal(0, 1), default=0.05, help="significance level (default 0.05)")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.add_argument("--html", metavar="FILE.html", help="write an HTML report with both results")
    c.set_defaults(func=cmd_compare)


def _targets(args: argparse.Namespace, plan: dict[str, Any] | None, repo: str | None) -> list[Any]:
    from hosttune.bench.httpclient import split_url
    from hosttune.bench.runner import Target
    from hosttune.model.repo import find

    targets = []
    if args.url:
        if args.mode != "http":
            raise HosttuneError("--url is for --mode http", where="--url")
        if not args.model:
            raise HosttuneError("--url needs --model NAME", where="--model")
        for url in args.url:
            host, port = split_url(url)
            targets.append(Target(name=f"{host}:{port}", host=host, port=port, model=args.model))
    else:
        instances = (plan or {}).get("instances") or []
        if args.instances:
            wanted = [n.strip() for n in args.instances.split(",") if n.strip()]
            known = {i["name"]: i for i in instances}
            missing = [n for n in wanted if n not in known]
            if missing:
                raise HosttuneError(f"no instance {', '.join(missing)} in the plan (instances: "
                                    f"{', '.join(known) or 'none'})", where="--instances")
            instances = [known[n] for n in wanted]
        if not instances:
            raise HosttuneError("the plan has no instances (instances.enabled, or isolated CPUs per node)",
                                where="plan")
        for inst in instances:
            t = Target(name=inst["name"], cpus=inst.get("cpus"), node=inst.get("node"),
                       model=args.model or inst.get("model"), config=dict(inst.get("openvino") or {}),
                       streams=inst.get("streams"), nireq=(inst.get("ovms") or {}).get("nireq"))
            if inst.get("probe_url"):  # where this host reaches the instance: the plan decides, not bench
                t.host, t.port = split_url(inst["probe_url"])
            elif args.mode == "http":
                raise HosttuneError(f"instance {inst['name']} has no probe_url (a plan from an older hosttune: "
                                    "run `hosttune plan` again)", where="plan")
            targets.append(t)
    for t in targets:
        if args.mode == "inprocess" or (repo and os.path.isdir(repo)):
            try:
                entry = find(repo, t.model)
            except HosttuneError:
                if args.mode == "inprocess":
                    raise
                continue
            t.model_path, t.model_version = entry.path, entry.version
            t.precision = entry.meta.get("precision")
    return targets


def cmd_run(args: argparse.Namespace) -> int:
    from hosttune.bench import report, runner
    from hosttune.model import default_repo
    from hosttune.serve.cli import read_plan

    if getattr(args, "runtime", None):
        from hosttune.bench.runtimes.compare import cmd_runtimes

        return cmd_runtimes(args, read_plan)
    for flag, value in (("--onnx", args.onnx), ("--inflight", args.inflight != "1"), ("--cache-dir", args.cache_dir),
                        ("--no-int8", args.no_int8)):
        if value:
            raise HosttuneError("is for the runtime comparison: add --runtime", where=flag)
    if args.runs < 1:
        raise HosttuneError("at least one run", where="--runs")
    if args.duration <= 0 or args.warmup < 0:
        raise HosttuneError("the duration must be positive and the warmup not negative", where="--duration")
    if args.concurrency < 1:
        raise HosttuneError("at least 1", where="--concurrency")
    for path in (args.output, args.html):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise HosttuneError("the directory does not exist", where=path)
    started = time.time()
    plan = None if args.url and not args.noise else read_plan(args)
    repo = os.path.abspath(args.repo or default_repo())
    targets = _targets(args, plan, repo)
    pinned = not args.no_pin
    hogs = 0
    if args.noise:
        hogs = len(os.sched_getaffinity(0)) if args.noise < 0 else args.noise
    noise = runner.Noise(hogs, runner.hog_cpus(plan) if (hogs and pinned) else None)
    system = runner.system_state(args.root)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    total = args.warmup + args.runs * args.duration + (3 if args.mode == "inprocess" else 0)
    progress = runner.Progress(total, show)
    config = {"mode": args.mode, "runs": args.runs, "warmup_s": args.warmup, "duration_s": args.duration,
              "judge": args.judge, "pinned": pinned, "api": args.api,
              "concurrency": args.concurrency if args.mode == "http" else None,
              "noise": noise.describe(), "label": args.label, "repo": repo if args.mode == "inprocess" else None,
              "plan": args.plan, "root": args.root}
    client_cpus = None
    if args.mode == "http":
        from hosttune import cpulist

        if args.client_cpus and args.client_cpus != "all":
            client_cpus = cpulist.parse(args.client_cpus, where="--client-cpus")
        elif args.client_cpus is None and pinned and plan and plan.get("housekeeping"):
            client_cpus = list(plan["housekeeping"])
        config["client_cpus"] = client_cpus
    with noise:
        if client_cpus:
            from hosttune import threads
            from hosttune.serve.placement import pin_cpus

            pin_cpus(client_cpus, where="--client-cpus")  # after the hogs started: they keep their own CPUs
            threads.pin_all(client_cpus)  # every thread of the client, not only this one (docs/isolation.md)
        try:
            if args.mode == "inprocess":
                runner.run_inprocess(targets, args.runs, args.warmup, args.duration, args.api, pinned, progress)
            else:
                runner.run_http(targets, args.runs, args.warmup, args.duration, args.concurrency, progress)
        finally:
            progress.done()
    doc = runner.build_document(args.mode, config, system, targets, started)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    if args.html:
        with open(args.html, "w") as f:
            f.write(report.html_report([(args.label or "result", doc)], title=f"hosttune bench: {args.label or args.mode}"))
    table = report.console(doc)
    if args.json:
        print(table, file=sys.stderr)
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(table)
    if args.fail_unstable and doc["verdict"] != "stable":
        return 1
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from hosttune.bench import report
    from hosttune.bench.runner import load_document

    if not 0 < args.alpha < 1:
        raise HosttuneError("alpha must be within (0, 1)", where="--alpha")
    a, b = load_document(args.a), load_document(args.b)
    result = report.compare(a, b, args.alpha)
    if not result["instances"]:
        raise HosttuneError(f"no instance in common ({', '.join(result['unmatched'])})", where=args.b)
    if args.html:
        try:
            page = report.html_report([(a.get("label") or "A", a), (b.get("label") or "B", b)],
                                      title="hosttune bench compare")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field the report shows
            raise HosttuneError(f"cannot draw the report from these results ({type(exc).__name__}: {exc})",
                                where=args.html) from None
        with open(args.html, "w") as f:
            f.write(page)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(report.compare_console(result, args.a, args.b))
    return 0
