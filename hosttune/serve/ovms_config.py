"""OVMS's config.json read back by `hosttune serve --config-path`, so OVMS and hosttune serve are
interchangeable per node without touching the plan. What the file holds is written by
hosttune.instance_settings (pure, below the plan), re-exported here for serve's callers.

One reading, three verdicts (tests/test_ovms_configs.py holds a corpus to them):
- what OVMS's own schema (src/schema.cpp, transcribed in SCHEMA) refuses is refused, the field named;
- what OVMS accepts and hosttune serve honours is honoured: name, base_path (relative to the config
  file's directory, as OVMS), model_version_policy, nireq (0: the default, as OVMS), plugin_config,
  shape, layout, batch_size (applied to the model before it is compiled, hosttune/serve/engine.py),
  monitoring;
- what OVMS accepts and hosttune serve cannot do (pipelines, MediaPipe graphs, custom nodes and
  loaders, model caching, devices other than CPU, a graph entry without base_path, remote storage)
  is refused with UNSUPPORTED and the field named, never ignored.
Where OVMS itself only logs a warning and serves the model differently (an unparsable shape or
batch_size), hosttune refuses, naming the field.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

from hosttune import safejson
from hosttune.errors import HosttuneError
from hosttune.instance_settings import CONTAINER_MODELS, METRICS_LIST, dumps, render  # noqa: F401
from hosttune.model.repo import MAX_DIM, MAX_VERSION, NAME_RE, ModelEntry, find, versions
from hosttune.safejson import SCALAR, Bool, Int, List, Map, Obj, OneOf, Str
from hosttune.serve import MAX_NIREQ
from hosttune.serve.metrics import enabled_families

UNSUPPORTED = "accepted by OVMS, not supported by hosttune serve"
MAX_VERSIONS = 1000  # a specific policy's list
ANONYMOUS = "ANONYMOUS_INPUT_NAME"  # OVMS's reserved input name: a shape map may not use it

# OVMS's schema (src/schema.cpp, MODELS_CONFIG_SCHEMA), field for field: closed objects are its
# "additionalProperties": false. The lists hosttune serve does not serve are refused whole when
# not empty (read); a DAG pipeline's nodes are not checked further (a pipeline is refused either way).
_SHAPE = OneOf((Map(str), str))  # "layout_shape_def": a string, or {input: string}
_POLICY = OneOf((
    Obj({"all": Obj({}, closed=True)}, required=("all",), closed=True),
    # bounds of hosttune's (OVMS: int64): version numbers as the repository reads them
    Obj({"specific": Obj({"versions": List(Int(1, MAX_VERSION), MAX_VERSIONS)}, required=("versions",),
                         closed=True)}, required=("specific",), closed=True),
    Obj({"latest": Obj({"num_versions": Int(1, MAX_VERSION)}, required=("num_versions",), closed=True)},
        required=("latest",), closed=True),
))
MODEL_CONFIG = Obj({
    "name": str, "base_path": str, "batch_size": OneOf((Int(0, MAX_DIM), str)), "graph_path": str, "subconfig": str,
    "model_version_policy": _POLICY, "shape": _SHAPE, "layout": _SHAPE, "nireq": Int(0),
    "target_device": str, "allow_cache": Bool(), "plugin_config": Map(SCALAR),
    "custom_loader_options": Obj({"loader_name": str}, required=("loader_name",)),
}, required=("name",), closed=True)
SCHEMA = Obj({
    "model_config_list": List(Obj({"config": MODEL_CONFIG}, required=("config",), closed=True), 10_000),
    "custom_loader_config_list": List(Obj({"config": Obj({
        "loader_name": str, "library_path": str, "loader_config_file": str}, required=("loader_name", "library_path"),
        closed=True)}, required=("config",), closed=True)),
    "pipeline_config_list": List(Obj({}, required=("name", "nodes", "inputs", "outputs"))),  # items: see read
    "mediapipe_config_list": List(Obj({"name": str, "base_path": str, "graph_path": str, "subconfig": str},
                                      required=("name",), closed=True)),
    "custom_node_library_config_list": List(Obj({"name": str, "base_path": str}, required=("name", "base_path"),
                                                closed=True)),
    "monitoring": Obj({"metrics": Obj({"enable": Bool(), "metrics_list": List(str)}, required=("enable",),
                                      closed=True)}, required=("metrics",), closed=True),
}, required=("model_config_list",), closed=True)

Dims = tuple[tuple[int, int], ...]  # (min, max) per dimension; (-1, -1) any, (n, n) static
_DIM = re.compile(r"-1|[0-9]+|[0-9]+:[0-9]+")


@dataclass(frozen=True)
class IOConfig:
    """How the model is reshaped and laid out before compiling (engine.apply_io). The key None is
    OVMS's anonymous entry: a plain string, for a model with one input."""
    shapes: tuple[tuple[str | None, Dims | str], ...] = ()  # "auto": every dimension dynamic
    layouts: tuple[tuple[str | None, tuple[str | None, str]], ...] = ()  # (tensor layout, model layout)
    batch: tuple[int, int] | str | None = None  # (min, max) like a Dims entry, or "auto"


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str  # absolute: the model's directory holding the numbered version directories
    policy: tuple[str, Any]  # ("latest", n) | ("all", None) | ("specific", (v, ...))
    nireq: int | None  # None: the default (OVMS: 0 or absent)
    plugin_config: dict[str, Any] = field(hash=False)
    io: IOConfig = IOConfig()

    def served_versions(self) -> list[int]:
        """The version directories on disk this model's policy serves (OVMS's filters), lowest first."""
        found = versions(os.path.dirname(self.base_path), os.path.basename(self.base_path))
        kind, arg = self.policy
        if kind == "all":
            return found
        if kind == "specific":
            return [v for v in found if v in arg]
        return found[-arg:]

    def entry(self, version: int) -> ModelEntry:
        entry = find(os.path.dirname(self.base_path), os.path.basename(self.base_path), version)
        return replace(entry, name=self.name)


