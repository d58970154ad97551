"""`hosttune serve`: the KServe v2 REST inference server on the OpenVINO runtime (one instance per NUMA node).

Layers, each importing only those before it: engine (the compiled model and its infer requests),
decode (request bodies in, JSON out), wire (the HTTP connection on uvicorn's httptools protocol,
the direct lane), app (the KServe v2 application), run (the process); cli on top.
"""

# request body bytes held across all connections at once (503 above): `--max-buffered-bytes`'s
# default, here so that the CLI reads it without importing the server
DEFAULT_MAX_BUFFERED = 512 * 2**20
# infer requests in one model's pool at most (--nireq, a plan's ovms.nireq, a config.json's nireq):
# each holds its tensors, and a pool far beyond the streams gains nothing (a plan sets streams x 2)
MAX_NIREQ = 1024
