"""The policy overlay `hosttune tune -o FILE` writes: per hardware class the chosen
`hosttune_policy.instances` keys, what they were tuned for, and whether tuning changed anything.

    format: hosttune.tune-overlay/1
    classes:
      <class id>:
        tuned_on: <hostname>
        objective: {name: throughput, slo_p99_ms: 20, workload: {concurrency: 4, binary: true, model: sample}}
        decision: tuned | default-kept
        instances: {hint: ..., streams: ..., threads_per_stream: ..., nireq: ..., smt: ...,
                    per_node: ..., inference_precision: ..., model: ...}

An existing file keeps its other classes; this host's class is replaced. Written atomically.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from hosttune import safeyaml
from hosttune.errors import HosttuneError
from hosttune.policy import OVERLAY_FORMAT, check_overlay



def resolved(instances: dict[str, Any], cand: Any, default_model: str) -> dict[str, Any]:
    """The overlay's instances keys of a measured candidate. In the policy a null streams or nireq
    is the plan's rule, not OpenVINO's choice: where the candidate left them to OpenVINO, the numbers
    its servers ran (their banners) are written instead, so the plan reproduces what was measured."""
    served = (cand.effective[0].get("served") if cand.effective else None) or {}
    out = dict(instances)
    for key in ("streams", "nireq"):
        if out.get(key) is None and served.get(key):
            out[key] = served[key]
    if out.get("hint") == "latency":
        out["streams"] = None  # the latency hint is one stream by rule (the plan refuses more)
    if out.get("model") == default_model:
        out["model"] = None  # a model in the overlay replaces the policy's whole list: only when chosen
    return out


def read(path: str) -> dict[str, Any]:
    """The overlay at `path` (checked by the policy's one overlay schema), an empty one when there is
    no file. A file that is not an overlay is refused: it is never overwritten."""
    if not os.path.exists(path):
        return {"format": OVERLAY_FORMAT, "classes": {}}
    doc = safeyaml.load_file(path)
    if not isinstance(doc, dict) or doc.get("format") != OVERLAY_FORMAT or not isinstance(doc.get("classes"), dict):
        raise HosttuneError(f"not a {OVERLAY_FORMAT} file (refusing to overwrite it)", where=path)
    check_overlay(doc, path)
    return doc


def merge(path: str, cls: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The overlay document with `entry` as class `cls`, over the file at `path` when it exists."""
    doc = read(path)
    doc["classes"] = {**doc["classes"], cls: entry}
    check_overlay(doc, path)  # what plan reads back: the one overlay schema (hosttune/policy.py)
    return doc


def write(path: str, doc: dict[str, Any]) -> None:
    import yaml

    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tune-overlay.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
