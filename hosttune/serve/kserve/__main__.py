"""Regenerate the committed gRPC modules from grpc_predict_v2.proto (needs grpcio-tools)."""

from hosttune.serve.kserve import ROOT, generate

for path in generate(ROOT):
    print(path)