@dataclass(frozen=True)
class Config:
    models: list[ModelConfig]
    metrics_enable: bool | None  # monitoring.metrics, None when the file has no monitoring section
    metrics_list: list[str] | None


def read(path: str) -> Config:
    """An OVMS config.json as hosttune serve honours it; anything it cannot honour is refused
    with the field named (HosttuneError), rather than served differently from OVMS."""
    doc = safejson.load_file(path, SCHEMA)
    for key in ("pipeline_config_list", "mediapipe_config_list", "custom_node_library_config_list",
                "custom_loader_config_list"):
        if doc.get(key):
            raise HosttuneError(f"{key}: {UNSUPPORTED} (DAG pipelines, MediaPipe graphs, custom nodes and "
                                "loaders are OVMS-only)", where=path)
    if not doc["model_config_list"]:
        raise HosttuneError(f"model_config_list: empty: {UNSUPPORTED} (a server with no model)", where=path)
    config_dir = os.path.dirname(os.path.abspath(path))
    models = [_model(item["config"], f"{path}: model_config_list[{i}].config", config_dir)
              for i, item in enumerate(doc["model_config_list"])]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise HosttuneError(f"a model name is used twice: {names}", where=path)
    metrics = (doc.get("monitoring") or {}).get("metrics") or {}
    if metrics.get("metrics_list"):  # a name OVMS does not know is refused here, as OVMS refuses it
        enabled_families(metrics["metrics_list"], f"{path}: monitoring.metrics.metrics_list")
    return Config(models, metrics.get("enable"), metrics.get("metrics_list"))


def _model(config: dict[str, Any], where: str, config_dir: str) -> ModelConfig:
    for key, what in (("graph_path", "a MediaPipe graph"), ("subconfig", "a MediaPipe graph"),
                      ("custom_loader_options", "a custom model loader"), ("allow_cache", "model caching")):
        if key in config and not (key == "allow_cache" and config[key] is False):
            raise HosttuneError(f"{UNSUPPORTED} ({what})", where=f"{where}.{key}")
    name, base = config["name"], config.get("base_path")
    if not NAME_RE.fullmatch(name):
        raise HosttuneError(f"not a model name hosttune serves: {name!r}", where=f"{where}.name")
    if base is None:
        raise HosttuneError(f"missing ({UNSUPPORTED}: an entry without base_path is an OVMS graph)",
                            where=f"{where}.base_path")
    if not base or "://" in base:
        raise HosttuneError(f"{base!r}: {UNSUPPORTED} (only local directories are served)", where=f"{where}.base_path")
    nireq = config.get("nireq") or None  # OVMS: 0 is the default (OPTIMAL_NUMBER_OF_INFER_REQUESTS)
    if nireq is not None and nireq > MAX_NIREQ:  # each infer request holds its tensors
        raise HosttuneError(f"must be 1 to {MAX_NIREQ}, got {nireq} ({UNSUPPORTED} above {MAX_NIREQ})",
                            where=f"{where}.nireq")
    device = config.get("target_device", "CPU")
    if device != "CPU":
        raise HosttuneError(f"{device!r}: {UNSUPPORTED} (hosttune serve runs on CPU only)", where=f"{where}.target_device")
    io = IOConfig(_shapes(config.get("shape"), f"{where}.shape"), _layouts(config.get("layout"), f"{where}.layout"),
                  _batch(config.get("batch_size"), f"{where}.batch_size"))
    if io.batch is not None and io.shapes:
        raise HosttuneError("batch_size and shape together: give the batch dimension in shape",
                            where=f"{where}.batch_size")
    return ModelConfig(name, os.path.normpath(os.path.join(config_dir, base)),
                       _policy(config.get("model_version_policy")), nireq, dict(config.get("plugin_config") or {}), io)


