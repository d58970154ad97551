"""`hosttune bench --runtime ...`: the command, the result document and its console table."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from itertools import combinations
from typing import Any

from hosttune.bench import report as bench_report
from hosttune.bench import runtimes as rt
from hosttune.errors import HosttuneError


def _instance(args: argparse.Namespace, plan: dict[str, Any] | None) -> Any:
    """The one plan instance whose CPUs and memory node the runtimes share (--instances NAME, else
    the plan's first), as a bench Target."""
    from hosttune.bench.runner import Target

    instances = (plan or {}).get("instances") or []
    if not instances:
        raise HosttuneError("the plan has no instances (instances.enabled, or isolated CPUs per node)", where="plan")
    wanted = [n.strip() for n in (args.instances or "").split(",") if n.strip()]
    if len(wanted) > 1:
        raise HosttuneError("runtimes are compared on one instance's CPUs: name one", where="--instances")
    inst = next((i for i in instances if i["name"] == wanted[0]), None) if wanted else instances[0]
    if inst is None:
        raise HosttuneError(f"no instance {wanted[0]} in the plan (instances: "
                            f"{', '.join(i['name'] for i in instances)})", where="--instances")
    model = args.model or (os.path.splitext(os.path.basename(args.onnx))[0] if args.onnx else inst.get("model"))
    target = Target(name=inst["name"], cpus=inst.get("cpus"), node=inst.get("node"), model=model,
                    config=dict(inst.get("openvino") or {}), streams=inst.get("streams"))
    # memory is bound where serve binds it: on plans with more than one node
    target.info = {"mems": inst.get("mems"), "multi_node": len((plan or {}).get("nodes") or []) > 1}
    return target


def cmd_runtimes(args: argparse.Namespace, read_plan: Any) -> int:
    """`hosttune bench --runtime ...`; read_plan(args): the command line's plan (hosttune.serve.cli's,
    handed down by the command so that this module imports no command module)."""
    from hosttune.bench import report, runner
    from hosttune.model import default_repo

    names = rt.parse(args.runtime)
    levels = rt.parse_levels(args.inflight)
    if args.mode != "inprocess":
        raise HosttuneError("runtimes are compared in-process only", where="--runtime")
    if args.runs < 1:
        raise HosttuneError("at least one run", where="--runs")
    if args.duration <= 0 or args.warmup < 0:
        raise HosttuneError("the duration must be positive and the warmup not negative", where="--duration")
    if not (0 <= args.rtol < 1 and 0 <= args.atol):
        raise HosttuneError("rtol within [0, 1), atol not negative", where="--rtol")
    for path in (args.output, args.html):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise HosttuneError("the directory does not exist", where=path)
    if args.onnx and not os.path.isfile(args.onnx):
        raise HosttuneError("no such file", where=args.onnx)
    started = time.time()
    cache_dir = os.path.abspath(args.cache_dir or rt.default_cache_dir())
    plan = read_plan(args)
    repo = os.path.abspath(args.repo or default_repo())
    target = _instance(args, plan)
    int8_path = None
    if args.onnx:
        onnx_path, onnx_source = os.path.abspath(args.onnx), "--onnx"
    else:
        from hosttune.model.repo import INT8_SUFFIX, find

        if not target.model:
            raise HosttuneError("the plan instance names no model: give --model NAME or --onnx FILE", where="--model")
        entry = find(repo, target.model)
        onnx_path, onnx_source = rt.onnx_for(entry, cache_dir)
        try:
            int8 = find(repo, target.model + INT8_SUFFIX)
            int8_path = int8.path if int8.path.endswith(".xml") else None
        except HosttuneError:
            pass
    rows = [rt.Row(name, onnx_path) for name in names]
    if onnx_path is None:
        for row in rows:
            row.status, row.error = "no-onnx", onnx_source
    if int8_path and not args.no_int8:
        rows.append(rt.Row("openvino-int8", int8_path))
    pinned = not args.no_pin
    hogs = (len(os.sched_getaffinity(0)) if args.noise < 0 else args.noise) if args.noise else 0
    noise = runner.Noise(hogs, runner.hog_cpus(plan) if (hogs and pinned) else None)
    system = runner.system_state(args.root)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = runner.Progress(len(rows) * (args.warmup + 5) + args.runs * len(rows) * len(levels) * args.duration,
                               show)
    config = {"mode": "inprocess", "runs": args.runs, "warmup_s": args.warmup, "duration_s": args.duration,
              "judge": args.judge, "pinned": pinned, "api": "sync", "concurrency": None,
              "noise": noise.describe(), "label": args.label, "repo": repo, "plan": args.plan, "root": args.root,
              # the tune seam: the runtime is a plain value, like any other setting
              "runtimes": names, "inflight": levels, "onnx": onnx_path, "onnx_source": onnx_source,
              "cache_dir": cache_dir, "rtol": args.rtol, "atol": args.atol}
    workdir = tempfile.mkdtemp(prefix="hosttune-runtimes-")
    try:
        ref = None
        input_names: list[str] = []
        if onnx_path:
            inputs = os.path.join(workdir, "inputs.npz")
            try:
                input_names, samples = rt.make_inputs(onnx_path, inputs)
                ref = rt.reference(onnx_path, samples)
            except HosttuneError as exc:  # the others are measured, unchecked
                for row in rows:
                    if row.runtime == "openvino":
                        row.status, row.error = "load-failed", f"OpenVINO cannot read the ONNX model: {exc.message}"
                try:
                    input_names = rt.make_inputs_onnx(onnx_path, inputs)
                except Exception as exc2:  # noqa: BLE001 - not a model any runtime reads either
                    for row in rows:
                        if row.status == "pending" and row.runtime != "openvino-int8":
                            row.status, row.error = "load-failed", f"not a readable ONNX model: {exc2}"
        if ref is None and int8_path:
            rows[-1].status, rows[-1].error = "no-onnx", "no FP32 reference to compare the INT8 model with"
        with noise:
            try:
                rt.start(rows, target, workdir, cache_dir, input_names, args.warmup, args.duration, pinned, progress)
                for k, row in enumerate(rows):
                    if row.status == "measured" and ref is not None:
                        row.check = rt.check_outputs(ref, os.path.join(workdir, f"out{k}.npz"), args.rtol, args.atol)
                        if row.runtime == "openvino-int8":
                            row.check["kind"] = "INT8 accuracy delta against FP32 (not a pass/fail check)"
                        ran = (row.ready.get("settings") or {}).get("execution_precision")
                        if row.check.get("finding") and ran not in (None, "FP32", "INT8"):
                            row.check["finding"] += (f"; OpenVINO executes this model in {ran} here (set "
                                                     f"instances.inference_precision: f32 to compare FP32)")
                rt.rounds(rows, levels, args.runs, progress)
            finally:
                for row in rows:
                    rt.stop(row)
                progress.done()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    doc = build_document(rows, levels, target, config, system, started)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    if args.html:
        with open(args.html, "w") as f:
            f.write(report.html_runtimes(doc, title=f"hosttune bench --runtime: {args.label or ', '.join(names)}"))
    table = console(doc)
    if args.json:
        print(table, file=sys.stderr)
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(table)
    if not doc["instances"]:
        return 1
    if args.fail_unstable and doc["verdict"] != "stable":
        return 1
    return 0


def _name(runtime: str, level: int, levels: list[int]) -> str:
    return runtime if len(levels) == 1 else f"{runtime} x{level}"


def build_document(rows: list[rt.Row], levels: list[int], target: Any, config: dict[str, Any],
                   system: dict[str, Any], started: float) -> dict[str, Any]:
    from hosttune import __version__
    from hosttune.bench import report, runner, stats

    targets = []
    for row in rows:
        if row.status != "measured":
            continue
        for level in levels:
            if not row.runs.get(level):
                continue
            settings = row.ready.get("settings") or {}
            t = runner.Target(name=_name(row.runtime, level, levels), cpus=target.cpus, node=target.node,
                              model=target.model, config=settings.get("config") or {},
                              precision="INT8" if row.runtime == "openvino-int8" else "FP32")
            t.info = {"runtime": row.runtime, "inflight": level, "cpus": row.ready.get("cpus"),
                      "precision": {"execution_precision": settings.get("execution_precision")
                                    or ("INT8" if row.runtime == "openvino-int8" else "FP32")}}
            n = min(len(row.runs[level]), len(row.elapsed[level]))
            t.runs, t.elapsed, t.errors = row.runs[level][:n], row.elapsed[level][:n], [0] * n
            targets.append(t)
    if targets:
        doc = runner.build_document("runtimes", config, system, targets, started)
    else:
        import datetime as _dt

        doc = {"schema": runner.SCHEMA, "hosttune_version": __version__,
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "wall_s": round(time.time() - started, 3), "kind": "runtimes", "label": config.get("label"),
               "config": config, "system": system, "instances": [], "aggregate": None, "verdict": "unsure"}
    by_name = {i["name"]: i for i in doc["instances"]}
    out_rows = []
    for row in rows:
        ready = row.ready
        r: dict[str, Any] = {
            "runtime": row.runtime, "status": row.status, "error": row.error, "model_path": row.model_path,
            "load_s": ready.get("load_s"), "compile_s": ready.get("compile_s"), "first_ms": ready.get("first_ms"),
            "peak_rss_mb": row.peak_rss_mb, "rss_before_load_mb": ready.get("rss_before_mb"),
            "settings": ready.get("settings"), "notes": ready.get("notes") or [],
            "threads_expected": ready.get("threads_expected"), "threads_started": ready.get("threads_started"),
            "cpus": ready.get("cpus"), "mem_bound": ready.get("mem_bound"), "check": row.check or None,
            "levels": {},
        }
        for level in levels:
            inst = by_name.get(_name(row.runtime, level, levels))
            if inst is None:
                continue
            s = inst["summary"]
            r["levels"][str(level)] = {"instance": inst["name"], "throughput": s["throughput"]["mean"],
                                       "p50_ms": s["latency_ms"]["p50"], "p99_ms": s["p99_ms"]["mean"],
                                       "p999_ms": s["p999_ms"]["mean"], "verdict": inst["verdict"]}
        out_rows.append(r)
    pairs = []
    alpha = stats.ALPHA
    for level in levels:
        here = [by_name[_name(r.runtime, level, levels)] for r in rows
                if _name(r.runtime, level, levels) in by_name]
        for a, b in combinations(here, 2):
            c = report._compare_one(f"{a['name']} vs {b['name']}",
                                    [x["throughput"] for x in a["runs"]], [x["throughput"] for x in b["runs"]],
                                    [x["latency_ms"]["p99"] for x in a["runs"]],
                                    [x["latency_ms"]["p99"] for x in b["runs"]],
                                    [v for x in a["runs"] for v in x["samples_ms"]],
                                    [v for x in b["runs"] for v in x["samples_ms"]], alpha)
            c.update({"a": a["name"], "b": b["name"], "inflight": level,
                      "verdict_a": a["verdict"], "verdict_b": b["verdict"]})
            pairs.append(c)
    doc["runtimes"] = out_rows
    doc["pairs"] = pairs
    doc["alpha"] = alpha
    if doc["instances"]:
        # runtimes run one after the other: the sum over them (the aggregate) is no figure of merit
        doc["verdict"] = stats.worst([i["verdict"] for i in doc["instances"]])
    return doc


def row_line(r: dict[str, Any]) -> str:
    """One runtime's figures, or its one-line reason."""
    if r["status"] != "measured":
        return f"{r['runtime']}: {r['status']}: {r['error']}"
    label = " (untuned)" if (r.get("settings") or {}).get("label") == "untuned" else ""
    compile_s = ""
    if r["runtime"] == "tvm":
        compile_s = (" (cached library)" if (r.get("settings") or {}).get("cached")
                     else f" (compile {bench_report.fmt_or_dash(r.get('compile_s'), '.2f')} s of it)")
    return (f"{r['runtime']}{label}: load {bench_report.fmt_or_dash(r.get('load_s'), '.2f')} s{compile_s}, first inference "
            f"{bench_report.fmt_or_dash(r.get('first_ms'), '.2f')} ms, peak RSS {bench_report.fmt_or_dash(r.get('peak_rss_mb'), '.0f')} MB, "
            f"{len(r.get('threads_started') or [])} thread(s) started; {bench_report.check_text(r)}")


def console(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    lines = [f"hosttune bench --runtime {','.join(cfg['runtimes'])}: {cfg['runs']} interleaved round(s) x "
             f"{cfg['duration_s']} s after {cfg['warmup_s']} s warmup, in-flight {cfg['inflight']}, "
             f"{'pinned' if cfg['pinned'] else 'unpinned'}, model {cfg.get('onnx')} ({cfg.get('onnx_source')}); "
             f"outputs checked against OpenVINO FP32 with rtol {cfg['rtol']:g}, atol {cfg['atol']:g}"]
    head = (f"{'runtime':<22} {'thr/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8} {'verdict':<9}")
    lines += ["", head, "-" * len(head)]
    for r in doc["runtimes"]:
        for level, f in r["levels"].items():
            lines.append(f"{f['instance']:<22} {f['throughput']:>9.1f} {f['p50_ms']:>8.3f} {f['p99_ms']:>8.3f} "
                         f"{f['p999_ms']:>8.3f} {f['verdict']:<9}")
    lines.append("")
    lines += [row_line(r) for r in doc["runtimes"]]
    if doc["pairs"]:
        lines += ["", "pairwise (per-run throughput and p99; Mann-Whitney U, Welch t under 4 runs; "
                      f"alpha {doc['alpha']}):"]
        for p in doc["pairs"]:
            t, l = p["throughput"], p["p99_ms"]
            lines.append(f"  {p['b']} vs {p['a']}: throughput {_delta(t)} ({t['change']}, p {t['p']:.3g}), "
                         f"p99 {_delta(l)} ({l['change']}, p {l['p']:.3g})")
    lines.append(f"verdict: {doc['verdict']}")
    return "\n".join(lines)


def _delta(m: dict[str, Any]) -> str:
    return f"{m['delta']:+.1%}" if m.get("delta") is not None else "-"
