"""The policy: what the operator wants, in YAML (the same keys Ansible passes as `hosttune_policy`).

Validated against a small schema: unknown keys and wrong types are errors naming the dotted field.
Pure: no host access.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from typing import Any

from hosttune import cpulist, numbers, safeyaml
from hosttune.areas import NAMES
from hosttune.areas.kernel_args import KERNEL_ARG
from hosttune.areas.sysctls import SYSCTL_NAME
from hosttune.errors import HosttuneError, PolicyError
from hosttune.safeyaml import brief

PROFILES = ("latency", "throughput")
CONFIG_FILE = "/etc/hosttune/hosttune.yaml"  # the agent's config: a policy, or {policy: ..., agent: ...}

# Defaults per profile; the user's policy is deep-merged over the profile's defaults.
DEFAULTS: dict[str, Any] = {
    "profile": "latency",
    "housekeeping": {
        "cores_per_node": 1,  # whole cores kept for the OS on every node (SMT siblings together)
        "cpus": None,  # or an explicit cpulist, instead of cores_per_node
    },
    "isolation": {
        "enabled": True,
        "isolcpus_flags": ["managed_irq", "domain"],
        "nohz_full": True,
        "rcu_nocbs": True,
        "irqaffinity": True,
        "cpus": None,  # or an explicit cpulist of CPUs to isolate (the rest is housekeeping)
        "extra_kernel_args": [],
    },
    "cpufreq": {
        "governor": "performance",
        "lock": "base",  # base | max | none | <MHz>
        "turbo": "off",  # off | on | keep
        "epp": "performance",  # an EPP name, or null to leave it
    },
    "cstates": {
        "max_latency_us": None,  # disable idle states whose exit latency exceeds this (null: leave)
    },
    "sysctls": {
        "kernel.numa_balancing": 0,
        "kernel.timer_migration": 0,
        "vm.swappiness": 10,
        "vm.stat_interval": 10,
    },
    "thp": "never",  # always | madvise | never | keep
    "irqs": {
        "pin": True,  # device IRQs onto the housekeeping CPUs of the device's node
        "irqbalance": "ban",  # ban (banned CPUs = isolated) | stop | keep
    },
    "instances": {
        "enabled": True,
        "nodes": "all",  # or a list of node ids
        "base_port": 9000,  # REST port of the first instance (the next ones count up)
        # gRPC port of the first instance (OVMS; hosttune serve has no gRPC); null: base_port + 100
        "grpc_base_port": None,
        "bind": "127.0.0.1",
        # the model(s) each instance serves: a name, "name:version", or a list of them (several
        # models share the instance's CPUs, each compiled with the instance's OpenVINO settings)
        "model": "sample",
        "threads_per_stream": None,  # throughput profile: CPUs per stream (null: derived)
        # OpenVINO's INFERENCE_PRECISION_HINT: null leaves OpenVINO's default, which runs FP32
        # models in BF16 on CPUs with AVX512-BF16/AMX; f32 keeps FP32 numbers on every host
        "inference_precision": None,
        # microseconds an instance polls for the next request after each answer instead of
        # sleeping (`hosttune serve --idle-poll-us`): null derives it from the profile
        "idle_poll_us": None,
    },
    # other tuning daemons that rewrite governors, EPP and sysctls: stop (and restore starts them
    # again) | keep (with a warning) | refuse (no plan while one runs)
    "managers": {"tuned": "stop", "power-profiles-daemon": "stop"},
    "required": [],  # areas that must be supported on the host (e.g. [cpufreq, turbo])
}

PROFILE_OVERRIDES: dict[str, dict[str, Any]] = {
    "latency": {"cstates": {"max_latency_us": 10}},
    "throughput": {"cpufreq": {"turbo": "keep", "lock": "none"}, "thp": "madvise"},
}

AREAS = NAMES  # the tuning areas (hosttune/areas), for `required` and --only

# field path -> validator; a dict value in DEFAULTS is a section with fixed keys
_CHOICES = {
    "profile": PROFILES,
    "cpufreq.turbo": ("off", "on", "keep"),
    "thp": ("always", "madvise", "never", "keep"),
    "irqs.irqbalance": ("ban", "stop", "keep"),
    "managers.tuned": ("stop", "keep", "refuse"),
    "managers.power-profiles-daemon": ("stop", "keep", "refuse"),
    "instances.inference_precision": (None, "f32", "bf16", "f16"),
}
_ISOLCPUS_FLAGS = ("managed_irq", "domain", "nohz")
_OPTIONAL_INT = {"cstates.max_latency_us", "instances.threads_per_stream", "instances.grpc_base_port",
                 "instances.idle_poll_us"}
# an instance's polling after each answer: at most a second (the latency profile's is 1 ms)
MAX_IDLE_POLL_US = 1_000_000
IDLE_POLL_US = {"latency": 1000, "throughput": 0}
_OPTIONAL_STR = {"cpufreq.epp", "housekeeping.cpus", "isolation.cpus", "instances.inference_precision"}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "sysctls":
            out[key] = _merge(out[key], value)
        elif isinstance(value, dict) and key == "sysctls" and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def load(path: str | None) -> dict[str, Any]:
    """Read and validate a policy file (None: the embedded default).

    Read with hosttune.safeyaml: at most 1 MiB of UTF-8, aliases and nesting bounded, no
    duplicate keys; every failure is one PolicyError naming the file (and the field).
    """
    return resolve(None, path)


def read_config(fs: Any, path: str | None) -> tuple[Any, str | None]:
    """(the YAML document, where it came from) that applies to a host root: `path` when given, else
    the host's own /etc/hosttune/hosttune.yaml under the root (a directory, or a capture tarball,
    which records it), else (None, None). A bare policy or {policy: ..., agent: ...}."""
    if path is not None:
        return safeyaml.load_file(path, error=PolicyError), path
    if fs is None or not fs.exists(CONFIG_FILE):
        return None, None
    where = CONFIG_FILE if fs.is_live else f"{fs.root.rstrip('/')}{CONFIG_FILE}"
    try:
        data = fs.read_bytes(CONFIG_FILE)
    except OSError as exc:
        raise PolicyError(f"cannot read the configuration ({exc.strerror})", where=where) from None
    if data is None:
        raise PolicyError("cannot read the configuration", where=where)
    return safeyaml.loads(data, where=where, error=PolicyError), where


def from_document(raw: Any, where: str) -> dict[str, Any]:
    """The validated policy of a config document (its policy: section, or the whole of it)."""
    try:
        if isinstance(raw, dict) and "agent" in raw and set(raw) <= {"policy", "agent"}:
            raw = {"policy": raw.get("policy")}  # the agent's config file: either section optional
        return validate(raw if raw is not None else {}, source=where)
    except PolicyError as exc:
        exc.where = f"{where}: {exc.where}" if exc.where else where
        raise


def validate(raw: Any, source: str = "policy") -> dict[str, Any]:
    """Merge the user's policy over the profile defaults and check every field."""
    if not isinstance(raw, dict):
        raise PolicyError(f"must be a mapping, got {type(raw).__name__}", where=None if source else source)
    if "policy" in raw and set(raw) <= {"policy", "agent"}:
        if not isinstance(raw["policy"], (dict, type(None))):
            raise PolicyError(f"must be a mapping, got {type(raw['policy']).__name__}", where="policy")
        raw = raw["policy"] or {}  # /etc/hosttune/hosttune.yaml: {policy: ..., agent: ...}
    profile = raw.get("profile", DEFAULTS["profile"])
    if not isinstance(profile, str) or profile not in PROFILES:
        raise PolicyError(f"must be one of {', '.join(PROFILES)}, got {brief(profile)}", where="profile")
    merged = _merge(_merge(DEFAULTS, PROFILE_OVERRIDES[profile]), raw)
    _check_section(merged, DEFAULTS, "")
    _check_values(merged)
    return merged


