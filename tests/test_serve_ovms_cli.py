"""Issue 28, parts 2 and 5: `hosttune serve` takes OVMS's command line with OVMS's meaning (--port
is gRPC, --rest_port REST, --model_name/--model_path, --metrics_enable/--metrics_list, ...), refuses
what OVMS refuses, and answers health and metrics as OVMS does. Real server processes, and
tritonclient (a client nobody here wrote) over both protocols."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

from hosttune.cli import build_parser  # noqa: E402
from hosttune.instance_settings import METRICS_LIST  # noqa: E402
from hosttune.model import repo as model_repo  # noqa: E402
from hosttune.serve.metrics import DEFAULT_FAMILIES, OWN_FAMILIES  # noqa: E402
from tests import promtext  # noqa: E402
from tests.serverproc import HOSTTUNE, Server, response  # noqa: E402

ANY_PORTS = ("--rest_port", "0", "--port", "0", "--ephemeral-ports")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """trivial (versions 1 and 2: OVMS serves the highest) and tiny, in an OVMS-layout repository."""
    path = tmp_path_factory.mktemp("models")
    model_repo.sample(str(path), variant="trivial", int8=False)
    model_repo.sample(str(path), variant="trivial", int8=False, version=2)
    model_repo.sample(str(path), variant="tiny", int8=False)
    return path



def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A `hosttune serve` expected to refuse its command line (it exits on its own)."""
    return subprocess.run([*HOSTTUNE, "serve", *args], capture_output=True, text=True, timeout=timeout)


