"""Where the time of one binary request to `hosttune serve` goes, beyond the inference.

The server runs pinned to the server CPU with timestamps added at its seams (first read of a
request, body complete, inference start and end, answer sent); a blocking client pinned to the
client CPU sends the sample model's binary request back to back on one connection and notes when
it sent each request and when it had the whole answer. Both read the same clock
(CLOCK_MONOTONIC), so each request splits into:

    in flight       client send -> the server's first read of it (the server's wakeup)
    read            first read -> body complete (HTTP parsing, further reads; the ASGI task
                    where the request does not take the direct lane)
    decode          body complete -> inference start (the JSON header, the input tensor)
    inference       the model's infer
    answer          inference end -> the answer handed to the kernel (outputs, JSON, HTTP)
    answer flight   -> the client has all of it (the send, the client's wakeup and read)

For comparison, on the same CPUs with the same request:
- the leanest Python server: uvloop and httptools with nothing between them and the model (no
  ASGI, no routing, no checks, limits or metrics; the body straight into one buffer that the input
  tensor shares, the JSON header by orjson, the answer in one write), split into the same phases.
  It is about the best an HTTP front end that runs Python per request can reach here;
- the floor of the machine: a raw-socket server that reads the same request, spins for the median
  inference time and answers 4 kB (no HTTP, no Python beyond recv/send).
`--stub spin` replaces the inference by a spin of the same length (the CPU caches stay warm),
which shows what the inference's cache footprint costs the Python around it.

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

from common import HERE, ROOT, add_pinning, command_line, median, model_repo, write_json, write_page

PHASES = ("in flight", "read", "decode", "inference", "answer", "answer flight")
SITECUSTOMIZE = "import serve_timeline\nserve_timeline.install_hooks()\n"


class SpinStub:
    """`--stub spin`: once 50 real inferences are timed, each inference is replaced by a spin of
    their median (the CPU caches stay warm)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.real: list[float] = []
        self.seconds: float | None = None

    def spun(self) -> bool:
        """Spin instead of an inference, if it is time to; says whether it did."""
        if self.seconds is None:
            return False
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        return True

    def note(self, seconds: float) -> None:
        self.real.append(seconds)
        if self.enabled and len(self.real) == 50:
            self.seconds = median(self.real)


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

    from hosttune.serve import app, engine, run, wire

    protocol_class = wire.protocol_class

    def timed_protocol_class(*args, **kwargs):  # hosttune's protocol has its own data_received
        cls = protocol_class(*args, **kwargs)
        data_received = cls.data_received

        def timed_data_received(self, data):
            events.append(("rx", now()))
            return data_received(self, data)

        cls.data_received = timed_data_received
        return cls

    # the sample model with one stream (--config's LATENCY): a pool of one, so every request is
    # answered by App.infer_now and ServedModel.infer_now, on the direct lane or the ASGI path
    app_infer_now = app.App.infer_now

    def timed_app_infer_now(self, model, body, header_len):  # the body is complete (either path)
        events.append(("body", now()))
        return app_infer_now(self, model, body, header_len)

    infer_now = engine.ServedModel.infer_now
    stub = SpinStub(bool(os.environ.get("HOSTTUNE_TIMELINE_STUB")))
    outputs: list = []

    def timed_infer_now(self, tensors, timings=None):
        events.append(("i0", now()))
        if stub.spun():
            timings.update(infer_us=stub.seconds * 1e6, wait_us=0.0)
            out = outputs[0]
        else:
            t = now()
            out = infer_now(self, tensors, timings)
            stub.note(now() - t)
            outputs[:] = [out]
        events.append(("i1", now()))
        return out

    flush = wire.OneSend.flush

    def timed_flush(self):
        if self._held:
            events.append(("tx", now()))
        flush(self)

    wire.protocol_class = run.protocol_class = timed_protocol_class
    app.App.infer_now = timed_app_infer_now
    engine.ServedModel.infer_now = timed_infer_now
    wire.OneSend.flush = timed_flush


