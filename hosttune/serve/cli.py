"""`hosttune serve` (the KServe v2 inference server) and `hosttune model` (the model repository).

Light imports only at the top: openvino and uvicorn are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from hosttune import cpulist, numbers, safejson
from hosttune.errors import HosttuneError
from hosttune.model.repo import MAX_VERSION
from hosttune.policy import MAX_IDLE_POLL_US
from hosttune.safejson import ANY, SCALAR, Int, List, Map, Name, Obj, Opt, Str
from hosttune.safeyaml import brief
from hosttune.serve import DEFAULT_MAX_BUFFERED, MAX_NIREQ

# what `hosttune serve --plan` and `hosttune bench --plan` read of a saved plan (hosttune plan
# --json); other fields are the plan's own business
PLAN_INSTANCE = Obj({
    "name": Str(255), "model": Str(255), "bind": Str(255), "port": Int(0, 65535), "grpc_port": Opt(Int(0, 65535)),
    "models": List(Obj({"name": Name(), "version": Opt(Int(1, MAX_VERSION))}, required=("name",)), 1000),
    "openvino": Map(SCALAR), "ovms": Obj({"nireq": Opt(Int(1, MAX_NIREQ))}),
    "cpus": List(Int(0, 2**20)), "mems": List(Int(0, 2**20)), "mems_list": Str(),
    "idle_poll_us": Opt(Int(0, MAX_IDLE_POLL_US)), "streams": Opt(Int(1, MAX_NIREQ)), "probe_url": Str(),
}, required=("name",))
PLAN = Obj({"schema": Str(), "instances": List(PLAN_INSTANCE, 4096), "nodes": List(ANY, 4096),
            "housekeeping": List(Int(0, 2**20))}, required=("schema",))

# Bounds of the numeric options (docs/security.md): checked by argparse, ASCII digits only
MAX_BODY = 2**31  # bytes
MAX_TIMEOUT = 86400.0  # seconds


def register(subparsers: argparse._SubParsersAction) -> None:
    from hosttune.cliutil import add_policy, add_root
    from hosttune.model import default_repo

    p = subparsers.add_parser(
        "serve", help="KServe v2 REST and gRPC inference server on the OpenVINO runtime (one per NUMA node)",
        description="Serve the models of an OVMS-layout repository over the KServe v2 REST protocol "
                    "(and gRPC with --grpc-port). "
                    "With --plan-instance the port, bind address, CPUs, memory node and OpenVINO "
                    "settings come from the plan; explicit options override them.")
    add_root(p)
    add_policy(p)
    p.add_argument("--plan", metavar="FILE", help="a saved plan JSON (hosttune plan --json) instead of "
                                                  "computing the plan from --root/--policy")
    p.add_argument("--plan-instance", metavar="NAME", help="serve as this plan instance (e.g. node0)")
    p.add_argument("--repo", default=None, help=f"model repository <repo>/<name>/<version>/ "
                                                f"(default: $HOSTTUNE_MODEL_REPO or {default_repo()})")
    p.add_argument("--model", action="append", metavar="NAME[:VERSION]",
                   help="model(s) to serve (default: the instance's model, else every model in the repo)")
    p.add_argument("--config-path", metavar="CONFIG_JSON",
                   help="serve the models of an OVMS config.json (name, base_path, version policy, nireq, "
                        "plugin_config) instead of --repo/--model")
    p.add_argument("--port", type=numbers.arg_uint(0, 65535), help="TCP port (default: the instance's, else 9000; 0 = any free port)")
    p.add_argument("--grpc-port", type=numbers.arg_uint(0, 65535), metavar="PORT",
                   help="also serve KServe v2 gRPC on this port, same address (default: the instance's "
                        "grpc_port, else REST only; 0 = any free port)")
    p.add_argument("--bind", help="address to listen on (default: the instance's, else 127.0.0.1)")
    p.add_argument("--web-config-file", metavar="FILE", help="TLS and basic auth for REST and gRPC, in the "
                   "Prometheus exporter-toolkit web-config format (docs/monitoring.md)")
    p.add_argument("--config", metavar="JSON", help='OpenVINO properties, e.g. \'{"NUM_STREAMS": 2}\' '
                                                    '(override the plan\'s)')
    p.add_argument("--nireq", type=numbers.arg_uint(1, MAX_NIREQ), help="infer requests in the pool (default: the plan's, else "
                                             "OPTIMAL_NUMBER_OF_INFER_REQUESTS of the compiled model)")
    p.add_argument("--cpus", help="CPU list to run on (default: the instance's CPUs)")
    p.add_argument("--no-pin", action="store_true", help="do not set CPU affinity or memory policy")
    p.add_argument("--max-body", type=numbers.arg_uint(1, MAX_BODY), default=64 * 2**20, help="largest request body in bytes (413 above)")
    p.add_argument("--max-json-body", type=numbers.arg_uint(1, MAX_BODY), default=16 * 2**20,
                   help="largest JSON part of a request in bytes: a JSON body, or the JSON header of a "
                        "binary-data request (413 above)")
    p.add_argument("--header-timeout", type=numbers.arg_udecimal(0.001, MAX_TIMEOUT), default=10.0, help="seconds a client has to send a "
                                                                      "request's headers (408 after)")
    p.add_argument("--body-timeout", type=numbers.arg_udecimal(0.001, MAX_TIMEOUT), default=60.0, help="seconds a client has to send a "
                                                                    "request's body (408 after)")
    p.add_argument("--max-connections", type=numbers.arg_uint(1, 65536), default=512, help="open connections at most (503 above)")
    p.add_argument("--max-buffered-bytes", type=numbers.arg_uint(1, 2**40), default=DEFAULT_MAX_BUFFERED,
                   help="request body bytes held across all connections at once (503 above; at least "
                        f"--max-body; default {DEFAULT_MAX_BUFFERED >> 20} MiB)")
    p.add_argument("--idle-poll-us", type=numbers.arg_uint(0, MAX_IDLE_POLL_US), metavar="US",
                   help="after each answer, poll for the next request for this many microseconds instead "
                        "of sleeping: no CPU wake-up between back-to-back requests, one CPU busy while "
                        f"they come (0: off; at most {MAX_IDLE_POLL_US}; default: the plan instance's, else 0)")
    p.add_argument("--no-direct-lane", action="store_true",
                   help="answer every request through the ASGI application (no direct lane from the HTTP "
                        "parser for a pool of one: to measure what the lane saves, benchmarks/serve_lane.py)")
    p.set_defaults(func=cmd_serve)

    m = subparsers.add_parser("model", help="model repository: prepare (convert/quantize), sample, list, check")
    msub = m.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    m.set_defaults(func=lambda args: (m.print_help(sys.stderr), 2)[1])

    p = msub.add_parser("prepare", help="write an ONNX file or OpenVINO IR into the repository as IR "
                                        "(+ an INT8 variant)")
    p.add_argument("src", help="model.onnx or model.xml (with model.bin beside it)")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--version", type=numbers.arg_uint(1, MAX_VERSION), default=1)
    p.add_argument("--repo", default=None, help="model repository (default: $HOSTTUNE_MODEL_REPO or "
                                                f"{default_repo()})")
    p.add_argument("--static-shape", action="append", metavar="[INPUT:]DIMS",
                   help="reshape to a static shape, e.g. 1,3,224,224 or input:1,3,224,224 (repeatable)")
    p.add_argument("--precision", default="FP32", help="baseline precision: FP32 or FP16 (weights)")
    p.add_argument("--int8", action="store_true", help="also write <name>-int8 (NNCF post-training quantization)")
    p.add_argument("--calibration", metavar="SPEC", help="INT8 calibration data: synthetic[:N] (default "
                                                         "synthetic:32), a .npy or a .npz file")
    p.add_argument("--force", action="store_true", help="replace an existing version")
    p.add_argument("--json", action="store_true", help="print the metadata written as JSON")
    p.set_defaults(func=cmd_model_prepare)

    p = msub.add_parser("sample", help="build the sample ResNet-style model (+ INT8) into the repository")
    p.add_argument("--repo", default=None, help="model repository (default: $HOSTTUNE_MODEL_REPO or "
                                                f"{default_repo()})")
    p.add_argument("--variant", default="sample", help="sample (a few ms/inference on one core), tiny, trivial")
    p.add_argument("--name", help="model name (default: the variant's name)")
    p.add_argument("--version", type=numbers.arg_uint(1, MAX_VERSION), default=1)
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 variant")
    p.add_argument("--force", action="store_true", help="replace an existing version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_sample)

    p = msub.add_parser("list", help="models and versions in the repository")
    p.add_argument("--repo", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_list)

    p = msub.add_parser("check", help="compile a model and report the precision it really executes in")
    p.add_argument("name")
    p.add_argument("--version", type=numbers.arg_uint(1, MAX_VERSION))
    p.add_argument("--repo", default=None)
    p.add_argument("--expect", choices=("INT8", "FP32", "BF16", "FP16"),
                   help="fail (exit 1) unless the runtime graph executes in this precision")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_check)


def _repo(args: argparse.Namespace) -> str:
    from hosttune.model import default_repo

    return os.path.abspath(args.repo or default_repo())


# -- plan instance ------------------------------------------------------------------------------
def read_plan(args: argparse.Namespace) -> dict[str, Any]:
    """--plan FILE, else the plan computed from --root/--policy."""
    if getattr(args, "plan", None):
        plan = safejson.load_file(args.plan)
        if not isinstance(plan, dict) or plan.get("schema") != "hosttune.plan/1":
            raise HosttuneError("not a hosttune.plan/1 document", where=args.plan)
        safejson.check(plan, PLAN, args.plan)
        return plan
    from hosttune.cliutil import load_plan

    return load_plan(args)


def find_instance(plan: dict[str, Any], name: str) -> dict[str, Any]:
    for inst in plan.get("instances", []):
        if inst.get("name") == name:
            return inst
    names = ", ".join(i.get("name", "?") for i in plan.get("instances", [])) or "none"
    raise HosttuneError(f"the plan has no instance {name!r} (instances: {names})", where="--plan-instance")


def openvino_config(base: dict[str, Any], override: str | None) -> dict[str, Any]:
    """The plan's OpenVINO properties with --config over them. NUM_STREAMS and PERFORMANCE_HINT are
    never set together: an explicit one replaces the plan's other."""
    config = dict(base)
    if override:
        extra = safejson.loads(override, "--config", max_bytes=64 * 2**10)
        if not isinstance(extra, dict):
            raise HosttuneError('expected a JSON object like {"NUM_STREAMS": 2}', where="--config")
        safejson.check(extra, Map(SCALAR), "--config")
        if "NUM_STREAMS" in extra and "PERFORMANCE_HINT" in extra:
            raise HosttuneError("set NUM_STREAMS or PERFORMANCE_HINT, not both", where="--config")
        if "NUM_STREAMS" in extra:
            config.pop("PERFORMANCE_HINT", None)
        if "PERFORMANCE_HINT" in extra:
            config.pop("NUM_STREAMS", None)
        config.update(extra)
    return config