def one_line_exit_2(r: subprocess.CompletedProcess, *words: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


# -- OVMS's single-model command line, both protocols ----------------------------------------------
def test_model_name_and_path_serve_the_highest_version_over_rest_and_grpc(models):
    srv = Server("--model_name", "resnet", "--model_path", str(models / "trivial"), *ANY_PORTS)
    try:
        assert srv.port and srv.grpc_port and srv.port != srv.grpc_port, srv.banner
        data = np.arange(16, dtype=np.float32).reshape(1, 16)
        h = httpclient.InferenceServerClient(f"127.0.0.1:{srv.port}")
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
        assert h.is_server_live() and h.is_server_ready() and h.is_model_ready("resnet")
        assert g.is_server_live() and g.is_server_ready() and g.is_model_ready("resnet")
        assert h.get_model_metadata("resnet")["versions"] == ["2"]
        assert g.get_model_metadata("resnet").versions == ["2"]
        assert not h.is_model_ready("trivial")  # served under --model_name only
        outs = []
        for client, mod in ((h, httpclient), (g, grpcclient)):
            inp = mod.InferInput("input", [1, 16], "FP32")
            inp.set_data_from_numpy(data)
            result = client.infer("resnet", [inp])
            answer = result.get_response()
            if mod is httpclient:
                assert answer["model_name"] == "resnet" and answer["model_version"] == "2"
                outs.append(result.as_numpy(answer["outputs"][0]["name"]))
            else:
                assert answer.model_name == "resnet" and answer.model_version == "2"
                outs.append(result.as_numpy(answer.outputs[0].name))
        assert outs[0].shape[0] == 1 and np.array_equal(outs[0], outs[1])
    finally:
        assert srv.stop() == 0


def test_port_alone_is_grpc_only_and_says_so(models):
    """OVMS's --port without --rest_port: gRPC and no REST; hosttune's older meaning of --port (REST)
    is named in a note, not silently changed."""
    proc = subprocess.Popen([*HOSTTUNE, "serve", "--model_name", "m", "--model_path", str(models / "tiny"),
                             "--port", "0", "--ephemeral-ports"], stderr=subprocess.PIPE, text=True)
    try:
        note = proc.stderr.readline()
        assert "--port is the gRPC port" in note and "--rest_port" in note, note
        banner = proc.stderr.readline()
        assert "listening on grpc://127.0.0.1:" in banner and "http://" not in banner, banner
        port = int(banner.split("grpc://127.0.0.1:")[1].split()[0])
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert g.is_server_ready() and g.is_model_ready("m")
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0  # SIGTERM ends a gRPC-only server cleanly too


def test_plugin_config_and_nireq_are_honoured(models):
    srv = Server("--model_name", "m", "--model_path", str(models / "tiny"), "--plugin_config",
                 '{"NUM_STREAMS": "2"}', "--nireq", "3")
    try:
        assert "m:1 (streams 2, nireq 3)" in srv.banner, srv.banner
    finally:
        srv.stop()
    srv = Server("--model_name", "m", "--model_path", str(models / "tiny"), "--plugin_config",
                 '{"NUM_STREAMS": "2"}', "--nireq", "0")  # OVMS: 0 is "the default"
    try:
        assert "m:1 (streams 2, nireq 0)" not in srv.banner and "streams 2" in srv.banner, srv.banner
    finally:
        srv.stop()


# -- health and headers as OVMS --------------------------------------------------------------------
def test_health_and_model_ready_answer_as_ovms(models):
    srv = Server("--model_name", "m", "--model_path", str(models / "tiny"))
    try:
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/m/ready", "/v2/models/m/versions/1/ready"):
            status, headers, body = response(srv.port, "GET", path)
            # OVMS (src/http_server.cpp): the status alone, an empty body, its JSON content type
            assert (status, body) == (200, b""), path
            assert headers["content-type"] == "application/json" and headers["content-length"] == "0", path
        status, headers, body = response(srv.port, "GET", "/v2/models/nope/ready")
        assert status == 404 and headers["content-type"] == "application/json" and "nope" in json.loads(body)["error"]
    finally:
        srv.stop()


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_are_off_unless_enabled(models):
    srv = Server("--model_name", "m", "--model_path", str(models / "tiny"))
    try:
        status, _, body = response(srv.port, "GET", "/metrics")
        assert status == 404 and json.loads(body)["error"].startswith("no such endpoint")
    finally:
        srv.stop()


def families(port: int) -> set[str]:
    status, headers, body = response(port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return set(promtext.parse(body.decode()))


def test_metrics_enable_alone_exposes_ovms_default_families(models):
    srv = Server("--model_name", "m", "--model_path", str(models / "tiny"), "--metrics_enable")
    try:
        # hosttune's reload families exist only where a config.json is served (test below)
        assert families(srv.port) == set(DEFAULT_FAMILIES) | {"hosttune_requests_rejected_total"}
        # OVMS's default set leaves the two queue gauges out (they are on only when listed)
        assert not families(srv.port) & {"ovms_infer_req_queue_size", "ovms_infer_req_active"}
    finally:
        srv.stop()


def test_metrics_list_exposes_only_the_listed_families(models):
    srv = Server("--model_name", "m", "--model_path", str(models / "tiny"), "--metrics_enable=true",
                 "--metrics_list", "ovms_requests_success, ovms_infer_req_active")
    try:
        assert families(srv.port) == {"ovms_requests_success", "ovms_infer_req_active", "hosttune_requests_rejected_total"}
    finally:
        srv.stop()


def test_config_json_monitoring_section_sets_the_families(models, tmp_path):
    config = {"model_config_list": [{"config": {"name": "m", "base_path": str(models / "tiny")}}],
              "monitoring": {"metrics": {"enable": True, "metrics_list": ["ovms_streams", "ovms_requests_fail"]}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    srv = Server("--config_path", str(tmp_path / "config.json"))
    try:
        assert families(srv.port) == {"ovms_streams", "ovms_requests_fail", *OWN_FAMILIES}
    finally:
        srv.stop()
    # the role's list (all nine) is all nine, named as OVMS names them
    config["monitoring"]["metrics"]["metrics_list"] = list(METRICS_LIST)
    (tmp_path / "config.json").write_text(json.dumps(config))
    srv = Server("--config_path", str(tmp_path / "config.json"))
    try:
        assert families(srv.port) == {*METRICS_LIST, *OWN_FAMILIES}
    finally:
        srv.stop()
    # enable false: no /metrics
    config["monitoring"]["metrics"]["enable"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    srv = Server("--config_path", str(tmp_path / "config.json"))
    try:
        assert response(srv.port, "GET", "/metrics")[0] == 404
    finally:
        srv.stop()


# -- what OVMS refuses, refused: one line naming the option, exit 2 --------------------------------
@pytest.mark.parametrize("args, words", [
    (["--cpu_extension", "/opt/libcustom.so"], ["--cpu_extension", "no custom CPU layer library"]),
    (["--target_device", "GPU"], ["--target_device", "'GPU'", "CPU only"]),
    (["--metrics_list", "ovms_streams"], ["--metrics_list", "needs --metrics_enable"]),
    (["--metrics_enable", "--metrics_list", "ovms_streams,ovms_bogus"], ["--metrics_list", "'ovms_bogus'"]),
    (["--rest_port", "9311", "--port", "9311"], ["--port/--rest_port", "same value"]),
    (["--rest_port", "0", "--port", "0"], ["--port/--rest_port", "cannot both be unset"]),
    (["--port", "0", "--metrics_enable"], ["cannot both be unset"]),
    (["--port", "9312", "--metrics_enable"], ["--metrics_enable", "needs --rest_port"]),
    (["--port", "9312", "--rest_workers", "4"], ["--rest_workers", "needs --rest_port"]),
    (["--rest_workers", "1"], ["--rest_workers", "from 2 to 10000"]),
    (["--log_level", "VERBOSE"], ["--log_level", "invalid choice"]),
    (["--plugin_config", "[1]"], ["--plugin_config", "JSON object"]),
    (["--plugin_config", "{}", "--config", "{}"], ["--plugin_config/--config"]),
    (["--rest_bind_address", "127.0.0.1", "--grpc_bind_address", "0.0.0.0"], ["--rest_bind_address", "one address"]),
])
def test_ovms_refusals(models, args, words):
    one_line_exit_2(serve("--model_name", "m", "--model_path", str(models / "tiny"), *args), *words)


def test_a_model_path_that_is_no_directory_is_named(models, tmp_path):
    (tmp_path / "file").write_text("")
    for path in (tmp_path / "missing", tmp_path / "file"):
        one_line_exit_2(serve("--model_name", "m", "--model_path", str(path)), "--model_path", str(path),
                        "not a directory")


def test_model_options_combinations_refused_as_ovms(models, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": "m", "base_path": str(models / "tiny")}}],
                                  "monitoring": {"metrics": {"enable": True}}}))
    path = str(models / "tiny")
    one_line_exit_2(serve("--model_name", "m", "--rest_port", "9313"), "--model_path", "go together")
    one_line_exit_2(serve("--model_path", path, "--rest_port", "9313"), "--model_name", "go together")
    one_line_exit_2(serve("--model_name", "m", "--model_path", path, "--config_path", str(config)),
                    "--config_path", "either")
    one_line_exit_2(serve("--model_name", "m", "--model_path", path, "--repo", str(models)), "--model/--repo")
    for option, value in (("--nireq", "2"), ("--plugin_config", "{}"), ("--target_device", "CPU")):
        one_line_exit_2(serve("--config_path", str(config), option, value), option, "exclusive with the config file")
    # metrics set twice: the file's monitoring section and the command line
    one_line_exit_2(serve("--config_path", str(config), "--rest_port", "9313", "--metrics_enable"),
                    "--metrics_enable", "monitoring section")
    one_line_exit_2(serve("--model_name", "../x", "--model_path", path), "--model_name")
    one_line_exit_2(serve("--model_name", "m", "--model_path", str(tmp_path / "none")), "none")


def test_ovms_options_parse_with_ovms_defaults_and_ascii_bounds():
    parser = build_parser()
    args = parser.parse_args(["serve"])
    assert args.file_system_poll_wait_seconds == 1  # OVMS's default (h28cfg's reload reads it)
    assert args.grpc_workers == 1 and args.rest_workers is None and args.log_level == "INFO"
    assert args.metrics_enable == "false" and args.metrics_list == ""
    args = parser.parse_args(["serve", "--file_system_poll_wait_seconds", "0", "--log_level", "DEBUG",
                              "--metrics_enable", "--rest_workers", "10000", "--config_path", "/c.json"])
    assert args.file_system_poll_wait_seconds == 0 and args.log_level == "DEBUG" and args.metrics_enable == "true"
    assert args.rest_workers == 10000 and args.config_path == "/c.json"
    # the older hosttune spellings are the same options
    args = parser.parse_args(["serve", "--grpc-port", "9001", "--config-path", "/c.json", "--rest-port", "9000"])
    assert (args.grpc_port, args.rest_port, args.config_path) == (9001, 9000, "/c.json")
    for argv in (["--file_system_poll_wait_seconds", "-1"], ["--file_system_poll_wait_seconds", "\u0661"],
                 ["--grpc_workers", "0"], ["--rest_workers", "10001"], ["--nireq", "1025"],
                 ["--metrics_enable", "yes"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", *argv])


def test_log_level_and_bind_address_are_taken(models):
    srv = Server("--model_name", "m", "--model_path", str(models / "tiny"), "--log_level", "ERROR",
                 "--rest_bind_address", "127.0.0.1", "--grpc_bind_address", "127.0.0.1", "--port", "0")
    try:
        assert "http://127.0.0.1:" in srv.banner and "grpc://127.0.0.1:" in srv.banner
        assert response(srv.port, "GET", "/v2/health/live")[0] == 200
    finally:
        assert srv.stop() == 0
