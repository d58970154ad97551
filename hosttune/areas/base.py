"""What every tuning area is built from.

An area expands its planned setting into Items: one value at one place, which knows how to read,
compare, apply and put itself back. The engine walks Items without knowing which area they belong
to. Item kinds, by where the value lives:

  SysfsValue    a kernel value under /sys or /proc, written in place
  ConfigFile    a config file, replaced atomically; its original bytes, mode and owner are kept
  ServiceState  a systemd service that must not run (irqbalance stop, tuned stop)
  BootArgs      kernel arguments that grubby keeps in every boot entry (Red Hat family)

Before an Item is first changed, its `snapshot` (a JSON record naming its kind) goes into the
state file; restore and rollback hand that record to `put_back`, so they need no plan.
Actions are commands that make changed files take effect (update-grub, restart irqbalance);
an area's `refresh(host, records)` returns them after apply, rollback and restore alike.

Also here: `Field` (one policy key an area declares in its POLICY) and `Area` (an area module
checked against the contract, optional parts filled with their defaults).
"""

from __future__ import annotations

import base64
import difflib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

from hosttune import cpulist
from hosttune.errors import HosttuneError, PolicyError
from hosttune.runner import Runner
from hosttune.safeyaml import brief
from hosttune.sysfs import HostFS
from hosttune.topology import Topology, unsupported  # noqa: F401 - re-exported for the areas

CPU = "/sys/devices/system/cpu"
MARK = "# managed by hosttune; `hosttune restore` removes it"


class CommandFailed(Exception):
    """A command an Item or Action ran failed; the message quotes it (the engine rolls back)."""


@dataclass
class Host:
    """What an Item works on: the files under a root and the commands of that host. In a dry run
    writes are not made and commands are only recorded, so apply and dry run share one path."""

    fs: HostFS
    runner: Runner

    @property
    def dry(self) -> bool:
        return self.runner.dry

    def write(self, path: str, value: str) -> None:
        if not self.dry:
            self.fs.write(path, value)

    def write_file(self, path: str, content: bytes | str, mode: int, uid: int | None = None,
                   gid: int | None = None) -> None:
        if not self.dry:
            self.fs.write_file_atomic(path, content, mode=mode, uid=uid, gid=gid)

    def remove(self, path: str) -> None:
        if not self.dry:
            self.fs.remove(path)

    def run(self, argv: list[str], why: str) -> None:
        if not self.runner.run(argv, why):
            raise CommandFailed(self.runner.last_error())


@dataclass
class PlanContext:
    """What an area plans from: the host, the validated policy and the CPU partition."""

    topo: Topology
    policy: dict[str, Any]
    housekeeping: set[int]
    isolated: set[int]

    @property
    def features(self) -> dict[str, Any]:
        return self.topo.features


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


# -- value forms ----------------------------------------------------------------------------------
def plain(value: str | None) -> str | None:
    return None if value is None else value.strip()


def bracketed(value: str | None) -> str | None:
    """"always [madvise] never" -> "madvise" (the kernel's way of showing the current choice)."""
    if value is None:
        return None
    match = re.search(r"\[([^\]]+)\]", value)
    return match.group(1) if match else value.strip()


