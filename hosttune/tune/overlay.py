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

import hashlib
import os
import re
import tempfile
from typing import Any

from hosttune import safeyaml
from hosttune.errors import HosttuneError

FORMAT = "hosttune.tune-overlay/1"


def class_id(topo: Any) -> str:
    """The hardware class of a host: CPU model, topology, memory per node, kernel arguments.
    Stand-in until hosttune.hwclass.class_id (issue 29's fleet part) replaces it."""
    summary = topo.to_dict()["summary"]
    model = (topo.features.get("cpu", {}).get("model") or "cpu").strip()
    mem_gib = [round(n.memory_bytes / 2**30) for n in topo.nodes]
    args = " ".join(sorted(a for a in topo.kernel_cmdline.split() if not a.startswith(("BOOT_IMAGE=", "root=", "initrd="))))
    key = f"{model}|{summary['sockets']}|{summary['nodes']}|{summary['cores']}|{summary['threads_per_core']}|" \
          f"{mem_gib}|{args}"
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40] or "cpu"
    return f"{slug}-{summary['nodes']}n{summary['cores']}c{summary['threads_per_core']}t-" \
           f"{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def merge(path: str, cls: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The overlay document with `entry` as class `cls`, over the file at `path` when it exists."""
    doc: dict[str, Any] = {"format": FORMAT, "classes": {}}
    if os.path.exists(path):
        old = safeyaml.load_file(path)
        if not isinstance(old, dict) or old.get("format") != FORMAT or not isinstance(old.get("classes"), dict):
            raise HosttuneError(f"not a {FORMAT} file (refusing to overwrite it)", where=path)
        doc["classes"] = dict(old["classes"])
    doc["classes"][cls] = entry
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
