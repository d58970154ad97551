"""A small asyncio HTTP/1.1 keep-alive client for the KServe v2 REST protocol (like OVMS's
benchmark client): one connection per concurrent stream, binary-data requests, so the client
costs little next to the server it measures."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


def run(coroutine: Any) -> Any:
    """Run a client's coroutine on uvloop when it is installed (it is with hosttune's serve extra),
    else on asyncio's loop: the client's own cost is part of every latency it measures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


class HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class Connection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        # two parts, not one joined copy of the body: uvloop sends them with one writev
        self.writer.writelines([request_head(method, path, self.host, self.port, len(body), headers), body])
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        hdrs = {}
        for line in header_lines:
            if line:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
        if "content-length" in hdrs:
            data = await self.reader.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            data = b"".join(parts)
        else:
            data = await self.reader.read()
            await self.close()
        if hdrs.get("connection", "").lower() == "close":
            await self.close()
        return status, hdrs, data


def request_head(method: str, path: str, host: str, port: int, length: int,
                 headers: dict[str, str] | None = None) -> bytes:
    """The request line and headers of an HTTP/1.1 request with a body of `length` bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {length}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"http://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 80


async def metadata(host: str, port: int, model: str) -> dict[str, Any]:
    conn = Connection(host, port)
    try:
        status, _, body = await conn.request("GET", f"/v2/models/{model}")
    finally:
        await conn.close()
    if status != 200:
        raise HTTPStatusError(status, body)
    return json.loads(body)


def binary_request(meta: dict[str, Any], seed: int = 1) -> tuple[bytes, dict[str, str]]:
    """A binary-data infer request with random inputs matching the model's metadata
    (dynamic dimensions as 1); outputs requested as binary."""
    import numpy as np

    from hosttune.model.types import KSERVE_TO_NUMPY

    rng = np.random.default_rng(seed)
    inputs, blobs = [], []
    for port in meta["inputs"]:
        shape = [d if d > 0 else 1 for d in port["shape"]]
        dtype = np.dtype(KSERVE_TO_NUMPY[port["datatype"]])
        arr = rng.random(shape).astype(dtype) if dtype.kind == "f" else rng.integers(0, 2, shape).astype(dtype)
        blob = arr.tobytes()
        inputs.append({"name": port["name"], "shape": shape, "datatype": port["datatype"],
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header)),
                                      "Content-Type": "application/octet-stream"}


def json_request(meta: dict[str, Any], seed: int = 1) -> tuple[bytes, dict[str, str]]:
    """The same request as binary_request with the tensors as JSON numbers (the KServe v2 JSON
    form: what a client without the binary-data extension sends)."""
    import numpy as np

    from hosttune.model.types import KSERVE_TO_NUMPY

    rng = np.random.default_rng(seed)
    inputs = []
    for port in meta["inputs"]:
        shape = [d if d > 0 else 1 for d in port["shape"]]
        dtype = np.dtype(KSERVE_TO_NUMPY[port["datatype"]])
        arr = rng.random(shape).astype(dtype) if dtype.kind == "f" else rng.integers(0, 2, shape).astype(dtype)
        inputs.append({"name": port["name"], "shape": shape, "datatype": port["datatype"],
                       "data": arr.ravel().tolist()})
    return json.dumps({"inputs": inputs}).encode(), {"Content-Type": "application/json"}
