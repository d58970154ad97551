"""Issue 28, part 4: live reload as OVMS does it (hosttune/serve/reload.py), against real
`hosttune serve --config-path` processes: version directories served per model_version_policy as
they appear, POST /v1/config/reload and GET /v1/config in OVMS's shape, a bad config.json keeping
the previous models serving (status, metric, log line), and requests in flight across reloads all
answered (benchmarks/serve_reload.py, the project's load script)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

ov = pytest.importorskip("openvino")

from hosttune.model import repo as model_repo  # noqa: E402
from tests import promtext  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.serverproc import Server, request  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("built")
    model_repo.sample(str(path), variant="trivial", int8=False)
    return path


@pytest.fixture
def root(tmp_path, built):
    """A directory with models/trivial/1 and a config.json beside it (written by `config`)."""
    shutil.copytree(built, tmp_path / "models")
    return tmp_path


def add_version(root, version, name="trivial"):
    """A version directory appearing whole (copied aside, then renamed into place)."""
    shutil.copytree(root / "models" / name / "1", root / "models" / name / f".{version}")
    os.rename(root / "models" / name / f".{version}", root / "models" / name / str(version))


def config(root, *models, **top):
    entries = [{"config": {"name": name, "base_path": f"models/{base}", **fields}} for name, base, fields in models]
    (root / "config.new").write_text(json.dumps({"model_config_list": entries, **top}))
    os.replace(root / "config.new", root / "config.json")



def status(port):
    code, body = request(port, "GET", "/v1/config")
    assert code == 200, body
    return json.loads(body)


def available(port):
    return {name: [int(v["version"]) for v in m["model_version_status"] if v["state"] == "AVAILABLE"]
            for name, m in status(port).items()}


def wait_for(port, want, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = {k: v for k, v in available(port).items() if v}
        if now == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"served {now}, expected {want}")


def infer(port, path="/v2/models/trivial/infer"):
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
    code, answer = request(port, "POST", path, body)
    return code, json.loads(answer) if answer else {}


def serve(root, *args):
    return Server("--config_path", str(root / "config.json"), "--metrics_enable", *args)


@pytest.mark.parametrize("policy, appear, served_after", [
    (None, [2, 3], [3]),  # OVMS's default: latest 1
    ({"latest": {"num_versions": 2}}, [2, 3], [2, 3]),
    ({"all": {}}, [2, 3], [1, 2, 3]),
    ({"specific": {"versions": [1, 3]}}, [2, 3], [1, 3]),
])
def test_a_version_directory_appearing_is_served_per_policy(root, policy, appear, served_after):
    config(root, ("trivial", "trivial", {"model_version_policy": policy} if policy else {}))
    srv = serve(root, "--file-system-poll-wait-seconds", "1")
    try:
        assert available(srv.port) == {"trivial": [1]}
        for version in appear:
            add_version(root, version)
        wait_for(srv.port, {"trivial": served_after})  # by the poll, without a request
        for version in (1, 2, 3):
            code, answer = infer(srv.port, f"/v2/models/trivial/versions/{version}/infer")
            assert code == (200 if version in served_after else 404), (version, answer)
            if code == 200:
                assert answer["model_version"] == str(version) and answer["outputs"][0]["data"] == [1.5] * 16
        # no version: the highest served, as OVMS
        assert infer(srv.port)[1]["model_version"] == str(max(served_after))
        # a version unloaded stays listed, as OVMS: END
        # (version 2 too under latest 1 when the poll saw it alone)
        ended = {int(v["version"]) for v in status(srv.port)["trivial"]["model_version_status"]
                 if v["state"] == "END"}
        assert (1 in ended) == (1 not in served_after) and ended <= {1, 2} - set(served_after)
    finally:
        srv.stop()


def test_post_reload_applies_config_json_and_answers_ovms_status(root):
    """--file-system-poll-wait-seconds 0: only POST /v1/config/reload reads config.json again; 201
    when the models changed, 200 when nothing did, the body OVMS's status document."""
    config(root, ("trivial", "trivial", {}))
    srv = serve(root, "--file-system-poll-wait-seconds", "0")
    try:
        code, body = request(srv.port, "POST", "/v1/config/reload")
        assert (code, json.loads(body)) == (200, {"trivial": {"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": "OK"}}]}})
        config(root, ("trivial", "trivial", {}), ("renamed", "trivial", {"nireq": 2}))
        add_version(root, 2)
        time.sleep(1.5)  # no poll: nothing changes by itself
        assert available(srv.port) == {"trivial": [1]}
        code, body = request(srv.port, "POST", "/v1/config/reload")
        assert code == 201 and {k: [v["version"] for v in m["model_version_status"] if v["state"] == "AVAILABLE"]
                                for k, m in json.loads(body).items()} == {"trivial": ["2"], "renamed": ["2"]}
        assert infer(srv.port, "/v2/models/renamed/infer")[1]["model_version"] == "2"
        config(root, ("renamed", "trivial", {}))  # trivial removed
        assert request(srv.port, "POST", "/v1/config/reload")[0] == 201
        assert infer(srv.port)[0] == 404
        doc = status(srv.port)
        assert [v["state"] for v in doc["trivial"]["model_version_status"]] == ["END", "END"]
        assert request(srv.port, "GET", "/v1/config/reload")[0] == 405
        assert request(srv.port, "POST", "/v1/config")[0] == 405
    finally:
        srv.stop()


def metrics(port):
    families = promtext.parse(request(port, "GET", "/metrics")[1].decode())
    counts = {lb["result"]: v for _, lb, v in families["hosttune_config_reloads_total"].samples}
    return counts, families["hosttune_config_reload_failing"].samples[0][2]