def _model_specs(args: argparse.Namespace, instance: dict[str, Any] | None, repo: str) -> list[tuple[str, int | None]]:
    from hosttune.model.repo import list_models

    if not args.model and instance and instance.get("models"):
        return [(m["name"], m.get("version")) for m in instance["models"]]
    specs = args.model or ([instance["model"]] if instance and instance.get("model") else None)  # older plans
    if not specs:
        specs = list(list_models(repo))
        if not specs:
            raise HosttuneError("the model repository has no models (hosttune model sample / prepare)", where=repo)
    out = []
    for spec in specs:
        name, _, version = spec.partition(":")
        if version and numbers.uint_or_none(version, MAX_VERSION) in (None, 0):
            raise HosttuneError(f"{spec!r}: the version must be ASCII digits from 1 to {MAX_VERSION}", where="--model")
        safejson.check(name, Name(), "--model" if args.model else "the plan instance's model")
        out.append((name, int(version) if version else None))
    return out


def cmd_serve(args: argparse.Namespace) -> int:
    from hosttune.model.repo import find
    from hosttune.serve import placement

    # the options' own bounds first: nothing is read before they hold
    if args.nireq is not None and not 1 <= args.nireq <= MAX_NIREQ:
        raise HosttuneError(f"must be 1 to {MAX_NIREQ}, got {args.nireq}", where="--nireq")
    for name in ("max_body", "max_json_body"):
        if getattr(args, name) < 1024:
            raise HosttuneError("must be at least 1024 bytes", where="--" + name.replace("_", "-"))
    if args.max_buffered_bytes < args.max_body:
        raise HosttuneError(f"must be at least --max-body ({args.max_body}): one largest request must fit",
                            where="--max-buffered-bytes")
    for name in ("header_timeout", "body_timeout", "max_connections"):
        if not 0 < getattr(args, name) < float("inf"):
            raise HosttuneError("must be a positive number", where="--" + name.replace("_", "-"))
    instance = None
    multi_node = False
    if args.plan_instance:
        plan = read_plan(args)
        instance = find_instance(plan, args.plan_instance)
        multi_node = len(plan.get("nodes") or []) > 1
    elif args.plan:
        raise HosttuneError("--plan needs --plan-instance NAME", where="--plan")
    repo = _repo(args)
    if args.config_path:
        from hosttune.serve import ovms_config

        if args.model or args.repo:
            raise HosttuneError("the config file names the models and their paths", where="--model/--repo")
        served = ovms_config.load(args.config_path)
    else:
        served = [(find(repo, name, version), (instance or {}).get("openvino", {}), None)
                  for name, version in _model_specs(args, instance, repo)]
    host = args.bind or (instance or {}).get("bind") or "127.0.0.1"
    port = args.port if args.port is not None else (instance or {}).get("port", 9000)
    if not 0 <= port <= 65535:
        raise HosttuneError(f"{port} is not a TCP port", where="--port")
    grpc_port = args.grpc_port if args.grpc_port is not None else (instance or {}).get("grpc_port")
    if grpc_port is not None:
        where = "--grpc-port" if args.grpc_port is not None else "the plan's grpc_port"
        if isinstance(grpc_port, bool) or not isinstance(grpc_port, int) or not 0 <= grpc_port <= 65535:
            raise HosttuneError(f"{brief(grpc_port)} is not a TCP port", where=where)
        if grpc_port == port != 0:
            raise HosttuneError(f"port {port} is the REST port already", where=where)
    plan_nireq = ((instance or {}).get("ovms") or {}).get("nireq")
    served = [(entry, openvino_config(props, args.config), args.nireq or nireq or plan_nireq)
              for entry, props, nireq in served]
    idle_poll_us = args.idle_poll_us if args.idle_poll_us is not None else (instance or {}).get("idle_poll_us") or 0
    if isinstance(idle_poll_us, bool) or not isinstance(idle_poll_us, int) or not 0 <= idle_poll_us <= MAX_IDLE_POLL_US:
        raise HosttuneError(f"must be 0 to {MAX_IDLE_POLL_US} microseconds, got {brief(idle_poll_us)}",
                            where="--idle-poll-us" if args.idle_poll_us is not None else "the plan's idle_poll_us")
    cpus = cpulist.parse(args.cpus, where="--cpus") if args.cpus else (instance or {}).get("cpus")

    from hosttune.serve.app import App
    from hosttune.serve.run import bind_socket, serve_forever
    from hosttune.serve.wire import Limits

    from hosttune import webconfig

    web = webconfig.load(args.web_config_file, where="--web-config-file") if args.web_config_file else None
    sock = bind_socket(host, port)  # a taken port fails here, before the slow part
    if grpc_port:  # the same for gRPC's port (grpcio binds it itself, once the models are compiled)
        try:
            bind_socket(host, grpc_port).close()
        except BaseException:
            sock.close()
            raise
    try:
        if cpus and not args.no_pin:
            placement.pin_cpus(cpus, where="--cpus" if args.cpus else f"instance {instance['name']}")
            if instance and instance.get("mems") and multi_node and not placement.bind_memory(instance["mems"]):
                print(f"hosttune: warning: could not bind memory to node(s) {instance['mems_list']}; "
                      f"use NUMAPolicy=bind/NUMAMask= in the unit or --cpuset-mems", file=sys.stderr)
        import openvino as ov

        from hosttune.serve.engine import ServedModel

        core = ov.Core()
        models = [ServedModel(core, entry, config, nireq) for entry, config, nireq in served]
        app = App(models, max_body=args.max_body, max_json=args.max_json_body)
    except BaseException:
        sock.close()
        raise
    limits = Limits(args.header_timeout, args.body_timeout, args.max_connections,
                    max_buffered=args.max_buffered_bytes)
    serve_forever(app, sock, host, limits=limits,
                  idle_poll_us=idle_poll_us, direct_lane=not args.no_direct_lane, grpc_port=grpc_port, web=web)
    return 0


