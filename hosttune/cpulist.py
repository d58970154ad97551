"""Linux cpulist ("0-3,8,10-11") and hex cpumask ("ff,00000001") parsing and formatting. Pure.

CPU ids are bounded by MAX_CPUS: the kernel's NR_CPUS is at most 8192 on x86-64 (MAXSMP), so
65536 leaves room for any real host while "0-100000000000" is one clear error, not MemoryError.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from hosttune.errors import HosttuneError

MAX_CPUS = 65536  # ids are 0 .. MAX_CPUS - 1
_ELEMENT = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?", re.ASCII)  # ASCII digits only: no "٣", "1_0", "+1"
_MASK_WORD = re.compile(r"[0-9a-fA-F]+", re.ASCII)
_CACHED_TEXT = 256  # longer lists are rare (and may be hostile): not worth keeping in the cache


def _shown(text: str) -> str:
    """repr of a (possibly huge) input, cut to 80 characters, for one-line errors."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def parse(text: str, where: str | None = None, max_cpu: int = MAX_CPUS - 1) -> list[int]:
    """Parse a cpulist such as "0-3,8,10-15:2" into a sorted list of unique ids.

    Accepts the kernel's stride syntax (a-b:step) and surrounding whitespace; "" is the empty set.
    Ids above `max_cpu` (default MAX_CPUS - 1) are an error naming `where`.
    """
    text = text.strip()
    if len(text) > _CACHED_TEXT:
        return list(_parse(text, where, max_cpu))
    return list(_parse_cached(text, where, max_cpu))


def _parse(text: str, where: str | None, max_cpu: int) -> tuple[int, ...]:
    if not text:
        return ()
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        match = _ELEMENT.fullmatch(part)
        if not match:
            raise HosttuneError(f"invalid cpulist {_shown(text)} (bad element {_shown(part)})", where)
        lo_text, hi_text, step_text = match.groups()
        # compare lengths first: int() of a 5000-digit string is itself an error in Python 3.11
        lo = int(lo_text) if len(lo_text) <= 12 else max_cpu + 1
        hi = lo if hi_text is None else (int(hi_text) if len(hi_text) <= 12 else max_cpu + 1)
        step = 1 if step_text is None else (int(step_text) if len(step_text) <= 12 else max_cpu + 1)
        if hi < lo or step < 1:
            raise HosttuneError(f"invalid cpulist {_shown(text)} (bad element {_shown(part)})", where)
        if hi > max_cpu:
            raise HosttuneError(f"invalid cpulist {_shown(text)} (CPU ids go up to {max_cpu})", where)
        ids.update(range(lo, hi + 1, step))
    return tuple(sorted(ids))


# thousands of IRQs share a handful of affinity strings: parse each once
_parse_cached = functools.lru_cache(maxsize=4096)(_parse)


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
    """Parse a kernel hex cpumask ("ff,00000001", 32-bit words, most significant first).

    At most MAX_CPUS bits: a longer mask is an error naming `where`.
    """
    words = text.strip().split(",")
    cleaned = "".join(words)
    if not cleaned:
        return []
    if not all(_MASK_WORD.fullmatch(w) for w in words):
        raise HosttuneError(f"invalid cpumask {_shown(text)}", where)
    cleaned = cleaned.lstrip("0")
    if len(cleaned) * 4 > MAX_CPUS:
        raise HosttuneError(f"invalid cpumask {_shown(text)} (more than {MAX_CPUS} CPUs)", where)
    bits = bin(int(cleaned or "0", 16))[2:]
    top = len(bits) - 1
    return [top - i for i in range(top, -1, -1) if bits[i] == "1"]


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