# Grammars for values that end up in files other programs parse (GRUB's shell-sourced drop-in,
# sysctl.d, unit files, nginx): nothing that a shell or a config parser could read as syntax.
_SYSCTL_NAME = SYSCTL_NAME  # areas/sysctls.py: no glob characters
_SYSFS_WORD = re.compile(r"[a-z0-9_]{1,32}", re.ASCII)  # governor and EPP names
_KEY = re.compile(r"[A-Za-z0-9_.*-]{1,64}", re.ASCII)
MAX_KERNEL_ARGS, MAX_KERNEL_ARG_LEN = 32, 256
MAX_SYSCTLS, MAX_SYSCTL_NAME_LEN, MAX_SYSCTL_VALUE_LEN = 256, 128, 1024
MAX_LIST = 1024  # nodes, flags, required areas
MAX_MHZ = 100_000


def _field(prefix: str, key: Any) -> str:
    """The dotted field path; an odd key (newline, huge, not a string) shown cut as its repr."""
    return f"{prefix}{key}" if isinstance(key, str) and _KEY.fullmatch(key) else f"{prefix}{brief(key, 40)}"


def _check_section(values: dict[str, Any], schema: dict[str, Any], prefix: str) -> None:
    for key, value in values.items():
        field = _field(prefix, key)
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise PolicyError(f"unknown key (known: {known})", where=field)
        expected = schema[key]
        if key == "sysctls" and not prefix:
            _check_sysctls(value, field)
            continue
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise PolicyError(f"must be a mapping, got {type(value).__name__}", where=field)
            _check_section(value, expected, f"{field}.")
        elif field in _OPTIONAL_INT:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 0 <= value <= 10**9):
                raise PolicyError(f"must be an integer from 0 to 10^9 or null, got {brief(value)}", where=field)
        elif field in _OPTIONAL_STR:
            if value is not None and not isinstance(value, str):
                raise PolicyError(f"must be a string or null, got {brief(value)}", where=field)
        elif isinstance(expected, bool):
            if not isinstance(value, bool):
                raise PolicyError(f"must be true or false, got {brief(value)}", where=field)
        elif isinstance(expected, int):
            if not isinstance(value, int) or isinstance(value, bool):
                raise PolicyError(f"must be an integer, got {brief(value)}", where=field)
        elif isinstance(expected, list):
            if not isinstance(value, list):
                raise PolicyError(f"must be a list, got {brief(value)}", where=field)
            if len(value) > MAX_LIST:
                raise PolicyError(f"more than {MAX_LIST} entries", where=field)
        elif isinstance(expected, str) and field not in ("cpufreq.lock", "instances.nodes", "instances.model"):
            if not isinstance(value, str):
                raise PolicyError(f"must be a string, got {brief(value)}", where=field)
        if field in _CHOICES and value not in _CHOICES[field]:
            names = ", ".join("null" if c is None else c for c in _CHOICES[field])
            raise PolicyError(f"must be one of {names}, got {brief(value)}", where=field)


