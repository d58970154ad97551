"""KServe v2 gRPC beside REST: one real `hosttune serve` for the module, started as a plan instance
(its CPUs and its grpc_port from the plan), spoken to with clients nobody here wrote -
tritonclient.grpc, and tritonclient.http with JSON and with binary tensors - that all pass the
same conformance set against that one instance.

This process imports tritonclient.grpc, whose protocol modules hold the same `inference.*`
protobuf names as hosttune's: hosttune.serve.grpc_server is never imported here (see
hosttune/serve/kserve/__init__.py), the server is always a separate process."""

from __future__ import annotations

import filecmp
import http.client
import json
import os
import socket
import subprocess

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

ov = pytest.importorskip("openvino")

from hosttune.instance_settings import METRICS_LIST  # noqa: E402
from hosttune.model import repo as model_repo  # noqa: E402
from hosttune.model.types import KSERVE_TO_NUMPY, NUMPY_TO_KSERVE  # noqa: E402
from tests import promtext  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402
from tests.serverproc import HOSTTUNE, Server, free_port  # noqa: E402
from tests.test_serve import _reshape_model  # noqa: E402
from tests.test_serve_ovms import shapes  # noqa: E402

DATATYPES = list(KSERVE_TO_NUMPY)  # every datatype the REST path takes
SHAPE = [2, 3]
# the HTTP status OVMS gives where its gRPC frontend gives each code (its status.cpp maps every
# error to both)
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "INTERNAL": 500}
# the typed-contents field of each datatype (FP16 has none)
TYPED_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
               "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
               "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
               "FP64": "fp64_contents"}


def _alltypes_model(xml, datatypes):
    """One [2, 3] input per datatype, each passed to an output of its own (a Convert to its own
    type: the plugin needs an operation between a parameter and a result)."""
    import openvino.opset13 as ops

    params, results = [], []
    for datatype in datatypes:
        dtype = np.dtype(KSERVE_TO_NUMPY[datatype])
        p = ops.parameter(SHAPE, dtype, name=f"in_{datatype.lower()}")
        p.output(0).set_names({f"in_{datatype.lower()}"})
        r = ops.convert(p, ov.Type(dtype))
        r.output(0).set_names({f"out_{datatype.lower()}"})
        params.append(p)
        results.append(r)
    ov.save_model(ov.Model(results, params, "alltypes"), str(xml))


