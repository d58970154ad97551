"""The agent's configuration: <root>/etc/hosttune/hosttune.yaml (or --config).

Either a bare policy, or {policy: {...}, agent: {...}}. The policy part is checked by
hosttune.policy; the agent part here. Errors name the file and the field (exit 2).
"""

from __future__ import annotations

import math
import socket
from dataclasses import asdict, dataclass
from typing import Any


from hosttune import policy as policy_mod
from hosttune import webconfig
from hosttune.errors import HosttuneError, PolicyError
from hosttune.sysfs import HostFS


@dataclass(frozen=True)
class AgentSettings:
    interval: float = 30.0  # seconds between full checks
    listen: str = "127.0.0.1"  # address of the metrics/status server
    port: int = 9477  # 0: any free port (tests)
    reapply: bool = True  # false: only verify and report
    fast_check_interval: float = 5.0  # seconds between cheap IRQ/CPU-hotplug checks; 0: off
    # seconds between re-discoveries of the host when the fast check saw no IRQ or CPU change
    # (what it cannot see: e.g. a cpufreq driver loaded); one costs about as much as 20 checks
    replan_interval: float = 3600.0
    # seconds a check process may run before it is killed (engine commands such as systemctl
    # time out after 300 s each; an apply it leaves half done is rolled back by the next one)
    check_timeout: float = 900.0
    # TLS and basic auth of the server: an exporter-toolkit web-config file (hosttune.webconfig);
    # None: plain HTTP, no auth
    web_config_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Config:
    path: str | None  # None: no file, embedded defaults
    policy: dict[str, Any]
    agent: AgentSettings
    web: webconfig.WebConfig | None = None  # agent.web_config_file, loaded and checked


# The bounds of every number (seconds), checked here: a larger one passed validation and then made
# the agent's waits and timers raise OverflowError at start or after a reload (issue 32 class 7).
BOUNDS = {  # field: (minimum, maximum, 0 allowed to turn it off)
    "interval": (0.1, 86400.0, False),
    "fast_check_interval": (0.0, 3600.0, True),
    "replan_interval": (1.0, 7 * 86400.0, False),
    "check_timeout": (0.1, 86400.0, False),
}


def _number(value: Any, field: str) -> float:
    minimum, maximum, allow_zero = BOUNDS[field]
    # an int is compared as is (math.isfinite(10**400) itself raises OverflowError)
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and (isinstance(value, int) or math.isfinite(value)))
    if not ok or not (minimum <= value <= maximum or (allow_zero and value == 0)):
        shown = repr(value) if not isinstance(value, str) else repr(value[:40])
        zero = " or 0 (off)" if allow_zero else ""
        raise PolicyError(f"must be a number of seconds from {minimum:g} to {maximum:g}{zero}, got {shown[:60]}",
                          where=f"agent.{field}")
    return float(value)


def validate_agent(raw: Any) -> AgentSettings:
    """The `agent:` section; unknown keys and wrong types name the field."""
    if raw is None:
        return AgentSettings()
    if not isinstance(raw, dict):
        raise PolicyError(f"must be a mapping, got {type(raw).__name__}", where="agent")
    known = AgentSettings.__dataclass_fields__
    for key in raw:
        if key not in known:
            raise PolicyError(f"unknown key (known: {', '.join(sorted(known))})", where=f"agent.{key}")
    values = {**AgentSettings().to_dict(), **raw}
    interval, fast, check_timeout, replan = (
        _number(values[f], f) for f in ("interval", "fast_check_interval", "check_timeout", "replan_interval"))
    listen = values["listen"]
    if not isinstance(listen, str) or not _is_ip(listen):
        raise PolicyError(f"must be an IP address to listen on, such as 127.0.0.1 or ::1, got {listen!r}",
                          where="agent.listen")
    port = values["port"]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise PolicyError(f"must be a TCP port (0-65535; 0 picks a free one), got {port!r}", where="agent.port")
    reapply = values["reapply"]
    if not isinstance(reapply, bool):
        raise PolicyError(f"must be true or false, got {reapply!r}", where="agent.reapply")
    web = values["web_config_file"]
    if web is not None and (not isinstance(web, str) or not web.startswith("/") or "\0" in web or len(web) > 4096):
        raise PolicyError(f"must be the absolute path of a web-config file (or null), got {web!r:.80}",
                          where="agent.web_config_file")
    return AgentSettings(interval=interval, listen=listen, port=port, reapply=reapply, fast_check_interval=fast,
                         check_timeout=check_timeout, replan_interval=replan, web_config_file=web)


def _is_ip(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except OSError:
            pass
    return False


def parse(raw: Any, where: str) -> Config:
    """A loaded YAML document -> Config. `where` names the file in errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(f"must be a mapping (a policy, or policy: and agent: sections), got {type(raw).__name__}",
                          where=where)
    try:
        _, agent_raw, _ = policy_mod.split_config(raw)  # the one reading of the file's shape
        agent = validate_agent(agent_raw)
        pol = policy_mod.validate(raw, source=where)  # a nested file's errors name policy.<field>
    except PolicyError as exc:
        exc.where = f"{where}: {exc.where or 'policy'}"
        raise
    web = None
    if agent.web_config_file is not None:
        try:
            web = webconfig.load(agent.web_config_file)
        except HosttuneError as exc:
            raise PolicyError(f"agent.web_config_file: {exc}", where=where) from None
    return Config(path=where, policy=pol, agent=agent, web=web)


def load(fs: HostFS, path: str | None) -> Config:
    """--config FILE, else <root>/etc/hosttune/hosttune.yaml, else the defaults: decided by
    hosttune.policy.read_config, as for the CLI and fleet (bounded YAML, errors naming the file)."""
    raw, where = policy_mod.read_config(fs, path)
    if where is None:
        return Config(path=None, policy=policy_mod.validate({}), agent=AgentSettings())
    return parse(raw, where)
