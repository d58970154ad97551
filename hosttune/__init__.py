"""hosttune: prepare multi-socket Linux hosts for CPU-only OpenVINO inference."""

__version__ = "0.1.0"
