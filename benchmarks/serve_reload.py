"""Reload under load: requests run against one `hosttune serve --config-path` while its models and
versions come and go (hosttune/serve/reload.py); the target is zero failed requests.

The server serves config.json with model `a` (the tiny sample, model_version_policy latest 1) and,
every other step, model `b` (the trivial sample). `--concurrency` keep-alive connections send
binary-data infer requests to `a` (no version: the highest served) back to back, each checking
its answer (status 200, the output's size); one more connection does the same for `b`. Meanwhile
the churn repeats, each step confirmed on GET /v1/config before the next:
  1. a version directory a/N+1 appears (the poll, --file-system-poll-wait-seconds 1, serves it and
     unloads a/N: latest 1);
  2. config.json changes a's plugin_config (NUM_STREAMS 1 <-> 2: `a` is compiled again) and adds
     or removes `b`; POST /v1/config/reload applies it at once;
  3. the directory of the version no longer served is deleted.
A request to `a` that is not answered 200 is a failed request. `b` is expected to answer 404 once
it has been removed (a request sent after its removal), never anything else.

    python benchmarks/serve_reload.py --duration 30 --concurrency 4 [--out DIR]

Prints (and writes DIR/summary.json) the requests and failures per model, the reloads the
server counted, the versions that answered and the latency percentiles of `a`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time

from common import pct
from tests.serverproc import Server, request


def write_config(path: str, streams: int, with_b: bool) -> None:
    models = [{"config": {"name": "a", "base_path": "models/a", "model_version_policy": {"latest": {"num_versions": 1}},
                          "plugin_config": {"NUM_STREAMS": streams}}}]
    if with_b:
        models.append({"config": {"name": "b", "base_path": "models/b"}})
    tmp = path + ".new"
    with open(tmp, "w") as f:
        json.dump({"model_config_list": models}, f)
    os.replace(tmp, path)  # the poll never reads half a file


async def request_json(port: int, method: str, path: str) -> tuple[int, dict]:
    from hosttune.bench.httpclient import Connection

    conn = Connection("127.0.0.1", port)
    try:
        status, _, body = await conn.request(method, path)
    finally:
        await conn.close()
    return status, json.loads(body) if body else {}


async def served(port: int) -> dict[str, list[int]]:
    _, doc = await request_json(port, "GET", "/v1/config")
    return {name: sorted(int(v["version"]) for v in m["model_version_status"] if v["state"] == "AVAILABLE")
            for name, m in doc.items()}


async def until(port: int, want: dict[str, list[int]], timeout: float = 60) -> float:
    """Wait until GET /v1/config shows exactly `want` served; returns the seconds it took."""
    t0 = time.monotonic()
    while True:
        now = {k: v for k, v in (await served(port)).items() if v}
        if now == want:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"the server did not reach {want} within {timeout} s (serves {now})")
        await asyncio.sleep(0.1)


async def stream(port: int, model: str, body: bytes, headers: dict, out_bytes: int, stop: asyncio.Event,
                 tally: dict, latencies: list[float] | None) -> None:
    from hosttune.bench.httpclient import Connection

    conn = Connection("127.0.0.1", port)
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                status, hdrs, data = await conn.request("POST", f"/v2/models/{model}/infer", body, headers)
            except (OSError, asyncio.IncompleteReadError) as exc:
                tally["errors"].append(f"{type(exc).__name__}: {exc}")
                await conn.close()
                continue
            if status == 200:
                header = json.loads(data[:int(hdrs["inference-header-content-length"])])
                if len(data) - int(hdrs["inference-header-content-length"]) != out_bytes:
                    tally["errors"].append(f"200 with {len(data)} bytes")
                    continue
                tally["ok"] += 1
                version = header["model_version"]
                tally["versions"][version] = tally["versions"].get(version, 0) + 1
                if latencies is not None:
                    latencies.append((time.perf_counter() - t0) * 1e3)
            else:
                tally["status"][str(status)] = tally["status"].get(str(status), 0) + 1
    finally:
        await conn.close()


async def churn(port: int, root: str, seconds: float) -> dict:
    config = os.path.join(root, "config.json")
    version, streams, with_b = 1, 2, True
    steps = {"versions_added": 0, "config_changes": 0, "versions_deleted": 0}
    waits: list[float] = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        shutil.copytree(os.path.join(root, "models", "a", "1" if version == 1 else str(version)),
                        os.path.join(root, "models", "a", f".{version + 1}"))
        os.rename(os.path.join(root, "models", "a", f".{version + 1}"), os.path.join(root, "models", "a", str(version + 1)))
        version += 1
        waits.append(await until(port, {"a": [version], **({"b": [1]} if with_b else {})}))
        steps["versions_added"] += 1
        streams, with_b = 3 - streams, not with_b
        write_config(config, streams, with_b)
        status, _ = await request_json(port, "POST", "/v1/config/reload")
        if status not in (200, 201):
            raise SystemExit(f"POST /v1/config/reload answered {status}")
        waits.append(await until(port, {"a": [version], **({"b": [1]} if with_b else {})}))
        steps["config_changes"] += 1
        if version - 1 != 1:  # version 1 stays as the copy source
            shutil.rmtree(os.path.join(root, "models", "a", str(version - 1)))
            steps["versions_deleted"] += 1
    return {**steps, "max_seconds_to_apply": max(waits) if waits else None}


async def main_async(args: argparse.Namespace, root: str, port: int) -> dict:
    from hosttune.bench.httpclient import binary_request, metadata

    meta_a, meta_b = await metadata("127.0.0.1", port, "a"), await metadata("127.0.0.1", port, "b")
    body_a, headers_a = binary_request(meta_a)
    body_b, headers_b = binary_request(meta_b)
    out_a = 4 * 10  # tiny: 10 FP32 classes
    out_b = 4 * 16  # trivial: 16 FP32 values
    stop = asyncio.Event()
    tally = {m: {"ok": 0, "status": {}, "errors": [], "versions": {}} for m in ("a", "b")}
    latencies: list[float] = []
    clients = [asyncio.create_task(stream(port, "a", body_a, headers_a, out_a, stop, tally["a"], latencies))
               for _ in range(args.concurrency)]
    clients.append(asyncio.create_task(stream(port, "b", body_b, headers_b, out_b, stop, tally["b"], None)))
    t0 = time.monotonic()
    try:
        steps = await churn(port, root, args.duration)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    elapsed = time.monotonic() - t0
    _, _ = await request_json(port, "GET", "/v1/config")
    a, b = tally["a"], tally["b"]
    return {
        "seconds": round(elapsed, 1), "concurrency": args.concurrency, **steps,
        "a": {"answered": a["ok"], "failed": sum(a["status"].values()) + len(a["errors"]), "statuses": a["status"],
              "errors": a["errors"][:5], "versions_answering": len(a["versions"]),
              "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99), "max_ms": max(latencies, default=None)},
        "b": {"answered": b["ok"], "not_served_404": b["status"].get("404", 0),
              "failed": sum(n for s, n in b["status"].items() if s != "404") + len(b["errors"]),
              "errors": b["errors"][:5]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of churn under load")
    parser.add_argument("--concurrency", type=int, default=4, help="connections sending to model a")
    parser.add_argument("--out", help="write summary.json here")
    args = parser.parse_args()
    from hosttune.bench.httpclient import run
    from hosttune.model import repo as model_repo

    with tempfile.TemporaryDirectory(prefix="serve-reload-") as root:
        models = os.path.join(root, "models")
        model_repo.sample(models, variant="tiny", name="a", int8=False)
        model_repo.sample(models, variant="trivial", name="b", int8=False)
        write_config(os.path.join(root, "config.json"), 2, True)
        server = Server("--config_path", os.path.join(root, "config.json"), "--file_system_poll_wait_seconds", "1",
                        "--metrics_enable")
        try:
            summary = run(main_async(args, root, server.port))
            reloads = [line for line in request(server, "GET", "/metrics", timeout=30)[1].decode().splitlines()
                       if line.startswith("hosttune_config_reloads_total")]
            summary["server_reloads"] = {line.split('"')[1]: float(line.split()[-1]) for line in reloads}
        finally:
            server.stop()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            f.write(text + "\n")
    return 1 if summary["a"]["failed"] or summary["b"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
