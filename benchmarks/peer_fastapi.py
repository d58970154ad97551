"""The peer `benchmarks/serve_peer.py` measures `hosttune serve` against: the FastAPI + OpenVINO
server a user would write instead. One compiled model, `await request.json()`,
`np.asarray(data).reshape(shape)`, a synchronous infer, the KServe v2 JSON answer; run with one
uvicorn worker:

    PEER_MODEL=/path/model.xml PEER_CONFIG='{"PERFORMANCE_HINT": "LATENCY"}' \
        uvicorn peer_fastapi:app --app-dir benchmarks --port 9100 --workers 1

FastAPI is installed by serve_peer.py for the benchmark; it is no dependency of hosttune.
"""

from __future__ import annotations

import json
import os

import numpy as np
import openvino as ov
from fastapi import FastAPI, Request

core = ov.Core()
compiled = core.compile_model(os.environ["PEER_MODEL"], "CPU", json.loads(os.environ.get("PEER_CONFIG", "{}")))
infer_request = compiled.create_infer_request()
output = compiled.output(0)
app = FastAPI()


@app.get("/v2/health/ready")
async def ready() -> dict:
    return {}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> dict:
    body = await request.json()
    item = body["inputs"][0]
    x = np.asarray(item["data"], dtype=np.float32).reshape(item["shape"])
    result = infer_request.infer({0: x})[output]
    return {"model_name": name, "outputs": [{"name": output.get_any_name(), "datatype": "FP32",
                                             "shape": list(result.shape), "data": result.ravel().tolist()}]}
