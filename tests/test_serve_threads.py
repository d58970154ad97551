"""Where each thread of `hosttune serve` runs (docs/isolation.md), read back per thread from /proc,
and molecule/resources/files/thread_table.py's judgement on real processes: a real server under
the bench client's load, and processes built to break each rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from hosttune import threads
from tests.conftest import REPO
from tests.serverproc import HOSTTUNE, Server

CPUS = sorted(os.sched_getaffinity(0))
TABLE = os.path.join(REPO, "molecule", "resources", "files", "thread_table.py")
needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs: one for inference, one for service threads")


def _threads(pid: int) -> dict[int, tuple[str, set[int]]]:
    """tid -> (kernel name, Cpus_allowed) of every thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                out[int(tid)] = (f.read().strip(), os.sched_getaffinity(int(tid)))
        except (OSError, ProcessLookupError):
            pass
    return out


def test_pin_me_pins_the_calling_thread_only():
    """sched_setaffinity by the thread's own tid: the thread's mask and name change, the creator's
    does not; a thread it then starts inherits the new mask."""
    before = os.sched_getaffinity(0)
    seen = {}

    def body():
        seen["cpus"] = threads.pin_me([CPUS[-1]], "hosttune-test")
        seen["tid"] = threading.get_native_id()
        child = threading.Thread(target=lambda: seen.update(child=os.sched_getaffinity(0)))
        child.start()
        child.join()
        seen["status"] = open(f"/proc/self/task/{seen['tid']}/status").read()
        seen["comm"] = open(f"/proc/self/task/{seen['tid']}/comm").read().strip()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen["cpus"] == {CPUS[-1]} == seen["child"]
    assert f"Cpus_allowed_list:\t{CPUS[-1]}\n" in seen["status"]
    assert seen["comm"] == "hosttune-test"
    assert os.sched_getaffinity(0) == before