# -- model --------------------------------------------------------------------------------------
def _print_metas(metas: list[dict[str, Any]], as_json: bool, repo: str) -> None:
    if as_json:
        json.dump(metas, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    for meta in metas:
        rt = meta.get("runtime", {})
        shapes = ", ".join(f"{i['name']} {i['datatype']}{i['shape']}" for i in meta.get("inputs", []))
        print(f"{os.path.join(repo, meta['name'], str(meta['version']))}: {meta['precision']} "
              f"(runs in {rt.get('execution_precision')}: {rt.get('int8_layers')}/{rt.get('compute_layers')} "
              f"compute layers int8) inputs {shapes}")


def cmd_model_prepare(args: argparse.Namespace) -> int:
    from hosttune.model.repo import prepare

    if args.calibration and not args.int8:
        raise HosttuneError("--calibration is for --int8", where="--calibration")
    repo = _repo(args)
    metas = prepare(args.src, args.name, repo, version=args.version, static_shape=args.static_shape,
                    precision=args.precision, int8=args.int8, calibration=args.calibration, force=args.force)
    _print_metas(metas, args.json, repo)
    return 0


def cmd_model_sample(args: argparse.Namespace) -> int:
    from hosttune.model.repo import sample

    repo = _repo(args)
    metas = sample(repo, variant=args.variant, name=args.name, int8=not args.no_int8, version=args.version,
                   force=args.force)
    _print_metas(metas, args.json, repo)
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from hosttune.model.repo import find, list_models

    repo = _repo(args)
    rows = []
    for name, vs in list_models(repo).items():
        entry = find(repo, name)
        rows.append({"name": name, "versions": vs, "latest": entry.path,
                     "precision": entry.meta.get("precision")})
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in rows:
            print(f"{r['name']:<24} versions {','.join(map(str, r['versions'])):<8} "
                  f"{r['precision'] or '?':<5} {r['latest']}")
    return 0


def cmd_model_check(args: argparse.Namespace) -> int:
    import openvino as ov

    from hosttune.model.precision import runtime_precision
    from hosttune.model.repo import find, read_model

    entry = find(_repo(args), args.name, args.version)
    core = ov.Core()
    compiled = core.compile_model(read_model(core, entry.path), "CPU")
    summary = runtime_precision(compiled)
    summary["claimed"] = entry.meta.get("precision")
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{entry.name}:{entry.version} claims {summary['claimed'] or '?'}, executes in "
              f"{summary['execution_precision']} ({summary['int8_layers']}/{summary['compute_layers']} compute "
              f"layers int8; {summary['by_precision']})")
    if args.expect and summary["execution_precision"] != args.expect:
        print(f"hosttune: {entry.name} does not execute in {args.expect}", file=sys.stderr)
        return 1
    return 0
