"""CPU frequency scaling: governor and a frequency lock (min = max) per cpufreq policy.

Reads cpufreq/policyN/ (kernels since 4.3) or, on older kernels, each cpuN/cpufreq/ directory.
Governor before the limits: some governors reset the limits when they start."""

from __future__ import annotations

import re
from typing import Any

from hosttune import cpulist, numbers
from hosttune.areas.base import CPU, AreaItems, Field, Host, PlanContext, SysfsValue, sysfs_word, unsupported
from hosttune.errors import HosttuneError, PolicyError
from hosttune.safeyaml import brief
from hosttune.sysfs import HostFS

NAME = "cpufreq"
BOOT = False
MAX_MHZ = 100_000


def _lock(value: Any, path: str) -> Any:
    if not (value in ("base", "max", "none")
            or (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_MHZ)):
        raise PolicyError(f"must be base, max, none or a frequency in MHz (1-{MAX_MHZ}), got {brief(value)}",
                          where=path)
    return value


POLICY = (
    Field("cpufreq.governor", "performance", "str", check=sysfs_word("a governor name (a-z, 0-9, _)")),
    Field("cpufreq.lock", "base", "any", check=_lock, profiles={"throughput": "none"},
          doc="min = max frequency: base | max | none | MHz"),
)


def _int(fs: HostFS, path: str) -> int | None:
    return numbers.first_int(fs.read(path))


def _cpus(fs: HostFS, path: str) -> list[int] | None:
    text = fs.read(path)
    if not text or not text.strip():
        return None
    try:
        return cpulist.parse(text, where=path)
    except HosttuneError:  # an unreadable list: fall back on the policy's own CPU
        return None


def policy_dirs(fs: HostFS, cpus: list[Any]) -> list[tuple[int, str]]:
    """(policy id, directory) for every cpufreq policy: policyN/ since 4.3, else cpuN/cpufreq/."""
    base = f"{CPU}/cpufreq"
    ids = sorted(int(e[6:]) for e in fs.listdir(base) or [] if re.fullmatch(r"policy[0-9]{1,9}", e))
    if ids:
        return [(pid, f"{base}/policy{pid}") for pid in ids]
    # pre-4.3: per-CPU directories; CPUs sharing a policy list each other in affected_cpus
    found, covered = [], set()
    for cpu in cpus:
        if not cpu.online or cpu.id in covered:
            continue
        path = f"{CPU}/cpu{cpu.id}/cpufreq"
        if fs.read(f"{path}/scaling_governor") is None:
            continue
        covered.update(_cpus(fs, f"{path}/affected_cpus") or [cpu.id])
        found.append((cpu.id, path))
    return found


def policy_dir(fs: HostFS, pid: int) -> str:
    """The directory of policy `pid` (its first CPU's number on pre-4.3 kernels)."""
    path = f"{CPU}/cpufreq/policy{pid}"
    return path if fs.exists(path) or not fs.exists(f"{CPU}/cpu{pid}/cpufreq") else f"{CPU}/cpu{pid}/cpufreq"


def discover(fs: HostFS, features: dict[str, Any], cpus: list[Any]) -> dict[str, Any]:
    dirs = policy_dirs(fs, cpus)
    if not dirs:
        return {NAME: unsupported(f"no cpufreq policies under {CPU}/cpufreq (no cpufreq driver; typical of VMs)")}
    # one driver serves every policy: its driver-wide files are read from the first policy only
    # (a 1024-CPU host has 1024 policies); per-core limits (hybrid CPUs) are read per policy
    first = dirs[0][1]
    driver = fs.read(f"{first}/scaling_driver")
    governors = (fs.read(f"{first}/scaling_available_governors") or "").split()
    available_epp = (fs.read(f"{first}/energy_performance_available_preferences") or "").split()
    result = []
    for pid, p in dirs:
        result.append({
            "id": pid,
            "path": p,
            "cpus": _cpus(fs, f"{p}/affected_cpus") or _cpus(fs, f"{p}/related_cpus") or [pid],
            "driver": driver,
            "governor": fs.read(f"{p}/scaling_governor"),
            "available_governors": governors,
            "min_khz": _int(fs, f"{p}/scaling_min_freq"),
            "max_khz": _int(fs, f"{p}/scaling_max_freq"),
            "cpuinfo_min_khz": _int(fs, f"{p}/cpuinfo_min_freq"),
            "cpuinfo_max_khz": _int(fs, f"{p}/cpuinfo_max_freq"),
            "base_khz": _base_khz(fs, p),
            "epp": fs.read(f"{p}/energy_performance_preference"),
            "available_epp": available_epp,
        })
    return {NAME: {"status": "ok", "driver": driver, "policies": result}}


