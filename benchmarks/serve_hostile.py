"""`hosttune serve` under large JSON requests (issue 13): the server's RSS and its health-check
latency while N concurrent requests of about 64 MiB of JSON numbers each are in flight.

The server runs the trivial model (one Add on [1,16]) on the server CPU; each large request carries
millions of values, so it is read (and decoded) in full and then refused with 400 (wrong element
count): reading and decoding are the cost being measured. JSON bodies above --max-json-body
(default 16 MiB) are refused with 413 from their Content-Length, before they are read. A health check is sent every 10 ms from the client CPU the whole
time, and the server's RSS is sampled every 10 ms (psutil).

With --kind heads (issue 32), each request is a hostile head instead, cycling through tiny header
fields without end, a request line of --mib and one header field of --mib: each must be refused
(431, 414, 431) once its bound is reached, the server's RSS flat.

    python benchmarks/serve_hostile.py --requests 4 --mib 63 --kind json|binary|heads [--server-args '...']
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import tempfile
import threading
import time

from common import command_line, model_repo, pct, write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4, help="large requests in flight at once")
    ap.add_argument("--mib", type=float, default=63.0, help="size of each body")
    ap.add_argument("--kind", choices=("json", "binary", "heads"), default="json",
                    help="JSON numbers, binary data after a small JSON header, or hostile request heads")
    ap.add_argument("--server-args", default="", help="more `hosttune serve` options, e.g. '--max-json-body 67108864'")
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import psutil

    from tests.serverproc import Server, request

    out = args.out or tempfile.mkdtemp(prefix="hosttune-hostile-")
    os.makedirs(out, exist_ok=True)
    repo = model_repo(os.path.join(out, "models"), "trivial")
    size = int(args.mib * 2**20)
    headers = {}
    if args.kind == "json":
        value = b"0.123456789,"
        count = size // len(value)
        head = b'{"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": ['
        body = head + value * (count - 1) + b"0.5]}]}"
    elif args.kind == "heads":
        count = 0
        body = b""
        floods = [(b"GET /v2/health/live HTTP/1.1\r\n", b"a: b\r\n" * 20_000),
                  (b"GET /", b"a" * 2**20), (b"GET / HTTP/1.1\r\nx-big: ", b"a" * 2**20)]
    else:
        count = size // 4
        head = json.dumps({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                       "parameters": {"binary_data_size": count * 4}}]}).encode()
        body = head + bytes(count * 4)
        headers = {"Inference-Header-Content-Length": str(len(head))}
    mib = (size if args.kind == "heads" else len(body)) / 2**20
    print(f"{args.requests} {args.kind} requests of {mib:.1f} MiB ({count} values) each; server on "
          f"CPU {args.server_cpu} {args.server_args}, client on CPU {args.client_cpu}", flush=True)

    srv = Server("--repo", repo, "--model", "trivial", "--cpus", str(args.server_cpu), *args.server_args.split())
    os.sched_setaffinity(0, {args.client_cpu})
    proc = psutil.Process(srv.proc.pid)
    try:
        def get(path: str) -> tuple[int, float]:
            t0 = time.perf_counter()
            status, _ = request(srv, "GET", path, timeout=120)
            return status, (time.perf_counter() - t0) * 1e3

        idle = [get("/v2/health/live")[1] for _ in range(50)]
        rss_idle = proc.memory_info().rss
        replies: list[tuple[int, float, str]] = []

        def hostile_head(index: int) -> None:
            head, chunk = floods[index % len(floods)]
            t0 = time.perf_counter()
            sock = socket.create_connection(("127.0.0.1", srv.port))
            sent = 0
            try:
                sock.sendall(head)
                while sent < size:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:  # refused: the server closed before the rest was read
                pass
            sock.settimeout(60)
            try:
                reply = sock.recv(4096)
            except OSError:
                reply = b""
            sock.close()
            status = int(reply[9:12]) if reply.startswith(b"HTTP/1.1 ") else 0
            replies.append((status, time.perf_counter() - t0, f"after {sent} bytes sent: "
                            + reply.rpartition(b"\r\n\r\n")[2].decode(errors="replace")[:60]))

        def big() -> None:
            t0 = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=300)
            try:
                conn.request("POST", "/v2/models/trivial/infer", body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError):  # refused (413) before the whole body was sent
                pass
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            replies.append((resp.status, time.perf_counter() - t0, json.loads(data).get("error", "")[:80]))

        senders = [threading.Thread(target=hostile_head, args=(i,)) if args.kind == "heads"
                   else threading.Thread(target=big) for i in range(args.requests)]
        rss: list[int] = []
        health: list[float] = []
        statuses: set[int] = set()
        stop = threading.Event()

        def sample_rss() -> None:
            while not stop.is_set():
                rss.append(proc.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample_rss)
        sampler.start()
        t_start = time.perf_counter()
        for s in senders:
            s.start()
        while any(s.is_alive() for s in senders):
            status, ms = get("/v2/health/live")
            statuses.add(status)
            health.append(ms)
            time.sleep(0.01)
        elapsed = time.perf_counter() - t_start
        stop.set()
        sampler.join()
        rss_after = proc.memory_info().rss
    finally:
        code = srv.stop()

    summary = {
        "command": command_line(), "requests": args.requests,
        "kind": args.kind, "body_mib": mib, "values_per_request": count, "seconds_in_flight": elapsed,
        "replies": [{"status": s, "seconds": t, "error": e} for s, t, e in replies],
        "rss_idle_mb": rss_idle / 1e6, "rss_peak_mb": max(rss) / 1e6, "rss_after_mb": rss_after / 1e6,
        "health_idle_p50_ms": pct(idle, 50), "health_checks": len(health), "health_statuses": sorted(statuses),
        "health_p50_ms": pct(health, 50), "health_p99_ms": pct(health, 99), "health_max_ms": max(health, default=None),
        "server_exit": code,
    }
    print(f"in flight {elapsed:.1f} s; replies {[r[0] for r in replies]} ({replies[0][2] if replies else ''})")
    print(f"server RSS: idle {summary['rss_idle_mb']:.0f} MB, peak {summary['rss_peak_mb']:.0f} MB, after "
          f"{summary['rss_after_mb']:.0f} MB")
    print(f"health checks during: {len(health)}, statuses {sorted(statuses)}, p50 {summary['health_p50_ms']:.1f} ms, "
          f"p99 {summary['health_p99_ms']:.1f} ms, max {summary['health_max_ms']:.1f} ms "
          f"(idle p50 {summary['health_idle_p50_ms']:.2f} ms); server exit status {code}")
    write_json(out, summary)
    print(f"results in {out}/summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
