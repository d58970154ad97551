"""`hosttune serve` (the KServe v2 inference server) and `hosttune model` (the model repository).

Light imports only at the top: openvino and uvicorn are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
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
    "cpus": List(Int(0, 2**20)), "service_cpus": List(Int(0, 2**20)), "mems": List(Int(0, 2**20)), "mems_list": Str(),
    "idle_poll_us": Opt(Int(0, MAX_IDLE_POLL_US)), "streams": Opt(Int(1, MAX_NIREQ)), "probe_url": Str(),
}, required=("name",))
PLAN = Obj({"schema": Str(), "instances": List(PLAN_INSTANCE, 4096), "nodes": List(ANY, 4096),
            "housekeeping": List(Int(0, 2**20))}, required=("schema",))

# Bounds of the numeric options (docs/security.md): checked by argparse, ASCII digits only
MAX_BODY = 2**31  # bytes
MAX_TIMEOUT = 86400.0  # seconds
MAX_REST_WORKERS = 10_000  # OVMS's bound (src/config.cpp)
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")  # OVMS's --log_level values
DEFAULT_REST_PORT = 9000  # neither --rest_port nor --port nor a plan instance: REST here, as before OVMS's flags


def register(subparsers: argparse._SubParsersAction) -> None:
    from hosttune.cliutil import add_policy, add_root
    from hosttune.model import default_repo

    p = subparsers.add_parser(
        "serve", help="KServe v2 REST and gRPC inference server on the OpenVINO runtime (one per NUMA node)",
        description="Serve the models of an OVMS-layout repository over KServe v2 REST (--rest_port) and "
                    "gRPC (--port), with OVMS's command line: an instance's arguments are the same for the "
                    "OVMS image and for hosttune serve. "
                    "With --plan-instance the ports, bind address, CPUs, memory node and OpenVINO "
                    "settings come from the plan; explicit options override them.")
    add_root(p)
    add_policy(p)
    # -- OVMS's flags, with OVMS's meaning (src/cli_parser.cpp, docs/parameters.md); the dashed
    # spellings are hosttune's older names of the same option
    ovms = p.add_argument_group("OVMS's options (same names and meaning as OVMS's)")
    ovms.add_argument("--port", "--grpc-port", dest="grpc_port", type=numbers.arg_uint(0, 65535), metavar="PORT",
                      help="KServe v2 gRPC port (OVMS's meaning; 0 or unset: no gRPC; default: the plan "
                           "instance's grpc_port). Before hosttune 28, --port was the REST port: see --rest_port")
    ovms.add_argument("--rest_port", "--rest-port", dest="rest_port", type=numbers.arg_uint(0, 65535), metavar="PORT",
                      help="KServe v2 REST port (0: no REST; default: the plan instance's port, else 9000 when "
                           "neither --port nor --rest_port is given)")
    ovms.add_argument("--rest_bind_address", metavar="ADDR", help="REST's address (one address serves both "
                                                                  "protocols here: the same as --grpc_bind_address, --bind)")
    ovms.add_argument("--grpc_bind_address", metavar="ADDR", help="gRPC's address (see --rest_bind_address)")
    ovms.add_argument("--model_name", metavar="NAME", help="serve one model under this name (with --model_path)")
    ovms.add_argument("--model_path", metavar="DIR", help="the model's directory holding its numbered version "
                                                          "directories (<DIR>/1/model.xml ...); the highest is served")
    ovms.add_argument("--config_path", "--config-path", dest="config_path", metavar="CONFIG_JSON",
                      help="serve the models of an OVMS config.json instead of --model_name/--model_path or --repo/--model")
    ovms.add_argument("--nireq", type=numbers.arg_uint(0, MAX_NIREQ),
                      help="infer requests in the pool (0 or unset: the plan's, else OPTIMAL_NUMBER_OF_INFER_REQUESTS "
                           "of the compiled model)")
    ovms.add_argument("--plugin_config", metavar="JSON", help='OpenVINO properties, e.g. \'{"NUM_STREAMS": "1"}\' '
                                                              "(OVMS's single-model option; not with --config_path)")
    ovms.add_argument("--target_device", metavar="DEVICE", help="CPU (hosttune serve runs on CPU only; others are refused)")
    ovms.add_argument("--grpc_workers", type=numbers.arg_uint(1, os.cpu_count() or 1), default=1, metavar="N",
                      help="gRPC servers (OVMS: 1 to the CPU count); hosttune serves gRPC from its one event "
                           "loop, so any value is accepted and served by one")
    ovms.add_argument("--rest_workers", type=numbers.arg_uint(2, MAX_REST_WORKERS), metavar="N",
                      help=f"REST worker threads (OVMS: 2 to {MAX_REST_WORKERS}, needs --rest_port); hosttune "
                           "serves REST from its one event loop, so the value is checked and not used")
    ovms.add_argument("--file_system_poll_wait_seconds", "--file-system-poll-wait-seconds",
                      dest="file_system_poll_wait_seconds", type=numbers.arg_uint(0, 2**32 - 1), default=1, metavar="S",
                      help="seconds between checks of config.json and the model directories for changes "
                           "(default 1; 0: no checks)")
    ovms.add_argument("--metrics_enable", nargs="?", const="true", default="false", choices=("true", "false"),
                      help="serve Prometheus metrics at /metrics on the REST port (otherwise /metrics is an "
                           "unknown endpoint); with --config_path the file's monitoring section says it instead")
    ovms.add_argument("--metrics_list", metavar="NAMES", default="",
                      help="comma-separated OVMS metric families to expose (default: OVMS's default set); "
                           "needs --metrics_enable")
    ovms.add_argument("--log_level", default="INFO", choices=LOG_LEVELS, help="log level (OVMS's names; default INFO)")
    ovms.add_argument("--cpu_extension", metavar="LIB", help="refused: hosttune serve loads no custom CPU layer library")
    # -- hosttune's own
    p.add_argument("--plan", metavar="FILE", help="a saved plan JSON (hosttune plan --json) instead of "
                                                  "computing the plan from --root/--policy")
    p.add_argument("--plan-instance", metavar="NAME", help="serve as this plan instance (e.g. node0)")
    p.add_argument("--repo", default=None, help=f"model repository <repo>/<name>/<version>/ "
                                                f"(default: $HOSTTUNE_MODEL_REPO or {default_repo()})")
    p.add_argument("--model", action="append", metavar="NAME[:VERSION]",
                   help="model(s) of --repo to serve (default: the instance's model, else every model in the repo)")
    p.add_argument("--ephemeral-ports", action="store_true",
                   help="a port given as 0 (--rest_port, --port) is any free port, named in the start line, "
                        "instead of OVMS's \"not served\" (tests and benchmarks)")
    p.add_argument("--bind", help="address to listen on, REST and gRPC (default: the instance's, else 127.0.0.1)")
    p.add_argument("--web-config-file", metavar="FILE", help="TLS and basic auth for REST and gRPC, in the "
                   "Prometheus exporter-toolkit web-config format (docs/monitoring.md)")
    p.add_argument("--config", metavar="JSON", help='OpenVINO properties, e.g. \'{"NUM_STREAMS": 2}\' '
                                                    '(over the plan\'s or the config.json\'s)')
    p.add_argument("--cpus", help="CPU list to run on (default: the instance's CPUs)")
    p.add_argument("--service-cpus", metavar="CPUS", help="CPU list of the event loop (unless it runs a pool of one's "
                   "inference), waiter, decoder and gRPC threads (default: the instance's service_cpus, else --cpus)")
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


def openvino_config(base: dict[str, Any], override: str | None, where: str = "--config") -> dict[str, Any]:
    """The plan's OpenVINO properties with --config (or --plugin_config, `where`) over them.
    NUM_STREAMS and PERFORMANCE_HINT are never set together: an explicit one replaces the plan's other."""
    config = dict(base)
    if override:
        extra = safejson.loads(override, where, max_bytes=64 * 2**10)
        if not isinstance(extra, dict):
            raise HosttuneError('expected a JSON object like {"NUM_STREAMS": 2}', where=where)
        safejson.check(extra, Map(SCALAR), where)
        if "NUM_STREAMS" in extra and "PERFORMANCE_HINT" in extra:
            raise HosttuneError("set NUM_STREAMS or PERFORMANCE_HINT, not both", where=where)
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