def _check_sysctls(value: Any, field: str) -> None:
    """Names and values are written as `name = value` lines of /etc/sysctl.d/90-hosttune.conf and
    as /proc/sys paths: one line each, no path tricks."""
    if not isinstance(value, dict):
        raise PolicyError("must be a mapping of sysctl name to value", where=field)
    if len(value) > MAX_SYSCTLS:
        raise PolicyError(f"more than {MAX_SYSCTLS} sysctls", where=field)
    for name, setting in value.items():
        where = _field(f"{field}.", name)
        if not isinstance(name, str) or len(name) > MAX_SYSCTL_NAME_LEN or not _SYSCTL_NAME.fullmatch(name):
            raise PolicyError(f"sysctl names look like kernel.numa_balancing (a-z, 0-9, _, -, dots; no glob "
                              f"such as *; at most {MAX_SYSCTL_NAME_LEN} characters)", where=where)
        if not isinstance(setting, (int, str)) or isinstance(setting, bool):
            raise PolicyError("must be an integer or a string", where=where)
        text = setting if isinstance(setting, str) else str(setting)
        # printable: no newline, NUL or other line separator; a tab may separate numbers (tcp_rmem)
        if not text.strip() or len(text) > MAX_SYSCTL_VALUE_LEN or not text.replace("\t", " ").isprintable():
            raise PolicyError(f"must be one line of 1 to {MAX_SYSCTL_VALUE_LEN} characters without control "
                              f"characters, got {brief(setting)}", where=where)


def _cpulist_field(value: Any, field: str) -> str:
    try:
        return cpulist.format(cpulist.parse(str(value), where=field))
    except HosttuneError as exc:
        raise PolicyError(exc.message, where=field) from None


