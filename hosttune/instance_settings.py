"""What a plan instance's OVMS config.json holds: its models with the instance's nireq and OpenVINO
properties (plugin_config), and the metric families switched on. Pure (no I/O, no serve imports):
the plan renders it for each instance; hosttune.serve.ovms_config reads the same file back for
`hosttune serve --config-path`.

    {"model_config_list": [{"config": {"name", "base_path", "nireq", "target_device",
                                       "plugin_config", ["model_version_policy"]}}],
     "monitoring": {"metrics": {"enable": true, "metrics_list": [...]}}}

OVMS refuses --metrics_enable / --metrics_list together with --config_path ("Use json config file
to enable metrics when using config_path"), so the metrics are switched on here, in the file.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from hosttune.errors import HosttuneError

# the OVMS metric families hosttune serve exposes too; OVMS needs the two queue gauges listed
# explicitly (they are off by default) and the saturation alerts read them
METRICS_LIST = ("ovms_requests_success", "ovms_requests_fail", "ovms_request_time_us", "ovms_inference_time_us",
                "ovms_wait_for_infer_req_time_us", "ovms_streams", "ovms_infer_req_queue_size",
                "ovms_infer_req_active", "ovms_current_requests")

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
