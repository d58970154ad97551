"""Bounded YAML loading for files a user (or an attacker) hands to hosttune.

yaml.safe_load builds no Python objects it should not, but it is unbounded: an alias bomb (a few
hundred bytes whose aliases expand to gigabytes wherever the value is walked: repr, deepcopy,
JSON), nesting deep enough to exhaust the recursion limit, any file size. This loader refuses:
- files larger than MAX_BYTES, and text that is not UTF-8;
- more than MAX_ALIASES aliases, recursive aliases, and documents whose fully expanded size
  (aliases and merge keys counted as copies) exceeds MAX_EXPANDED;
- nesting deeper than MAX_DEPTH;
- duplicate keys in a mapping (yaml.safe_load keeps the last one silently).
Every refusal is one HosttuneError (or the subclass the caller names) with the line and column.

Events come from libyaml when it is there (fast); composing runs in Python so that the limits are
checked before each node is built.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from hosttune.errors import HosttuneError

MAX_BYTES = 1 << 20  # a policy or config is a few KB; 1 MiB is far beyond any real one
MAX_ALIASES = 64
MAX_DEPTH = 64
MAX_EXPANDED = MAX_BYTES  # scalar characters + nodes, every alias counted as a full copy

if getattr(yaml, "__with_libyaml__", False):
    _EventSource: tuple[type, ...] = (yaml.cyaml.CParser,)
else:  # pure-Python reader, scanner and parser
    _EventSource = (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)


class _LimitError(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _Loader(Composer, *_EventSource, SafeConstructor, Resolver):  # type: ignore[misc]
    """libyaml's (or PyYAML's) event parser + a Composer that counts aliases and depth."""

    def __init__(self, stream: str):
        for base in _EventSource:
            base.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _LimitError(f"more than {MAX_ALIASES} aliases", self.peek_event().start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _LimitError(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # merged keys may repeat (the mapping's own key wins): that is YAML's rule
                key = self.construct_object(key_node)
                if key in seen:
                    raise _LimitError(f"duplicate key {brief(key)} (first at line {seen[key].line + 1})",
                                      key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Any, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Size of the node with every alias expanded (memoised per node: the graph is a DAG)."""
    ident = id(node)
    if ident in sizes:
        return sizes[ident]
    if ident in open_nodes:
        raise _LimitError("recursive alias (a node that contains itself)", node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        size = 1 + len(node.value)
    else:
        open_nodes.add(ident)
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        size = 1
        for child in children:
            size += _expanded_size(child, sizes, open_nodes)
            if size > MAX_EXPANDED:
                raise _LimitError(f"expands to more than {MAX_EXPANDED} characters through its aliases",
                                  node.start_mark)
        open_nodes.discard(ident)
    sizes[ident] = size
    return size


def brief(value: Any, limit: int = 80) -> str:
    """repr of a value cut to `limit` characters: error messages never carry a huge value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: Any) -> str:
    """An error's text on one line of at most 120 characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= 120 else text[:117] + "..."


def utf8(data: bytes, where: str, max_bytes: int, error: type[HosttuneError] = HosttuneError) -> str:
    """The text of a document read as bytes: at most `max_bytes`, UTF-8 (the byte at fault named)."""
    if len(data) > max_bytes:
        raise error(f"larger than {max_bytes} bytes", where=where)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", where=where) from None


def loads(data: bytes | str, where: str, error: type[HosttuneError] = HosttuneError) -> Any:
    """Parse one YAML document within the limits above; `where` names the file in errors."""
    if isinstance(data, bytes):
        data = utf8(data, where, MAX_BYTES, error)
    elif len(data) > MAX_BYTES:
        raise error(f"larger than {MAX_BYTES} characters", where=where)
    loader = _Loader(data)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or ""
        raise error(f"not valid YAML{at}" + (f": {one_line(problem)}" if problem else ""),
                    where=where) from None
    except (ValueError, OverflowError) as exc:  # e.g. a timestamp like 2024-02-30, a 5000-digit int
        raise error(f"not valid YAML: {one_line(exc)}", where=where) from None
    finally:
        loader.dispose()


def load_file(path: str, error: type[HosttuneError] = HosttuneError, max_bytes: int = MAX_BYTES) -> Any:
    """Read and parse a YAML file (at most `max_bytes`); errors name the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read ({exc.strerror})", where=path) from None
    if len(data) > max_bytes:
        raise error(f"larger than {max_bytes} bytes", where=path)
    return loads(data, where=path, error=error)
