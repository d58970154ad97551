"""Bounded JSON loading and one small schema checker for every JSON document hosttune reads
(plans, OVMS config.json, --config, hosttune-model.json, bench results; not HTTP bodies, which
hosttune/serve/decode.py bounds itself).

`loads`/`load_file` refuse, before anything is built:
- documents larger than MAX_BYTES (or the caller's bound), and text that is not UTF-8;
- nesting deeper than MAX_DEPTH (counted on the text, so 100,000 nested lists never reach the
  recursive parser);
- NaN, Infinity and numbers that overflow to them (1e999), unless the caller allows them (a bench
  result may record an infinite confidence interval; its schema then refuses them in the fields
  that are read);
- duplicate keys in an object (json.loads keeps the last one silently).
`check` then holds the document to a schema declared next to the code that owns the document:
types (a bool is never a number), bounds, lengths, and names confined to one directory entry.
Every refusal is one HosttuneError (exit 2) naming the file and the field.

A schema is a type (int: an integer, never a bool; float: any finite number; str; bool), a
schema object below (Int, Num, Str, Name, List, Obj, Map, Opt, Any), or a dict (an Obj with
every key optional and other keys allowed).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from hosttune.errors import HosttuneError
from hosttune.safeyaml import MAX_DEPTH, brief, one_line, utf8

MAX_BYTES = 16 << 20  # a bench result with its kept samples is a few MB; a plan or config a few KB

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(rb"[\[\]{}]")


def depth(data: bytes) -> int:
    """The deepest nesting of lists and objects in JSON text (strings skipped), without parsing."""
    deepest = level = 0
    for m in _BRACKETS.finditer(_STRINGS.sub(b"", data)):
        if m.group() in b"[{":
            level += 1
            deepest = max(deepest, level)
        else:
            level -= 1
    return deepest


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {brief(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows here")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range (not a finite number)")
    return value


def loads(data: bytes | str, where: str, schema: Any = None, finite: bool = True,
          max_bytes: int = MAX_BYTES) -> Any:
    """Parse one JSON document within the bounds above and check it against `schema`."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    text = utf8(data, where, max_bytes)  # the size bound first: depth() reads every byte
    if depth(data) > MAX_DEPTH:
        raise HosttuneError(f"nested deeper than {MAX_DEPTH} levels", where=where)
    try:
        if finite:
            doc = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant, parse_float=_finite)
        else:
            doc = json.loads(text, object_pairs_hook=_unique)
    except RecursionError:  # not reached within MAX_DEPTH; kept so that no input ends in a traceback
        raise HosttuneError("nested too deeply", where=where) from None
    except ValueError as exc:  # JSONDecodeError, ours, a 5000-digit integer
        raise HosttuneError(f"not JSON: {one_line(exc)}", where=where) from None
    if schema is not None:
        check(doc, schema, where)
    return doc