def ovms_checks(args: argparse.Namespace) -> None:
    """OVMS's own refusals of its options (src/config.cpp), before anything is read: what OVMS
    refuses, hosttune serve refuses too, naming the option."""
    if args.cpu_extension is not None:
        raise HosttuneError("hosttune serve loads no custom CPU layer library; serve this model with OVMS",
                            where="--cpu_extension")
    if args.target_device not in (None, "", "CPU"):
        raise HosttuneError(f"{args.target_device!r}: hosttune serve runs on CPU only", where="--target_device")
    if args.model_name is not None or args.model_path is not None:
        if args.config_path:
            raise HosttuneError("use either --config_path or --model_path with --model_name", where="--config_path")
        if not args.model_name or not args.model_path:
            raise HosttuneError("--model_name and --model_path go together",
                                where="--model_path" if args.model_name else "--model_name")
        if args.model or args.repo:
            raise HosttuneError("--model_name/--model_path name the model and its directory", where="--model/--repo")
        safejson.check(args.model_name, Name(), "--model_name")
    if args.config_path:
        given = [f"--{n}" for n in ("nireq", "plugin_config", "target_device") if getattr(args, n)]
        if given:
            raise HosttuneError("model options on the command line are exclusive with the config file (as in OVMS)",
                                where=given[0])
    if args.plugin_config is not None and args.config is not None:
        raise HosttuneError("give the OpenVINO properties once", where="--plugin_config/--config")
    if args.metrics_list and args.metrics_enable != "true":
        raise HosttuneError("needs --metrics_enable (as in OVMS)", where="--metrics_list")
    addresses = {a for a in (args.bind, args.rest_bind_address, args.grpc_bind_address) if a is not None}
    if len(addresses) > 1:
        raise HosttuneError(f"hosttune serve listens on one address for both protocols, got {sorted(addresses)}",
                            where="--rest_bind_address/--grpc_bind_address/--bind")
    if addresses:
        args.bind = addresses.pop()


