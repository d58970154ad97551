"""OVMS's config.json read back by `hosttune serve --config-path`, so OVMS and hosttune serve are
interchangeable per node without touching the plan. What the file holds is written by
hosttune.instance_settings (pure, below the plan), re-exported here for serve's callers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any

from hosttune import safejson
from hosttune.errors import HosttuneError
from hosttune.instance_settings import CONTAINER_MODELS, METRICS_LIST, dumps, render  # noqa: F401
from hosttune.model.repo import NAME_RE, ModelEntry, find
from hosttune.safejson import ANY, SCALAR, Int, List, Map, Obj, Opt, Str
from hosttune.serve import MAX_NIREQ


# the types and bounds of what read() takes from a config.json (read's checks say the rest)
SCHEMA = Obj({
    "model_config_list": List(Obj({"config": Obj({
        "name": Str(255), "base_path": Str(), "nireq": Opt(Int(1, MAX_NIREQ)), "target_device": Str(),
        "plugin_config": Opt(Map(SCALAR)),
        "model_version_policy": Opt(Obj({"latest": Obj({"num_versions": Int(1, 2**31 - 1)}),
                                         "specific": Obj({"versions": List(Int(1, 2**31 - 1), 1000)}),
                                         "all": ANY})),
    })}), 10_000),
})


@dataclass
class ModelConfig:
    name: str
    base_path: str  # the model's directory holding the numbered version directories
    version: int | None  # None: the highest version (OVMS's default policy, latest 1)
    nireq: int | None
    plugin_config: dict[str, Any]


def read(path: str) -> list[ModelConfig]:
    """The models of an OVMS config.json. Anything hosttune serve cannot honour is refused with the
    field named, rather than served differently from OVMS."""
    doc = safejson.load_file(path, SCHEMA)
    if not isinstance(doc, dict) or not isinstance(doc.get("model_config_list"), list) or not doc["model_config_list"]:
        raise HosttuneError("expected an OVMS config with a non-empty model_config_list", where=path)
    if doc.get("pipeline_config_list") or doc.get("mediapipe_config_list") or doc.get("custom_node_library_config_list"):
        raise HosttuneError("DAG pipelines, MediaPipe graphs and custom nodes are OVMS-only", where=path)
    out = []
    for i, item in enumerate(doc["model_config_list"]):
        where = f"{path}: model_config_list[{i}].config"
        config = item.get("config") if isinstance(item, dict) else None
        if not isinstance(config, dict):
            raise HosttuneError("expected {\"config\": {...}}", where=where)
        out.append(_model(config, where, os.path.dirname(os.path.abspath(path))))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise HosttuneError(f"a model name is used twice: {names}", where=path)
    return out


def load(path: str) -> list[tuple[ModelEntry, dict[str, Any], int | None]]:
    """What `hosttune serve --config-path` serves: each model's repository entry (under the name
    the config gives it), its OpenVINO properties (plugin_config) and nireq."""
    out = []
    for model in read(path):
        base = model.base_path.rstrip("/")
        entry = find(os.path.dirname(base), os.path.basename(base), model.version)
        out.append((replace(entry, name=model.name), model.plugin_config, model.nireq))
    return out


def _model(config: dict[str, Any], where: str, config_dir: str) -> ModelConfig:
    name, base = config.get("name"), config.get("base_path")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise HosttuneError(f"not a model name: {name!r}", where=f"{where}.name")
    if not isinstance(base, str) or not base:
        raise HosttuneError("missing", where=f"{where}.base_path")
    if "://" in base:
        raise HosttuneError(f"{base}: only local directories are served by hosttune serve", where=f"{where}.base_path")
    nireq = config.get("nireq")
    if nireq is not None and (not isinstance(nireq, int) or isinstance(nireq, bool) or nireq < 1):
        raise HosttuneError(f"must be a positive integer, got {nireq!r}", where=f"{where}.nireq")
    device = config.get("target_device", "CPU")
    if device != "CPU":
        raise HosttuneError(f"{device!r}: hosttune serve runs on CPU only", where=f"{where}.target_device")
    plugin = config.get("plugin_config") or {}
    if not isinstance(plugin, dict):
        raise HosttuneError("expected an object of OpenVINO properties", where=f"{where}.plugin_config")
    return ModelConfig(name, os.path.join(config_dir, base), _version(config.get("model_version_policy"), where),
                       nireq, plugin)


def _version(policy: Any, where: str) -> int | None:
    """OVMS's default (latest, one version) or one specific version: hosttune serve serves one
    version per model."""
    where = f"{where}.model_version_policy"
    if policy is None or policy == {"latest": {}} or policy == {"latest": {"num_versions": 1}}:
        return None
    versions = policy.get("specific", {}).get("versions") if isinstance(policy, dict) else None
    if isinstance(versions, list) and len(versions) == 1 and isinstance(versions[0], int) and versions[0] > 0:
        return versions[0]
    raise HosttuneError(f"{json.dumps(policy)}: hosttune serve serves one version per model "
                        '(latest, or {"specific": {"versions": [N]}})', where=where)