def _values(datatype, seed):
    """Values across the datatype's whole range."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(KSERVE_TO_NUMPY[datatype])
    if dtype.kind == "b":
        return rng.random(SHAPE) > 0.5
    if dtype.kind == "f":
        return (rng.standard_normal(SHAPE) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, SHAPE, dtype=dtype, endpoint=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("models")
    model_repo.sample(str(path), variant="tiny", int8=False)
    model_repo.sample(str(path), variant="trivial", int8=False)
    _reshape_model(path / "reshape3" / "1" / "model.xml")
    _alltypes_model(path / "alltypes" / "1" / "model.xml", DATATYPES)
    # typed contents cannot carry FP16, and a request has typed contents for all inputs or none
    _alltypes_model(path / "typed" / "1" / "model.xml", TYPED_FIELD)
    return path


@pytest.fixture(scope="module")
def expected(models):
    """What OpenVINO itself answers for the alltypes (or typed) model: the reference for every
    protocol."""
    core = ov.Core()
    compiled = {}

    def run(arrays, model="alltypes"):
        if model not in compiled:
            compiled[model] = core.compile_model(core.read_model(str(models / model / "1" / "model.xml")), "CPU")
        out = compiled[model].create_infer_request().infer(arrays)
        return {port.get_any_name(): out[port].copy() for port in compiled[model].outputs}

    return run


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """A plan instance on one CPU whose grpc_port the server takes from the plan (--max-body 1 MiB,
    --max-json-body 128 KiB). Its models come from an OVMS config.json: a pool of one (inline
    inference) for alltypes and trivial, a pool of two for the others. At the end SIGTERM stops
    REST and gRPC: exit 0, both ports closed."""
    tmp = tmp_path_factory.mktemp("plan")
    cpu = sorted(os.sched_getaffinity(0))[-1]
    plan = {"schema": "hosttune.plan/1", "instances": [{
        "name": "node0", "node": 0, "cpus": [cpu], "cpus_list": str(cpu), "mems": [0], "mems_list": "0",
        "port": 0, "grpc_port": free_port(), "bind": "127.0.0.1"}]}
    (tmp / "plan.json").write_text(json.dumps(plan))
    one, two = {"NUM_STREAMS": 1}, {"NUM_STREAMS": 2}
    config = {"model_config_list": [
        {"config": {"name": name, "base_path": str(models / name), "nireq": nireq, "plugin_config": props}}
        for name, props, nireq in (("alltypes", one, 1), ("trivial", one, 1), ("tiny", two, 2),
                                   ("reshape3", two, 2), ("typed", two, 2))]}
    (tmp / "config.json").write_text(json.dumps(config))
    srv = Server("--plan", str(tmp / "plan.json"), "--plan-instance", "node0", "--config-path",
                 str(tmp / "config.json"), "--metrics_enable", "--metrics_list", ",".join(METRICS_LIST), "--max-body", str(2**20), "--max-json-body", str(2**17), cwd=str(tmp))
    srv.cpu = cpu
    assert srv.grpc_port == plan["instances"][0]["grpc_port"], srv.banner
    yield srv
    assert srv.stop() == 0, srv.proc.stderr.read()
    for port in (srv.port, srv.grpc_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


# -- one conformance set, three clients ------------------------------------------------------------
class _Client:
    """What tritonclient's gRPC and HTTP clients spell alike."""

    def close(self):
        self.client.close()

    def live(self):
        return self.client.is_server_live()

    def ready(self):
        return self.client.is_server_ready()

    def model_ready(self, name, version=""):
        return self.client.is_model_ready(name, version)


class GrpcClient(_Client):
    name = "grpc"

    def __init__(self, srv):
        self.client = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")

    def metadata(self, name, version=""):
        meta = self.client.get_model_metadata(name, version, as_json=True)
        for tensor in meta["inputs"] + meta["outputs"]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]  # protobuf's JSON writes int64 as text
        return meta

    def infer(self, model, arrays, outputs=None, version="", declared=None):
        """{output name: array} for {input name: array}; `declared` overrides an input's (shape,
        datatype) as sent, after the client's own checks."""
        inputs = []
        for name, arr in arrays.items():
            inp = grpcclient.InferInput(name, list(arr.shape), NUMPY_TO_KSERVE[arr.dtype.name])
            inp.set_data_from_numpy(arr)
            if name in (declared or {}):
                inp.set_shape(declared[name][0])
                inp._input.datatype = declared[name][1]  # the client has no public way to send a wrong one
            inputs.append(inp)
        wanted = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
        result = self.client.infer(model, inputs, model_version=version, outputs=wanted, request_id="req-7")
        response = result.get_response()
        assert response.id == "req-7" and response.model_name == model
        return {o.name: result.as_numpy(o.name) for o in response.outputs}

    @staticmethod
    def code(exc):
        return exc.status().removeprefix("StatusCode.")


class HttpClient(_Client):
    def __init__(self, srv, binary):
        self.binary = binary
        self.name = "http-binary" if binary else "http-json"
        self.client = httpclient.InferenceServerClient(f"127.0.0.1:{srv.port}")

    def metadata(self, name, version=""):
        return self.client.get_model_metadata(name, version)

    def infer(self, model, arrays, outputs=None, version="", declared=None):
        inputs = []
        for name, arr in arrays.items():
            inp = httpclient.InferInput(name, list(arr.shape), NUMPY_TO_KSERVE[arr.dtype.name])
            inp.set_data_from_numpy(arr, binary_data=self.binary)
            if name in (declared or {}):
                inp.set_shape(declared[name][0])
                inp._datatype = declared[name][1]  # the client has no public way to send a wrong one
            inputs.append(inp)
        wanted = [httpclient.InferRequestedOutput(o, binary_data=self.binary) for o in outputs] if outputs else None
        result = self.client.infer(model, inputs, model_version=version, outputs=wanted, request_id="req-7")
        response = result.get_response()
        assert response["id"] == "req-7" and response["model_name"] == model
        return {o["name"]: result.as_numpy(o["name"]) for o in response["outputs"]}

    @staticmethod
    def code(exc):
        return {str(v): k for k, v in HTTP_STATUS.items()}.get(exc.status(), exc.status())


