"""The policy: what the operator wants, in YAML (the same keys Ansible passes as `hosttune_policy`).

Its schema is composed of Fields (hosttune.areas.base.Field): the policy's own keys here (profile,
housekeeping, isolation.enabled/cpus, instances, required) and each area's POLICY. Unknown keys,
wrong types and bad values are errors naming the dotted field. Pure: no host access.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import re
from typing import Any

from hosttune import areas, cpulist, numbers, safeyaml
from hosttune.areas.base import Field, policy_field
from hosttune.errors import HosttuneError, PolicyError, PolicyErrors
from hosttune.safeyaml import brief

PROFILES = ("latency", "throughput")  # the first is the default
CONFIG_FILE = "/etc/hosttune/hosttune.yaml"  # the agent's config: a policy, or {policy: ..., agent: ...}
MAX_LIST = 1024  # nodes, flags, required areas
# an instance's polling after each answer: at most a second (the latency profile's is 1 ms)
MAX_IDLE_POLL_US = 1_000_000
IDLE_POLL_US = {"latency": 1000, "throughput": 0}
MAX_MODELS = 16
# infer requests of an instance: hosttune.serve.MAX_NIREQ's value (policy sits below serve; a test
# pins the two together)
MAX_NIREQ = 1024
HINTS = ("latency", "throughput")  # OpenVINO's PERFORMANCE_HINT, the instance's own profile
# `hosttune tune -o FILE`: per hardware class (hosttune.hwclass.class_id), the instances keys it chose
OVERLAY_FORMAT = "hosttune.tune-overlay/1"
TUNED_KEYS = ("hint", "streams", "threads_per_stream", "nireq", "smt", "per_node", "inference_precision", "model")
DECISIONS = ("tuned", "default-kept")
CLASS_ID_RE = re.compile(r"c-[0-9a-f]{12}", re.ASCII)
MAX_CLASSES = 1024


def _cpus(value: str, path: str) -> str:
    try:
        text = cpulist.format(cpulist.parse(str(value), where=path))
    except HosttuneError as exc:
        raise PolicyError(exc.message, where=path) from None
    if not text:
        raise PolicyError("must not be empty", where=path)
    return text


def _cores_per_node(value: int, path: str) -> int:
    if not 1 <= value <= cpulist.MAX_CPUS:
        raise PolicyError("must be at least 1: every node keeps a housekeeping core", where=path)
    return value


def _nodes(value: Any, path: str) -> Any:
    if value != "all" and not (isinstance(value, list) and len(value) <= MAX_LIST and all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < cpulist.MAX_CPUS for n in value)):
        raise PolicyError(f"must be 'all' or a list of node ids, got {brief(value)}", where=path)
    return value


def _port(value: int, path: str) -> int:
    if not 1 <= value <= 65535:
        raise PolicyError(f"must be a TCP port (1-65535), got {brief(value)}", where=path)
    return value


def _idle_poll(value: int, path: str) -> int:
    if value > MAX_IDLE_POLL_US:
        raise PolicyError(f"must be 0 to {MAX_IDLE_POLL_US} microseconds or null, got {brief(value)}", where=path)
    return value


def _count(most: int) -> Any:
    def check(value: int, path: str) -> int:
        if not 1 <= value <= most:
            raise PolicyError(f"must be 1 to {most} or null, got {brief(value)}", where=path)
        return value
    return check


def _smt(value: Any, path: str) -> Any:
    if value is not None and not isinstance(value, bool):
        raise PolicyError(f"must be true, false or null, got {brief(value)}", where=path)
    return value


def _required(value: list[Any], path: str) -> list[Any]:
    for area in value:
        if area not in areas.NAMES:
            raise PolicyError(f"unknown area {brief(area)} (known: {', '.join(areas.NAMES)})", where=path)
    return value


def _bind(value: str, path: str) -> str:
    """An IPv4 or IPv6 address (no host names, no %zone): it reaches the plan, unit files and nginx."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if address is None or "%" in value:
        raise PolicyError(f"must be an IP address such as 127.0.0.1 or ::1, got {brief(value)}", where=path)
    return str(address)


