"""Infer request bodies in, JSON out: the layer below the application (hosttune/serve/app.py).

A JSON body is parsed by simdjson with each input's numbers going straight into numpy; a binary
request's JSON header by orjson. Small bodies are decoded on the calling thread (the event loop),
large JSON on a decoder thread (`Decoder`), and a binary header a client repeats is decoded once
(`Decoder.now`). Answers are written by orjson (`dumps`). Refusals are `HTTPError`s.
"""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hosttune.serve.engine import InputError, ServedModel, to_array
from hosttune.serve.placement import Threads

# JSON up to this size is decoded on the event loop (well under 0.1 ms: cheaper than a hand-off to
# the decoder thread); larger JSON on the decoder thread
JSON_INLINE_MAX = 64 * 2**10
# a thread's simdjson parser is kept for the next request up to this document size
PARSER_KEEP_MAX = 4 * 2**20
# a binary request's JSON header up to this size is remembered with the checks it passed (see
# Decoder.now): clients send the same header with every request
LAYOUT_HEADER_MAX = 4096
JSON_CT = (b"content-type", b"application/json")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, reason: str = "bad_request"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


# where each input of a binary-only request lies in its body: (start, size, dtype, shape) in the
# model's input order; with the request and the selected outputs (see Decoder.now)
Places = list[tuple[int, int, Any, tuple[int, ...]]]
Layout = tuple[dict, Places, list]


class Decoder:
    """Decodes infer requests: `now` on the calling thread, `on_thread` (large JSON) on one of
    `threads` decoder threads so that health checks and other requests go on meanwhile."""

    def __init__(self, threads: int, placed: Threads | None = None):
        init, initargs = (placed or Threads()).initializer("hosttune-json")  # service threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hosttune-json",
                                        initializer=init, initargs=initargs)
        # per model, the last binary request's JSON header, body length and what parse_request made
        # of them (see now)
        self.layouts: dict[str, tuple[bytes, int, Layout]] = {}
        self.working = 0  # JSON bodies on the decoder threads

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def now(self, model: ServedModel, body: bytes | bytearray, header_len: int | None) -> tuple[dict, list, list]:
        """parse_request, but a binary request whose JSON header and body length are those of the
        model's previous request (a client sends the same header every time) reuses what was made
        of them: the header passed the same checks then, only the input arrays are new views of
        this body. On the development VM this saved ~25 us of the ~30 us decode of the sample
        model's request: code that runs between inferences runs with cold caches."""
        key = bytes(body[:header_len]) if header_len is not None and header_len <= LAYOUT_HEADER_MAX else None
        last = self.layouts.get(model.name) if key is not None else None
        if last is not None and last[0] == key and last[1] == len(body):
            request, places, selected = last[2]
            import numpy as np

            view = memoryview(body)
            arrays = [np.frombuffer(view[start:start + size], dtype=dtype).reshape(shape)
                      for start, size, dtype, shape in places]
            return request, arrays, selected
        request, arrays, selected, places = parse_request(model, body, header_len)
        if key is not None and places is not None:
            self.layouts[model.name] = (key, len(body), (request, places, selected))
        return request, arrays, selected

    async def on_thread(self, model: ServedModel, body: bytes | bytearray,
                        header_len: int | None) -> tuple[dict, list, list]:
        self.working += 1
        try:
            request, arrays, selected, _ = await asyncio.get_running_loop().run_in_executor(
                self._pool, parse_request, model, body, header_len)
        finally:
            self.working -= 1
        return request, arrays, selected


# -- decoding (on the event loop for small bodies, on a decoder thread otherwise) ------------------
_NUMBER_KIND = {"FP16": "d", "FP32": "d", "FP64": "d", "INT8": "i", "INT16": "i", "INT32": "i", "INT64": "i",
                "UINT8": "u", "UINT16": "u", "UINT32": "u", "UINT64": "u"}
_BUFFER_DTYPE = {"d": "float64", "i": "int64", "u": "uint64"}
_parsers = threading.local()


