"""A strict reader of the Prometheus text exposition format (0.0.4) for the tests.

prometheus_client's parser renames a counter's samples to `<name>_total`, which would hide exactly
the difference the OVMS tests look for; this one keeps every sample name as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')
SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("", "_count", "_sum"), "untyped": ("",)}


@dataclass
class Family:
    name: str
    type: str
    help: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _unescape(value: str) -> str:
    """A label value's escapes: the format has exactly three (\\\\, \\", \\n); anything else is kept."""
    return re.sub(r'\\(.)', lambda m: {"\\": "\\", '"': '"', "n": "\n"}.get(m.group(1), m.group(0)), value)


def _labels(text: str, line: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m:
            raise ValueError(f"bad labels in {line!r}")
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return labels


def parse(text: str) -> dict[str, Family]:
    """Families by name; every sample must follow its family's TYPE line and carry a name the type
    allows (a counter `x` has samples `x`, a histogram `x` has `x_bucket`, `x_count`, `x_sum`)."""
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    current: Family | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            if name in families:
                raise ValueError(f"{name}: TYPE given twice")
            current = families[name] = Family(name, kind, helps.get(name, ""))
        elif line.startswith("#"):
            continue
        else:
            m = _SAMPLE.match(line)
            if not m:
                raise ValueError(f"not a sample line: {line!r}")
            sample, labels, value = m.group(1), _labels(m.group(2) or "", line), float(m.group(3))
            if current is None or sample not in {current.name + s for s in SUFFIXES[current.type]}:
                raise ValueError(f"sample {sample} outside its family (last TYPE: "
                                 f"{current.name if current else None})")
            current.samples.append((sample, labels, value))
    return families
