"""`hosttune tune`: search one plan instance's inference settings by measurement and keep the best
only when it is significantly better than the plan's rule-based default (docs/tune.md).

Light imports only at the top: the handler imports the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from hosttune import hwclass, numbers
from hosttune.errors import HosttuneError

FINISH_RESERVE = 0.03  # of the budget, kept for stopping the servers and writing the results
MIN_ROUND_S, MAX_ROUND_S = 0.5, 10.0
RATE_CONNECTIONS = 32  # --rate: connections open at most per instance unless --concurrency says


def register(subparsers: argparse._SubParsersAction) -> None:
    from hosttune.cliutil import add_policy, add_root
    from hosttune.tune.settings import AXES

    p = subparsers.add_parser(
        "tune", help="choose an instance's inference settings by measurement (hint, streams, nireq, SMT, split, "
                     "precision, INT8)",
        description="Start the plan instance's server with each candidate's settings on its cpuset, measure them "
                    "through the endpoint in interleaved rounds (bench's client and statistics), race out the "
                    "worse under the time budget, and keep the best only when it is significantly better than "
                    "the plan's default. Writes a policy overlay for the host's hardware class.")
    add_root(p)
    add_policy(p)
    p.add_argument("--plan", metavar="FILE", help="a saved plan JSON instead of computing it from --root/--policy")
    p.add_argument("--plan-instance", metavar="NAME",
                   help="the instance whose cpuset is searched (default: the plan's first); the result is its "
                        "hardware class's")
    p.add_argument("--repo", help="model repository (default: $HOSTTUNE_MODEL_REPO or /var/lib/hosttune/models)")
    p.add_argument("--model", help="model name (default: the instance's model from the plan)")
    p.add_argument("--objective", choices=("throughput", "latency"), default="throughput",
                   help="throughput: the most inferences/s (whose p99 meets --slo-p99-ms); latency: the lowest p99")
    p.add_argument("--slo-p99-ms", type=numbers.arg_udecimal(0.001, 1e6), metavar="MS",
                   help="throughput objective: the p99 a candidate must keep")
    p.add_argument("--concurrency", type=numbers.arg_uint(1, 4096),
                   help="concurrent connections of the workload (default: 1 for latency, 2 per core for throughput)")
    p.add_argument("--rate", type=numbers.arg_udecimal(0.1, 1e6), metavar="PER_S",
                   help="latency objective: requests arrive at this rate whatever the answers (open loop), on "
                        f"up to --concurrency connections (default {RATE_CONNECTIONS})")
    p.add_argument("--binary", action=argparse.BooleanOptionalAction, default=True,
                   help="binary-data requests (default) or JSON tensors (--no-binary)")
    p.add_argument("--budget", type=numbers.arg_duration(5, 7 * 86400), default=900.0, metavar="DURATION",
                   help="time for the whole search, e.g. 90s, 15m (default 15m)")
    p.add_argument("--round", type=numbers.arg_udecimal(0.1, 600), metavar="S",
                   help="seconds per candidate and round (default: from the budget and the candidates)")
    p.add_argument("--vary", default=",".join(AXES), metavar="LIST",
                   help=f"what to search, among {','.join(AXES)} (default: all)")
    p.add_argument("--alpha", type=numbers.arg_udecimal(0.0001, 0.5), default=0.05,
                   help="significance level before the correction for the number of candidates (default 0.05)")
    p.add_argument("--client-cpus", metavar="LIST|all",
                   help="CPUs of the load client (default: the plan's housekeeping CPUs)")
    p.add_argument("-o", "--output", metavar="FILE.yaml", help="write (merge) the policy overlay here")
    p.add_argument("--html", metavar="FILE.html", help="write the HTML report here")
    p.add_argument("--result", metavar="FILE.json", help="write every candidate's results here (JSON)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress and ETA on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_tune)


def _check(args: argparse.Namespace) -> tuple[str, ...]:
    from hosttune.tune.settings import AXES

    vary = tuple(v.strip() for v in args.vary.split(",") if v.strip())
    unknown = [v for v in vary if v not in AXES]
    if unknown or not vary:
        raise HosttuneError(f"unknown {', '.join(unknown) or 'empty list'} (known: {', '.join(AXES)})", where="--vary")
    if args.rate is not None and args.objective != "latency":
        raise HosttuneError("is for --objective latency (the throughput of a fixed rate is that rate)",
                            where="--rate")
    if args.slo_p99_ms is not None and args.objective != "throughput":
        raise HosttuneError("is for --objective throughput", where="--slo-p99-ms")
    for path in (args.output, args.html, args.result):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise HosttuneError("the directory does not exist", where=path)
    return vary


def cmd_tune(args: argparse.Namespace) -> int:
    from hosttune import cpulist, discovery
    from hosttune.bench import runner
    from hosttune.model import default_repo
    from hosttune.serve.cli import find_instance, read_plan
    from hosttune.sysfs import HostFS
    from hosttune.tune import measure, overlay, report, search
    from hosttune.tune.settings import Hardware, candidates, cores_of, from_instance, layout

    started = time.monotonic()
    started_wall = time.time()
    vary = _check(args)
    client_cpus = cpulist.parse(args.client_cpus, where="--client-cpus") \
        if args.client_cpus and args.client_cpus != "all" else None
    if args.output:  # an existing file that is not an overlay is refused before any measurement
        overlay.read(args.output)
    plan = read_plan(args)
    instances = plan.get("instances") or []
    if not instances:
        raise HosttuneError("the plan has no instances (instances.enabled, or isolated CPUs per node)", where="plan")
    instance = find_instance(plan, args.plan_instance) if args.plan_instance else instances[0]
    if not instance.get("cpus"):
        raise HosttuneError(f"instance {instance['name']} has no CPUs", where="plan")
    # the node's instances (two with per_node: 2): the search is over their node's cpuset
    node = [i for i in instances if i.get("node") == instance.get("node")] if instance.get("node") is not None \
        else [instance]
    node_cpus = sorted(c for i in node for c in i.get("cpus") or [])
    repo = os.path.abspath(args.repo or default_repo())
    models = measure.repo_models(repo)
    topo = discovery.discover(HostFS.open(args.root))
    system = runner.system_state(args.root)
    default = from_instance(instance, per_node=len(node))
    if args.model:
        from dataclasses import replace

        default = replace(default, model=args.model)
    if default.model not in models:
        raise HosttuneError(f"no model {default.model!r} in the repository (hosttune model sample)", where=repo)
    siblings = {c.id: c.siblings for c in topo.cpus}
    cores = cores_of(node_cpus, siblings)
    if args.rate:
        concurrency = args.concurrency or RATE_CONNECTIONS
    else:
        concurrency = args.concurrency or (1 if args.objective == "latency" else 2 * len(cores))
    hw = Hardware(cores, measure.cpu_has_bf16(system), models)
    settings_list, notes = candidates(default, hw, vary, concurrency)
    parts = []
    for k, s in enumerate(settings_list):
        if k == 0:  # the default runs exactly as the plan renders it
            parts.append([{"cpus": list(i["cpus"]), "openvino": dict(i.get("openvino") or {}),
                           "nireq": (i.get("ovms") or {}).get("nireq"), "model": s.model} for i in node])
        else:
            parts.append(layout(s, cores))
    entries = measure.model_entries(repo, {p["model"] for ps in parts for p in ps})
    cands = [measure.Candidate(index=k, label=s.label(), parts=ps) for k, (s, ps) in enumerate(zip(settings_list, parts))]

    if args.client_cpus is None and plan.get("housekeeping"):
        client_cpus = list(plan["housekeeping"])

    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = measure.TuneProgress(args.budget, show)
    progress.start = started
    progress.stage = f"starting {sum(len(c.parts) for c in cands)} server(s)"
    progress.show()
    idle_poll = instance.get("idle_poll_us")
    readback_s = measure.start(cands, repo, entries, idle_poll, instance["name"])
    start_s = time.monotonic() - started
    if start_s > args.budget / 2:
        notes.append(f"starting {sum(len(c.parts) for c in cands)} server(s) took {start_s:.0f} s of the "
                     f"{args.budget:g} s budget: a longer --budget or fewer --vary axes leave more for measuring")
    try:
        if client_cpus:
            from hosttune.serve.placement import pin_cpus

            pin_cpus(client_cpus, where="--client-cpus")
        # kept for the end: reading the chosen candidate's settings back (as long as the default's
        # took), stopping the servers still running, the results and the report
        race_budget = args.budget - max(FINISH_RESERVE * args.budget,
                                        2.0 + 1.5 * readback_s + 0.2 * sum(len(c.parts) for c in cands))
        left = race_budget - (time.monotonic() - started)
        # the first MIN_ROUNDS rounds of every candidate take under half the time left (a measurement
        # costs its warmup and connections beside the round), the finalists the rest: many short
        # rounds rather than few long ones, since the rank test's power grows with the rounds
        round_s = args.round or min(MAX_ROUND_S, max(MIN_ROUND_S, left / (3 * len(cands) * search.MIN_ROUNDS)))
        warmup_s = min(0.5, max(0.1, round_s * 0.2))
        arms = [search.Arm(index=c.index, label=c.label, default=(c.index == 0)) for c in cands]
        for a, c in zip(arms, cands):
            if c.error:
                a.alive, a.left = False, f"failed: {c.error}"
        objective = search.Objective(args.objective, args.slo_p99_ms)

        def on_round(r: int, _left: float) -> None:
            progress.stage = f"round {r + 1}, {sum(a.alive for a in arms)} candidate(s) racing"

        def measure_arm(arm: search.Arm, _r: int) -> tuple[float, float] | None:
            try:
                return measure.measure_round(cands[arm.index], concurrency, warmup_s, round_s, args.binary,
                                             progress, args.rate)
            except HosttuneError as exc:
                if arm.default:  # without the default there is nothing to compare with
                    raise
                cands[arm.index].error = exc.message
                arm.left = f"failed: {exc.message}"
                return None

        def on_left(out: list[search.Arm]) -> None:  # a candidate out of the race frees its CPUs and memory
            for a in out:
                if not a.default:
                    for srv in cands[a.index].servers:
                        srv.terminate()

        info = search.race(arms, measure_arm, objective, race_budget, time.monotonic, start=started,
                           alpha=args.alpha, first_cost_s=round_s + warmup_s + 0.3, on_round=on_round,
                           on_left=on_left)
        decision = search.decide(arms, objective, alpha=args.alpha)
        # the chosen one's settings as its compiled model reports them, read while the servers stop
        # (the default's were read at the start; the others' streams and nireq are their banners')
        pending = measure.read_back_start([cands[decision["chosen"]]] if decision["chosen"] else [])
    finally:
        progress.stage = "stopping the servers"
        progress.show()
        measure.stop(cands)
        progress.done()
    measure.read_back_finish(pending)

    chosen = settings_list[decision["chosen"]]
    cls = hwclass.class_id(topo)
    workload = {"concurrency": concurrency, "binary": args.binary, "model": default.model}
    if args.rate:
        workload["rate"] = args.rate
    instances = overlay.resolved(chosen.overlay(), cands[decision["chosen"]], default.model)
    entry = {"tuned_on": system.get("hostname"), "objective": {**objective.describe(), "workload": workload},
             "decision": decision["decision"], "instances": instances}
    config = {"mode": "http", "warmup_s": warmup_s, "duration_s": round_s, "judge": "p99", "pinned": True,
              "api": None, "concurrency": concurrency, "noise": runner.Noise(0, None).describe(),
              "repo": repo, "plan": args.plan, "root": args.root, "client_cpus": client_cpus, "tune": True}
    means = [(stats_of(a.throughput), stats_of(a.p99)) for a in arms]
    front = set(search.pareto([(t["mean"], p["mean"]) for t, p in means if t and p]))
    measured = [k for k, (t, p) in enumerate(means) if t and p]
    result: dict[str, Any] = {
        "schema": "hosttune.tune/1", "hostname": system.get("hostname"), "class": cls, "instance": instance["name"],
        "cpus_list": cpulist.format(node_cpus), "objective": entry["objective"], "budget_s": args.budget,
        "search": {**info, "start_s": start_s, "readback_s": readback_s, "round_s": round_s, "warmup_s": warmup_s, "vary": list(vary)},
        "decision": decision, "notes": notes, "overlay": {cls: entry}, "system": system,
        "candidates": [{
            "index": a.index, "label": a.label, "default": a.default, "settings": s.overlay(),
            "layout": c.parts, "effective": c.effective, "rounds": a.rounds, "left": a.left,
            "throughput": means[a.index][0], "p99_ms": means[a.index][1],
            "pareto": a.index in {measured[i] for i in front},
            "result": measure.document(c, config, system, started_wall),
        } for a, s, c in zip(arms, settings_list, cands)],
    }
    result["wall_s"] = time.monotonic() - started
    if args.output:
        overlay.write(args.output, overlay.merge(args.output, cls, entry))
    if args.html:
        with open(args.html, "w") as f:
            f.write(report.html_report(result))
    result["wall_s"] = time.monotonic() - started
    if args.result:
        with open(args.result, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    print(report.console(result))
    return 0


def stats_of(values: list[float]) -> dict[str, Any] | None:
    from hosttune.bench import stats
    from hosttune.tune.search import ci95

    if not values:
        return None
    return {"mean": stats.mean(values), "ci95": ci95(values), "values": list(values)}
