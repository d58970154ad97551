"""The KServe v2 gRPC protocol: grpc_predict_v2.proto and the modules grpcio-tools generates from
it (grpc_predict_v2_pb2.py, grpc_predict_v2_pb2_grpc.py), committed so that serving needs only
grpcio and protobuf. `python -m hosttune.serve.kserve` regenerates them in place; `generate` into
any directory (the test compares that with the committed files).

The messages live in protobuf's default descriptor pool under package `inference`, as every KServe
v2 / Triton client's do: a process that imports these modules cannot also import another copy of
the protocol (tritonclient.grpc's) - the server and its clients are separate processes.
"""

from __future__ import annotations

import os

PROTO = "grpc_predict_v2.proto"
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2_grpc.py")
HERE = os.path.dirname(os.path.abspath(__file__))
# the proto is compiled under its package path, so that the generated modules import each other
# as hosttune.serve.kserve.*
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
RELATIVE = os.path.relpath(HERE, ROOT)


def generate(out_root: str) -> list[str]:
    """Compile the proto with grpcio-tools into `out_root`/hosttune/serve/kserve/; returns the
    paths of the generated modules."""
    from grpc_tools import protoc

    os.makedirs(os.path.join(out_root, RELATIVE), exist_ok=True)
    rc = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out_root}", f"--grpc_python_out={out_root}",
                      os.path.join(RELATIVE, PROTO)])
    if rc != 0:
        raise RuntimeError(f"protoc failed on {os.path.join(HERE, PROTO)} (exit {rc})")
    return [os.path.join(out_root, RELATIVE, name) for name in GENERATED]