def _models(value: Any, path: str) -> str | list[str]:
    """A model spec ("name" or "name:version") or a list of distinct ones: the names become
    directories of the model repository, URL path elements and OVMS model names."""
    from hosttune.model import NAME_RE  # the model repository's own rule for names (a light import)

    specs = value if isinstance(value, list) else [value]
    if not specs or len(specs) > MAX_MODELS:
        raise PolicyError(f"must name 1 to {MAX_MODELS} models, got {brief(value)}", where=path)
    names = []
    for spec in specs:
        name, colon, version = spec.partition(":") if isinstance(spec, str) else ("", "", "")
        if (len(name) > 64 or not NAME_RE.fullmatch(name)
                or (colon and not 0 < (numbers.uint_or_none(version) or 0) < 2**31)):
            raise PolicyError(f"must be a model name (letters, digits, _ . -, starting with a letter or digit; "
                              f"at most 64 characters), optionally with :version (a positive number), "
                              f"or a list of them, got {brief(spec)}", where=path)
        names.append(name)
    if len(set(names)) != len(names):
        raise PolicyError(f"a model is named twice: {brief(value)}", where=path)
    return value


# The policy's own keys, read by more than one area or by none (the CPU partition, the instances);
# each area declares its own in its POLICY (hosttune/areas/). The README's policy block is
# generated from both (docs_block; tests/test_registry.py checks it).
_HEAD = (
    Field("profile", "latency", "str", choices=PROFILES, doc="latency | throughput"),
    Field("housekeeping.cores_per_node", 1, "int", check=_cores_per_node,
          doc="whole cores kept for the OS on every node (SMT siblings together)"),
    Field("housekeeping.cpus", None, "str?", check=_cpus, doc='or an explicit cpulist, e.g. "0,32"'),
    Field("isolation.enabled", True, "bool"),
    Field("isolation.cpus", None, "str?", check=_cpus,
          doc="or an explicit cpulist to isolate (the rest: housekeeping)"),
)
_TAIL = (
    Field("instances.enabled", True, "bool"),
    Field("instances.nodes", "all", "any", check=_nodes, doc="or a list of node ids"),
    Field("instances.base_port", 9000, "int", check=_port, doc="REST port of the first instance (the next count up)"),
    Field("instances.grpc_base_port", None, "int?", check=_port,
          doc="gRPC port of the first (OVMS and hosttune serve); null: base_port + 100"),
    Field("instances.bind", "127.0.0.1", "str", check=_bind, doc="an IP address"),
    Field("instances.model", "sample", "any", check=_models,
          doc='or "name:version", or a list of up to 16 sharing the instance (one OVMS config.json)'),
    # the OpenVINO settings of each instance: null derives them from the profile and the cpuset
    # (hosttune.plan); `hosttune tune` measures choices of them (the overlay, tune_overlay)
    Field("instances.hint", None, "str?", choices=(None, *HINTS),
          doc="PERFORMANCE_HINT latency (one stream) | throughput (NUM_STREAMS) | null (the profile's)"),
    Field("instances.streams", None, "int?", check=_count(MAX_NIREQ),
          doc="throughput hint: streams per instance (null: cores / threads_per_stream)"),
    Field("instances.threads_per_stream", None, "int?",
          doc="CPUs per stream (null: derived; latency: all of the instance's)"),
    Field("instances.nireq", None, "int?", check=_count(MAX_NIREQ),
          doc=f"infer requests per model, 1 to {MAX_NIREQ} (null: from the streams)"),
    Field("instances.smt", None, "any", check=_smt,
          doc="run inference on SMT siblings too (ENABLE_HYPER_THREADING); null: throughput yes where there are"),
    Field("instances.per_node", 1, "int", choices=(1, 2),
          doc="instances per NUMA node: 2 splits the node's cores in halves (node0a, node0b)"),
    # OpenVINO's INFERENCE_PRECISION_HINT: null leaves OpenVINO's default, which runs FP32 models
    # in BF16 on CPUs with AVX512-BF16/AMX; f32 keeps FP32 numbers on every host
    Field("instances.inference_precision", None, "str?", choices=(None, "f32", "bf16", "f16"),
          doc="f32 | bf16 | f16 | null (OpenVINO's default: BF16 on AVX512-BF16/AMX CPUs)"),
    Field("instances.idle_poll_us", None, "int?", check=_idle_poll,
          doc="hosttune serve polls this long after each answer; null: 1000 latency, 0 throughput"),
    Field("required", [], "list", check=_required,
          doc="areas that must be supported, e.g. [cpufreq, turbo, kernel_args]"),
    Field("tune_overlay", None, "any", check=lambda value, path: check_overlay(value, path),
          doc="a `hosttune tune -o` overlay: its host class's instances keys win (hosttune plan --overlay)"),
)


