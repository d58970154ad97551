"""The policy: what the operator wants, in YAML (the same keys Ansible passes as `hosttune_policy`).

Validated against a small schema: unknown keys and wrong types are errors naming the dotted field.
Pure: no host access.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from hosttune import cpulist
from hosttune.errors import HosttuneError, PolicyError

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
        "base_port": 9000,
        "bind": "127.0.0.1",
        "model": "sample",
        "threads_per_stream": None,  # throughput profile: CPUs per stream (null: derived)
        # OpenVINO's INFERENCE_PRECISION_HINT: null leaves OpenVINO's default, which runs FP32
        # models in BF16 on CPUs with AVX512-BF16/AMX; f32 keeps FP32 numbers on every host
        "inference_precision": None,
    },
    "required": [],  # areas that must be supported on the host (e.g. [cpufreq, turbo])
}

PROFILE_OVERRIDES: dict[str, dict[str, Any]] = {
    "latency": {"cstates": {"max_latency_us": 10}},
    "throughput": {"cpufreq": {"turbo": "keep", "lock": "none"}, "thp": "madvise"},
}

AREAS = ("cpufreq", "turbo", "epp", "cstates", "sysctls", "thp", "irqs", "irqbalance", "kernel_args")

# field path -> validator; a dict value in DEFAULTS is a section with fixed keys
_CHOICES = {
    "profile": PROFILES,
    "cpufreq.turbo": ("off", "on", "keep"),
    "thp": ("always", "madvise", "never", "keep"),
    "irqs.irqbalance": ("ban", "stop", "keep"),
    "instances.inference_precision": (None, "f32", "bf16", "f16"),
}
_ISOLCPUS_FLAGS = ("managed_irq", "domain", "nohz")
_OPTIONAL_INT = {"cstates.max_latency_us", "instances.threads_per_stream"}
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
    """Read and validate a policy file (None: the embedded default)."""
    if path is None:
        return validate({})
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise PolicyError(f"cannot read policy ({exc.strerror})", where=path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PolicyError(f"not valid YAML{at}", where=path) from None
    try:
        return validate(raw if raw is not None else {}, source=path)
    except PolicyError as exc:
        exc.where = f"{path}: {exc.where}" if exc.where else path
        raise


def validate(raw: Any, source: str = "policy") -> dict[str, Any]:
    """Merge the user's policy over the profile defaults and check every field."""
    if not isinstance(raw, dict):
        raise PolicyError(f"must be a mapping, got {type(raw).__name__}", where=None if source else source)
    if "policy" in raw and set(raw) <= {"policy", "agent"}:
        raw = raw["policy"] or {}  # /etc/hosttune/hosttune.yaml: {policy: ..., agent: ...}
    profile = raw.get("profile", DEFAULTS["profile"])
    if profile not in PROFILES:
        raise PolicyError(f"must be one of {', '.join(PROFILES)}, got {profile!r}", where="profile")
    merged = _merge(_merge(DEFAULTS, PROFILE_OVERRIDES[profile]), raw)
    _check_section(merged, DEFAULTS, "")
    _check_values(merged)
    return merged


def _check_section(values: dict[str, Any], schema: dict[str, Any], prefix: str) -> None:
    for key, value in values.items():
        field = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise PolicyError(f"unknown key (known: {known})", where=field)
        expected = schema[key]
        if key == "sysctls" and not prefix:
            if not isinstance(value, dict):
                raise PolicyError("must be a mapping of sysctl name to value", where=field)
            for name, setting in value.items():
                if not isinstance(name, str) or "." not in name or "/" in name or ".." in name:
                    raise PolicyError("sysctl names look like kernel.numa_balancing", where=f"{field}.{name}")
                if not isinstance(setting, (int, str)) or isinstance(setting, bool):
                    raise PolicyError("must be an integer or a string", where=f"{field}.{name}")
            continue
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise PolicyError(f"must be a mapping, got {type(value).__name__}", where=field)
            _check_section(value, expected, f"{field}.")
        elif field in _OPTIONAL_INT:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise PolicyError(f"must be a non-negative integer or null, got {value!r}", where=field)
        elif field in _OPTIONAL_STR:
            if value is not None and not isinstance(value, str):
                raise PolicyError(f"must be a string or null, got {value!r}", where=field)
        elif isinstance(expected, bool):
            if not isinstance(value, bool):
                raise PolicyError(f"must be true or false, got {value!r}", where=field)
        elif isinstance(expected, int):
            if not isinstance(value, int) or isinstance(value, bool):
                raise PolicyError(f"must be an integer, got {value!r}", where=field)
        elif isinstance(expected, list):
            if not isinstance(value, list):
                raise PolicyError(f"must be a list, got {value!r}", where=field)
        elif isinstance(expected, str) and field not in ("cpufreq.lock", "instances.nodes"):
            if not isinstance(value, str):
                raise PolicyError(f"must be a string, got {value!r}", where=field)
        if field in _CHOICES and value not in _CHOICES[field]:
            names = ", ".join("null" if c is None else c for c in _CHOICES[field])
            raise PolicyError(f"must be one of {names}, got {value!r}", where=field)


def _cpulist_field(value: Any, field: str) -> str:
    try:
        return cpulist.format(cpulist.parse(str(value), where=field))
    except HosttuneError as exc:
        raise PolicyError(exc.message, where=field) from None


def _check_values(p: dict[str, Any]) -> None:
    hk = p["housekeeping"]
    if hk["cores_per_node"] < 1:
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
            raise PolicyError(f"unknown isolcpus flag {flag!r} (known: {', '.join(_ISOLCPUS_FLAGS)})",
                              "isolation.isolcpus_flags")
    for arg in p["isolation"]["extra_kernel_args"]:
        if not isinstance(arg, str) or not arg or any(ch.isspace() for ch in arg) or '"' in arg:
            raise PolicyError(f"each argument must be one word without quotes, got {arg!r}",
                              "isolation.extra_kernel_args")
    lock = p["cpufreq"]["lock"]
    if not (lock in ("base", "max", "none") or (isinstance(lock, int) and not isinstance(lock, bool) and lock > 0)):
        raise PolicyError(f"must be base, max, none or a frequency in MHz, got {lock!r}", "cpufreq.lock")
    if not isinstance(p["cpufreq"]["governor"], str) or not p["cpufreq"]["governor"]:
        raise PolicyError("must be a governor name", "cpufreq.governor")
    nodes = p["instances"]["nodes"]
    if nodes != "all" and not (isinstance(nodes, list) and all(isinstance(n, int) and n >= 0 for n in nodes)):
        raise PolicyError(f"must be 'all' or a list of node ids, got {nodes!r}", "instances.nodes")
    port = p["instances"]["base_port"]
    if not 1 <= port <= 65000:
        raise PolicyError(f"must be a TCP port (1-65000), got {port}", "instances.base_port")
    for area in p["required"]:
        if area not in AREAS:
            raise PolicyError(f"unknown area {area!r} (known: {', '.join(AREAS)})", "required")
