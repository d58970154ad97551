"""`hosttune bench`: real in-process workers and a real server over HTTP, on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import time

import psutil
import pytest

pytest.importorskip("openvino")

from hosttune.bench import stats  # noqa: E402
from hosttune.model import repo as model_repo  # noqa: E402
from tests.serverproc import HOSTTUNE, Server, free_port  # noqa: E402

FAST = ["--runs", "2", "--duration", "0.3", "--warmup", "0.2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("models")
    model_repo.sample(str(path), variant="tiny", int8=True, calibration="synthetic:4")
    model_repo.sample(str(path), variant="trivial", int8=False)
    return path


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    cpus = sorted(os.sched_getaffinity(0))
    inst_cpu, hk = cpus[-1], cpus[:1] if len(cpus) > 1 else cpus
    port = free_port()
    plan = {"schema": "hosttune.plan/1", "hostname": "test", "profile": "latency", "housekeeping": hk,
            "isolated": [inst_cpu], "instances": [{
                "name": "node0", "node": 0, "cpus": [inst_cpu], "cpus_list": str(inst_cpu), "mems": [0],
                "mems_list": "0", "cores": 1, "port": port, "bind": "127.0.0.1", "probe_host": "127.0.0.1",
                "probe_url": f"http://127.0.0.1:{port}", "model": "tiny",
                "streams": 1, "openvino": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1,
                                           "ENABLE_CPU_PINNING": True},
                "ovms": {"nireq": 1}}]}
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    path.write_text(json.dumps(plan))
    return path, plan


def bench(*args, timeout=180):
    return subprocess.run([*HOSTTUNE, "bench", *args], capture_output=True, text=True, timeout=timeout)


def test_inprocess_result_document(models, plan_file, tmp_path, cpu_float_precision):
    path, plan = plan_file
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    r = bench("--plan", str(path), "--repo", str(models), *FAST, "-o", str(out), "--html", str(page),
              "--fail-unstable", "--label", "tuned")
    assert r.returncode == 1, r.stderr  # two runs are never enough to call it stable
    doc = json.loads(out.read_text())
    assert doc["schema"] == "hosttune.bench/1" and doc["kind"] == "inprocess" and doc["label"] == "tuned"
    assert doc["verdict"] in ("unsure", "unstable")  # never stable on two runs
    inst = doc["instances"][0]
    assert inst["name"] == "node0" and inst["model"] == "tiny" and inst["precision"] == "FP32"
    assert inst["execution_precision"] == cpu_float_precision
    assert inst["worker"]["cpus"] == plan["instances"][0]["cpus"]  # really ran inside the cpuset
    assert inst["worker"]["api"] == "sync" and inst["streams"] == 1
    assert len(inst["runs"]) == 2 and inst["throughput"] > 0 and inst["p99_ms"] > 0
    run = inst["runs"][0]
    lat = run["latency_ms"]
    assert run["count"] > 10 and lat["p50"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    # p99.9 and max per instance: the mean of the runs' p99.9, the largest latency of any run
    assert inst["p999_ms"] == pytest.approx(sum(r["latency_ms"]["p99.9"] for r in inst["runs"]) / 2)
    assert inst["max_ms"] == max(r["latency_ms"]["max"] for r in inst["runs"])
    assert inst["summary"]["stability"]["judge"] == "p99" and doc["config"]["judge"] == "p99"
    assert run["throughput"] == pytest.approx(run["count"] / run["duration_s"])
    assert 0 < len(run["samples_ms"]) <= 1000
    assert inst["summary"]["stability"]["more_runs"] >= 1
    system = doc["system"]
    for key in ("governor", "turbo", "frequencies", "isolated", "kernel_cmdline", "cpuset", "openvino_version",
                "allowed_cpus"):
        assert key in system
    assert system["openvino_version"]
    assert doc["aggregate"]["throughput"]["mean"] == pytest.approx(inst["throughput"])
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<svg") == 5 and "Latency CDF" in text
    assert "p99.9 ms (mean of runs)" in text and f"{inst['p999_ms']:.3f}" in text
    assert "Tail latency per run: p99.9 and max" in text and "node0 p99.9 run 2:" in text
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # self-contained
    import re
    import xml.etree.ElementTree as ET

    for svg in re.findall(r"<svg.*?</svg>", text, re.S):
        ET.fromstring(svg)  # well-formed
    assert f"verdict: {doc['verdict']}" in r.stdout and "node0" in r.stdout
    assert "p99.9 ms" in r.stdout and f"{inst['p999_ms']:>8.3f}" in r.stdout
    # the same without --fail-unstable: exit 0; INT8 variant really runs INT8
    r = bench("--plan", str(path), "--repo", str(models), "--model", "tiny-int8", *FAST, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["instances"][0]["execution_precision"] == "INT8" and doc["instances"][0]["precision"] == "INT8"


def _hogs_alive(since: float) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        if p.info["cmdline"] and "while True: pass" in " ".join(p.info["cmdline"]) and p.info["create_time"] >= since:
            found.append(p)
    return found


def test_noise_is_confined_and_cleaned_up(models, plan_file, tmp_path):
    path, plan = plan_file
    start = time.time() - 1
    out = tmp_path / "noise.json"
    r = bench("--plan", str(path), "--repo", str(models), *FAST, "--noise", "1", "-o", str(out))
    assert r.returncode == 0, r.stderr
    noise = json.loads(out.read_text())["config"]["noise"]
    assert noise == {"enabled": True, "hogs": 1, "cpus": plan["housekeeping"], "confined": True}
    r = bench("--plan", str(path), "--repo", str(models), *FAST, "--noise", "--no-pin", "-o", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["config"]["noise"]["confined"] is False and doc["config"]["pinned"] is False
    assert doc["config"]["noise"]["hogs"] == len(os.sched_getaffinity(0))
    assert sorted(doc["instances"][0]["worker"]["cpus"]) == sorted(os.sched_getaffinity(0))
    assert _hogs_alive(start) == []


def test_http_against_a_running_instance(models, plan_file, tmp_path):
    path, plan = plan_file
    port = plan["instances"][0]["port"]
    srv = Server("--plan", str(path), "--plan-instance", "node0", "--repo", str(models), "--model", "trivial",
                 "--rest_port", str(port), "--no-pin", "--metrics_enable")
    # bench goes where the plan's probe_url says, not to the bind address (TEST-NET-1: unreachable)
    probe_plan = json.loads(json.dumps(plan))
    probe_plan["instances"][0]["bind"] = "192.0.2.1"
    (tmp_path / "probe.json").write_text(json.dumps(probe_plan))
    try:
        out = tmp_path / "http.json"
        r = bench("--plan", str(tmp_path / "probe.json"), "--mode", "http", "--model", "trivial", "--repo",
                  str(models), "--concurrency", "2", "--runs", "3", "--duration", "0.4", "--warmup", "0.2",
                  "--judge", "p99.9", "-o", str(out))
        assert r.returncode == 0, r.stderr
        doc = json.loads(out.read_text())
        inst = doc["instances"][0]
        assert doc["kind"] == "http" and doc["config"]["concurrency"] == 2 and doc["config"]["judge"] == "p99.9"
        assert doc["config"]["client_cpus"] == plan["housekeeping"]  # the client stays off the instance
        assert inst["worker"]["endpoint"] == f"http://127.0.0.1:{port}"
        assert all(run["errors"] == 0 and run["count"] > 5 for run in inst["runs"])
        # the verdict is the one the runs' own throughput and p99.9 give (the rules: test_bench_stats.py)
        stability = inst["summary"]["stability"]
        assert stability == stats.verdict([r["throughput"] for r in inst["runs"]],
                                          [r["latency_ms"]["p99.9"] for r in inst["runs"]], judge="p99.9")
        assert inst["verdict"] == stability["verdict"] and stability["judge"] == "p99.9"
        # the server counted what the client sent
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        line = next(ln for ln in metrics.splitlines()
                    if ln.startswith("ovms_requests_success{") and 'method="ModelInfer"' in ln)
        total = sum(run["count"] for run in inst["runs"]) + inst["worker"]["warmup_count"]
        assert float(line.rsplit(" ", 1)[1]) >= total
        # --url targets any KServe v2 endpoint
        r = bench("--mode", "http", "--url", f"127.0.0.1:{port}", "--model", "trivial", "--runs", "1",
                  "--duration", "0.2", "--warmup", "0.1", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["instances"][0]["name"] == f"127.0.0.1:{port}"
    finally:
        srv.stop()
    r = bench("--mode", "http", "--url", f"127.0.0.1:{free_port()}", "--model", "trivial", "--runs", "1",
              "--duration", "0.2")
    assert r.returncode == 2 and "cannot get the metadata" in r.stderr
    del probe_plan["instances"][0]["probe_url"]  # a plan from before probe_url: said, not guessed
    (tmp_path / "old.json").write_text(json.dumps(probe_plan))
    r = bench("--plan", str(tmp_path / "old.json"), "--mode", "http", "--model", "trivial", "--runs", "1")
    assert r.returncode == 2 and "instance node0 has no probe_url" in r.stderr and "Traceback" not in r.stderr


def test_compare(models, plan_file, tmp_path):
    path, _ = plan_file
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out, model in ((a, "tiny"), (b, "trivial")):
        r = bench("--plan", str(path), "--repo", str(models), "--model", model, "--runs", "4",
                  "--duration", "0.25", "--warmup", "0.1", "-o", str(out), "--label", model)
        assert r.returncode in (0,), r.stderr
    r = subprocess.run([*HOSTTUNE, "bench", "compare", str(a), str(b), "--html", str(tmp_path / "c.html")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "p (MWU)" in r.stdout and "node0" in r.stdout
    assert (tmp_path / "c.html").read_text().count("<svg") >= 4
    r = subprocess.run([*HOSTTUNE, "bench", "compare", str(a), str(b), "--json"], capture_output=True, text=True,
                       timeout=60)
    c = json.loads(r.stdout)
    thr = c["instances"][0]["throughput"]
    # the trivial model is about twice as fast as tiny: its latency distribution differs for sure
    # (thousands of samples); the 4-run throughput test decides by its own p-value
    assert thr["b"] > thr["a"]
    assert c["instances"][0]["latency_distribution"]["significant"]
    assert c["instances"][0]["latency_distribution"]["p50_b"] < c["instances"][0]["latency_distribution"]["p50_a"]
    assert thr["test"] == "mann_whitney" and thr["significant"] == (thr["p"] < 0.05)
    assert thr["change"] == ("better" if thr["significant"] else "no significant difference")
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    r = subprocess.run([*HOSTTUNE, "bench", "compare", str(a), str(tmp_path / "bad.json")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "not a hosttune.bench/1 result" in r.stderr
    # the right schema with the wrong types (issue 13): one line naming the field, exit 2
    good = json.loads(a.read_text())
    for mutate, field in ((lambda d: d["instances"][0]["runs"][0].update(throughput="fast"), "throughput"),
                          (lambda d: d["instances"][0].update(runs="x"), "runs"),
                          (lambda d: d["aggregate"]["p99_ms"].update(values=[None]), "aggregate.p99_ms.values"),
                          (lambda d: d["instances"][0]["runs"][0]["latency_ms"].update(p99=[1]), "latency_ms.p99")):
        doc = json.loads(json.dumps(good))
        mutate(doc)
        (tmp_path / "typed.json").write_text(json.dumps(doc))
        r = subprocess.run([*HOSTTUNE, "bench", "compare", str(a), str(tmp_path / "typed.json")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and field in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--runs", "0"], "--runs"),
    (["--instances", "node9"], "no instance node9"),
    (["--url", "127.0.0.1:1"], "--url is for --mode http"),
    (["--model", "nope"], "no model 'nope'"),
    (["-o", "/nonexistent/dir/x.json"], "does not exist"),
])
def test_bad_input_exit_2(models, plan_file, args, message):
    path, _ = plan_file
    r = bench("--plan", str(path), "--repo", str(models), *FAST, *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_throughput_instance_runs_async_with_the_plan_streams(models, plan_file, tmp_path):
    _, plan = plan_file
    tp = json.loads(json.dumps(plan))
    inst = tp["instances"][0]
    inst["openvino"] = {"NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 2, "ENABLE_CPU_PINNING": False}
    inst["streams"], inst["ovms"] = 2, {"nireq": 4}
    inst["cpus"] = sorted(os.sched_getaffinity(0))  # OpenVINO caps the streams at the CPUs it has
    path = tmp_path / "tp.json"
    path.write_text(json.dumps(tp))
    out = tmp_path / "r.json"
    r = bench("run", "--plan", str(path), "--repo", str(models), *FAST, "-o", str(out))  # explicit `run`
    assert r.returncode == 0, r.stderr
    worker = json.loads(out.read_text())["instances"][0]["worker"]
    assert worker["api"] == "async" and worker["nireq"] == 4
    assert worker["streams"] == min(2, len(os.sched_getaffinity(0)))


def test_merge_documents_recomputes_from_the_runs():
    import random

    from hosttune.bench import runner, stats

    rng = random.Random(2)

    def doc(seed_runs):
        t = runner.Target(name="node0", cpus=[1], model="m")
        for n in seed_runs:
            t.runs.append([rng.uniform(4, 6) for _ in range(n)])
            t.elapsed.append(1.0)
            t.errors.append(0)
        return runner.build_document("inprocess", {"runs": len(seed_runs), "label": "x"}, {}, [t], time.time())

    a, b = doc([100, 120]), doc([90])
    m = runner.merge_documents([a, b], label="merged")
    inst = m["instances"][0]
    assert [r["index"] for r in inst["runs"]] == [0, 1, 2] and m["config"]["runs"] == 3
    assert [r["count"] for r in inst["runs"]] == [100, 120, 90]
    assert inst["throughput"] == pytest.approx(stats.mean([100, 120, 90]))
    assert inst["summary"]["stability"]["runs"] == 3 and m["label"] == "merged"
    assert m["aggregate"]["throughput"]["values"] == pytest.approx([100, 120, 90])
    other = doc([10])
    other["instances"][0]["name"] = "node1"
    with pytest.raises(Exception, match="cannot be merged"):
        runner.merge_documents([a, other])
