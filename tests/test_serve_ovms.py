"""OVMS fidelity of `hosttune serve`: its /metrics against a stored OVMS listing, and serving an
OVMS config.json rendered from a real plan."""

from __future__ import annotations

import json
import os

import pytest

ov = pytest.importorskip("openvino")

from hosttune.instance_settings import METRICS_LIST  # noqa: E402
from hosttune.model import repo as model_repo  # noqa: E402
from hosttune.serve.metrics import BUCKETS_US, Metrics  # noqa: E402
from tests.serverproc import Server, request  # noqa: E402
from tests import promtext  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402

OVMS_LISTING = os.path.join(FIXTURES, "ovms_metrics.txt")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("models")
    model_repo.sample(str(path), variant="trivial", int8=False)
    model_repo.sample(str(path), variant="tiny", int8=False)
    return path



def infer_body(n=16, name="input"):
    return json.dumps({"inputs": [{"name": name, "shape": [1, n], "datatype": "FP32", "data": [0.5] * n}]})


def shapes(family, keep):
    """What a dashboard can rely on: each series' sample name, label names and the values of the
    fixed labels (api, interface, method, le); model name and version values vary."""
    out = set()
    for sample, labels, _ in family.samples:
        if keep(labels):
            fixed = tuple(sorted((k, v) for k, v in labels.items() if k not in ("name", "version")))
            out.add((sample, tuple(sorted(labels)), fixed))
    return out


def test_metrics_match_the_ovms_listing_after_real_inferences(models):
    with open(OVMS_LISTING) as f:
        ovms = promtext.parse(f.read())
    srv = Server("--repo", str(models), "--model", "trivial", "--config", '{"NUM_STREAMS": 2}',
                 "--metrics_enable", "--metrics_list", ",".join(METRICS_LIST))  # the role's list: all nine
    try:
        for _ in range(3):
            assert request(srv.port, "POST", "/v2/models/trivial/infer", infer_body())[0] == 200
        assert request(srv.port, "POST", "/v2/models/trivial/infer", infer_body(3))[0] == 400
        assert request(srv.port, "GET", "/v2/models/trivial")[0] == 200
        assert request(srv.port, "GET", "/v2/models/trivial/ready")[0] == 200
        assert request(srv.port, "GET", "/v2/models/nope/ready")[0] == 404
        status, text = request(srv.port, "GET", "/metrics")
    finally:
        srv.stop()
    assert status == 200
    ours = promtext.parse(text.decode())

    shared = {name for name in ours if name.startswith("ovms_")}
    assert shared == set(ovms), "hosttune serve exposes every OVMS model metric family, and no other ovms_ name"
    for name in sorted(shared):
        assert ours[name].type == ovms[name].type, name
        assert ours[name].help == ovms[name].help, name
        # OVMS's KServe REST series (this server has no --port; no TensorFlow Serving API)
        rest = shapes(ovms[name], lambda lb: lb.get("api", "KServe") == "KServe" and lb.get("interface", "REST") == "REST")
        assert shapes(ours[name], lambda lb: lb["name"] == "trivial") == rest, name
    # a counter's sample carries the bare family name, as OVMS writes it
    assert not any(s.endswith("_total") for f in shared for s, _, _ in ours[f].samples)

    def value(family, sample=None, **labels):
        hits = [v for s, lb, v in ours[family].samples
                if s == (sample or family) and all(lb.get(k) == x for k, x in labels.items())]
        assert len(hits) == 1, (family, labels, hits)
        return hits[0]

    kserve = {"api": "KServe", "interface": "REST", "name": "trivial"}
    assert value("ovms_requests_success", method="ModelInfer", version="1", **kserve) == 3
    assert value("ovms_requests_fail", method="ModelInfer", version="1", **kserve) == 1
    assert value("ovms_requests_success", method="ModelMetadata", version="1", **kserve) == 1
    assert value("ovms_requests_success", method="ModelReady", **kserve) == 1
    assert value("ovms_request_time_us", "ovms_request_time_us_count", name="trivial", interface="REST") == 3
    assert value("ovms_inference_time_us", "ovms_inference_time_us_count", name="trivial") == 3
    assert value("ovms_request_time_us", "ovms_request_time_us_bucket", name="trivial", le="+Inf") == 3
    assert value("ovms_streams", name="trivial", version="1") == 2
    assert value("ovms_current_requests", name="trivial", version="1") == 0
    assert value("hosttune_requests_rejected_total", reason="unknown_model") == 1
    assert ours["hosttune_requests_rejected_total"].type == "counter"
    bounds = [lb["le"] for s, lb, _ in ovms["ovms_request_time_us"].samples
              if s.endswith("_bucket") and lb["interface"] == "REST"]
    assert bounds == [str(b) for b in BUCKETS_US] + ["+Inf"]


def test_histogram_buckets_are_inclusive_upper_bounds():
    m = Metrics()
    h = m.model("m", 1, 1, 1, lambda: 0)["request_time"]
    for v in (10, 10.5, 104, 104.2, 2e9):
        h.observe(v)
    fam = promtext.parse(m.render()[0].decode())["ovms_request_time_us"]
    cum = {lb["le"]: v for s, lb, v in fam.samples if s.endswith("_bucket")}
    assert (cum["10"], cum["18"], cum["58"], cum["104"], cum["188"], cum["1474755971"], cum["+Inf"]) == \
        (1, 2, 2, 3, 4, 4, 5)
    assert [v for s, _, v in fam.samples if s.endswith("_sum")] == [10 + 10.5 + 104 + 104.2 + 2e9]