def ports(args: argparse.Namespace, instance: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """(REST port, gRPC port), None: not served. OVMS's meaning: --port is gRPC, --rest_port REST,
    0 is "not served" (with --ephemeral-ports: any free port). Unset, they are the plan instance's;
    with neither flag nor instance, REST on DEFAULT_REST_PORT as before hosttune took OVMS's flags."""
    rest, grpc = args.rest_port, args.grpc_port
    if instance:
        rest = rest if rest is not None else instance.get("port")
        grpc = grpc if grpc is not None else instance.get("grpc_port")
    elif rest is None and grpc is None:
        rest = DEFAULT_REST_PORT
    for value, where in ((rest, "--rest_port" if args.rest_port is not None else "the plan's port"),
                         (grpc, "--port" if args.grpc_port is not None else "the plan's grpc_port")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535):
            raise HosttuneError(f"{brief(value)} is not a TCP port", where=where)
    if not args.ephemeral_ports:
        rest, grpc = rest or None, grpc or None  # OVMS: 0 is not served
    if rest is None and grpc is None:
        raise HosttuneError("port and rest_port cannot both be unset (or 0)", where="--port/--rest_port")
    if rest is not None and rest == grpc != 0:
        raise HosttuneError(f"port and rest_port cannot have the same value ({rest})", where="--port/--rest_port")
    if rest is None:
        for name in ("metrics_enable", "rest_workers"):
            if getattr(args, name) not in (None, "false"):
                raise HosttuneError("needs --rest_port (as in OVMS: REST serves it)", where=f"--{name}")
    return rest, grpc


def metric_families(args: argparse.Namespace, config: Any = None) -> frozenset[str] | None:
    """The metric families /metrics exposes, None: no /metrics (an unknown endpoint, as in OVMS
    without metrics). `config`: the config.json read (ovms_config.Config), whose monitoring section
    says it instead of the flags."""
    from hosttune.serve.metrics import enabled_families

    on = args.metrics_enable == "true"
    names = [n.strip() for n in args.metrics_list.split(",")] if args.metrics_list else None
    where = "--metrics_list"
    if config is not None and config.metrics_enable is not None:
        if on:  # OVMS: "Metrics configuration duplicated in configuration file and CLI parameters"
            raise HosttuneError("the config file's monitoring section sets the metrics already",
                                where="--metrics_enable")
        on, names = config.metrics_enable, config.metrics_list
        where = f"{args.config_path}: monitoring.metrics.metrics_list"
    return enabled_families(names, where) if on else None


def cmd_serve(args: argparse.Namespace) -> int:
    from hosttune.model.repo import find
    from hosttune.serve import placement

    # the options' own bounds first: nothing is read before they hold
    ovms_checks(args)
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
    rest_port, grpc_port = ports(args, instance)
    config = None
    if args.config_path:
        from hosttune.serve import ovms_config

        if args.model or args.repo:
            raise HosttuneError("the config file names the models and their paths", where="--model/--repo")
        config = ovms_config.read(args.config_path)  # a refused file is refused before anything is bound
        served = []
    elif args.model_path:
        # OVMS's single model: a directory of numbered versions, the highest served
        path = os.path.abspath(args.model_path).rstrip("/")
        if not os.path.isdir(path):
            raise HosttuneError(f"{args.model_path}: not a directory (the model's directory, holding its numbered "
                                "version directories)", where="--model_path")
        entry = find(os.path.dirname(path), os.path.basename(path), None)
        served = [(replace(entry, name=args.model_name), (instance or {}).get("openvino", {}), None)]
    else:
        repo = _repo(args)
        served = [(find(repo, name, version), (instance or {}).get("openvino", {}), None)
                  for name, version in _model_specs(args, instance, repo)]
    families = metric_families(args, config) if rest_port is not None else None
    host = args.bind or (instance or {}).get("bind") or "127.0.0.1"
    plan_nireq = ((instance or {}).get("ovms") or {}).get("nireq")
    override, where = (args.plugin_config, "--plugin_config") if args.plugin_config is not None else (args.config, "--config")
    served = [(entry, openvino_config(props, override, where), args.nireq or nireq or plan_nireq)
              for entry, props, nireq in served]
    idle_poll_us = args.idle_poll_us if args.idle_poll_us is not None else (instance or {}).get("idle_poll_us") or 0
    if isinstance(idle_poll_us, bool) or not isinstance(idle_poll_us, int) or not 0 <= idle_poll_us <= MAX_IDLE_POLL_US:
        raise HosttuneError(f"must be 0 to {MAX_IDLE_POLL_US} microseconds, got {brief(idle_poll_us)}",
                            where="--idle-poll-us" if args.idle_poll_us is not None else "the plan's idle_poll_us")
    cpus = cpulist.parse(args.cpus, where="--cpus") if args.cpus else (instance or {}).get("cpus")
    service_cpus = (cpulist.parse(args.service_cpus, where="--service-cpus") if args.service_cpus
                    else (instance or {}).get("service_cpus")) or cpus

    from hosttune.serve.app import App
    from hosttune.serve.run import bind_socket, serve_forever
    from hosttune.serve.wire import Limits

    from hosttune import webconfig

    web = webconfig.load(args.web_config_file, where="--web-config-file") if args.web_config_file else None
    # taken ports fail here, before the slow part (grpcio binds its port itself, once the models are compiled)
    sock = bind_socket(host, rest_port) if rest_port is not None else None
    try:
        if grpc_port:
            bind_socket(host, grpc_port).close()
        placed = placement.Threads()
        if cpus and not args.no_pin:
            # threads started before (imports) go to the service CPUs, this one compiles on the
            # inference CPUs: OpenVINO places its streams within the compiling thread's mask
            where = "--cpus" if args.cpus else f"instance {instance['name']}"
            if service_cpus is not cpus and not args.service_cpus and not placement.allowed(service_cpus):
                # a unit or container cpuset from before the plan had service_cpus: run as before
                print(f"hosttune: warning: the service CPUs {cpulist.format(service_cpus)} are not allowed to this "
                      f"process (cgroup cpuset); hosttune's own threads stay on {cpulist.format(cpus)}",
                      file=sys.stderr)
                service_cpus = cpus
            placement.place_service(service_cpus, where=where if service_cpus is cpus else
                                    "--service-cpus" if args.service_cpus else f"{where} service_cpus")
            placement.pin_cpus(cpus, where=where)
            placed = placement.Threads(tuple(cpus), tuple(service_cpus))
            if instance and instance.get("mems") and multi_node and not placement.bind_memory(instance["mems"]):
                print(f"hosttune: warning: could not bind memory to node(s) {instance['mems_list']}; "
                      f"use NUMAPolicy=bind/NUMAMask= in the unit or --cpuset-mems", file=sys.stderr)
        import openvino as ov

        from hosttune.serve.engine import ServedModel

        core = ov.Core()
        models = [ServedModel(core, entry, config, nireq, placed=placed) for entry, config, nireq in served]
        reloader = None
        if args.config_path:  # the models of config.json, reloaded live (hosttune/serve/reload.py)
            from hosttune.serve.reload import Reloader

            def build(model: Any, version: int) -> ServedModel:
                return ServedModel(core, model.entry(version), openvino_config(model.plugin_config, args.config),
                                   args.nireq or model.nireq or plan_nireq, model.io, placed)

            reloader = Reloader(args.config_path, build, args.file_system_poll_wait_seconds)
            models = reloader.first()
        app = App(models, max_body=args.max_body, max_json=args.max_json_body,
                  metrics_on=families is not None, metric_families=families, placed=placed)
        if reloader is not None:
            reloader.attach(app)
        # a pool of one runs its inference on the event loop thread (ServedModel.infer_now)
        placed.place_loop(inline=any(m.nireq == 1 for m in models))
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    limits = Limits(args.header_timeout, args.body_timeout, args.max_connections,
                    max_buffered=args.max_buffered_bytes)
    if args.grpc_port is not None and args.rest_port is None and instance is None:
        # the one command line whose meaning changed (--port was REST): said, not silent
        print("hosttune serve: note: --port is the gRPC port (OVMS's meaning); REST is served with --rest_port",
              file=sys.stderr, flush=True)
    serve_forever(app, sock, host, limits=limits, idle_poll_us=idle_poll_us, direct_lane=not args.no_direct_lane,
                  grpc_port=grpc_port, log_level=args.log_level, web=web)
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
