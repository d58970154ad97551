"""Live reload of config.json as OVMS does it (docs/online_config_changes.md): every
--file_system_poll_wait_seconds (0: never) and on POST /v1/config/reload, config.json and the model
directories are read again; models and versions added are compiled, those gone are unloaded, those
whose configuration or files changed are compiled again. Which version directories a model serves
is its model_version_policy's choice (latest N, all, specific), so a version directory appearing
is served when the policy takes it.

No request is dropped: a new model is compiled on a thread beside the event loop, then the app's
models are swapped in one assignment on the loop (App.set_models); a request already holding an
old model finishes on it, and the old model is freed when the last such request lets go of it.

A new configuration is applied whole or not at all: if config.json is refused (hosttune/serve/
ovms_config.py) or a model fails to compile, the previous models keep serving, and the reason is
one log line, the answer to POST /v1/config/reload, and the metrics hosttune_config_reloads_total
{result="failed"} and hosttune_config_reload_failing 1. A failed state is not compiled again by
the poll until config.json or the model files change (a POST retries it).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hosttune.errors import HosttuneError
from hosttune.serve import ovms_config
from hosttune.serve.app import App, config_status
from hosttune.serve.engine import ServedModel
from hosttune.serve.metrics import Counter, Family, Gauge
from hosttune.serve.ovms_config import ModelConfig

Key = tuple[str, int]  # (model name, version)


def _files(directory: str) -> tuple:
    """What a version directory holds (name, size, mtime): a change is a reason to compile again
    (a version directory still being copied when it was first seen, say)."""
    try:
        with os.scandir(directory) as entries:
            return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries))
    except OSError:
        return ()


class Reloader:
    def __init__(self, path: str, build: Callable[[ModelConfig, int], ServedModel], poll_seconds: float):
        self.path = path
        self.build = build  # compiles one version (blocking: run on the compile thread)
        self.poll_seconds = poll_seconds
        self.app: App | None = None
        self.served: dict[Key, tuple[Any, ServedModel]] = {}  # what is served, with the state it was built from
        self.ended: set[Key] = set()  # unloaded by a reload: listed as END, as OVMS does
        self.error: str | None = None
        self._failed: Any = None  # the wanted state that failed
        self._lock: asyncio.Lock | None = None
        self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")
        self.reloads = Family("hosttune_config_reloads_total", "config.json reloads that changed the models "
                              "served (ok) or were refused, the previous models serving on (failed).",
                              "counter", Counter)
        self.failing = Family("hosttune_config_reload_failing", "1 while the last config.json reload failed "
                              "(the previous models serve on).", "gauge", Gauge)
        for result in ("ok", "failed"):
            self.reloads.labels(result=result)
        self.failing.labels().set(0)

    # -- the wanted state ----------------------------------------------------------------------
    def wanted(self, models: list[ModelConfig] | None = None) -> dict[Key, tuple[Any, ModelConfig]]:
        """Every (name, version) config.json (or its `models`, read already) and the model
        directories say to serve, with the state it is built from. HosttuneError: config.json is
        refused."""
        out: dict[Key, tuple[Any, ModelConfig]] = {}
        for model in models if models is not None else ovms_config.read(self.path).models:
            for version in model.served_versions():
                directory = os.path.join(model.base_path, str(version))
                out[(model.name, version)] = ((repr(model), _files(directory)), model)
        return out

    def first(self) -> list[ServedModel]:
        """The models served at start (compiled here): a refused config.json, a model with no
        version to serve or one failing to compile is the start's error."""
        models = ovms_config.read(self.path).models
        wanted = self.wanted(models)
        for model in models:
            if not os.path.isdir(model.base_path):
                raise HosttuneError("no such directory", where=model.base_path)
            if not any(name == model.name for name, _ in wanted):
                raise HosttuneError(f"no version directory that model_version_policy "
                                    f"{ovms_config.policy_text(model.policy)} serves", where=model.base_path)
        self.served = {k: (state, self.build(model, k[1])) for k, (state, model) in wanted.items()}
        return [m for _, m in self.served.values()]

    def attach(self, app: App) -> None:
        """Reload `app`'s models from now on; its /metrics carries the reload metrics."""
        self.app = app
        app.reloader = self
        app.metrics.families += [self.reloads, self.failing]

    def status(self) -> dict[str, Any]:
        """GET /v1/config: OVMS's document."""
        return config_status([m for _, m in self.served.values()], tuple(sorted(self.ended)))

    # -- reloading -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Poll every poll_seconds until cancelled."""
        if self.poll_seconds <= 0:
            return
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.reload()
            except Exception as exc:  # the poll never stops serving
                self._log(f"config reload failed unexpectedly: {type(exc).__name__}: {exc}")

    async def reload(self, forced: bool = False) -> tuple[int, dict[str, Any]]:
        """Bring the served models to what config.json and the directories say. Returns OVMS's
        answer to POST /v1/config/reload: 201 and the status when models changed, 200 when nothing
        did, 412 (config.json refused) or 500 (a model failed to load) with {"error": ...}."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                wanted = self.wanted()
            except HosttuneError as exc:
                return self._refused(str(exc), 412, ("read", str(exc)), forced)
            state = {k: s for k, (s, _) in wanted.items()}
            if state == {k: s for k, (s, _) in self.served.items()}:
                self._recovered()
                return 200, self.status()
            if not forced and state == self._failed:
                return 500, {"error": f"Reloading config file failed: {self.error}"}
            loop = asyncio.get_running_loop()
            new: dict[Key, tuple[Any, ServedModel]] = {}
            try:
                for key, (s, model) in wanted.items():
                    if key in self.served and self.served[key][0] == s:
                        new[key] = self.served[key]
                    else:
                        new[key] = (s, await loop.run_in_executor(self._compiler, self.build, model, key[1]))
            except Exception as exc:  # HosttuneError, or OpenVINO's own
                return self._refused(str(exc) if isinstance(exc, HosttuneError) else f"{type(exc).__name__}: {exc}",
                                     500, state, forced)
            added = sorted(set(new) - set(self.served))
            removed = sorted(set(self.served) - set(new))
            changed = sorted(k for k in set(new) & set(self.served) if new[k][1] is not self.served[k][1])
            self.served = new
            self.ended = (self.ended | set(removed)) - set(new)
            assert self.app is not None
            self.app.set_models([m for _, m in new.values()])
            self.reloads.labels(result="ok").inc()
            self._recovered()

            def names(keys: list[Key]) -> str:
                return ", ".join(f"{n}:{v}" for n, v in keys) or "-"

            self._log(f"config reloaded from {self.path}: added {names(added)}; removed {names(removed)}; "
                      f"reloaded {names(changed)}")
            return 201, self.status()

    def _recovered(self) -> None:
        if self.error is not None:
            self._log("config reload: the served models match config.json again")
        self.error = self._failed = None
        self.failing.labels().set(0)

    def _refused(self, message: str, code: int, failed: Any, forced: bool) -> tuple[int, dict[str, Any]]:
        if forced or failed != self._failed:  # a poll finding the same failure again says nothing new
            self._log(f"config reload failed, the previous models serve on: {message}")
            self.reloads.labels(result="failed").inc()
        self.error, self._failed = message, failed
        self.failing.labels().set(1)
        return code, {"error": f"Reloading config file failed: {message}"}

    @staticmethod
    def _log(line: str) -> None:
        print(f"hosttune serve: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._compiler.shutdown(wait=False, cancel_futures=True)
