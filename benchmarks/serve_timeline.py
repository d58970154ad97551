"""Where the time of one binary request to `hosttune serve` goes, beyond the inference.

The server runs pinned to the server CPU with timestamps added at its seams (first read of a
request, body complete, inference start and end, answer sent); a blocking client pinned to the
client CPU sends the sample model's binary request back to back on one connection and notes when
it sent each request and when it had the whole answer. Both read the same clock
(CLOCK_MONOTONIC), so each request splits into:

    in flight       client send -> the server's first read of it (the server's wakeup)
    read            first read -> body complete (HTTP parsing, the ASGI task, further reads)
    decode          body complete -> inference start (the JSON header, the input tensor)
    inference       the model's infer
    answer          inference end -> the answer handed to the kernel (outputs, JSON, HTTP)
    answer flight   -> the client has all of it (the send, the client's wakeup and read)

For comparison, the floor of the machine: a raw-socket server on the same CPUs that reads the
same request, spins for the median inference time and answers 4 kB (no HTTP, no Python beyond
recv/send). `--stub spin` replaces the inference by a spin of the same length (the CPU caches
stay warm), which shows what the inference's cache footprint costs the Python around it.

    python benchmarks/serve_timeline.py --requests 600 --repo /tmp/peer/models --out /tmp/timeline

Prints the p50 of each phase and writes summary.json and report.html into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from serve_peer import sample_repo  # noqa: E402

PHASES = ("in flight", "read", "decode", "inference", "answer", "answer flight")
SITECUSTOMIZE = "import serve_timeline\nserve_timeline.install_hooks()\n"


def install_hooks() -> None:
    """In the server process (through a sitecustomize on PYTHONPATH): note the seams' times and
    write them to $HOSTTUNE_TIMELINE_LOG at exit (SIGTERM ends `hosttune serve` cleanly)."""
    path = os.environ.get("HOSTTUNE_TIMELINE_LOG")
    if not path:
        return
    import atexit

    events: list[tuple[str, float]] = []
    now = time.perf_counter
    atexit.register(lambda: json.dump(events, open(path, "w")))
    stub = os.environ.get("HOSTTUNE_TIMELINE_STUB")

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from hosttune.serve import engine, server

    data_received = HttpToolsProtocol.data_received

    def timed_data_received(self, data):
        events.append(("rx", now()))
        return data_received(self, data)

    read_body = server.App._read_body

    async def timed_read_body(self, scope, receive):
        body = await read_body(self, scope, receive)
        events.append(("body", now()))
        return body

    infer = engine.ServedModel.infer
    real: list[float] = []  # the stub spins for the median of the first 50 real inferences
    spin: list[float] = []
    outputs: list = []

    async def timed_infer(self, tensors, timings=None):
        events.append(("i0", now()))
        if spin:
            end = now() + spin[0]
            while now() < end:
                pass
            timings.update(infer_us=spin[0] * 1e6, wait_us=0.0)
            out = outputs[0]
        else:
            t = now()
            out = await infer(self, tensors, timings)
            real.append(now() - t)
            outputs[:] = [out]
            if stub and len(real) == 50:
                spin.append(statistics.median(real))
        events.append(("i1", now()))
        return out

    flush = server.OneSend.flush

    def timed_flush(self):
        if self._held:
            events.append(("tx", now()))
        flush(self)

    HttpToolsProtocol.data_received = timed_data_received
    server.App._read_body = timed_read_body
    engine.ServedModel.infer = timed_infer
    server.OneSend.flush = timed_flush


def read_answer(sock: socket.socket, buf: bytearray) -> int:
    """Read one HTTP answer with a Content-Length into buf; returns its status."""
    view, n = memoryview(buf), 0
    while True:
        got = sock.recv_into(view[n:])
        if not got:
            raise ConnectionError("the server closed the connection")
        n += got
        end = buf.find(b"\r\n\r\n", 0, n)
        if end < 0:
            continue
        head = bytes(buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")  # not inference-header-content-length
        if at < 0:
            raise ValueError(f"an answer without Content-Length: {head[:300]!r}")
        length = int(head[at + 17:].split(b"\r\n", 1)[0])
        if n >= end + 4 + length:
            return int(head.split(b" ", 2)[1])


def run_client(port: int, request: bytes, count: int, cpu: int) -> list[tuple[float, float]]:
    os.sched_setaffinity(0, {cpu})
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(1 << 22)
    times = []
    try:
        for i in range(count):
            t0 = time.perf_counter()
            sock.sendall(request)
            status = read_answer(sock, buf)
            times.append((t0, time.perf_counter()))
            if status != 200:
                raise SystemExit(f"request {i}: HTTP {status}: {bytes(buf[:300])!r}")
            if i % 100 == 99:
                print(f"  {i + 1}/{count} requests", flush=True)
    finally:
        sock.close()
    return times


def phases(times: list[tuple[float, float]], events: list[tuple[str, float]]) -> list[dict[str, float]]:
    """Each request's phases (us) from the server's events between its send and its answer."""
    rows, k = [], 0
    for t0, t1 in times:
        mine: dict[str, list[float]] = {}
        while k < len(events) and events[k][1] < t0:
            k += 1
        while k < len(events) and events[k][1] <= t1:
            mine.setdefault(events[k][0], []).append(events[k][1])
            k += 1
        if not all(name in mine for name in ("rx", "body", "i0", "i1", "tx")):
            continue
        marks = [t0, mine["rx"][0], mine["body"][0], mine["i0"][0], mine["i1"][0], mine["tx"][0], t1]
        row = {name: (b - a) * 1e6 for name, a, b in zip(PHASES, marks, marks[1:])}
        row["reads"] = len(mine["rx"])
        row["total"] = (t1 - t0) * 1e6
        row["beyond inference"] = row["total"] - row["inference"]
        rows.append(row)
    return rows


def raw_floor(request_size: int, work_s: float, count: int, server_cpu: int, client_cpu: int) -> list[float]:
    """Round trips (us, minus the spin) of a raw-socket server doing nothing but the spin."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the raw server
        try:
            os.sched_setaffinity(0, {server_cpu})
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = bytearray(request_size)
            answer = b"x" * 4096
            while True:
                n = 0
                while n < request_size:
                    got = conn.recv_into(memoryview(buf)[n:])
                    if not got:
                        os._exit(0)
                    n += got
                end = time.perf_counter() + work_s
                while time.perf_counter() < end:
                    pass
                conn.sendall(answer)
        finally:
            os._exit(0)
    listener.close()
    os.sched_setaffinity(0, {client_cpu})
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message, out = b"y" * request_size, []
    for _ in range(count):
        t0 = time.perf_counter()
        sock.sendall(message)
        n = 0
        while n < 4096:
            n += len(sock.recv(65536))
        out.append((time.perf_counter() - t0 - work_s) * 1e6)
    sock.close()
    os.waitpid(pid, 0)
    return out


COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f")


def stacked_svg(summary: dict) -> str:
    """Two horizontal bars on one scale: the request's phases besides the inference, stacked, and
    the raw-socket floor."""
    parts = [(name, summary["p50_us"][name]) for name in PHASES if name != "inference"]
    rows = [("hosttune serve", parts), ("raw-socket floor", [("raw round trip", summary["raw_floor_p50_us"])])]
    top = max(sum(v for _, v in bar) for _, bar in rows) * 1.1 or 1
    width, left, scale = 860, 140, 680 / top
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="170" font-size="12">']
    for row, (label, bar) in enumerate(rows):
        y, x = 20 + row * 50, left
        out.append(f'<text x="{left - 8}" y="{y + 20}" text-anchor="end">{label}</text>')
        for i, (name, value) in enumerate(bar):
            w = value * scale
            colour = COLOURS[i % len(COLOURS)] if row == 0 else "#999"
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="30" fill="{colour}">'
                       f'<title>{name}: {value:.0f} us</title></rect>')
            if w > 40:
                out.append(f'<text x="{x + w / 2:.1f}" y="{y + 19}" text-anchor="middle" fill="#fff">{value:.0f}</text>')
            x += w
    for i, (name, _) in enumerate(parts):
        out.append(f'<rect x="{left + i * 130}" y="130" width="12" height="12" fill="{COLOURS[i]}"/>'
                   f'<text x="{left + i * 130 + 16}" y="141">{name}</text>')
    out.append(f'<text x="{left}" y="165">us at p50; scale 0 - {top:.0f} us</text></svg>')
    return "".join(out)


