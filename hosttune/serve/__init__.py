"""`hosttune serve`: the KServe v2 REST inference server on the OpenVINO runtime (one instance per NUMA node)."""