def fields() -> list[Field]:
    """Every policy key: the policy's own, then each area's (registry order)."""
    return [*_HEAD, *areas.policy_fields(), *_TAIL]


@functools.lru_cache(maxsize=4)
def _schema(registry: tuple[Any, ...]) -> dict[str, Any]:
    """{top-level key: Field, or {key: Field} for a section}, in order of first appearance
    (`registry`, the one fields() reads, is the cache key)."""
    tree: dict[str, Any] = {}
    for f in fields():
        if set(f.profiles) - set(PROFILES):
            raise TypeError(f"policy field {f.path}: unknown profile in {sorted(f.profiles)}")
        for profile in PROFILES:  # a declared default must pass its own checks
            try:
                _check_type(f, _default(f, profile), f.path)
            except PolicyError as exc:
                raise TypeError(f"policy field {f.path}: the {profile} default {exc.message}") from None
        section, _, key = f.path.partition(".")
        if key:
            node = tree.setdefault(section, {})
            if not isinstance(node, dict) or key in node:
                raise TypeError(f"policy field {f.path} is declared twice")
            node[key] = f
        elif section in tree:
            raise TypeError(f"policy field {f.path} is declared twice")
        else:
            tree[section] = f
    return tree


def schema() -> dict[str, Any]:
    return _schema(areas.REGISTRY)  # follows the registry (a test may extend it)


def _default(f: Field, profile: str) -> Any:
    return copy.deepcopy(f.profiles.get(profile, f.default))


def defaults(profile: str = PROFILES[0]) -> dict[str, Any]:
    """The policy a profile starts from (the user's is merged over it)."""
    def value(f: Field) -> Any:
        return _default(f, profile)
    return {name: value(node) if isinstance(node, Field) else {k: value(f) for k, f in node.items()}
            for name, node in schema().items()}


