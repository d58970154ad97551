"""OVMS's config.json for a plan instance, and the same file read back by `hosttune serve
--config-path`, so OVMS and hosttune serve are interchangeable per node without touching the plan.

    {"model_config_list": [{"config": {"name", "base_path", "nireq", "target_device",
                                       "plugin_config", ["model_version_policy"]}}],
     "monitoring": {"metrics": {"enable": true, "metrics_list": [...]}}}

OVMS refuses --metrics_enable / --metrics_list together with --config_path ("Use json config file
to enable metrics when using config_path"), so the metrics are switched on here, in the file.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, replace
from typing import Any

from hosttune import safejson
from hosttune.errors import HosttuneError
from hosttune.model.repo import NAME_RE, ModelEntry, find
from hosttune.safejson import ANY, SCALAR, Int, List, Map, Obj, Opt, Str
from hosttune.serve import MAX_NIREQ

# the OVMS metric families hosttune serve exposes too; OVMS needs the two queue gauges listed
# explicitly (they are off by default) and the saturation alerts read them
METRICS_LIST = ("ovms_requests_success", "ovms_requests_fail", "ovms_request_time_us", "ovms_inference_time_us",
                "ovms_wait_for_infer_req_time_us", "ovms_streams", "ovms_infer_req_queue_size",
                "ovms_infer_req_active", "ovms_current_requests")


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


# where the role mounts the model repository inside an OVMS container
CONTAINER_MODELS = "/models"


def render(instance: dict[str, Any], models_root: str) -> dict[str, Any]:
    """config.json for one plan instance: each of its `models` with the instance's nireq and
    OpenVINO properties. `models_root` is the model repository as the server sees it: the mount
    point inside OVMS's container (CONTAINER_MODELS), or a host path for hosttune serve."""
    if not posixpath.isabs(models_root):
        raise HosttuneError("the model repository must be an absolute path", where=models_root)
    ovms = instance.get("ovms") or {}
    entries = []
    for model in instance["models"]:
        config: dict[str, Any] = {
            "name": model["name"],
            "base_path": posixpath.join(models_root, model["name"]),
            "nireq": ovms.get("nireq"),
            "target_device": ovms.get("target_device", "CPU"),
            "plugin_config": dict(ovms.get("plugin_config") or {}),
        }
        if model.get("version"):
            config["model_version_policy"] = {"specific": {"versions": [model["version"]]}}
        entries.append({"config": {k: v for k, v in config.items() if v is not None}})
    return {"model_config_list": entries, "monitoring": {"metrics": {"enable": True, "metrics_list": list(METRICS_LIST)}}}


def dumps(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2) + "\n"


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