@functools.lru_cache(maxsize=4096)  # thousands of IRQs share a few affinity texts (768-CPU lists)
def as_cpulist(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return cpulist.format(cpulist.parse(value))
    except HosttuneError:
        return value.strip()


def mask_as_cpulist(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return cpulist.format(cpulist.parse_mask(value))
    except HosttuneError:
        return value.strip()


@functools.lru_cache(maxsize=4096)  # as as_cpulist: a few distinct pairs among thousands of IRQs
def _cpus_within(actual: str | None, planned: str | None) -> bool:
    if not actual or not planned:
        return False
    try:
        return set(cpulist.parse(actual)) <= set(cpulist.parse(planned))
    except HosttuneError:
        return False


def _short(value: str | None) -> str | None:
    if value is None:
        return None
    return value if "\n" not in value else f"<{len(value.splitlines())} lines>"


# -- items ----------------------------------------------------------------------------------------
@dataclass
class Item:
    """The common part of every kind. `path` is the Item's key in the state file."""

    area: str
    name: str
    path: str
    kind: ClassVar[str] = ""
    must_exist: ClassVar[bool] = True  # absent (None from read) means the host cannot do it
    # errno -> reason: a write failing so means the host cannot do it (unsupported), not an error
    unsupported_errnos: dict[int, str] = field(default_factory=dict, kw_only=True)
    remember_refusal: bool = field(default=False, kw_only=True)  # refused once: not retried (managed IRQs)

    @property
    def key(self) -> str:
        return self.path

    def read(self, host: Host) -> str | None:
        raise NotImplementedError

    def missing_reason(self) -> str:
        return f"{self.path} does not exist"

    def matches(self, raw: str | None) -> bool:
        raise NotImplementedError

    def expected(self) -> str | None:
        raise NotImplementedError

    def shown(self, raw: str | None) -> str | None:
        """The value read, as verify and the apply report show it."""
        return _short(raw)

    def diff(self, raw: str | None) -> str:
        return f"{self.path}: {self.shown(raw)!r} -> {self.expected()!r}"

    def snapshot(self, host: Host, raw: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def apply(self, host: Host) -> None:
        raise NotImplementedError

    @staticmethod
    def put_back(host: Host, record: dict[str, Any]) -> None:
        raise NotImplementedError


@dataclass
class SysfsValue(Item):
    value: str = ""
    normalize: Callable[[str | None], str | None] = plain
    restore_raw: bool = False  # save the raw text (not the normalized form) as the original
    # a CPU list that is ok when it is any non-empty part of the planned one (IRQ affinities)
    within: bool = False
    kind: ClassVar[str] = "sysfs"

    def __post_init__(self) -> None:
        self._expected = self.normalize(self.value)  # verify compares thousands of items per check

    def read(self, host: Host) -> str | None:
        return host.fs.read(self.path)

    def expected(self) -> str | None:
        return self._expected

    def shown(self, raw: str | None) -> str | None:
        return self.normalize(raw)

    def matches(self, raw: str | None) -> bool:
        if raw is None:
            return False
        if raw.strip() == self.value.strip():  # raw equality first: cheap
            return True
        actual = self.normalize(raw)
        return actual == self._expected or (self.within and _cpus_within(actual, self._expected))

    def snapshot(self, host: Host, raw: str | None) -> dict[str, Any]:
        return {"area": self.area, "kind": self.kind, "path": self.path,
                "value": raw if self.restore_raw else self.normalize(raw)}

    def apply(self, host: Host) -> None:
        host.write(self.path, self.value)

    @staticmethod
    def put_back(host: Host, record: dict[str, Any]) -> None:
        if record.get("value") is not None:
            host.write(record["path"], record["value"])


@dataclass
class ConfigFile(Item):
    """A whole config file hosttune owns or edits; value None means "must not exist"."""

    value: str | None = None
    kind: ClassVar[str] = "file"
    must_exist: ClassVar[bool] = False

    def read(self, host: Host) -> str | None:
        return host.fs.read(self.path)

    def expected(self) -> str | None:
        return _short(self.value)

    def matches(self, raw: str | None) -> bool:
        if raw is None or self.value is None:
            return raw is None and self.value is None
        return raw.rstrip("\n") == self.value.rstrip("\n")

    def diff(self, raw: str | None) -> str:
        return "".join(difflib.unified_diff(
            (raw or "").splitlines(True) if raw is None or raw.endswith("\n") else (raw + "\n").splitlines(True),
            (self.value or "").splitlines(True),
            fromfile=self.path if raw is not None else "/dev/null",
            tofile=self.path if self.value is not None else "/dev/null"))

    def snapshot(self, host: Host, raw: str | None) -> dict[str, Any]:
        """The file's exact bytes, mode and owner (or that it did not exist)."""
        data = host.fs.read_bytes(self.path)
        record: dict[str, Any] = {"area": self.area, "kind": self.kind, "path": self.path, "value": None}
        if data is None:
            return record
        mode, uid, gid = host.fs.stat_file(self.path) or (0o644, None, None)
        record.update(value=data.decode("utf-8", "replace"), data=base64.b64encode(data).decode(),
                      mode=mode, uid=uid, gid=gid)
        return record

    def apply(self, host: Host) -> None:
        if self.value is None:
            host.remove(self.path)
            return
        # an edited file keeps its mode and owner; a new one is root's, world-readable
        mode, uid, gid = host.fs.stat_file(self.path) or (0o644, None, None)
        content = self.value if self.value.endswith("\n") else self.value + "\n"
        host.write_file(self.path, content, mode=mode, uid=uid, gid=gid)

    @staticmethod
    def put_back(host: Host, record: dict[str, Any]) -> None:
        if record.get("data") is not None:
            host.write_file(record["path"], base64.b64decode(record["data"]), mode=int(record.get("mode", 0o644)),
                            uid=record.get("uid"), gid=record.get("gid"))
        elif record.get("value") is None:
            host.remove(record["path"])
        else:  # written by hosttune before originals kept bytes
            text = record["value"]
            host.write_file(record["path"], text if text.endswith("\n") else text + "\n", mode=0o644)


ACTIVE_STATES = ("active", "activating", "reloading")


@dataclass
class ServiceState(Item):
    """A systemd service that must not run. Read and changed through systemctl, so only on the
    live root (or with HOSTTUNE_RUN_COMMANDS=1 and a stand-in systemctl)."""

    service: str = ""
    kind: ClassVar[str] = "service"

    def read(self, host: Host) -> str | None:
        return host.runner.query(["systemctl", "is-active", self.service]) or None

    def missing_reason(self) -> str:
        return "systemctl does not run here (not the live root)"

    def expected(self) -> str | None:
        return "inactive"

    def matches(self, raw: str | None) -> bool:
        return raw is not None and raw not in ACTIVE_STATES

    def snapshot(self, host: Host, raw: str | None) -> dict[str, Any]:
        enabled = host.runner.query(["systemctl", "is-enabled", self.service])
        return {"area": self.area, "kind": self.kind, "path": self.path, "service": self.service,
                "active": raw in ACTIVE_STATES, "enabled": enabled == "enabled"}

    def apply(self, host: Host) -> None:
        host.run(["systemctl", "disable", "--now", self.service], f"stop {self.service}")

    @staticmethod
    def put_back(host: Host, record: dict[str, Any]) -> None:
        service = record["service"]
        if record.get("enabled"):
            host.run(["systemctl", "enable", *(["--now"] if record.get("active") else []), service],
                     f"{service} was enabled before")
        elif record.get("active"):
            host.run(["systemctl", "start", service], f"{service} was running before")


def _arg_key(arg: str) -> str:
    return arg.split("=", 1)[0]


@dataclass
class BootArgs(Item):
    """Kernel arguments grubby keeps in every boot entry. The snapshot records, per entry, exactly
    the arguments this adds and the values it replaces; putting back removes / re-adds those."""

    args: list[str] = field(default_factory=list)
    kind: ClassVar[str] = "grubby"

    def read(self, host: Host) -> str | None:
        """One line per boot entry: its kernel, a tab, its arguments."""
        out = host.runner.query(["grubby", "--info=ALL"])
        if out is None:
            return None
        lines, kernel = [], None
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key == "kernel":
                kernel = value.strip('"')
            elif key == "args" and kernel:
                lines.append(f"{kernel}\t{value.strip(chr(34))}")
        return "\n".join(lines) if lines else None

    def missing_reason(self) -> str:
        return "grubby does not run here (not the live root, or no boot entries)"

    def expected(self) -> str | None:
        return " ".join(self.args)

    @staticmethod
    def _entries(raw: str | None) -> dict[str, list[str]]:
        entries = {}
        for line in (raw or "").splitlines():
            kernel, _, args = line.partition("\t")
            entries[kernel] = args.split()
        return entries

    def matches(self, raw: str | None) -> bool:
        entries = self._entries(raw)
        return bool(entries) and all(set(self.args) <= set(words) for words in entries.values())

    def shown(self, raw: str | None) -> str | None:
        missing = sorted({a for words in self._entries(raw).values() for a in self.args if a not in words})
        return "missing: " + " ".join(missing) if missing else "in every entry"

    def snapshot(self, host: Host, raw: str | None) -> dict[str, Any]:
        keys = {_arg_key(a) for a in self.args}
        changes = {}
        for kernel, words in self._entries(raw).items():
            added = [a for a in self.args if a not in words]
            previous = [w for w in words if _arg_key(w) in keys and w not in self.args]
            if added or previous:
                changes[kernel] = {"added": added, "previous": previous}
        return {"area": self.area, "kind": self.kind, "path": self.path, "entries": changes}

    def apply(self, host: Host) -> None:
        host.run(["grubby", "--update-kernel=ALL", "--args=" + " ".join(self.args)], "add the kernel arguments")

    @staticmethod
    def put_back(host: Host, record: dict[str, Any]) -> None:
        for kernel, change in record.get("entries", {}).items():
            if change.get("added"):
                host.run(["grubby", f"--update-kernel={kernel}", "--remove-args=" + " ".join(change["added"])],
                         "remove the kernel arguments hosttune added")
            if change.get("previous"):
                host.run(["grubby", f"--update-kernel={kernel}", "--args=" + " ".join(change["previous"])],
                         "put back the kernel arguments hosttune replaced")


KINDS: dict[str, type[Item]] = {cls.kind: cls for cls in (SysfsValue, ConfigFile, ServiceState, BootArgs)}


def put_back(host: Host, record: dict[str, Any]) -> None:
    """Restore one state record, whatever its kind."""
    KINDS[record["kind"]].put_back(host, record)


@dataclass
class Action:
    """A command that makes an area's changed files take effect."""

    area: str
    argv: list[str]
    why: str
    env: dict[str, str] | None = None  # added to the command's environment


@dataclass
class AreaItems:
    area: str
    items: list[Item]
    unsupported: str | None = None  # the whole area cannot be done here, and why


# -- policy fields --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Field:
    """One policy key: its dotted path ("cpufreq.governor", "thp"), its default, what it accepts and
    its comment in the README's policy block. hosttune.policy composes every area's fields with its
    own (profile, housekeeping, isolation, instances, required) into the schema it validates.

    type: bool | int | str | list | int? (0 to 10^9 or null) | str? (or null) | mapping (merged
    key by key over the default, checked by `check`) | any (checked by `check` alone)."""

    path: str
    default: Any
    type: str
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    # (value, path) -> the canonical value; raises PolicyError(where=path). Runs after every type
    # check, on any value but the null of an int? or str? field
    check: Callable[[Any, str], Any] | None = None
    profiles: dict[str, Any] = field(default_factory=dict)  # the default where a profile differs

    TYPES: ClassVar[tuple[str, ...]] = ("bool", "int", "str", "list", "int?", "str?", "mapping", "any")

    def __post_init__(self) -> None:
        if self.type not in self.TYPES or self.path.count(".") > 1:
            raise TypeError(f"policy field {self.path}: type {self.type!r} (known: {', '.join(self.TYPES)}), "
                            f"at most one dot in the path")


POLICY_KEY = re.compile(r"[A-Za-z0-9_.*-]{1,64}", re.ASCII)
SYSFS_WORD = re.compile(r"[a-z0-9_]{1,32}", re.ASCII)  # governor and EPP names


def policy_field(prefix: str, key: Any) -> str:
    """The dotted field path; an odd key (newline, huge, not a string) shown cut as its repr."""
    return f"{prefix}{key}" if isinstance(key, str) and POLICY_KEY.fullmatch(key) else f"{prefix}{brief(key, 40)}"


def sysfs_word(what: str) -> Callable[[Any, str], Any]:
    """A check for a name written into a sysfs file (governor, EPP): a-z, 0-9, _ (null passes)."""
    def check(value: Any, path: str) -> Any:
        if value is not None and not SYSFS_WORD.fullmatch(value):
            raise PolicyError(f"must be {what}, got {brief(value)}", where=path)
        return value
    return check


# -- the area contract ----------------------------------------------------------------------------
def _no_fields(setting: dict[str, Any]) -> dict[str, Any]:
    return {}


def _no_rows(plan: dict[str, Any], host: Host, row: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    return []


def _no_reboot(plan: dict[str, Any], fs: HostFS) -> bool:
    return False


def _no_summary(plan: dict[str, Any]) -> list[str]:
    return []


def _no_reboot_after_restore(host: Host, records: list[dict[str, Any]]) -> bool:
    return False


@dataclass(frozen=True, eq=False)
class Area:
    """An area module checked against the contract (see hosttune/areas/__init__.py): `of` raises
    naming the module and the part when a required part is missing; optional parts the module does
    not define get these defaults, so nothing asks an area whether it has a part."""

    module: ModuleType
    NAME: str
    BOOT: bool
    POLICY: tuple[Field, ...]
    discover: Callable[[HostFS, dict[str, Any], list[Any]], dict[str, Any]]
    show: Callable[[dict[str, Any]], list[str]]
    plan: Callable[[PlanContext], dict[str, Any]]
    describe: Callable[[dict[str, Any]], str]
    items: Callable[[dict[str, Any], dict[str, Any], Host], AreaItems]
    refresh: Callable[[Host, list[dict[str, Any]]], list[Action]]
    plan_fields: Callable[[dict[str, Any]], dict[str, Any]] = _no_fields
    verify_rows: Callable[..., list[dict[str, Any]]] = _no_rows
    reboot_required: Callable[[dict[str, Any], HostFS], bool] = _no_reboot
    summary: Callable[[dict[str, Any]], list[str]] = _no_summary
    reboot_after_restore: Callable[[Host, list[dict[str, Any]]], bool] = _no_reboot_after_restore

    REQUIRED: ClassVar[tuple[str, ...]] = ("NAME", "BOOT", "POLICY", "discover", "show", "plan", "describe",
                                           "items", "refresh")
    OPTIONAL: ClassVar[tuple[str, ...]] = ("plan_fields", "verify_rows", "reboot_required", "summary",
                                           "reboot_after_restore")

    @classmethod
    def of(cls, module: ModuleType) -> Area:
        def bad(part: str, what: str) -> TypeError:
            return TypeError(f"area module {module.__name__}: {part} {what} (the area contract: "
                             f"hosttune/areas/__init__.py)")

        parts = {}
        for part in cls.REQUIRED + cls.OPTIONAL:
            if part not in vars(module):
                if part in cls.REQUIRED:
                    raise bad(part, "is missing")
                continue
            parts[part] = value = vars(module)[part]
            if part == "NAME" and not (isinstance(value, str) and POLICY_KEY.fullmatch(value)):
                raise bad(part, "must be a name (a string)")
            elif part == "BOOT" and not isinstance(value, bool):
                raise bad(part, "must be true or false")
            elif part == "POLICY" and not (isinstance(value, tuple) and all(isinstance(f, Field) for f in value)):
                raise bad(part, "must be a tuple of Field")
            elif part not in ("NAME", "BOOT", "POLICY") and not callable(value):
                raise bad(part, "must be a function")
        return cls(module, **parts)
