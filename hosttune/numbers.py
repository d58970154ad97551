"""Numbers read from outside (a file, a directory name, an argument, the environment): ASCII digits
by grammar, with bounds. `str.isdigit()` is true for '²' and int() reads '١' (Arabic-Indic one) as 1,
'３' (full width) as 3, ' 3', '+3' and '3_0' too: never call them on outside text directly, call these
(docs/security.md, "Numbers are ASCII digits")."""

import argparse
import math
import re

from hosttune.errors import HosttuneError

# re's \d matches every Unicode decimal digit: spell the ASCII range out
_UINT = re.compile(r"[0-9]+")
_INT = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# longer than this is refused before int() (which is itself slow, then an error, past 4300 digits)
_MAX_DIGITS = 20


def is_uint(text: object) -> bool:
    """True for a str of ASCII digits only (a name such as a /proc/irq entry or a version directory)."""
    return isinstance(text, str) and len(text) <= _MAX_DIGITS and _UINT.fullmatch(text) is not None


def uint_or_none(text: str | None, maximum: int | None = None) -> int | None:
    """An unsigned decimal, or None when `text` is not one (or above `maximum`): for names and sysfs
    values where something else means "not a number here"."""
    if not is_uint(text):
        return None
    value = int(text)  # type: ignore[arg-type]
    return value if maximum is None or value <= maximum else None


def int_or_none(text: str | None) -> int | None:
    """A signed decimal (sysfs writes -1 for "none"), or None when `text` is not one."""
    if text is None or len(text) > _MAX_DIGITS or not _INT.fullmatch(text):
        return None
    return int(text)


def first_int(text: str | None) -> int | None:
    """The first whitespace-separated word of a sysfs/procfs file as a signed decimal, else None."""
    words = text.split() if text else []
    return int_or_none(words[0]) if words else None


def parse_uint(text: object, where: str, minimum: int = 0, maximum: int = 2**63 - 1,
               error: type[HosttuneError] = HosttuneError) -> int:
    """An unsigned decimal in [minimum, maximum], else `error` naming `where`."""
    value = uint_or_none(text) if isinstance(text, str) else None  # type: ignore[arg-type]
    if value is None or not minimum <= value <= maximum:
        shown = repr(text)[:40]
        raise error(f"must be ASCII digits from {minimum} to {maximum}, got {shown}", where)
    return value


def parse_udecimal(text: object, where: str, minimum: float = 0.0, maximum: float = 1e9,
                   error: type[HosttuneError] = HosttuneError) -> float:
    """A finite unsigned decimal (ASCII digits, one optional '.') in [minimum, maximum]."""
    ok = isinstance(text, str) and len(text) <= 2 * _MAX_DIGITS and _DECIMAL.fullmatch(text) is not None
    value = float(text) if ok else math.nan  # type: ignore[arg-type]
    if not (ok and minimum <= value <= maximum):
        raise error(f"must be a decimal number from {minimum:g} to {maximum:g}, got {repr(text)[:40]}", where)
    return value


def _arg_type(parse, name: str, *bounds):
    """An argparse `type=` from a parse_* function: its error becomes argparse's one-line refusal,
    and `name` is how argparse names the type in it."""
    def convert(text: str):
        try:
            return parse(text, "", *bounds)
        except HosttuneError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
    convert.__name__ = name
    return convert


def arg_uint(minimum: int = 0, maximum: int = 2**31 - 1):
    """An argparse `type=` for an unsigned integer option (argparse's type=int accepts '٣')."""
    return _arg_type(parse_uint, "integer", minimum, maximum)


def arg_udecimal(minimum: float = 0.0, maximum: float = 1e6):
    """An argparse `type=` for a finite unsigned decimal option (seconds and the like)."""
    return _arg_type(parse_udecimal, "number", minimum, maximum)


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h)?")
_UNIT_S = {None: 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: object, where: str, minimum: float = 0.0, maximum: float = 7 * 86400.0,
                   error: type[HosttuneError] = HosttuneError) -> float:
    """Seconds from a duration such as 90s, 15m, 1.5h or 40 (seconds), within [minimum, maximum]."""
    m = _DURATION.fullmatch(text) if isinstance(text, str) and len(text) <= 2 * _MAX_DIGITS else None
    value = float(m.group(1)) * _UNIT_S[m.group(2)] if m else math.nan
    if not (m and minimum <= value <= maximum):
        raise error(f"must be a duration like 90s, 15m or 1h from {minimum:g} to {maximum:g} s, "
                    f"got {repr(text)[:40]}", where)
    return value


def arg_duration(minimum: float = 0.0, maximum: float = 7 * 86400.0):
    """An argparse `type=` for a duration option (seconds; s, m or h suffix)."""
    return _arg_type(parse_duration, "duration", minimum, maximum)