def decode_json(head: bytes) -> dict[str, Any]:
    """The request's JSON as Python values, except each input's "data": a homogeneous (nested) list
    of numbers comes back as one flat numpy array, parsed by simdjson straight from the text without
    a Python object per value (the cost of a JSON request is almost all in those values).

    simdjson parses without the GIL. It is strict JSON (no NaN/Infinity, no out-of-range numbers,
    valid UTF-8) with a nesting limit of 1024: anything else is a 400."""
    import simdjson

    # a parser keeps its buffers for the next document: reuse one per thread for ordinary bodies,
    # but let a large body's buffers go with it
    keep = len(head) <= PARSER_KEEP_MAX
    parser = getattr(_parsers, "parser", None) if keep else None
    if parser is None:
        parser = simdjson.Parser()
    error = None
    try:
        doc = parser.parse(head)
    except RuntimeError as exc:
        if "re-use a parser" not in str(exc):  # too deep
            raise HTTPError(400, f"malformed JSON: {str(exc).split('  ')[0]}", "malformed") from None
        # something still holds a proxy into this thread's parser's last document: never fail a
        # request for that, parse with a new parser
        parser = simdjson.Parser()
        try:
            doc = parser.parse(head)
        except (ValueError, RuntimeError) as again:
            raise HTTPError(400, f"malformed JSON: {str(again).split('  ')[0]}", "malformed") from None
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise HTTPError(400, f"malformed JSON: {str(exc).split('  ')[0]}", "malformed") from None
    if keep:
        _parsers.parser = parser
    try:
        return _from_doc(doc)
    except HTTPError as exc:
        error = (exc.status, exc.message, exc.reason)
    finally:
        del doc  # no proxy into the parser may outlive this call
    # raised here, outside the except clause: no chained traceback keeps _from_doc's proxies alive
    raise HTTPError(*error)


_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def decode_header(head: bytes) -> dict[str, Any]:
    """A binary request's JSON header. Its tensors' values are in the binary part, so it is small
    and orjson reads it (~1 us for a typical header, ~20 us through simdjson's proxies); when an
    input carries JSON "data" after all, or orjson refuses the text, decode_json decides, with its
    rules and its messages. So does a header with a run of 19 digits or more: orjson reads an
    integer beyond 64 bits as a float, where simdjson refuses it."""
    import orjson

    if len(head) <= JSON_INLINE_MAX and not _LONG_DIGITS.search(head):
        try:
            request = orjson.loads(head)
        except orjson.JSONDecodeError:
            request = None
        if (isinstance(request, dict) and isinstance(request.get("inputs"), list)
                and not any(isinstance(item, dict) and "data" in item for item in request["inputs"])):
            return request
    return decode_json(head)


def _from_doc(doc: Any) -> dict[str, Any]:
    import numpy as np
    import simdjson

    if not isinstance(doc, simdjson.Object) or not isinstance(doc.get("inputs"), simdjson.Array):
        raise HTTPError(400, "the request must be a JSON object with an \"inputs\" list", "malformed")
    # by key, not .items(): that would turn the "data" lists into Python objects
    request = {key: _plain(doc[key]) for key in doc.keys() if key != "inputs"}
    inputs = []
    for item in doc["inputs"]:
        if not isinstance(item, simdjson.Object):
            inputs.append(_plain(item))
            continue
        entry = {key: _plain(item[key]) for key in item.keys() if key != "data"}
        data = item.get("data")
        datatype = entry.get("datatype")
        kind = _NUMBER_KIND.get(datatype) if isinstance(data, simdjson.Array) and isinstance(datatype, str) else None
        if kind is not None:
            try:
                data = np.frombuffer(data.as_buffer(of_type=kind), dtype=_BUFFER_DTYPE[kind])
            except (TypeError, ValueError):  # not all numbers of that kind: to_array says what is wrong
                data = _plain(data)
        elif "data" in item:
            data = _plain(data)
        if "data" in item:
            entry["data"] = data
        inputs.append(entry)
    request["inputs"] = inputs
    return request