def _check_values(p: dict[str, Any]) -> None:
    hk = p["housekeeping"]
    if not 1 <= hk["cores_per_node"] <= cpulist.MAX_CPUS:
        raise PolicyError("must be at least 1: every node keeps a housekeeping core", "housekeeping.cores_per_node")
    if hk["cpus"] is not None:
        hk["cpus"] = _cpulist_field(hk["cpus"], "housekeeping.cpus")
        if not hk["cpus"]:
            raise PolicyError("must not be empty", "housekeeping.cpus")
    iso = p["isolation"]
    if iso["cpus"] is not None:
        iso["cpus"] = _cpulist_field(iso["cpus"], "isolation.cpus")
        if not iso["cpus"]:
            raise PolicyError("must not be empty", "isolation.cpus")
    if hk["cpus"] is not None and iso["cpus"] is not None:
        overlap = set(cpulist.parse(hk["cpus"])) & set(cpulist.parse(iso["cpus"]))
        if overlap:
            raise PolicyError(f"overlaps housekeeping.cpus on CPUs {cpulist.format(overlap)}", "isolation.cpus")
    for flag in p["isolation"]["isolcpus_flags"]:
        if flag not in _ISOLCPUS_FLAGS:
            raise PolicyError(f"unknown isolcpus flag {brief(flag)} (known: {', '.join(_ISOLCPUS_FLAGS)})",
                              "isolation.isolcpus_flags")
    args = p["isolation"]["extra_kernel_args"]
    if len(args) > MAX_KERNEL_ARGS:
        raise PolicyError(f"more than {MAX_KERNEL_ARGS} arguments", "isolation.extra_kernel_args")
    for arg in args:
        # update-grub sources the drop-in as a shell script: no $, `, \, quotes or spaces reach it
        if not isinstance(arg, str) or len(arg) > MAX_KERNEL_ARG_LEN or not KERNEL_ARG.fullmatch(arg):
            raise PolicyError(f"each argument must look like name or name=value (letters, digits, _ . - in the "
                              f"name; also , : / + = in the value; at most {MAX_KERNEL_ARG_LEN} characters), "
                              f"got {brief(arg)}", "isolation.extra_kernel_args")
    lock = p["cpufreq"]["lock"]
    if not (lock in ("base", "max", "none")
            or (isinstance(lock, int) and not isinstance(lock, bool) and 0 < lock <= MAX_MHZ)):
        raise PolicyError(f"must be base, max, none or a frequency in MHz (1-{MAX_MHZ}), got {brief(lock)}",
                          "cpufreq.lock")
    if not _SYSFS_WORD.fullmatch(p["cpufreq"]["governor"]):
        raise PolicyError(f"must be a governor name (a-z, 0-9, _), got {brief(p['cpufreq']['governor'])}",
                          "cpufreq.governor")
    epp = p["cpufreq"]["epp"]
    if epp is not None and not _SYSFS_WORD.fullmatch(epp):
        raise PolicyError(f"must be an EPP name or number (a-z, 0-9, _) or null, got {brief(epp)}", "cpufreq.epp")
    nodes = p["instances"]["nodes"]
    if nodes != "all" and not (isinstance(nodes, list) and len(nodes) <= MAX_LIST and all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < cpulist.MAX_CPUS for n in nodes)):
        raise PolicyError(f"must be 'all' or a list of node ids, got {brief(nodes)}", "instances.nodes")
    for field in ("base_port", "grpc_base_port"):
        port = p["instances"][field]
        if port is not None and not 1 <= port <= 65535:
            raise PolicyError(f"must be a TCP port (1-65535), got {brief(port)}", f"instances.{field}")
    if p["instances"]["grpc_base_port"] is None:  # the plan checks that the ports fit and differ
        p["instances"]["grpc_base_port"] = p["instances"]["base_port"] + 100
    poll = p["instances"]["idle_poll_us"]
    if poll is None:
        p["instances"]["idle_poll_us"] = IDLE_POLL_US[p["profile"]]
    elif poll > MAX_IDLE_POLL_US:
        raise PolicyError(f"must be 0 to {MAX_IDLE_POLL_US} microseconds or null, got {brief(poll)}",
                          "instances.idle_poll_us")
    p["instances"]["bind"] = _bind_field(p["instances"]["bind"])
    p["instances"]["model"] = _models_field(p["instances"]["model"])
    for area in p["required"]:
        if area not in AREAS:
            raise PolicyError(f"unknown area {brief(area)} (known: {', '.join(AREAS)})", "required")


MAX_MODELS = 16


def _models_field(value: Any) -> str | list[str]:
    """A model spec ("name" or "name:version") or a list of distinct ones: the names become
    directories of the model repository, URL path elements and OVMS model names."""
    from hosttune.model import NAME_RE  # the model repository's own rule for names (a light import)

    specs = value if isinstance(value, list) else [value]
    if not specs or len(specs) > MAX_MODELS:
        raise PolicyError(f"must name 1 to {MAX_MODELS} models, got {brief(value)}", "instances.model")
    names = []
    for spec in specs:
        name, colon, version = spec.partition(":") if isinstance(spec, str) else ("", "", "")
        if (len(name) > 64 or not NAME_RE.fullmatch(name)
                or (colon and not 0 < (numbers.uint_or_none(version) or 0) < 2**31)):
            raise PolicyError(f"must be a model name (letters, digits, _ . -, starting with a letter or digit; "
                              f"at most 64 characters), optionally with :version (a positive number), "
                              f"or a list of them, got {brief(spec)}", "instances.model")
        names.append(name)
    if len(set(names)) != len(names):
        raise PolicyError(f"a model is named twice: {brief(value)}", "instances.model")
    return value


def model_specs(instances: dict[str, Any]) -> list[tuple[str, int | None]]:
    """(name, version or None) of each model of the policy's `instances.model`."""
    model = instances["model"]
    out = []
    for spec in model if isinstance(model, list) else [model]:
        name, _, version = spec.partition(":")
        out.append((name, int(version) if version else None))
    return out


def _bind_field(value: str) -> str:
    """An IPv4 or IPv6 address (no host names, no %zone): it reaches the plan, unit files and nginx."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if address is None or "%" in value:
        raise PolicyError(f"must be an IP address such as 127.0.0.1 or ::1, got {brief(value)}",
                          "instances.bind")
    return str(address)


def resolve(fs: Any, path: str | None) -> dict[str, Any]:
    """The policy that applies to a host root (see read_config): the one way the CLI, the agent and
    fleet decide it."""
    raw, where = read_config(fs, path)
    return validate({}) if where is None else from_document(raw, where)