def minimal_server(listener: socket.socket, model_xml: str, config: dict, cpu: int, log: str,
                   stub: str | None) -> None:
    """The leanest Python HTTP server for the sample model's binary request (in a forked child;
    serves until SIGTERM, then writes its events to `log` in install_hooks' format)."""
    os.sched_setaffinity(0, {cpu})
    import asyncio

    import httptools
    import numpy as np
    import openvino as ov
    import orjson
    import uvloop

    compiled = ov.Core().compile_model(model_xml, "CPU", config)
    infer_request = compiled.create_infer_request()
    events: list[tuple[str, float]] = []
    spin = SpinStub(bool(stub))
    now = time.perf_counter

    class Connection(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.header_len = 0
            self.body = bytearray()

        def data_received(self, data):
            events.append(("rx", now()))
            self.parser.feed_data(data)

        def on_header(self, name, value):
            if name.lower() == b"inference-header-content-length":
                self.header_len = int(value)

        def on_body(self, chunk):
            self.body += chunk

        def on_message_complete(self):
            events.append(("body", now()))
            body, self.body = self.body, bytearray()
            spec = orjson.loads(memoryview(body)[:self.header_len])["inputs"][0]
            tensor = np.frombuffer(body, np.float32, offset=self.header_len).reshape(spec["shape"])
            events.append(("i0", now()))
            if not spin.spun():
                t = now()
                infer_request.set_input_tensor(0, ov.Tensor(tensor, shared_memory=True))
                infer_request.infer()
                spin.note(now() - t)
            events.append(("i1", now()))
            output = infer_request.get_output_tensor(0).data
            data = output.tobytes()
            header = orjson.dumps({"model_name": "sample", "model_version": "1", "outputs": [
                {"name": compiled.output(0).any_name, "datatype": "FP32", "shape": list(output.shape),
                 "parameters": {"binary_data_size": len(data)}}]})
            events.append(("tx", now()))
            self.transport.writelines([b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                                       b"inference-header-content-length: %d\r\ncontent-length: %d\r\n\r\n"
                                       % (len(header), len(header) + len(data)), header, data])

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        server = await loop.create_server(Connection, sock=listener)
        await stop
        server.close()

    uvloop.run(serve())
    with open(log, "w") as f:
        json.dump(events, f)


def start_minimal_server(model_xml: str, config: dict, cpu: int, log: str, stub: str | None) -> tuple[int, int]:
    """Fork the leanest server; returns (pid, port) once it accepts."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            minimal_server(listener, model_xml, config, cpu, log, stub)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    port = listener.getsockname()[1]
    listener.close()  # the child has its own copy; connections queue until it compiles and accepts
    return pid, port


def stop_minimal_server(pid: int) -> int:
    os.kill(pid, signal.SIGTERM)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


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


def read_events(path: str) -> list[tuple[str, float]]:
    with open(path) as f:
        return [(name, t) for name, t in json.load(f)]


def p50_phases(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: median([r[name] for r in rows]) for name in (*PHASES, "beyond inference", "total")}


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
    """Three horizontal bars on one scale: the phases besides the inference of hosttune serve and
    of the leanest Python server, stacked, and the raw-socket floor."""
    names = [name for name in PHASES if name != "inference"]
    rows = [("hosttune serve", [(n, summary["p50_us"][n]) for n in names]),
            ("leanest Python", [(n, summary["minimal_p50_us"][n]) for n in names]),
            ("raw-socket floor", [("raw round trip", summary["raw_floor_p50_us"])])]
    top = max(sum(v for _, v in bar) for _, bar in rows) * 1.1 or 1
    width, left, scale = 860, 140, 680 / top
    legend = 20 + len(rows) * 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{legend + 40}" font-size="12">']
    for row, (label, bar) in enumerate(rows):
        y, x = 20 + row * 50, left
        out.append(f'<text x="{left - 8}" y="{y + 20}" text-anchor="end">{label}</text>')
        for i, (name, value) in enumerate(bar):
            w = value * scale
            colour = COLOURS[i % len(COLOURS)] if len(bar) > 1 else "#999"
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="30" fill="{colour}">'
                       f'<title>{name}: {value:.0f} us</title></rect>')
            if w > 40:
                out.append(f'<text x="{x + w / 2:.1f}" y="{y + 19}" text-anchor="middle" fill="#fff">{value:.0f}</text>')
            x += w
    for i, name in enumerate(names):
        out.append(f'<rect x="{left + i * 130}" y="{legend}" width="12" height="12" fill="{COLOURS[i]}"/>'
                   f'<text x="{left + i * 130 + 16}" y="{legend + 11}">{name}</text>')
    out.append(f'<text x="{left}" y="{legend + 35}">us at p50; scale 0 - {top:.0f} us</text></svg>')
    return "".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help="model repository with the sample model (default: built into --out)")
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=100, help="first requests left out")
    add_pinning(ap, "OpenVINO properties of both servers")
    ap.add_argument("--stub", choices=["spin"], help="replace the inference by a spin of its length")
    ap.add_argument("--idle-poll-us", type=int, default=0, help="hosttune serve's --idle-poll-us (the leanest "
                                                                   "server never polls)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.requests <= args.warmup:
        ap.error("--requests must exceed --warmup")
    from hosttune.bench.httpclient import binary_request, request_head
    from tests.serverproc import Server

    out = args.out or tempfile.mkdtemp(prefix="hosttune-timeline-")
    os.makedirs(out, exist_ok=True)
    repo = model_repo(args.repo or os.path.join(out, "models"))
    body, headers = binary_request({"inputs": [{"name": "input", "shape": [1, 3, 112, 112], "datatype": "FP32"}]})
    hooks = tempfile.mkdtemp(prefix="hosttune-timeline-hooks-")
    with open(os.path.join(hooks, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    log = os.path.join(out, "server-events.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([hooks, HERE, ROOT]),
               HOSTTUNE_TIMELINE_LOG=log)
    if args.stub:
        env["HOSTTUNE_TIMELINE_STUB"] = args.stub
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    srv = Server("--repo", repo, "--model", "sample", "--cpus", str(args.server_cpu), "--config", args.config,
                 "--idle-poll-us", str(args.idle_poll_us), env=env)
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
    rows = phases(times[args.warmup:], read_events(log))
    if not rows:
        sys.exit("no request could be matched with the server's events")

    print("the leanest Python server ...", flush=True)
    minimal_log = os.path.join(out, "minimal-events.json")
    pid, port = start_minimal_server(os.path.join(repo, "sample", "1", "model.xml"), json.loads(args.config),
                                     args.server_cpu, minimal_log, args.stub)
    try:
        minimal_times = run_client(port, request, args.requests, args.client_cpu)
    finally:
        code = stop_minimal_server(pid)
    if code != 0:
        sys.exit(f"the leanest Python server exited with {code}")
    minimal_rows = phases(minimal_times[args.warmup:], read_events(minimal_log))
    if not minimal_rows:
        sys.exit("no request could be matched with the leanest server's events")

    infer_s = median([r["inference"] for r in rows]) / 1e6
    print("raw-socket floor ...", flush=True)
    floor = raw_floor(len(request), infer_s, max(200, args.requests // 2), args.server_cpu, args.client_cpu)

    summary = {"command": command_line(), "requests": len(rows),
               "stub": args.stub, "p50_us": p50_phases(rows), "minimal_requests": len(minimal_rows),
               "minimal_p50_us": p50_phases(minimal_rows), "raw_floor_p50_us": median(floor),
               "reads_per_request": statistics.mode(r["reads"] for r in rows)}
    print(f"\n{len(rows)} requests each, p50 of each phase in us (the phases' p50s need not add up to the "
          f"total's):\n  {'':<17} {'hosttune':>9} {'leanest':>9}")
    for name in (*PHASES, "beyond inference", "total"):
        print(f"  {name:<17} {summary['p50_us'][name]:9.1f} {summary['minimal_p50_us'][name]:9.1f}")
    print(f"  {'raw-socket floor':<17} {summary['raw_floor_p50_us']:9.1f}  (same request size and CPUs, spin of "
          f"{infer_s * 1e3:.2f} ms, 4 kB answer)")
    write_json(out, summary)
    page = [f"<h1>hosttune serve: one binary request, phase by phase</h1><p>{summary['command']}: "
            f"{len(rows)} requests on one connection, server on CPU {args.server_cpu}, client on CPU "
            f"{args.client_cpu}; inference p50 {summary['p50_us']['inference'] / 1e3:.2f} ms"
            f"{' (stubbed by a spin)' if args.stub else ''}.</p>",
            "<h2>p50 per phase besides the inference (us)</h2>", stacked_svg(summary),
            "<p>hosttune serve against the leanest Python server (uvloop + httptools straight to the model, "
            "nothing else) and the raw-socket floor, on the same CPUs with the same request.</p>",
            "<pre>" + json.dumps({"hosttune serve": summary["p50_us"], "leanest Python": summary["minimal_p50_us"],
                                  "raw-socket floor": summary["raw_floor_p50_us"]}, indent=1) + "</pre>"]
    write_page(out, "serve timeline", page)
    print(f"\nresults in {out} (summary.json, report.html, server-events.json, minimal-events.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
