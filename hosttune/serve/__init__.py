"""`hosttune serve`: the KServe v2 REST inference server on the OpenVINO runtime (one instance per NUMA node).

Layers, each importing only those before it: engine (the compiled model and its infer requests),
decode (request bodies in, JSON out), wire (the HTTP connection on uvicorn's httptools protocol,
the direct lane), app (the KServe v2 application), run (the process); cli on top.
"""