@pytest.fixture(scope="module", params=["grpc", "http-json", "http-binary"])
def client(request, server):
    c = GrpcClient(server) if request.param == "grpc" else HttpClient(server, request.param == "http-binary")
    yield c
    c.close()


def _all_arrays(seed):
    """An input array per datatype, by input name."""
    return {f"in_{d.lower()}": _values(d, seed + i) for i, d in enumerate(DATATYPES)}


def test_live_ready_and_metadata(client):
    assert client.live() and client.ready()
    assert client.model_ready("alltypes") and client.model_ready("alltypes", "1")
    meta = client.metadata("alltypes")
    assert meta["name"] == "alltypes" and meta["versions"] == ["1"] and meta["platform"] == "OpenVINO"
    assert meta["inputs"] == [{"name": f"in_{d.lower()}", "datatype": d, "shape": SHAPE} for d in DATATYPES]
    assert meta["outputs"] == [{"name": f"out_{d.lower()}", "datatype": d, "shape": SHAPE} for d in DATATYPES]
    assert client.metadata("tiny", "1")["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32]}]


def test_every_datatype_round_trips(client, expected):
    arrays = _all_arrays(10)
    got = client.infer("alltypes", arrays)
    want = expected(arrays)
    assert list(got) == [f"out_{d.lower()}" for d in DATATYPES]  # every output, in the model's order
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr, err_msg=f"{client.name} {name}")


def test_outputs_selection(client, expected):
    arrays = _all_arrays(20)
    got = client.infer("alltypes", arrays, outputs=["out_int8", "out_fp64"])
    assert list(got) == ["out_int8", "out_fp64"]
    want = expected(arrays)
    for name in got:
        np.testing.assert_array_equal(got[name], want[name])


def test_a_pool_of_two_and_a_model_version(client, models):
    x = np.random.default_rng(3).random((1, 3, 32, 32)).astype(np.float32)
    core = ov.Core()
    want = core.compile_model(core.read_model(str(models / "tiny" / "1" / "model.xml")),
                              "CPU").create_infer_request().infer({0: x})[0]
    got = client.infer("tiny", {"input": x}, version="1")
    np.testing.assert_allclose(got["probabilities"], want, rtol=1e-5, atol=1e-6)


WRONG = [  # (what, model, the request's arrays and declarations, expected gRPC code)
    ("wrong shape", "alltypes", {"declared": {"in_fp32": ([3, 2], "FP32")}}, "INVALID_ARGUMENT"),
    ("wrong datatype", "alltypes", {"declared": {"in_fp32": (SHAPE, "FP64")}}, "INVALID_ARGUMENT"),
    ("missing input", "alltypes", {"drop": "in_int16"}, "INVALID_ARGUMENT"),
    ("unknown output", "alltypes", {"outputs": ["nope"]}, "INVALID_ARGUMENT"),
    ("unknown model", "nope", {}, "NOT_FOUND"),
    ("unknown version", "alltypes", {"version": "2"}, "NOT_FOUND"),
    ("inference fails", "reshape3", {}, "INTERNAL"),
]