def _base_khz(fs: HostFS, policy: str) -> int | None:
    """The guaranteed (non-turbo) frequency, from whichever file the driver provides."""
    for name in ("base_frequency", "amd_pstate_nominal_freq"):
        value = _int(fs, f"{policy}/{name}")
        if value:
            return value
    try:
        available = [int(v) for v in (fs.read(f"{policy}/scaling_available_frequencies") or "").split()]
    except ValueError:
        available = []
    if len(available) >= 2 and available[0] - available[1] == 1000:
        return available[1]  # acpi-cpufreq lists the turbo range as base + 1 MHz first
    return max(available) if available else None


def show(features: dict[str, Any]) -> list[str]:
    info = features[NAME]  # the registry prints an unsupported area's reason
    p0 = info["policies"][0]
    return [f"cpufreq: {info['driver']}, governor {p0['governor']}, "
            f"{p0['min_khz']}-{p0['max_khz']} kHz (base {p0['base_khz']})"]


def plan(ctx: PlanContext) -> dict[str, Any]:
    info = ctx.features.get(NAME, {})
    if info.get("status") != "ok":
        return unsupported(info.get("reason", "no cpufreq"))
    want = ctx.policy["cpufreq"]
    policies = []
    for pol in info["policies"]:
        governor = want["governor"]
        if pol["available_governors"] and governor not in pol["available_governors"]:
            raise PolicyError(f"governor {governor!r} is not offered by {pol['driver']} "
                              f"(available: {' '.join(pol['available_governors'])})", where="cpufreq.governor")
        lock = want["lock"]
        lo, hi = pol["cpuinfo_min_khz"], pol["cpuinfo_max_khz"]
        if lock == "none":
            khz = None
        elif lock == "base":
            khz = pol["base_khz"] or hi
        elif lock == "max":
            khz = hi
        else:
            khz = int(lock) * 1000
            if lo and hi and not lo <= khz <= hi:
                raise PolicyError(f"{lock} MHz is outside policy{pol['id']}'s range {lo // 1000}-{hi // 1000} MHz",
                                  where="cpufreq.lock")
        policies.append({"id": pol["id"], "cpus": pol["cpus"], "governor": governor,
                         "min_khz": khz, "max_khz": khz})
    return {"status": "planned", "policies": policies}


def describe(setting: dict[str, Any]) -> str:
    first = setting["policies"][0]
    lock = f"locked at {first['min_khz'] // 1000} MHz" if first["min_khz"] else "not locked"
    return f"governor {first['governor']}, {lock} ({len(setting['policies'])} policies)"


def items(setting: dict[str, Any], plan: dict[str, Any], host: Host) -> AreaItems:
    out = []
    for pol in setting["policies"]:
        base, label = policy_dir(host.fs, pol["id"]), f"policy{pol['id']}"
        out.append(SysfsValue(NAME, f"{label} governor", f"{base}/scaling_governor", value=pol["governor"]))
        if pol["min_khz"] is None:
            continue
        target = pol["min_khz"]
        current_max = host.fs.read(f"{base}/scaling_max_freq")
        # the kernel refuses min > max: raise max first when going up, lower min first when going down
        current = numbers.first_int(current_max)
        raising = current is not None and target > current
        pair = [("scaling_max_freq", pol["max_khz"]), ("scaling_min_freq", target)]
        for attr, khz in (pair if raising else pair[::-1]):
            out.append(SysfsValue(NAME, f"{label} {attr}", f"{base}/{attr}", value=str(khz)))
    return AreaItems(NAME, out)


def refresh(host: Host, records: list[dict[str, Any]]) -> list[Any]:
    return []