def _policy(policy: dict[str, Any] | None) -> tuple[str, Any]:
    if policy is None:
        return ("latest", 1)  # OVMS's default
    if "all" in policy:
        return ("all", None)
    if "specific" in policy:
        return ("specific", tuple(sorted(set(policy["specific"]["versions"]))))
    return ("latest", policy["latest"]["num_versions"])


def policy_text(policy: tuple[str, Any]) -> str:
    kind, arg = policy
    return json.dumps({kind: {} if kind == "all" else {"versions": list(arg)} if kind == "specific"
                       else {"num_versions": arg}})


def _dims(text: str, where: str) -> Dims:
    """OVMS's shape grammar (src/shape.cpp): "(1,3,224,224)", a dimension -1 (any) or min:max."""
    compact = "".join(text.split())
    if not (compact.startswith("(") and compact.endswith(")") and len(compact) > 2):
        raise HosttuneError(f"{text!r}: expected \"auto\" or a shape like \"(1,3,224,224)\"", where=where)
    out = []
    for token in compact[1:-1].split(","):
        if not _DIM.fullmatch(token):
            raise HosttuneError(f"{text!r}: dimension {token!r} is not N, -1 or MIN:MAX", where=where)
        lo, _, hi = token.partition(":")
        if hi and not int(lo) < int(hi):
            raise HosttuneError(f"{text!r}: range {token} must have its min below its max", where=where)
        if int(hi or lo) > MAX_VERSION:
            raise HosttuneError(f"{text!r}: dimension {token} is too large", where=where)
        out.append((int(lo), int(hi or lo)))
    return tuple(out)


def _shapes(shape: Any, where: str) -> tuple:
    if shape is None:
        return ()
    items = {None: shape} if isinstance(shape, str) else shape
    out = []
    for name, text in items.items():
        at = where if name is None else f"{where}.{name}"
        if name == ANONYMOUS:
            raise HosttuneError(f"{ANONYMOUS} is OVMS's reserved name (OVMS drops this entry)", where=at)
        out.append((name, "auto" if text == "auto" else _dims(text, at)))
    return tuple(out)


_LAYOUT = re.compile(r"(?:[NCHWD?]|\.\.\.)+")


def _layout(text: str, where: str) -> str:
    """OVMS's layout letters (src/layout.cpp): N, C, H, W, D once each, ? any, ... once."""
    if not _LAYOUT.fullmatch(text) or text.count("...") > 1 or any(text.count(c) > 1 for c in "NCHWD"):
        raise HosttuneError(f"{text!r}: a layout is made of N, C, H, W, D (once each), ? and one ...", where=where)
    return text


def _layouts(layout: Any, where: str) -> tuple:
    if layout is None:
        return ()
    items = {None: layout} if isinstance(layout, str) else layout
    out = []
    for name, text in items.items():
        at = where if name is None else f"{where}.{name}"
        parts = "".join(text.split()).upper().split(":")
        if len(parts) > 2:
            raise HosttuneError(f"{text!r}: expected LAYOUT or TENSOR_LAYOUT:MODEL_LAYOUT", where=at)
        model = _layout(parts[-1], at)
        out.append((name, (_layout(parts[0], at) if len(parts) == 2 else None, model)))
    return tuple(out)


def _batch(batch: Any, where: str) -> tuple[int, int] | str | None:
    """batch_size: an integer, or OVMS's string forms "auto", "N", "-1" (any), "MIN:MAX"."""
    if batch is None or batch == "":
        return None
    if batch == "auto":
        return "auto"
    text = str(batch)
    if not _DIM.fullmatch("".join(text.split())):
        raise HosttuneError(f"{batch!r}: expected a batch size N, -1, MIN:MAX or \"auto\"", where=where)
    lo, hi = _dims(f"({text})", where)[0]
    if hi == 0:
        raise HosttuneError("must be at least 1", where=where)
    return (lo, hi)