# -- config.json -------------------------------------------------------------------------------
def plan_of_a_tree(tmp_path, model):
    from tests.conftest import run_cli
    from tests.treegen import Spec, write_tree

    root = write_tree(str(tmp_path / "host"), Spec(sockets=2, cores_per_node=3))
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"profile: throughput\ninstances: {{model: {model}}}\n")
    return json.loads(run_cli("plan", "--root", root, "--policy", str(policy), "--json", check=0).stdout)


def serve_config(path, *args):
    return Server("--config-path", str(path), *args)


def test_config_json_from_a_real_plan_is_served(models, tmp_path):
    from hosttune.serve import ovms_config

    plan = plan_of_a_tree(tmp_path, "trivial")
    inst = plan["instances"][1]
    config = ovms_config.render(inst, str(models))
    assert config["model_config_list"] == [{"config": {
        "name": "trivial", "base_path": f"{models}/trivial", "nireq": inst["ovms"]["nireq"], "target_device": "CPU",
        "plugin_config": inst["ovms"]["plugin_config"]}}]
    assert config["monitoring"]["metrics"]["enable"] is True
    assert set(config["monitoring"]["metrics"]["metrics_list"]) == set(promtext.parse(open(OVMS_LISTING).read()))
    path = tmp_path / "config.json"
    path.write_text(ovms_config.dumps(config))
    srv = serve_config(path)
    try:
        # the plan's nireq and NUM_STREAMS (throughput profile) are in force; OpenVINO caps the
        # streams at the CPUs this process may use
        streams = min(inst["streams"], len(os.sched_getaffinity(0)))
        assert inst["openvino"]["NUM_STREAMS"] == inst["streams"] > 1
        assert f"trivial:1 (streams {streams}, nireq {inst['ovms']['nireq']})" in srv.banner, srv.banner
        status, body = request(srv.port, "POST", "/v2/models/trivial/infer", infer_body())
        assert status == 200, body
        assert json.loads(body)["outputs"][0]["data"] == [1.5] * 16
    finally:
        srv.stop()


def test_several_models_per_instance_and_a_pinned_version(models, tmp_path):
    from hosttune.serve import ovms_config

    plan = plan_of_a_tree(tmp_path, '["trivial:1", tiny]')  # a policy naming two models, one pinned
    inst = plan["instances"][0]
    assert inst["model"] == "trivial"
    assert inst["models"] == [{"name": "trivial", "version": 1}, {"name": "tiny", "version": None}]
    # the plan carries the container's config.json: the same document rendered for /models
    assert inst["ovms"]["config"] == ovms_config.render(inst, "/models")
    assert [m["config"]["base_path"] for m in inst["ovms"]["config"]["model_config_list"]] == [
        "/models/trivial", "/models/tiny"]
    model_repo.sample(str(tmp_path / "repo"), variant="trivial", int8=False, version=2)
    config = ovms_config.render(inst, str(models))
    assert config["model_config_list"][0]["config"]["model_version_policy"] == {"specific": {"versions": [1]}}
    assert "model_version_policy" not in config["model_config_list"][1]["config"]
    # base_path may point anywhere, and the served name need not be the directory's
    config["model_config_list"].append({"config": {"name": "renamed", "base_path": str(tmp_path / "repo" / "trivial")}})
    path = tmp_path / "config.json"
    path.write_text(ovms_config.dumps(config))
    srv = serve_config(path)
    try:
        assert "trivial:1" in srv.banner and "tiny:1" in srv.banner and "renamed:2" in srv.banner, srv.banner
        assert request(srv.port, "POST", "/v2/models/renamed/versions/2/infer", infer_body())[0] == 200
        assert request(srv.port, "POST", "/v2/models/trivial/infer", infer_body())[0] == 200
        status, body = request(srv.port, "GET", "/v2/models/tiny")
        assert status == 200 and json.loads(body)["inputs"][0]["shape"] == [1, 3, 32, 32]
    finally:
        srv.stop()


@pytest.mark.parametrize("config, message", [
    ({"model_config_list": []}, "model_config_list: empty: accepted by OVMS, not supported"),
    ({"model_config_list": [{"config": {"name": "trivial"}}]}, "model_config_list[0].config.base_path: missing"),
    ({"model_config_list": [{"config": {"name": "trivial", "base_path": "s3://b/trivial"}}]}, "only local directories"),
    ({"model_config_list": [{"config": {"name": "trivial", "base_path": "MODELS/trivial", "nireq": 2000}}]},
     "config.nireq: must be 1 to 1024, got 2000"),
    ({"model_config_list": [{"config": {"name": "trivial", "base_path": "MODELS/trivial", "target_device": "GPU"}}]},
     "config.target_device: 'GPU': accepted by OVMS, not supported by hosttune serve (hosttune serve runs on CPU only)"),
    ({"model_config_list": [{"config": {"name": "trivial", "base_path": "MODELS/trivial",
                                        "graph_path": "graph.pbtxt"}}]}, "config.graph_path: accepted by OVMS, not supported"),
    ({"model_config_list": [{"config": {"name": "trivial", "base_path": "MODELS/nothing"}}]}, "no such directory"),
    ({"model_config_list": [{"config": {"name": "trivial", "base_path": "MODELS/trivial",
                                        "plugin_config": {"NUM_STREAMS": "x"}}}]}, "cannot compile on CPU"),
    ("{not json", "not JSON"),
])
def test_bad_config_json_is_one_line_exit_2(models, tmp_path, config, message):
    import subprocess

    from tests.serverproc import HOSTTUNE

    path = tmp_path / "config.json"
    text = config if isinstance(config, str) else json.dumps(config).replace("MODELS", str(models))
    path.write_text(text)
    r = subprocess.run([*HOSTTUNE, "serve", "--rest_port", "0", "--ephemeral-ports", "--config-path", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert str(path) in r.stderr or str(models) in r.stderr