def p50(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help="model repository with the sample model (default: built into --out)")
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=100, help="first requests left out")
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--stub", choices=["spin"], help="replace the inference by a spin of its length")
    ap.add_argument("--config", default='{"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}')
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.requests <= args.warmup:
        ap.error("--requests must exceed --warmup")
    from hosttune.bench.httpclient import binary_request, request_head
    from hosttune.serve.process import Server

    out = args.out or tempfile.mkdtemp(prefix="hosttune-timeline-")
    os.makedirs(out, exist_ok=True)
    repo = sample_repo(args.repo or os.path.join(out, "models"))
    body, headers = binary_request({"inputs": [{"name": "input", "shape": [1, 3, 112, 112], "datatype": "FP32"}]})
    hooks = tempfile.mkdtemp(prefix="hosttune-timeline-hooks-")
    with open(os.path.join(hooks, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    log = os.path.join(out, "server-events.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([hooks, HERE, os.path.join(HERE, "..")]),
               HOSTTUNE_TIMELINE_LOG=log)
    if args.stub:
        env["HOSTTUNE_TIMELINE_STUB"] = args.stub
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    srv = Server("--repo", repo, "--model", "sample", "--cpus", str(args.server_cpu), "--config", args.config,
                 env=env)
    request = request_head("POST", "/v2/models/sample/infer", "127.0.0.1", srv.port, len(body), headers) + body
    print(f"server on CPU {args.server_cpu} (pid {srv.proc.pid}), client on CPU {args.client_cpu}: "
          f"{args.requests} binary requests of {len(request)} bytes{', inference stubbed' if args.stub else ''}",
          flush=True)
    try:
        times = run_client(srv.port, request, args.requests, args.client_cpu)
    finally:
        code = srv.stop()
    if code != 0:
        print(f"hosttune serve exited with {code}", file=sys.stderr)
    with open(log) as f:
        events = [(name, t) for name, t in json.load(f)]
    rows = phases(times[args.warmup:], events)
    if not rows:
        sys.exit("no request could be matched with the server's events")
    infer_s = p50([r["inference"] for r in rows]) / 1e6
    print("raw-socket floor ...", flush=True)
    floor = raw_floor(len(request), infer_s, max(200, args.requests // 2), args.server_cpu, args.client_cpu)

    summary = {"command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "requests": len(rows),
               "stub": args.stub, "p50_us": {}, "raw_floor_p50_us": p50(floor),
               "reads_per_request": statistics.mode(r["reads"] for r in rows)}
    print(f"\n{len(rows)} requests, p50 of each phase (us; the phases' p50s need not add up to the total's):")
    for name in (*PHASES, "beyond inference", "total"):
        summary["p50_us"][name] = p50([r[name] for r in rows])
        print(f"  {name:<17} {summary['p50_us'][name]:9.1f}")
    print(f"  {'raw-socket floor':<17} {summary['raw_floor_p50_us']:9.1f}  (same request size and CPUs, spin of "
          f"{infer_s * 1e3:.2f} ms, 4 kB answer)")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    page = [f"<h1>hosttune serve: one binary request, phase by phase</h1><p>{summary['command']}: "
            f"{len(rows)} requests on one connection, server on CPU {args.server_cpu}, client on CPU "
            f"{args.client_cpu}; inference p50 {summary['p50_us']['inference'] / 1e3:.2f} ms"
            f"{' (stubbed by a spin)' if args.stub else ''}.</p>",
            "<h2>p50 per phase besides the inference (us)</h2>", stacked_svg(summary),
            "<pre>" + json.dumps(summary["p50_us"], indent=1) + "</pre>"]
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write("<!doctype html><meta charset='utf-8'><title>serve timeline</title>"
                "<body style='font-family:sans-serif'>" + "\n".join(page) + "</body>")
    print(f"\nresults in {out} (summary.json, report.html, server-events.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