def _plain(value: Any) -> Any:
    import simdjson

    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def parse_request(model: ServedModel, body: bytes | bytearray,
                  header_len: int | None) -> tuple[dict, list, list, Places | None]:
    """Decode and check an infer request: (the request, the input arrays in the model's order,
    the outputs to return with whether each goes binary, and where each input lies in the body
    when all of them are binary, else None). Raises HTTPError / InputError (400)."""
    if header_len is None:
        request = decode_json(body)
    else:
        request = decode_header(bytes(body[:header_len]))
    if "id" in request and not isinstance(request["id"], str):
        raise InputError("\"id\" must be a string")
    offset = header_len if header_len is not None else len(body)
    arrays: list[Any] = [None] * len(model.inputs)
    places: list[Any] = [None] * len(model.inputs)
    for i, item in enumerate(request["inputs"]):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError("each input needs a \"name\", \"shape\", \"datatype\" and \"data\"")
        _check_types(item, _INPUT_FIELDS, f"inputs[{i}]")
        port = model.input(item["name"])
        if arrays[port.index] is not None:
            raise InputError(f"input {port.name!r} given twice")
        params = item.get("parameters") or {}
        raw = None
        if isinstance(params, dict) and "binary_data_size" in params:
            size = params["binary_data_size"]
            if header_len is None:
                raise InputError("binary_data_size without an Inference-Header-Content-Length header")
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InputError(f"input {port.name!r}: binary_data_size {size} runs past the body")
            raw = memoryview(body)[offset:offset + size]
            offset += size
        arrays[port.index] = to_array(port, item.get("datatype"), item.get("shape"), item.get("data"), raw)
        if raw is not None:
            places[port.index] = (offset - len(raw), len(raw), port.dtype, arrays[port.index].shape)
    missing = [p.name for p in model.inputs if arrays[p.index] is None]
    if missing:
        raise InputError(f"missing input(s): {', '.join(missing)}")
    binary_only = all(place is not None for place in places)  # then the header alone decides the rest
    return request, arrays, _outputs(model, request), places if binary_only else None


# the type of each field of an input / a requested output (the KServe v2 schema): anything else is
# a 400 naming the field, before a value of the wrong type reaches code that hashes or compares it
_INPUT_FIELDS = {"name": str, "datatype": str, "shape": list, "parameters": dict}
_OUTPUT_FIELDS = {"name": str, "parameters": dict}


def _check_types(item: dict, fields: dict[str, type], where: str) -> None:
    for key, kind in fields.items():
        value = item.get(key)
        if value is not None and not isinstance(value, kind):
            raise InputError(f"{where}.{key} must be a {'string' if kind is str else 'JSON ' + kind.__name__}, "
                             f"not {type(value).__name__}")


def _outputs(model: ServedModel, request: dict) -> list:
    """The outputs an infer request asks for, each with whether it goes binary."""
    params = request.get("parameters") or {}
    binary_default = bool(isinstance(params, dict) and params.get("binary_data_output"))
    wanted = request.get("outputs")
    if wanted is None:
        return [(p, binary_default) for p in model.outputs]
    if not isinstance(wanted, list):
        raise InputError("\"outputs\" must be a list")
    selected = []
    for i, item in enumerate(wanted):
        if isinstance(item, dict):
            _check_types(item, _OUTPUT_FIELDS, f"outputs[{i}]")
        if not isinstance(item, dict) or item.get("name") not in model.outputs_by_name:
            raise InputError(f"unknown output {item.get('name') if isinstance(item, dict) else item!r} "
                             f"(outputs: {', '.join(p.name for p in model.outputs)})")
        op = item.get("parameters") or {}
        if isinstance(op, dict) and op.get("classification"):
            raise InputError("the classification extension is not supported")
        b = op.get("binary_data", binary_default) if isinstance(op, dict) else binary_default
        selected.append((model.outputs_by_name[item["name"]], bool(b)))
    return selected


def dumps(data: Any) -> bytes:
    import orjson

    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY, default=_tolist)


def _tolist(value: Any) -> Any:
    """Arrays orjson does not write itself (e.g. BYTES outputs)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")