@pytest.mark.parametrize("what, model, how, code", WRONG, ids=[w[0] for w in WRONG])
def test_wrong_input_gets_the_ovms_status(client, what, model, how, code):
    if model == "reshape3":  # a valid request OpenVINO fails on (4 values cannot be reshaped to [3, -1])
        arrays = {"x": np.arange(4, dtype=np.float32)}
    else:
        arrays = _all_arrays(30)
        arrays.pop(how.get("drop"), None)
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, arrays, outputs=how.get("outputs"), version=how.get("version", ""),
                     declared=how.get("declared"))
    assert client.code(info.value) == code, (client.name, info.value)
    assert client.live()  # and the server keeps serving


# -- gRPC only --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _typed_request(arrays):
    """A ModelInferRequest (tritonclient's own message classes) with typed contents."""
    request = service_pb2.ModelInferRequest(model_name="typed", id="typed")
    for name, arr in arrays.items():
        datatype = NUMPY_TO_KSERVE[arr.dtype.name]
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        getattr(tensor.contents, TYPED_FIELD[datatype]).extend(arr.ravel().tolist())
    return request


def test_typed_contents_for_every_datatype_but_fp16(stub, expected):
    arrays = _all_arrays(40)
    del arrays["in_fp16"]  # no typed field: raw only, as the protocol says
    response = stub.ModelInfer(_typed_request(arrays))
    want = expected(arrays, "typed")
    assert response.id == "typed" and [o.name for o in response.outputs] == list(want)
    assert len(response.raw_output_contents) == len(want)  # answered raw, as OVMS does
    for out, raw in zip(response.outputs, response.raw_output_contents):
        assert list(out.shape) == SHAPE and out.datatype == NUMPY_TO_KSERVE[want[out.name].dtype.name]
        np.testing.assert_array_equal(np.frombuffer(raw, want[out.name].dtype).reshape(SHAPE), want[out.name])


@pytest.mark.parametrize("change, message", [
    (lambda r: r.inputs[0].contents.bool_contents.append(True), "7 values, shape [2, 3] needs 6"),
    (lambda r: r.inputs[1].contents.ClearField("uint_contents"), "0 values"),
    (lambda r: r.inputs[5].contents.int_contents.__setitem__(0, 300), "outside the INT8 range"),
    (lambda r: setattr(r, "model_name", "alltypes") or r.inputs.add(name="in_fp16", datatype="FP16", shape=SHAPE),
     "FP16 data must be in raw_input_contents"),
    (lambda r: r.raw_input_contents.append(b"\0" * 12), "raw_input_contents for"),
    (lambda r: r.inputs.add().CopyFrom(r.inputs[0]), "given twice"),
])
def test_bad_typed_contents_are_invalid_argument(stub, change, message):
    arrays = _all_arrays(50)
    del arrays["in_fp16"]
    request = _typed_request(arrays)
    change(request)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()