@pytest.mark.parametrize("bad, words", [
    ({"nirq": 7}, "model_config_list[1].config.nirq: unknown field"),
    ({"target_device": "GPU"}, "target_device: 'GPU': accepted by OVMS, not supported"),
    ({"plugin_config": {"NUM_STREAMS": "x"}}, "cannot compile on CPU"),
])
def test_a_bad_config_keeps_the_previous_models_serving_and_says_why(root, bad, words):
    config(root, ("trivial", "trivial", {}))
    srv = serve(root, "--file-system-poll-wait-seconds", "1")
    try:
        assert metrics(srv.port) == ({"ok": 0, "failed": 0}, 0)
        config(root, ("trivial", "trivial", {}), ("second", "trivial", bad))
        deadline = time.monotonic() + 60
        while metrics(srv.port)[1] != 1:  # the poll found it
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert available(srv.port) == {"trivial": [1]} and infer(srv.port)[0] == 200
        time.sleep(2.5)  # the poll finds the same failure again: no new log line, no new count
        assert metrics(srv.port) == ({"ok": 0, "failed": 1}, 1)
        code, body = request(srv.port, "POST", "/v1/config/reload")  # a POST tries again, and says why
        assert code == (500 if "compile" in words else 412) and words in json.loads(body)["error"], body
        assert json.loads(body)["error"].startswith("Reloading config file failed: ")
        assert metrics(srv.port) == ({"ok": 0, "failed": 2}, 1)
        assert available(srv.port) == {"trivial": [1]} and infer(srv.port)[0] == 200
        config(root, ("trivial", "trivial", {}), ("second", "trivial", {}))  # repaired: served by the poll
        wait_for(srv.port, {"trivial": [1], "second": [1]})
        assert metrics(srv.port) == ({"ok": 1, "failed": 2}, 0)
    finally:
        srv.stop()
    log = srv.proc.stderr.read()
    assert log.count("config reload failed, the previous models serve on") == 2 and words in log, log
    assert "added second:1" in log


def test_requests_in_flight_across_reloads_are_all_answered():
    """benchmarks/serve_reload.py, briefly: infer requests back to back while versions appear,
    config.json changes (a model compiled again) and a model comes and goes: none fails."""
    script = os.path.join(REPO, "benchmarks", "serve_reload.py")
    r = subprocess.run([sys.executable, script, "--duration", "8", "--concurrency", "3"], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout)
    assert summary["a"]["failed"] == 0 and summary["b"]["failed"] == 0
    assert summary["versions_added"] >= 2 and summary["config_changes"] >= 2
    assert summary["a"]["versions_answering"] >= 3  # requests were answered across the swaps
    assert summary["a"]["answered"] > 100 and summary["b"]["answered"] > 0 and summary["b"]["not_served_404"] > 0
    assert summary["server_reloads"]["ok"] >= summary["versions_added"] + summary["config_changes"] - 1


def test_a_replaced_model_answers_its_request_in_flight_then_is_freed(root):
    """In process: a request holding version 1 while a reload swaps in version 2 is answered by
    version 1; afterwards nothing holds version 1 (its compiled model and threads are freed)."""
    import asyncio
    import gc
    import weakref

    import numpy as np

    from hosttune.serve.app import App
    from hosttune.serve.engine import ServedModel
    from hosttune.serve.reload import Reloader

    config(root, ("trivial", "trivial", {"plugin_config": {"NUM_STREAMS": 2}, "nireq": 2}))
    core = ov.Core()
    reloader = Reloader(str(root / "config.json"),
                        lambda m, v: ServedModel(core, m.entry(v), m.plugin_config, m.nireq, m.io), 0)
    app = App(reloader.first())
    reloader.attach(app)
    old = weakref.ref(app.find_model("trivial", None))

    async def scenario():
        model = app.find_model("trivial", None)
        gate = asyncio.Event()
        original = model._waiter.submit

        def slow_wait(fn):  # the inference waits for the gate: in flight across the reload
            return original(lambda: (asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(), fn())[1])
        loop = asyncio.get_running_loop()
        model._waiter.submit = slow_wait
        in_flight = asyncio.create_task(model.infer([np.zeros((1, 16), np.float32)]))
        await asyncio.sleep(0.1)
        assert model.active == 1
        add_version(root, 2)
        code, doc = await reloader.reload(forced=True)
        assert code == 201 and app.find_model("trivial", None).version == 2
        del model
        gate.set()
        return (await in_flight)[0]

    loop_result = asyncio.run(scenario())
    assert loop_result.tolist() == [[1.0] * 16]  # answered by version 1 after the swap
    gc.collect()
    assert old() is None
    app.close()
    reloader.close()


def test_grpc_serves_what_a_reload_brings(root):
    """gRPC looks models up in the same registry: a version served by a reload answers there too,
    with its metric series there from the first scrape."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    config(root, ("trivial", "trivial", {"model_version_policy": {"all": {}}}))
    srv = serve(root, "--file-system-poll-wait-seconds", "0", "--grpc-port", "0")
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):  # OVMS's answer too
            client.is_model_ready("trivial", "2")
        add_version(root, 2)
        assert request(srv.port, "POST", "/v1/config/reload")[0] == 201
        families = promtext.parse(request(srv.port, "GET", "/metrics")[1].decode())
        assert any(lb.get("interface") == "gRPC" and lb.get("version") == "2"
                   for _, lb, _ in families["ovms_requests_success"].samples)
        assert client.is_model_ready("trivial", "2")
        inp = grpcclient.InferInput("input", [1, 16], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
        result = client.infer("trivial", [inp], model_version="2")
        assert result.get_response().model_version == "2" and result.as_numpy("output").tolist() == [[1.0] * 16]
        assert client.infer("trivial", [inp]).get_response().model_version == "2"  # the highest
        client.close()
    finally:
        srv.stop()
