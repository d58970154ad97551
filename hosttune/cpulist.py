"""Linux cpulist ("0-3,8,10-11") and hex cpumask ("ff,00000001") parsing and formatting. Pure."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from hosttune.errors import HosttuneError


def parse(text: str, where: str | None = None) -> list[int]:
    """Parse a cpulist such as "0-3,8,10-15:2" into a sorted list of unique ids.

    Accepts the kernel's stride syntax (a-b:step) and surrounding whitespace; "" is the empty set.
    """
    return list(_parse_cached(text.strip(), where))


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str, where: str | None) -> tuple[int, ...]:
    # thousands of IRQs share a handful of affinity strings: parse each once
    if not text:
        return ()
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                span, _, step_text = part.partition(":")
                lo_text, _, hi_text = span.partition("-")
                lo, hi = int(lo_text), int(hi_text)
                step = int(step_text) if step_text else 1
                if lo < 0 or hi < lo or step < 1:
                    raise ValueError
                ids.update(range(lo, hi + 1, step))
            else:
                value = int(part)
                if value < 0:
                    raise ValueError
                ids.add(value)
        except ValueError:
            raise HosttuneError(f"invalid cpulist {text!r} (bad element {part!r})", where) from None
    return tuple(sorted(ids))


def format(ids: Iterable[int]) -> str:  # noqa: A001 - mirrors parse()
    """Format ids as the shortest kernel cpulist: [0,1,2,3,8] -> "0-3,8"."""
    ordered = sorted(set(ids))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_mask(text: str, where: str | None = None) -> list[int]:
    """Parse a kernel hex cpumask ("ff,00000001", 32-bit words, most significant first)."""
    cleaned = text.strip().replace(",", "")
    if not cleaned:
        return []
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise HosttuneError(f"invalid cpumask {text!r}", where) from None
    ids = []
    bit = 0
    while value:
        if value & 1:
            ids.append(bit)
        value >>= 1
        bit += 1
    return ids


def format_mask(ids: Iterable[int], nr_cpus: int | None = None) -> str:
    """Format ids as a kernel hex cpumask in comma-separated 32-bit words.

    nr_cpus pads to the width the kernel uses for that many CPUs, so the text compares equal
    with what /proc/irq/default_smp_affinity reads back.
    """
    value = 0
    for cpu in ids:
        value |= 1 << cpu
    width_bits = max(nr_cpus or 0, value.bit_length(), 1)
    words = (width_bits + 31) // 32
    hex_words = [f"{(value >> (32 * w)) & 0xFFFFFFFF:08x}" for w in reversed(range(words))]
    return ",".join(hex_words)