def test_grpc_only_refusals(stub, server):
    # a version that is not a number: OVMS's MODEL_VERSION_INVALID_FORMAT
    for call, request in ((stub.ModelInfer, service_pb2.ModelInferRequest(model_name="trivial", model_version="x")),
                          (stub.ModelReady, service_pb2.ModelReadyRequest(name="trivial", version="x")),
                          (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="trivial", version="x"))):
        with pytest.raises(grpc.RpcError) as info:
            call(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, call
    # model ready and metadata of an unknown model: NOT_FOUND (REST: 404)
    for call, request in ((stub.ModelReady, service_pb2.ModelReadyRequest(name="nope")),
                          (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="nope"))):
        with pytest.raises(grpc.RpcError) as info:
            call(request)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "not served" in info.value.details()
    # a message above --max-body (1 MiB here)
    big = service_pb2.ModelInferRequest(model_name="reshape3")
    big.inputs.add(name="x", datatype="FP32", shape=[300_000])
    big.raw_input_contents.append(np.zeros(300_000, np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(big)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # typed contents above --max-json-body (128 KiB here), the same values raw are taken
    x = np.arange(39_999, dtype=np.float32)
    typed = service_pb2.ModelInferRequest(model_name="reshape3")
    typed.inputs.add(name="x", datatype="FP32", shape=[x.size]).contents.fp32_contents.extend(x.tolist())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(typed)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "typed contents" in info.value.details()
    raw = service_pb2.ModelInferRequest(model_name="reshape3")
    raw.inputs.add(name="x", datatype="FP32", shape=[x.size])
    raw.raw_input_contents.append(x.tobytes())
    out = stub.ModelInfer(raw)
    np.testing.assert_array_equal(np.frombuffer(out.raw_output_contents[0], np.float32), x)
    assert list(out.outputs[0].shape) == [3, 13_333]
    assert stub.ServerMetadata(service_pb2.ServerMetadataRequest()).name == "hosttune"


def test_model_ready_over_rest_is_the_status_code_alone(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for path, status in (("/v2/models/trivial/ready", 200), ("/v2/models/trivial/versions/1/ready", 200),
                             ("/v2/models/nope/ready", 404), ("/v2/models/trivial/versions/2/ready", 404)):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == status, path
            if status == 200:
                assert body == b"", body  # as OVMS
    finally:
        conn.close()


# -- metrics, placement --------------------------------------------------------------------------
def _metrics(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        return promtext.parse(conn.getresponse().read().decode())
    finally:
        conn.close()


def _value(families, family, sample=None, **labels):
    hits = [v for s, lb, v in families[family].samples
            if s == (sample or family) and all(lb.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, (family, labels, hits)
    return hits[0]


def test_grpc_calls_are_counted_under_interface_grpc(server):
    with open(os.path.join(FIXTURES, "ovms_metrics.txt")) as f:
        ovms = promtext.parse(f.read())
    grpc_series = lambda lb: lb.get("interface") == "gRPC" and lb.get("api", "KServe") == "KServe"  # noqa: E731
    series = [("ovms_requests_success", "ModelInfer"), ("ovms_requests_fail", "ModelInfer"),
              ("ovms_requests_success", "ModelReady"), ("ovms_requests_success", "ModelMetadata")]

    def counts(families, interface):
        out = [_value(families, fam, api="KServe", interface=interface, method=m, name="trivial")
               for fam, m in series]
        out.append(_value(families, "ovms_request_time_us", "ovms_request_time_us_count", interface=interface,
                          name="trivial"))
        return out

    before = _metrics(server)
    # every OVMS KServe gRPC series, as OVMS lists them (model and version values aside)
    for name in ovms:
        assert shapes(before[name], lambda lb: lb.get("name") == "trivial" and grpc_series(lb)) == \
            shapes(ovms[name], grpc_series), name
    inferred = _value(before, "ovms_inference_time_us", "ovms_inference_time_us_count", name="trivial")
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        for n in (16, 16, 15):  # two answered, one refused (wrong shape)
            inp = grpcclient.InferInput("input", [1, n], "FP32")
            inp.set_data_from_numpy(np.zeros((1, n), np.float32))
            try:
                c.infer("trivial", [inp])
            except InferenceServerException:
                assert n == 15
        assert c.is_model_ready("trivial")
        c.get_model_metadata("trivial")
    finally:
        c.close()
    after = _metrics(server)
    assert [a - b for a, b in zip(counts(after, "gRPC"), counts(before, "gRPC"))] == [2, 1, 1, 1, 2]
    assert counts(after, "REST") == counts(before, "REST")
    # the inference itself is counted once, whichever wire brought it
    assert _value(after, "ovms_inference_time_us", "ovms_inference_time_us_count", name="trivial") == inferred + 2


def test_every_thread_runs_on_the_instance_cpus(server, stub):
    """grpc's threads (the completion-queue poller, its executor and timer threads) start after the
    process is pinned: all of them are on the plan's CPU, as OpenVINO's are."""
    stub.ServerLive(service_pb2.ServerLiveRequest())
    pid = server.proc.pid
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            name = f.read().strip()
        threads[tid] = (name, os.sched_getaffinity(int(tid)))
    assert len(threads) > 3, threads
    assert {tid: t for tid, t in threads.items() if t[1] != {server.cpu}} == {}


# -- the generated modules, the command line ------------------------------------------------------
def test_committed_grpc_modules_are_what_the_proto_generates(tmp_path):
    from hosttune.serve import kserve

    for path in kserve.generate(str(tmp_path)):
        committed = os.path.join(kserve.HERE, os.path.basename(path))
        assert filecmp.cmp(path, committed, shallow=False), \
            f"{committed} differs from what {kserve.PROTO} generates: run python -m hosttune.serve.kserve"


def test_grpc_port_refusals_are_one_line_exit_2(models):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        for args, message in ((["--grpc-port", str(taken.getsockname()[1])], "already in use"),
                              (["--grpc-port", "70000"], "must be ASCII digits from 0 to 65535"),
                              (["--rest_port", "9311", "--port", "9311"], "cannot have the same value")):
            r = subprocess.run([*HOSTTUNE, "serve", "--repo", str(models), "--model", "trivial", *args],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    finally:
        taken.close()


def test_serve_grpc_benchmark_measures_both_wires(models, tmp_path):
    """benchmarks/serve_grpc.py: a short run measures gRPC and REST binary on one server in each
    round, compares them and draws them."""
    import sys

    cpus = sorted(os.sched_getaffinity(0))
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "serve_grpc.py")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, script, "--variant", "tiny", "--repo", str(models), "--rounds", "2",
                          "--duration", "0.3", "--warmup", "0.1", "--concurrency", "1,2", "--server-cpu",
                          str(cpus[-1]), "--client-cpu", str(cpus[0]), "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["cases"]) == {f"{side} c{c}" for side in ("gRPC", "REST binary") for c in (1, 2)}
    for case in summary["cases"].values():
        assert case["errors"] == 0 and len(case["p50_ms_per_round"]) == 2 and case["throughput"] > 0
        # the server's own view of each round: inference within its request time
        assert all(0 < i <= r for i, r in zip(case["server_inference_us_per_round"],
                                               case["server_request_us_per_round"]))
    assert summary["bytes"]["gRPC"] > 12288 and summary["bytes"]["REST binary"] > 12288  # the input's 3x32x32 FP32
    for cmp in summary["grpc_vs_rest"].values():
        assert {cmp[key]["verdict"] for key in ("p50_ms", "p99_ms", "throughput")} <= {
            "within the per-round spread", "gRPC better", "gRPC worse"}
    assert "<svg" in (out / "report.html").read_text()


def test_sigterm_answers_the_grpc_calls_in_flight_then_stops_both(models):
    """Calls keep coming on four channels when SIGTERM arrives: each is answered until the server
    stops taking calls; then a call is refused, as UNAVAILABLE (the port closed) or CANCELLED (a
    call grpc had received but not yet handed to the server when its stop began: grpc's
    shutdown cancels those; one whose handler runs is answered) - never another error - and the
    process exits 0 with both ports closed."""
    import threading

    srv = Server("--repo", str(models), "--model", "tiny", "--config", '{"NUM_STREAMS": 2}', "--grpc-port", "0")
    x = np.zeros((1, 3, 32, 32), np.float32)
    outcomes: list[str] = []
    answered = threading.Event()

    def calls():
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
        try:
            while True:
                inp = grpcclient.InferInput("input", [1, 3, 32, 32], "FP32")
                inp.set_data_from_numpy(x)
                try:
                    client.infer("tiny", [inp], client_timeout=30)
                    outcomes.append("OK")
                    answered.set()
                except InferenceServerException as exc:
                    outcomes.append(exc.status().removeprefix("StatusCode."))
                    return
        finally:
            client.close()

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert answered.wait(60)
    finally:
        rc = srv.stop()
        for t in threads:
            t.join(60)
    assert rc == 0
    assert outcomes.count("OK") > 0 and set(outcomes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, set(outcomes)
    assert len(outcomes) - outcomes.count("OK") == len(threads)  # each channel: answers, then one refusal
    for port in (srv.port, srv.grpc_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
