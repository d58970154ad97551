"""The tuning areas and the order they are applied in.

Each area is one module holding everything it knows (base.py has the building blocks). The
contract, checked when this registry is built (base.Area.of: a missing or mistyped part is an
error naming the module):
  NAME, BOOT                  its name in policies, plans and --only; BOOT: takes effect at boot
  POLICY                      its policy keys: a tuple of base.Field (default, type, choices, check,
                              per-profile default, its comment in the README's policy block);
                              hosttune.policy composes them, () for an area without keys
  discover(fs, features, cpus) -> {feature key: facts}   what `topology` reports, read via HostFS
  show(features) -> [line]    its lines in `hosttune topology` (when its facts are not unsupported)
  plan(ctx) -> setting        {"status": "planned" | "unsupported" | "skipped", ...}, pure
  describe(setting) -> str    its line in `hosttune plan`
  items(setting, plan, host) -> AreaItems   what apply / verify / restore carry out
  refresh(host, records) -> [Action]        commands that make changed files take effect (records:
                                            the state records of what apply/rollback/restore changed)
optional (the default when a module leaves it out):
  plan_fields(setting) -> {top-level plan field: value}        ({})
  summary(plan) -> [line]     lines above the settings in `hosttune plan`        ([])
  verify_rows(plan, host, row) -> [row]     checks beyond its items (the running kernel)   ([])
  reboot_required(plan, fs) -> bool                                               (False)
  reboot_after_restore(host, records) -> bool   what restore put back waits for a boot    (False)

Adding an area is one module and one entry in the use(...) line below: the policy, the plan,
apply / verify / restore, --only and `hosttune plan` follow; tests/test_registry.py pins what
cannot import this registry to it (the roles' area lists, the docs, the README's policy block;
the Ansible module keeps no list: the hosttune on the host checks --only).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

from hosttune.areas import cpufreq, cstates, epp, irqbalance, irqs, kernel_args, managers, sysctls, thp, turbo
from hosttune.areas.base import Area, AreaItems, Field, Host, PlanContext

REGISTRY: tuple[Area, ...] = ()
NAMES: tuple[str, ...] = ()
RUNTIME: tuple[str, ...] = ()
_BY_NAME: dict[str, Area] = {}


def use(modules: Sequence[ModuleType]) -> None:
    """Make `modules` the registry, each checked against the contract. Called once below; a test
    adds a throwaway area through it. Readers look REGISTRY / NAMES / RUNTIME up here when they
    run, not at their import, so they follow."""
    global REGISTRY, NAMES, RUNTIME, _BY_NAME
    registry = tuple(Area.of(m) for m in modules)
    names = tuple(area.NAME for area in registry)
    if len(set(names)) != len(names):
        raise TypeError(f"area names must differ: {' '.join(names)}")
    REGISTRY, NAMES = registry, names
    RUNTIME = tuple(area.NAME for area in registry if not area.BOOT)
    _BY_NAME = {area.NAME: area for area in registry}


# The order apply walks (and restore walks backwards):
# - managers first: tuned / power-profiles-daemon are stopped before the values they rewrite;
# - turbo before cpufreq: switching turbo changes the frequency range a lock is taken from;
# - cpufreq (governor, then limits) before epp: the performance governor fixes EPP (EBUSY);
# - cstates, sysctls, thp are independent of the rest;
# - irqs before irqbalance: IRQs are pinned before irqbalance rereads which CPUs it may use;
# - kernel_args last: it is only staged for the next boot.
use((managers, turbo, cpufreq, epp, cstates, sysctls, thp, irqs, irqbalance, kernel_args))


def get(name: str) -> Area:
    return _BY_NAME[name]


def discover(fs: Any, features: dict[str, Any], cpus: list[Any]) -> dict[str, Any]:
    """Every area's facts, merged into the topology's features (an area may read earlier ones)."""
    for area in REGISTRY:
        features.update(area.discover(fs, features, cpus))
    return features


def show(features: dict[str, Any]) -> list[str]:
    """Every area's lines in `hosttune topology`; an area the host cannot do shows its reason."""
    lines = []
    for area in REGISTRY:
        info = features.get(area.NAME)
        if isinstance(info, dict) and info.get("status") == "unsupported":
            lines.append(f"{area.NAME}: unsupported: {info['reason']}")
        else:
            lines.extend(area.show(features))
    return lines


def plan(ctx: PlanContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings by area, top-level plan fields the areas own)."""
    settings, fields = {}, {}
    for area in REGISTRY:
        setting = settings[area.NAME] = area.plan(ctx)
        fields.update(area.plan_fields(setting))
    return settings, fields


def policy_fields() -> list[Field]:
    """Every area's policy keys, in registry order."""
    return [f for area in REGISTRY for f in area.POLICY]


def summary(plan: dict[str, Any]) -> list[str]:
    """The areas' lines above the settings in `hosttune plan`."""
    return [line for area in REGISTRY for line in area.summary(plan)]


def describe(name: str, setting: dict[str, Any]) -> str:
    if setting.get("status") in ("unsupported", "skipped"):
        return f"{setting['status']}: {setting['reason']}"
    return get(name).describe(setting)


def build(plan: dict[str, Any], host: Host, only: list[str] | None = None) -> list[AreaItems]:
    """Every planned area expanded into Items, in registry order."""
    out = []
    for area in REGISTRY:
        if only and area.NAME not in only:
            continue
        setting = plan["settings"].get(area.NAME)
        if setting is None or setting["status"] == "skipped":
            continue
        if setting["status"] == "unsupported":
            out.append(AreaItems(area.NAME, [], unsupported=setting["reason"]))
            continue
        out.append(area.items(setting, plan, host))
    return out


__all__ = ["REGISTRY", "NAMES", "RUNTIME", "use", "get", "discover", "show", "plan", "policy_fields", "summary",
           "describe", "build", "Area", "AreaItems", "Field", "Host", "PlanContext"]