def __getattr__(name: str) -> Any:
    # DEFAULTS and AREAS, computed from the registry as it stands
    if name == "DEFAULTS":
        return defaults()
    if name == "AREAS":
        return areas.NAMES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _merge(tree: dict[str, Any], base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on `base`: sections key by key, a mapping field (sysctls) name by name."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        node = tree.get(key)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and isinstance(node, dict):
            out[key] = _merge(node, out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and isinstance(node, Field):
            out[key] = {**out[key], **copy.deepcopy(value)}  # type "mapping"
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


def split_config(raw: Any) -> tuple[Any, Any, bool]:
    """The one reading of the config file's shape (CONFIG_FILE, --policy, the agent's --config): a
    bare policy, or {policy: ..., agent: ...} with either section optional -> (the policy part, the
    agent part, nested). A nested document's other keys, and a policy: that is not a mapping, are
    PolicyErrors naming the key."""
    if not isinstance(raw, dict) or not ("policy" in raw or "agent" in raw):
        return raw, None, False
    extra = [key for key in raw if key not in ("policy", "agent")]
    if extra:
        raise PolicyError("unknown top-level key: with policy:/agent: sections, policy fields go under policy:",
                          where=policy_field("", extra[0]))
    section = raw.get("policy")
    if not isinstance(section, (dict, type(None))):
        raise PolicyError(f"must be a mapping, got {type(section).__name__}", where="policy")
    return section or {}, raw.get("agent"), True


def from_document(raw: Any, where: str) -> dict[str, Any]:
    """The validated policy of a config document (its policy: section, or the whole of it)."""
    try:
        return validate(raw if raw is not None else {}, source=where)
    except PolicyError as exc:
        exc.where = f"{where}: {exc.where}" if exc.where else where
        raise


def validate(raw: Any, source: str = "policy") -> dict[str, Any]:
    """Merge the user's policy over the profile defaults and check every field.

    Every mistake is reported at once: the types and each field's own check run over the whole
    policy, one PolicyError each (PolicyErrors when there are several); what involves more than
    one field is checked only when every field is right."""
    if not isinstance(raw, dict):
        raise PolicyError(f"must be a mapping, got {type(raw).__name__}", where=None if source else source)
    section, _, nested = split_config(raw)
    if nested:  # /etc/hosttune/hosttune.yaml: {policy: ..., agent: ...}; errors name policy.<field>
        try:
            return validate(section, source)
        except PolicyError as exc:
            exc.where = f"policy.{exc.where}" if exc.where else "policy"
            raise
    errors: list[PolicyError] = []
    profile = raw.get("profile", PROFILES[0])
    if not isinstance(profile, str) or profile not in PROFILES:
        errors.append(PolicyError(f"must be one of {', '.join(PROFILES)}, got {brief(profile)}", where="profile"))
        profile = PROFILES[0]  # the other fields are still checked, against the default profile
    tree = schema()
    merged = _merge(tree, defaults(profile), raw)
    merged["profile"] = profile
    checked: list[tuple[dict[str, Any], str, Field]] = []
    _check_types(merged, tree, "", checked, errors)
    for values, key, f in checked:  # every type first, then each field's own check
        if f.check is not None and not (values[key] is None and f.type.endswith("?")):  # null passes "?"
            try:
                values[key] = f.check(values[key], f.path)
            except PolicyError as exc:
                errors.append(exc)
    if len(errors) > 1:
        raise PolicyErrors(errors)
    if errors:
        raise errors[0]
    _check_across(merged)
    return merged


def _check_types(values: dict[str, Any], tree: dict[str, Any], prefix: str,
                 checked: list[tuple[dict[str, Any], str, Field]], errors: list[PolicyError]) -> None:
    """Each key's type, recorded in `errors`; the fields of the right type go to `checked`."""
    for key, value in values.items():
        field = policy_field(prefix, key)
        if key not in tree:
            errors.append(PolicyError(f"unknown key (known: {', '.join(sorted(tree))})", where=field))
            continue
        node = tree[key]
        if isinstance(node, dict):
            if not isinstance(value, dict):
                errors.append(PolicyError(f"must be a mapping, got {type(value).__name__}", where=field))
                continue
            _check_types(value, node, f"{field}.", checked, errors)
            continue
        try:
            _check_type(node, value, field)
        except PolicyError as exc:
            errors.append(exc)
            continue
        checked.append((values, key, node))


def _check_type(f: Field, value: Any, field: str) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if f.type == "int?":
        if value is not None and (not is_int or not 0 <= value <= 10**9):
            raise PolicyError(f"must be an integer from 0 to 10^9 or null, got {brief(value)}", where=field)
    elif f.type == "str?":
        if value is not None and not isinstance(value, str):
            raise PolicyError(f"must be a string or null, got {brief(value)}", where=field)
    elif f.type == "bool":
        if not isinstance(value, bool):
            raise PolicyError(f"must be true or false, got {brief(value)}", where=field)
    elif f.type == "int":
        if not is_int:
            raise PolicyError(f"must be an integer, got {brief(value)}", where=field)
    elif f.type == "list":
        if not isinstance(value, list):
            raise PolicyError(f"must be a list, got {brief(value)}", where=field)
        if len(value) > MAX_LIST:
            raise PolicyError(f"more than {MAX_LIST} entries", where=field)
    elif f.type == "str":
        if not isinstance(value, str):
            raise PolicyError(f"must be a string, got {brief(value)}", where=field)
    if f.choices is not None and value not in f.choices:
        names = ", ".join("null" if c is None else str(c) for c in f.choices)
        raise PolicyError(f"must be one of {names}, got {brief(value)}", where=field)


def _check_across(p: dict[str, Any]) -> None:
    """What involves more than one field."""
    hk, iso = p["housekeeping"]["cpus"], p["isolation"]["cpus"]
    if hk is not None and iso is not None:
        overlap = set(cpulist.parse(hk)) & set(cpulist.parse(iso))
        if overlap:
            raise PolicyError(f"overlaps housekeeping.cpus on CPUs {cpulist.format(overlap)}", "isolation.cpus")
    instances = p["instances"]
    if instances["grpc_base_port"] is None:  # the plan checks that the ports fit and differ
        instances["grpc_base_port"] = instances["base_port"] + 100
    if instances["idle_poll_us"] is None:
        instances["idle_poll_us"] = IDLE_POLL_US[p["profile"]]


def model_specs(instances: dict[str, Any]) -> list[tuple[str, int | None]]:
    """(name, version or None) of each model of the policy's `instances.model`."""
    model = instances["model"]
    out = []
    for spec in model if isinstance(model, list) else [model]:
        name, _, version = spec.partition(":")
        out.append((name, int(version) if version else None))
    return out


# -- the tune overlay ------------------------------------------------------------------------------
# {format: hosttune.tune-overlay/1, classes: {<class id>: {tuned_on, objective, decision, instances}}}
# written by `hosttune tune -o`, read here only: `hosttune plan --overlay FILE`, or inline as the
# policy's tune_overlay (what the roles write into the agent's configuration).
def check_overlay(value: Any, path: str = "tune_overlay") -> Any:
    """An overlay document, checked; errors name `path`.<field>. The instances values are held to
    the policy's own instances fields (one schema)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PolicyError(f"must be a tune overlay (format: and classes:), got {brief(value)}", where=path)
    for key in value:
        if key not in ("format", "classes"):
            raise PolicyError("unknown key (known: classes, format)", where=policy_field(f"{path}.", key))
    if value.get("format") != OVERLAY_FORMAT:
        raise PolicyError(f"must be {OVERLAY_FORMAT}, got {brief(value.get('format'))}", where=f"{path}.format")
    classes = value.get("classes")
    if not isinstance(classes, dict) or len(classes) > MAX_CLASSES:
        raise PolicyError(f"must be a mapping of up to {MAX_CLASSES} hardware class ids, got {brief(classes)}",
                          where=f"{path}.classes")
    tuned = {f.path.partition(".")[2]: f for f in _TAIL if f.path.partition(".")[2] in TUNED_KEYS}
    for cid, entry in classes.items():
        where = policy_field(f"{path}.classes.", cid)
        if not isinstance(cid, str) or not CLASS_ID_RE.fullmatch(cid):
            raise PolicyError("is not a hardware class id (c- and 12 hex digits, as hosttune topology shows)",
                              where=where)
        if not isinstance(entry, dict):
            raise PolicyError(f"must be a mapping, got {brief(entry)}", where=where)
        for key, item in entry.items():
            field = policy_field(f"{where}.", key)
            if key == "tuned_on":
                if not isinstance(item, str) or len(item) > 255:
                    raise PolicyError(f"must be a host name, got {brief(item)}", where=field)
            elif key == "objective":
                if not isinstance(item, dict):
                    raise PolicyError(f"must be a mapping, got {brief(item)}", where=field)
            elif key == "decision":
                if item not in DECISIONS:
                    raise PolicyError(f"must be one of {', '.join(DECISIONS)}, got {brief(item)}", where=field)
            elif key == "instances":
                if not isinstance(item, dict):
                    raise PolicyError(f"must be a mapping, got {brief(item)}", where=field)
                for name, setting in item.items():
                    inner = policy_field(f"{field}.", name)
                    if name not in tuned:
                        raise PolicyError(f"unknown key (known: {', '.join(TUNED_KEYS)})", where=inner)
                    if setting is not None:  # null: tune left it to the policy
                        f = tuned[name]
                        _check_type(f, setting, inner)
                        item[name] = f.check(setting, inner) if f.check is not None else setting
            else:
                raise PolicyError("unknown key (known: decision, instances, objective, tuned_on)", where=field)
        if "decision" not in entry:
            raise PolicyError("missing (tuned or default-kept)", where=f"{where}.decision")
    return value


def load_overlay(path: str) -> dict[str, Any]:
    """Read and check an overlay file (bounded YAML); errors name the file and the field."""
    doc = safeyaml.load_file(path, error=PolicyError)
    try:
        return check_overlay(doc, "")
    except PolicyError as exc:
        exc.where = f"{path}: {exc.where.lstrip('.')}" if exc.where else path
        raise


def apply_overlay(pol: dict[str, Any], class_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The policy with its tune_overlay's entry for `class_id` merged into `instances`, and what
    happened (None without an overlay).

    Precedence: the overlay's non-null keys win over the policy's instances keys, set or not: it is
    the measured result for this hardware, applied by naming the file (to keep a key, drop it from
    the overlay). null keys and a class whose decision is default-kept change nothing; a host
    whose class is not in the overlay keeps its policy."""
    overlay = pol.get("tune_overlay")
    if overlay is None:
        return pol, None
    entry = overlay["classes"].get(class_id)
    record: dict[str, Any] = {"class": class_id, "decision": None, "changed": {}}
    if entry is None:
        return pol, record
    record.update(decision=entry["decision"], tuned_on=entry.get("tuned_on"))
    if entry["decision"] != "tuned":
        return pol, record
    out = copy.deepcopy(pol)
    for key, value in (entry.get("instances") or {}).items():
        if value is not None and out["instances"][key] != value:
            record["changed"][key] = {"policy": out["instances"][key], "overlay": copy.deepcopy(value)}
            out["instances"][key] = copy.deepcopy(value)
    return out, record


# -- the README's policy block ---------------------------------------------------------------------
def _yaml(value: Any) -> str:
    """A default as YAML flow text (what the README shows)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str):
        plain = value and not set(value) & set(":{}[],#&*!|>'\"%@`") and safeyaml.loads(value, where="docs") == value
        return value if plain else json.dumps(value)
    return json.dumps(value)  # null, true, false, numbers


def docs_block(width: int = 100) -> str:
    """The README's policy block: one line per section (with its fields' comments), or a line per
    key where that gets too long. The default profile's values; where another profile differs,
    the comment says so."""
    first = PROFILES[0]

    def differs(f: Field) -> list[tuple[str, Any]]:
        return [(p, _default(f, p)) for p in PROFILES[1:] if _default(f, p) != _default(f, first)]

    lines = []
    for name, node in schema().items():
        if isinstance(node, Field):
            comments = ([node.doc] if node.doc else []) + [f"{p}: {_yaml(v)}" for p, v in differs(node)]
            lines.append(f"{name}: {_yaml(_default(node, first))}" + (f"  # {'; '.join(comments)}" if comments else ""))
            continue
        documented = [(key, f.doc) for key, f in node.items() if f.doc]
        # one comment for the section: each key's own, named unless they all say the same
        docs = [doc if len({d for _, d in documented}) == 1 else f"{key}: {doc}" for key, doc in documented]
        notes = [f"{p}: {key} {_yaml(v)}" for key, f in node.items() for p, v in differs(f)]
        comments = list(dict.fromkeys(docs + notes))
        line = f"{name}: {_yaml({k: _default(f, first) for k, f in node.items()})}"
        line += f"  # {'; '.join(comments)}" if comments else ""
        if len(line) <= width:
            lines.append(line)
            continue
        lines.append(f"{name}:")
        texts = {key: f"  {key}: {_yaml(_default(f, first))}" for key, f in node.items()}
        pad = max(len(t) for t in texts.values())
        for key, f in node.items():
            extra = ([f.doc] if f.doc else []) + [f"{p}: {_yaml(v)}" for p, v in differs(f)]
            lines.append(f"{texts[key]:<{pad}}  # {'; '.join(extra)}" if extra else texts[key])
    return "\n".join(lines) + "\n"


def resolve(fs: Any, path: str | None) -> dict[str, Any]:
    """The policy that applies to a host root (see read_config): the one way the CLI, the agent and
    fleet decide it."""
    raw, where = read_config(fs, path)
    return validate({}) if where is None else from_document(raw, where)