@needs_two
def test_pin_all_moves_every_thread_but_the_skipped():
    stop = threading.Event()
    workers = [threading.Thread(target=stop.wait) for _ in range(3)]
    for w in workers:
        w.start()
    me = threading.get_native_id()
    try:
        done = threads.pin_all([CPUS[0]], skip=[me])
        ids = {w.native_id for w in workers}
        assert ids <= set(done) and me not in done
        assert all(os.sched_getaffinity(tid) == {CPUS[0]} for tid in ids)
        assert os.sched_getaffinity(me) == set(CPUS)
    finally:
        stop.set()
        for w in workers:
            w.join()
        threads.pin_all(CPUS)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("models")
    subprocess.run([*HOSTTUNE, "model", "sample", "--repo", str(path), "--variant", "sample", "--no-int8"],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": REPO})
    return path


def _plan(tmp_path, nireq: int) -> str:
    inference, service = CPUS[-1], CPUS[0]
    hint = {"PERFORMANCE_HINT": "LATENCY"} if nireq == 1 else {"NUM_STREAMS": 1}
    plan = {"schema": "hosttune.plan/1", "housekeeping": [service], "instances": [{
        "name": "node0", "node": 0, "cpus": [inference], "cpus_list": str(inference),
        "service_cpus": [service], "mems": [0], "mems_list": "0", "port": 0, "grpc_port": 0,
        "bind": "127.0.0.1", "model": "sample",
        "openvino": {**hint, "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": True},
        "ovms": {"nireq": nireq}}]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return str(path)


def _bench(port: int, duration: float) -> list[str]:
    return [*HOSTTUNE, "bench", "--mode", "http", "--url", f"127.0.0.1:{port}", "--model", "sample",
            "--concurrency", "4", "--runs", "1", "--warmup", "0.5", "--duration", str(duration),
            "--client-cpus", str(CPUS[0])]


@needs_two
@pytest.mark.parametrize("nireq", [1, 2], ids=["pool-of-one", "pool-of-two"])
def test_each_thread_of_serve_runs_where_the_plan_puts_it(repo, tmp_path, nireq):
    """The plan's `cpus` for OpenVINO (and the event loop of a pool of one, which runs the inference
    itself), its `service_cpus` for the rest: the loop of a pool, the waiters, the JSON decoders,
    grpc's threads. Read back per thread after REST (JSON, so a decoder thread) and load."""
    inference, service = CPUS[-1], CPUS[0]
    srv = Server("--plan", _plan(tmp_path, nireq), "--plan-instance", "node0", "--repo", str(repo),
                 "--grpc-port", "0")
    try:
        subprocess.run(_bench(srv.port, 1), check=True, capture_output=True, timeout=120)
        # a large JSON body goes to a decoder thread (hosttune.serve.decode.JSON_INLINE_MAX)
        import http.client

        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 112, 112], "datatype": "FP32",
                                       "data": [0.5] * (3 * 112 * 112)}]})
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        conn.request("POST", "/v2/models/sample/infer", body, {"Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
        found = _threads(srv.proc.pid)
    finally:
        assert srv.stop() == 0
    loop = found.pop(srv.proc.pid)
    assert loop[1] == ({inference} if nireq == 1 else {service}), loop
    ours = {tid: t for tid, t in found.items() if t[0].startswith(("hosttune-", "grpc", "event_engine", "lifeguard"))}
    names = {name for name, _ in ours.values()}
    assert "hosttune-json" in names and any(n.startswith("grpc") for n in names), names
    assert ("hosttune-wait" in names) == (nireq > 1), names
    assert {tid: t for tid, t in ours.items() if t[1] != {service}} == {}
    # the rest: OpenVINO's own (compiled on the inference CPU) and grpc's unnamed ones (service)
    rest = {frozenset(t[1]) for tid, t in found.items() if tid not in ours}
    assert {inference} in rest and rest <= {frozenset({inference}), frozenset({service})}, rest


def _table(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TABLE, *args], capture_output=True, text=True, timeout=timeout)


@needs_two
def test_thread_table_passes_serve_under_load_and_shows_every_thread(repo, tmp_path):
    """The script against a real server (pool of one: the loop is the inference thread) while the
    bench client loads it: exit 0, the table names each thread, the loop ran on the inference CPU."""
    inference = CPUS[-1]
    srv = Server("--plan", _plan(tmp_path, 1), "--plan-instance", "node0", "--repo", str(repo), "--grpc-port", "0")
    try:
        r = _table("--instance", f"node0:{srv.proc.pid}:{inference}:inline", "--isolated", str(inference),
                   "--duration", "3", "--warmup", "1", "--json", "--", *_bench(srv.port, 10))
    finally:
        srv.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "service threads on isolated CPUs: none" in r.stdout
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    rep = doc["instances"][0]
    loop = next(t for t in rep["threads"] if t["tid"] == srv.proc.pid)
    assert loop["role"] == "inference (loop, inline)" and int(loop["ran"].get(str(inference), 0)) > rep["samples"] // 2
    assert any(t["comm"].startswith("grpc") and t["role"] == "service" for t in rep["threads"]), rep["threads"]
    assert doc["failed"] == []


BUSY = """
import ctypes, os, sys, threading, time
cpu, names = int(sys.argv[1]), sys.argv[2].split(",")
os.sched_setaffinity(0, {cpu})  # the whole process (its threads inherit it)
def spin(name):
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)
    while True:
        pass
for n in names:
    threading.Thread(target=spin, args=(n,), daemon=True).start()
print("ready", flush=True)
time.sleep(60)
"""


def _busy(cpu: int, names: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", BUSY, str(cpu), names], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    return proc


@needs_two
def test_thread_table_fails_two_busy_threads_on_one_cpu_beside_an_idle_one():
    """Two busy threads pinned to one CPU of a two-CPU instance whose other CPU stays idle."""
    proc = _busy(CPUS[-1], "ov-a,ov-b")
    try:
        r = _table("--instance", f"x:{proc.pid}:{CPUS[0]},{CPUS[-1]}", "--isolated", f"{CPUS[0]},{CPUS[-1]}",
                   "--duration", "1.5", "--warmup", "0")
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "shared a CPU while another isolated CPU idled" in r.stderr
    assert f"while CPU {CPUS[0]} had none" in r.stdout


def test_thread_table_fails_a_service_thread_on_an_isolated_cpu():
    """A thread named like serve's decoder, busy on an isolated CPU."""
    proc = _busy(CPUS[-1], "hosttune-json")
    try:
        r = _table("--instance", f"x:{proc.pid}:{CPUS[-1]}", "--isolated", str(CPUS[-1]), "--duration", "1",
                   "--warmup", "0")
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "a service thread ran on an isolated CPU" in r.stderr and "(hosttune-json) ran on isolated" in r.stdout


def test_thread_table_refusals_are_one_line_exit_2():
    r = _table("--instance", "node0:notapid:1")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    r = _table("--instance", "node0:999999999:1", "--duration", "0")
    assert r.returncode == 2 and "no process 999999999" in r.stderr


@needs_two
def test_thread_table_fails_a_service_process_on_an_isolated_cpu():
    """--service-process (the agent): a thread allowed on an isolated CPU is a violation, one kept on
    the housekeeping CPUs is not."""
    on_isolated, on_housekeeping = _busy(CPUS[-1], "worker"), _busy(CPUS[0], "worker")
    try:
        r = _table("--service-process", f"agent:{on_isolated.pid}", "--service-process", f"ok:{on_housekeeping.pid}",
                   "--isolated", str(CPUS[-1]), "--duration", "1", "--warmup", "0")
    finally:
        for proc in (on_isolated, on_housekeeping):
            proc.kill()
            proc.wait()
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"agent: allowed on or running on isolated CPU(s) {CPUS[-1]}" in r.stderr
    assert "ok:" not in r.stderr and f"== ok (pid {on_housekeeping.pid})" in r.stdout


@needs_two
def test_the_agent_pins_every_thread_to_the_housekeeping_cpus():
    """Agent._pin_housekeeping on the live host: every thread of the process (and a thread started
    after) on the plan's housekeeping CPUs; on a test tree nothing is pinned."""
    code = f"""
import os, threading, types
from hosttune.agent.daemon import Agent
stop = threading.Event()
t = threading.Thread(target=stop.wait); t.start()
tree = types.SimpleNamespace(fs=types.SimpleNamespace(is_live=False))
assert Agent._pin_housekeeping(tree, [{CPUS[0]}]) == (None, None)
assert os.sched_getaffinity(t.native_id) == {set(CPUS)}
live = types.SimpleNamespace(fs=types.SimpleNamespace(is_live=True))
assert Agent._pin_housekeeping(live, [{CPUS[0]}]) == ([{CPUS[0]}], None)
later = threading.Thread(target=lambda: print("later", sorted(os.sched_getaffinity(0))))
later.start(); later.join()
print("all", sorted({{c for tid in os.listdir("/proc/self/task") for c in os.sched_getaffinity(int(tid))}}))
stop.set(); t.join()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": REPO})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == [f"later [{CPUS[0]}]", f"all [{CPUS[0]}]"], r.stdout


def test_service_cpus_refusals_are_one_line_exit_2(repo, tmp_path):
    """--service-cpus: not a CPU list, or CPUs this process may not use: one line naming it."""
    for value, says in (("x-1", "--service-cpus"), ("4000", "--service-cpus: cannot run on CPUs 4000 (check")):
        r = subprocess.run([*HOSTTUNE, "serve", "--repo", str(repo), "--model", "sample",
                            "--rest_port", "0", "--ephemeral-ports",
                            "--cpus", str(CPUS[-1]), "--service-cpus", value], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_plan_service_cpus_outside_the_cgroup_fall_back_to_the_instance_cpus(repo, tmp_path):
    """A plan's service_cpus this process may not use (a unit from before the plan had them): a
    warning, and every thread stays on the instance's CPUs, as before."""
    path = _plan(tmp_path, 2)
    plan = json.loads(open(path).read())
    plan["instances"][0]["service_cpus"] = [4000]
    open(path, "w").write(json.dumps(plan))
    proc = subprocess.Popen([*HOSTTUNE, "serve", "--plan", path, "--plan-instance", "node0", "--repo", str(repo),
                             "--rest_port", "0", "--ephemeral-ports"], stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or "listening on" not in lines[-1]:
            lines.append(proc.stderr.readline())
            assert lines[-1] and len(lines) < 20, lines  # the server started
        found = _threads(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert any(line.startswith("hosttune: warning: the service CPUs 4000 are not allowed") for line in lines), lines
    assert {frozenset(a) for _, a in found.values()} == {frozenset({CPUS[-1]})}, found


def test_thread_table_fails_when_the_load_ends_before_the_sampling():
    """A load that fails (e.g. the bench client refusing its warmup) leaves tables without load: that
    is a failure, not a pass."""
    proc = _busy(CPUS[-1], "ov")
    try:
        r = _table("--instance", f"x:{proc.pid}:{CPUS[-1]}", "--isolated", str(CPUS[-1]), "--duration", "1",
                   "--warmup", "0.5", "--", sys.executable, "-c", "import sys; sys.exit(2)")
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the load ended on its own (exit 2) before the sampling did" in r.stderr
