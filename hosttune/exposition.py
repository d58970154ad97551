"""The Prometheus text exposition format (0.0.4), written by hand for the agent and hosttune serve.

One writer for both: numbers as the format spells them (NaN, +Inf, -Inf), label values with
backslash, double quote and newline escaped, HELP text with backslash and newline escaped.
Neither uses prometheus_client: the agent keeps its memory budget (its exposition module imports
ssl), and serve writes OVMS's counter names, which prometheus_client would suffix with `_total`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def number(value: float) -> str:
    """A sample value: integers without a fraction, NaN/+Inf/-Inf spelled as the format wants."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(pairs: Iterable[tuple[str, str]]) -> str:
    """`{name="value",...}`, or "" without labels."""
    text = ",".join(f'{name}="{escape_label(str(value))}"' for name, value in pairs)
    return "{" + text + "}" if text else ""


def sample(name: str, pairs: Iterable[tuple[str, str]], value: float) -> str:
    return f"{name}{labels(pairs)} {number(value)}"


def header(out: list[str], name: str, help: str, kind: str) -> None:
    """A family's HELP and TYPE lines."""
    out.append(f"# HELP {name} {escape_help(help)}")
    out.append(f"# TYPE {name} {kind}")
