"""The side effects of `hosttune tune`: a pinned `hosttune serve` per candidate instance (started
once, kept while the candidate races, idle between its rounds), each round measured through its
endpoint by `hosttune bench`'s HTTP client and statistics (hosttune.bench.runner.run_http), and the
settings the default and the chosen candidate really run with, read back from the compiled model
by bench's worker.

`serve_argv` is the one place that spells `hosttune serve`'s flags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from hosttune import cpulist
from hosttune.bench import runner, stats
from hosttune.errors import HosttuneError
from hosttune.serve.child import ServeChild

START_TIMEOUT_S = 180.0


def serve_argv(repo: str, model: str, cpus: list[int], openvino: dict[str, Any], nireq: int | None,
               idle_poll_us: int | None) -> list[str]:
    """`hosttune serve` for one candidate instance: any free port on the loopback address."""
    argv = [sys.executable, "-m", "hosttune", "serve", "--rest_port", "0", "--ephemeral-ports", "--bind", "127.0.0.1",
            "--repo", repo, "--model", model, "--cpus", cpulist.format(cpus), "--config", json.dumps(openvino)]
    if nireq:
        argv += ["--nireq", str(nireq)]
    if idle_poll_us is not None:
        argv += ["--idle-poll-us", str(idle_poll_us)]
    return argv


def readback(model_path: str, cpus: list[int], openvino: dict[str, Any], nireq: int | None) -> subprocess.Popen:
    """bench's worker compiling the model with the candidate's properties on its CPUs: its `ready`
    line is what the compiled model reports (streams, threads, nireq, execution precision)."""
    cfg = {"model_path": model_path, "config": openvino, "cpus": cpus, "api": "async", "nireq": nireq,
           "warmup_s": 0, "duration_s": 0}
    return subprocess.Popen([sys.executable, "-m", "hosttune.bench.worker", json.dumps(cfg)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def read_ready(proc: subprocess.Popen, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
    try:
        out, _ = proc.communicate("", timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": "the read-back worker timed out"}
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("event") == "ready":
            found = {k: msg[k] for k in ("cpus", "nireq", "streams", "threads") if k in msg}
            found["execution_precision"] = (msg.get("precision") or {}).get("execution_precision")
            return found
        if msg.get("event") == "error":
            return {"error": msg.get("error")}
    return {"error": f"the read-back worker exited with {proc.returncode}"}


@dataclass
class Candidate:
    """A candidate's instances: their serve processes, bench targets (which keep every round's
    latencies) and what its servers and compiled models reported."""
    index: int
    label: str
    parts: list[dict[str, Any]]  # settings.layout(): cpus, openvino, nireq, model
    servers: list[ServeChild] = field(default_factory=list)
    targets: list[runner.Target] = field(default_factory=list)
    effective: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # why it could not be measured (its server did not start, a round failed)


def start(cands: list[Candidate], repo: str, entries: dict[str, Any], idle_poll_us: int | None,
          instance_name: str) -> float:
    """Start every candidate's servers at once, then wait for them all (each banner tells the
    streams and nireq its compiled model runs with), then read the default's settings back from its
    compiled model. Returns how long that read-back took: what reading back the chosen candidate at
    the end may cost."""
    for c in cands:
        for part in c.parts:
            c.servers.append(ServeChild(serve_argv(repo, part["model"], part["cpus"], part["openvino"], part["nireq"],
                                               idle_poll_us)))
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        for c in cands:
            for k, (srv, part) in enumerate(zip(c.servers, c.parts)):
                try:
                    srv.wait(deadline)
                except HosttuneError as exc:
                    if c.index == 0:  # without the default there is nothing to compare with
                        raise
                    c.error = exc.message
                    for other in c.servers:
                        other.terminate()
                    break
                name = instance_name if len(c.parts) == 1 else f"{instance_name}.{k}"
                entry = entries[part["model"]]
                c.targets.append(runner.Target(name=name, cpus=part["cpus"], model=part["model"],
                                               config=part["openvino"], nireq=part["nireq"], port=srv.port,
                                               model_path=entry.path, model_version=entry.version,
                                               precision=entry.meta.get("precision")))
                c.effective.append({"served": srv.served})
        t0 = time.monotonic()
        read_back_finish(read_back_start(cands[:1]))
        return time.monotonic() - t0
    except BaseException:
        stop(cands)
        raise


def read_back_start(cands: list[Candidate]) -> list[tuple[Candidate, int, subprocess.Popen]]:
    """Start bench's worker for each instance of these candidates: what its compiled model reports on
    its CPUs (streams, threads, nireq, execution precision); `read_back_finish` adds it to `effective`."""
    return [(c, k, readback(t.model_path, part["cpus"], part["openvino"], part["nireq"]))
            for c in cands if not c.error for k, (t, part) in enumerate(zip(c.targets, c.parts))]


def read_back_finish(pending: list[tuple[Candidate, int, subprocess.Popen]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    for c, k, proc in pending:
        c.effective[k].update(read_ready(proc, max(1.0, deadline - time.monotonic())))


def stop(cands: list[Candidate]) -> None:
    servers = [s for c in cands for s in c.servers]
    for s in servers:
        s.terminate()
    for s in servers:
        s.reap()


class TuneProgress(runner.Progress):
    """bench's progress bar over the whole budget, labelled with the stage and the time left."""

    def __init__(self, total_s: float, enabled: bool):
        super().__init__(total_s, enabled)
        self.stage = ""

    def show(self, label: str | None = None) -> None:  # the labels of run_http ("run 1/1") are not ours
        left = max(0.0, self.total - (time.monotonic() - self.start))
        self.label = f"{self.stage} ETA {left:.0f}s"
        super().show()


def measure_round(c: Candidate, concurrency: int, warmup_s: float, duration_s: float, binary: bool,
                  progress: runner.Progress, rate: float | None = None) -> tuple[float, float]:
    """One round of one candidate: (throughput of all its instances, p99 ms over their requests);
    the workload's connections (or its request rate) are shared out between its instances."""
    per_instance = max(1, concurrency // len(c.targets))
    runner.run_http(c.targets, 1, warmup_s, duration_s, per_instance, progress, binary=binary,
                    rate=rate / len(c.targets) if rate else None)
    thr, pooled = 0.0, []
    for t in c.targets:
        lat, elapsed = t.runs[-1], t.elapsed[-1]
        if not lat:
            raise HosttuneError(f"a round completed no inference ({t.errors[-1]} errors)", where=c.label)
        thr += len(lat) / elapsed
        pooled += lat
    return thr, stats.percentile(sorted(pooled), 99)


def document(c: Candidate, config: dict[str, Any], system: dict[str, Any], started: float) -> dict[str, Any] | None:
    """The candidate's rounds as a `hosttune.bench/1` result (what bench compare and its report read)."""
    if not c.targets or not all(t.runs for t in c.targets):
        return None
    return runner.build_document("http", {**config, "runs": len(c.targets[0].runs), "label": c.label}, system,
                                 c.targets, started)


def model_entries(repo: str, names: set[str]) -> dict[str, Any]:
    """The repository's entry (path, metadata) of each model the candidates serve."""
    from hosttune.model.repo import find

    return {name: find(repo, name) for name in sorted(names)}


def cpu_has_bf16(system: dict[str, Any]) -> bool:
    return bool(set(system.get("cpu_flags") or []) & {"avx512_bf16", "amx_bf16"})


def repo_models(repo: str) -> frozenset[str]:
    from hosttune.model.repo import list_models

    return frozenset(list_models(repo)) if os.path.isdir(repo) else frozenset()
