"""Health probes of the plan's inference instances: GET /v2/health/ready on each instance's
probe_url. The plan decides where the host reaches an instance (a wildcard bind is probed on the
loopback address of its family; see hosttune.plan.probe_host): the agent only follows it."""

from __future__ import annotations

import http.client
import urllib.parse
from typing import Any

HEALTH_PATH = "/v2/health/ready"
HEALTH_TIMEOUT = 1.0  # seconds; an instance slower than this to say "ready" is not


def probe(url: str, timeout: float = HEALTH_TIMEOUT) -> tuple[bool, str]:
    """GET url: (ready, detail), ready when it answers 200."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        status = conn.getresponse().status
        return status == 200, f"HTTP {status}"
    except (OSError, http.client.HTTPException) as exc:
        return False, getattr(exc, "strerror", None) or type(exc).__name__
    finally:
        conn.close()


def probe_instances(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The /status rows of the instances of a check summary ({name, node, probe_url} each)."""
    rows = []
    for inst in instances:
        url = inst["probe_url"] + HEALTH_PATH
        ready, detail = probe(url)
        rows.append({"name": inst["name"], "node": inst["node"], "url": url, "ready": ready, "detail": detail})
    return rows