def load_file(path: str, schema: Any = None, finite: bool = True, max_bytes: int = MAX_BYTES) -> Any:
    """Read, parse and check a JSON file; errors name the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise HosttuneError(f"cannot read ({exc.strerror})", where=path) from None
    return loads(data, path, schema, finite, max_bytes)


# -- schemas ------------------------------------------------------------------------------------
class _Refused(Exception):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


def check(value: Any, schema: Any, where: str, path: str = "") -> None:
    """Hold `value` to `schema`; HosttuneError naming `where` and the field otherwise."""
    try:
        _check(value, schema, path)
    except _Refused as exc:
        field_name = exc.path or "the document"
        raise HosttuneError(f"{field_name}: {exc.message}", where=where) from None


def _check(value: Any, schema: Any, path: str) -> None:
    if isinstance(schema, dict):
        schema = Obj(schema)
    if isinstance(schema, type):
        schema = {int: Int(), float: Num(), str: Str(), bool: Bool()}[schema]
    schema.check(value, path)


def _bounds(lo: Any, hi: Any) -> str:
    return f"at least {lo}" if hi is None else f"at most {hi}" if lo is None else f"{lo} to {hi}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Int:
    lo: int | None = None
    hi: int | None = None

    def check(self, value: Any, path: str) -> None:
        if not _is_int(value):
            raise _Refused(path, f"must be an integer, got {brief(value)}")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise _Refused(path, f"must be {_bounds(self.lo, self.hi)}, got {brief(value)}")


@dataclass
class Num:
    lo: float | None = None
    hi: float | None = None

    def check(self, value: Any, path: str) -> None:
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise _Refused(path, f"must be a finite number, got {brief(value)}")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise _Refused(path, f"must be {_bounds(self.lo, self.hi)}, got {brief(value)}")


@dataclass
class Bool:
    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, bool):
            raise _Refused(path, f"must be true or false, got {brief(value)}")


@dataclass
class Str:
    max_len: int = 4096
    pattern: str | None = None

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, str):
            raise _Refused(path, f"must be a string, got {brief(value)}")
        if len(value) > self.max_len:
            raise _Refused(path, f"longer than {self.max_len} characters")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _Refused(path, f"{brief(value)} does not match {self.pattern}")


def Name() -> Str:
    """One entry of a directory (a model name): no separator, no "..", no leading dot."""
    return Str(max_len=255, pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class List:
    item: Any
    max_len: int = 100_000
    min_len: int = 0

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise _Refused(path, f"must be a list, got {brief(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise _Refused(path, f"must hold {self.min_len} to {self.max_len} items, holds {len(value)}")
        for i, item in enumerate(value):
            _check(item, self.item, f"{path}[{i}]")


@dataclass
class Obj:
    """An object: `fields` with their schemas, `required` among them, other keys allowed unless
    `closed`."""
    fields: dict[str, Any]
    required: tuple[str, ...] = ()
    closed: bool = False

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _Refused(path, f"must be an object, got {brief(value)}")
        for key in self.required:
            if key not in value:
                raise _Refused(_join(path, key), "missing")
        for key, item in value.items():
            if key in self.fields:
                _check(item, self.fields[key], _join(path, key))
            elif self.closed:
                raise _Refused(_join(path, key), f"unknown field (known: {', '.join(self.fields) or 'none'})")


@dataclass
class Map:
    """An object whose keys are free-form strings and values all of one schema."""
    value: Any
    max_len: int = 1000

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _Refused(path, f"must be an object, got {brief(value)}")
        if len(value) > self.max_len:
            raise _Refused(path, f"more than {self.max_len} entries")
        for key, item in value.items():
            _check(item, self.value, _join(path, key))


@dataclass
class Opt:
    """null or `schema`."""
    schema: Any

    def check(self, value: Any, path: str) -> None:
        if value is not None:
            _check(value, self.schema, path)


@dataclass
class OneOf:
    """The first of `schemas` that the value's JSON type matches (e.g. a number or a string)."""
    schemas: tuple = field(default_factory=tuple)

    def check(self, value: Any, path: str) -> None:
        errors = []
        for schema in self.schemas:
            try:
                _check(value, schema, path)
                return
            except _Refused as exc:
                errors.append(exc)
        # the refusal that went deepest names the field (the value matched that schema's kind);
        # refusals as deep as each other are joined
        deepest = max(_depth(e.path) for e in errors)
        errors = [e for e in errors if _depth(e.path) == deepest]
        if len(errors) == 1:
            raise errors[0]
        raise _Refused(path, " or ".join(e.message if e.path == path else f"{e.path[len(path):].lstrip('.')}: "
                                         f"{e.message}" for e in errors))


def _depth(path: str) -> int:
    return path.count(".") + path.count("[")


class Any_:
    """Anything JSON holds (already bounded in size and depth by loads)."""

    def check(self, value: Any, path: str) -> None:
        return None


ANY = Any_()
SCALAR = OneOf((str, Bool(), Num()))  # an OpenVINO property value


def _join(path: str, key: str) -> str:
    key = brief(key, 40) if not re.fullmatch(r"[A-Za-z0-9_]+", str(key)) else key
    return f"{path}.{key}" if path else str(key)
