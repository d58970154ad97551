"""`hosttune bench run`: repeated runs with warmup, in-process (one worker per instance, pinned to
the instance's cpuset) or over HTTP against the running instances; optional CPU hog (`--noise`);
the result document `hosttune.bench/1` (see docs/serve-and-bench.md)."""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from hosttune import __version__, safejson
from hosttune.bench import stats
from hosttune.errors import HosttuneError
from hosttune.safejson import List, Num, Obj, Opt, Str

SCHEMA = "hosttune.bench/1"
SAMPLES_KEPT = 1000


@dataclass
class Target:
    """One instance under test."""
    name: str
    cpus: list[int] | None = None
    node: int | None = None
    model: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    streams: int | None = None
    nireq: int | None = None
    host: str = "127.0.0.1"
    port: int = 9000
    model_path: str | None = None
    model_version: int | None = None
    precision: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    runs: list[list[float]] = field(default_factory=list)  # latencies (ms) per run
    elapsed: list[float] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)


# -- system state -------------------------------------------------------------------------------
def system_state(root: str) -> dict[str, Any]:
    """The host state that explains the numbers, read through discovery (never /sys directly)."""
    from hosttune import discovery
    from hosttune.sysfs import HostFS

    topo = discovery.discover(HostFS.open(root))
    f = topo.features
    cpufreq = f.get("cpufreq", {})
    turbo = f.get("turbo", {})
    cgroup = f.get("cgroup", {})
    state: dict[str, Any] = {
        "hostname": topo.hostname,
        "cpu_model": f.get("cpu", {}).get("model"),
        "cpu_flags": f.get("cpu", {}).get("flags", []),
        "online_cpus": topo.online_cpus,
        "nodes": [{"id": n.id, "cpus": n.cpus} for n in topo.nodes],
        "kernel_cmdline": topo.kernel_cmdline,
        "isolated": topo.isolated,
        "nohz_full": topo.nohz_full,
        "allowed_cpus": topo.allowed_cpus,
        "governor": None, "frequencies": None,
        "turbo": turbo.get("enabled") if turbo.get("status") == "ok" else None,
        "turbo_switch": turbo.get("switch"),
        "cpuset": {"cgroup": cgroup.get("path"), "cpus": cgroup.get("cpuset_cpus_effective"),
                   "mems": cgroup.get("cpuset_mems_effective")},
        "thp": f.get("thp", {}).get("enabled"),
        "smt": f.get("smt"),
        "sysctls": f.get("sysctls", {}),
        "cstates": [s["name"] for s in f.get("cstates", {}).get("states", []) if not s.get("disabled")]
        if f.get("cstates", {}).get("status") == "ok" else None,
        "unsupported": {},
    }
    if cpufreq.get("status") == "ok":
        state["governor"] = sorted({p["governor"] for p in cpufreq["policies"] if p["governor"]})
        state["frequencies"] = [{"policy": p["id"], "cpus": p["cpus"], "min_khz": p["min_khz"],
                                 "max_khz": p["max_khz"], "base_khz": p["base_khz"]} for p in cpufreq["policies"]]
    for area in ("cpufreq", "turbo", "cstates"):
        if f.get(area, {}).get("status") == "unsupported":
            state["unsupported"][area] = f[area].get("reason")
    try:
        import openvino as ov

        state["openvino_version"] = ov.get_version()
    except ImportError:
        state["openvino_version"] = None
    return state


# -- noise --------------------------------------------------------------------------------------
class Noise:
    """Busy-loop subprocesses: confined to `cpus` (the housekeeping CPUs) or unconfined."""

    def __init__(self, count: int, cpus: list[int] | None):
        self.count, self.cpus = count, cpus
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Noise:
        # unconfined hogs get every CPU this process may use, whatever the load client is pinned to
        cpus = self.cpus or sorted(os.sched_getaffinity(0))

        def confine() -> None:
            os.sched_setaffinity(0, cpus)  # the kernel keeps it within the cgroup's cpuset

        for _ in range(self.count):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=confine,
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.count > 0, "hogs": self.count, "cpus": self.cpus, "confined": bool(self.cpus)}


# -- progress -----------------------------------------------------------------------------------
class Progress:
    def __init__(self, total_s: float, enabled: bool):
        self.total = max(total_s, 1e-9)
        self.enabled = enabled
        self.start = time.monotonic()
        self.label = ""

    def show(self, label: str | None = None) -> None:
        if label is not None:
            self.label = label
        if not self.enabled:
            return
        frac = min(1.0, (time.monotonic() - self.start) / self.total)
        width = 30
        filled = int(frac * width)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {frac:4.0%} {self.label:<40.40}")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()


# -- in-process ---------------------------------------------------------------------------------
def run_inprocess(targets: list[Target], runs: int, warmup_s: float, duration_s: float, api: str | None,
                  pinned: bool, progress: Progress) -> None:
    workers = []
    try:
        for t in targets:
            use_api = api or ("sync" if t.config.get("PERFORMANCE_HINT", "").upper() == "LATENCY"
                              or (t.streams or 1) <= 1 and "NUM_STREAMS" not in t.config else "async")
            config = dict(t.config)
            if not pinned:
                config["ENABLE_CPU_PINNING"] = False
            cfg = {"model_path": t.model_path, "config": config, "cpus": t.cpus if pinned else None,
                   "api": use_api, "nireq": t.nireq, "warmup_s": warmup_s, "duration_s": duration_s}
            proc = subprocess.Popen([sys.executable, "-m", "hosttune.bench.worker", json.dumps(cfg)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            workers.append((t, proc))
        progress.show("compiling and warming up")
        for t, proc in workers:
            msg = _read_event(proc, progress)
            if msg.get("event") != "ready":
                raise HosttuneError(msg.get("error", "the worker failed"), where=t.name)
            t.info = {k: msg[k] for k in ("cpus", "api", "nireq", "streams", "threads", "precision",
                                          "warmup_count") if k in msg}
        for k in range(runs):
            progress.show(f"run {k + 1}/{runs}")
            for _, proc in workers:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for t, proc in workers:
                msg = _read_event(proc, progress)
                if msg.get("event") != "run":
                    raise HosttuneError(msg.get("error", "the worker failed"), where=t.name)
                t.runs.append(msg["latencies_ms"])
                t.elapsed.append(msg["elapsed_s"])
                t.errors.append(0)
    finally:
        for _, proc in workers:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for _, proc in workers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _read_event(proc: subprocess.Popen, progress: Progress) -> dict[str, Any]:
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], 0.25)
        progress.show()
        if ready:
            line = proc.stdout.readline()
            if not line:
                rc = proc.wait()
                return {"event": "error", "error": f"the benchmark worker exited with {rc}"}
            try:
                return json.loads(line)
            except ValueError:
                continue


# -- over HTTP ----------------------------------------------------------------------------------
def run_http(targets: list[Target], runs: int, warmup_s: float, duration_s: float, concurrency: int,
             progress: Progress, binary: bool = True, rate: float | None = None) -> None:
    """Runs against each target's endpoint, `concurrency` connections each, every connection sending
    its next request when the last is answered (closed loop); with `rate`, requests arrive at that
    many per second per target whatever the answers (open loop), on up to `concurrency` connections,
    each latency counted from its scheduled arrival (a request waiting for a free connection
    counts its wait). Requests in the binary-data extension, or as JSON tensors with binary=False."""
    from hosttune.bench.httpclient import run

    run(_http_main(targets, runs, warmup_s, duration_s, concurrency, progress, binary, rate))


async def _http_main(targets: list[Target], runs: int, warmup_s: float, duration_s: float, concurrency: int,
                     progress: Progress, binary: bool = True, rate: float | None = None) -> None:
    from hosttune.bench.httpclient import Connection, HTTPStatusError, binary_request, json_request, metadata

    requests = {}
    for t in targets:
        try:
            meta = await metadata(t.host, t.port, t.model)
        except (OSError, HTTPStatusError, ValueError) as exc:
            raise HosttuneError(f"cannot get the metadata of model {t.model!r}: {exc}",
                                where=f"{t.host}:{t.port}") from None
        requests[t.name] = (binary_request if binary else json_request)(meta)
        host = f"[{t.host}]" if ":" in t.host else t.host  # an IPv6 address in a URL
        t.info = {"endpoint": f"http://{host}:{t.port}", "concurrency": concurrency}
        if rate:
            t.info["rate"] = rate
    conns = {t.name: [Connection(t.host, t.port) for _ in range(concurrency)] for t in targets}

    async def stream(t: Target, conn: Connection, deadline: float, lat: list[float], errs: list[int]) -> None:
        body, headers = requests[t.name]
        path = f"/v2/models/{t.model}/infer"
        clock = time.perf_counter
        while clock() < deadline:
            t0 = clock()
            try:
                status, _, _ = await conn.request("POST", path, body, headers)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errs[0] += 1
                await conn.close()
                await asyncio.sleep(0.01)
                continue
            if status == 200:
                lat.append((clock() - t0) * 1000.0)
            else:
                errs[0] += 1

    async def open_loop(t: Target, pool: list[Connection], deadline: float, lat: list[float], errs: list[int]) -> None:
        body, headers = requests[t.name]
        path = f"/v2/models/{t.model}/infer"
        clock = time.perf_counter
        idle: asyncio.Queue[Connection] = asyncio.Queue()
        for c in pool:
            idle.put_nowait(c)

        async def one(scheduled: float) -> None:
            conn = await idle.get()
            try:
                status, _, _ = await conn.request("POST", path, body, headers)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errs[0] += 1
                await conn.close()
            else:
                if status == 200:
                    lat.append((clock() - scheduled) * 1000.0)
                else:
                    errs[0] += 1
            finally:
                idle.put_nowait(conn)

        inflight: set[asyncio.Future] = set()
        interval = 1.0 / rate
        due = clock()
        while due < deadline:
            wait = due - clock()
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.ensure_future(one(due))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            due += interval
        if inflight:
            await asyncio.wait(set(inflight))

    async def one_round(duration: float, label: str) -> list[tuple[list[float], float, int]]:
        progress.show(label)
        start = time.perf_counter()
        deadline = start + duration
        results = []
        tasks = []
        for t in targets:
            lat: list[float] = []
            errs = [0]
            results.append((lat, errs))
            if rate:
                tasks.append(asyncio.ensure_future(open_loop(t, conns[t.name], deadline, lat, errs)))
            else:
                tasks += [asyncio.ensure_future(stream(t, c, deadline, lat, errs)) for c in conns[t.name]]
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.25)
            progress.show()
        for task in tasks:
            task.result()
        elapsed = time.perf_counter() - start
        return [(lat, elapsed, errs[0]) for lat, errs in results]

    try:
        warm = await one_round(warmup_s, "warming up")
        for t, (lat, _, errs) in zip(targets, warm):
            if not lat:
                raise HosttuneError(f"no successful request during the warmup ({errs} errors)",
                                    where=f"{t.host}:{t.port}")
            t.info["warmup_count"] = len(lat)
        for k in range(runs):
            for t, (lat, elapsed, errs) in zip(targets, await one_round(duration_s, f"run {k + 1}/{runs}")):
                t.runs.append(lat)
                t.elapsed.append(elapsed)
                t.errors.append(errs)
    finally:
        for cs in conns.values():
            for c in cs:
                await c.close()


# -- results ------------------------------------------------------------------------------------
def _per_run(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r["latency_ms"][key] for r in runs]


def _instance_summary(runs: list[dict[str, Any]], pooled: list[float], judge: str) -> dict[str, Any]:
    thr = [r["throughput"] for r in runs]
    return {"throughput": stats.describe(thr), "p99_ms": stats.describe(_per_run(runs, "p99")),
            "p999_ms": stats.describe(_per_run(runs, "p99.9")), "max_ms": stats.describe(_per_run(runs, "max")),
            "p50_ms": stats.describe(_per_run(runs, "p50")),
            "latency_ms": stats.latency_summary(pooled), "stability": stats.verdict(thr, _per_run(runs, judge), judge)}


def _finish(instances: list[dict[str, Any]], per_run_pooled: list[list[float]], judge: str) -> dict[str, Any]:
    """Fill each instance's headline figures; return the aggregate (runs are simultaneous across
    instances: per run, throughput adds up and the percentiles are taken over all instances' latencies)."""
    for inst in instances:
        s = inst["summary"]
        inst["throughput"] = s["throughput"]["mean"]
        inst["p99_ms"] = s["p99_ms"]["mean"]
        inst["p999_ms"] = s["p999_ms"]["mean"]
        inst["max_ms"] = s["max_ms"]["max"]
        inst["verdict"] = s["stability"]["verdict"]
    nruns = min(len(i["runs"]) for i in instances)
    agg_thr = [sum(inst["runs"][k]["throughput"] for inst in instances) for k in range(nruns)]
    pooled = [sorted(per_run_pooled[k]) for k in range(nruns)]
    tails = {name: [stats.percentile(s, q) for s in pooled] for name, q in (("p99", 99), ("p99.9", 99.9))}
    stability = stats.verdict(agg_thr, tails[judge], judge)
    return {
        "instances": len(instances),
        "throughput": stats.describe(agg_thr), "p99_ms": stats.describe(tails["p99"]),
        "p999_ms": stats.describe(tails["p99.9"]), "max_ms": stats.describe([s[-1] for s in pooled]),
        "stability": stability,
        "verdict": stats.worst([i["verdict"] for i in instances] + [stability["verdict"]]),
    }


def summarize(targets: list[Target], judge: str = "p99") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    instances = []
    for t in targets:
        runs = []
        for k, (lat, elapsed, errs) in enumerate(zip(t.runs, t.elapsed, t.errors)):
            if not lat:
                raise HosttuneError(f"run {k + 1} completed no inference ({errs} errors)", where=t.name)
            summary = stats.run_summary(lat, elapsed, errs)
            summary["index"] = k
            summary["samples_ms"] = [round(v, 4) for v in stats.reduce_samples(lat, SAMPLES_KEPT)]
            runs.append(summary)
        pooled = sorted(v for lat in t.runs for v in lat)
        instances.append({
            "name": t.name, "node": t.node, "cpus": t.cpus, "model": t.model, "model_version": t.model_version,
            "precision": t.precision, "execution_precision": (t.info.get("precision") or {}).get("execution_precision"),
            "openvino": t.config, "streams": t.info.get("streams", t.streams), "nireq": t.info.get("nireq", t.nireq),
            "worker": t.info,
            "runs": runs,
            "summary": _instance_summary(runs, pooled, judge),
            "throughput": None, "p99_ms": None, "p999_ms": None, "max_ms": None, "verdict": None,
        })
    nruns = min(len(t.runs) for t in targets)
    aggregate = _finish(instances, [[v for t in targets for v in t.runs[k]] for k in range(nruns)], judge)
    return instances, aggregate


def merge_documents(docs: list[dict[str, Any]], label: str | None = None) -> dict[str, Any]:
    """One result from several results of the same setup (e.g. runs interleaved with other setups
    to spread a shared machine's changing load evenly): the runs are concatenated and everything
    is recomputed from them. Latencies pooled across runs come from each run's `samples_ms`."""
    if not docs:
        raise HosttuneError("nothing to merge")
    first = docs[0]
    names = [i["name"] for i in first["instances"]]
    for d in docs[1:]:
        if [i["name"] for i in d["instances"]] != names or d.get("kind") != first.get("kind"):
            raise HosttuneError("results of different setups cannot be merged (instances or kind differ)")
    out = json.loads(json.dumps(first))
    out["label"] = label or first.get("label")
    out["config"]["label"] = out["label"]
    out["config"]["runs"] = sum(d["config"]["runs"] for d in docs)
    out["config"]["merged_from"] = [d.get("created") for d in docs]
    out["wall_s"] = sum(d.get("wall_s") or 0 for d in docs)
    judge = out["config"].get("judge") or "p99"
    for n, inst in enumerate(out["instances"]):
        runs = [r for d in docs for r in d["instances"][n]["runs"]]
        runs = [{**r, "index": k} for k, r in enumerate(runs)]
        inst["runs"] = runs
        inst["summary"] = _instance_summary(runs, sorted(v for r in runs for v in r["samples_ms"]), judge)
    per_run = [[v for inst in out["instances"] for v in inst["runs"][k]["samples_ms"]]
               for k in range(min(len(i["runs"]) for i in out["instances"]))]
    out["aggregate"] = _finish(out["instances"], per_run, judge)
    out["verdict"] = out["aggregate"]["verdict"]
    return out


def build_document(kind: str, config: dict[str, Any], system: dict[str, Any], targets: list[Target],
                   started: float) -> dict[str, Any]:
    instances, aggregate = summarize(targets, config.get("judge") or "p99")
    return {
        "schema": SCHEMA,
        "hosttune_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 3),
        "kind": kind,
        "label": config.get("label"),
        "config": config,
        "system": system,
        "instances": instances,
        "aggregate": aggregate,
        "verdict": aggregate["verdict"],
    }


# what compare and the HTML report read of a result (a result written by another version, or edited
# by hand, is refused with the field named): numbers finite, so that no chart or test is fed
# infinity or NaN (a recorded confidence interval elsewhere may be infinite)
_NUMBERS = List(Num(), 10_000_000)
RESULT_SCHEMA = Obj({
    "schema": Str(), "verdict": Opt(Str()), "label": Opt(Str()),
    "instances": List(Obj({
        "name": Str(), "verdict": Opt(Str()),
        "runs": List(Obj({"throughput": Num(), "latency_ms": Obj({"p99": Num()}, required=("p99",)),
                          "samples_ms": _NUMBERS}, required=("throughput", "latency_ms", "samples_ms")),
                     100_000, min_len=1),
    }, required=("name", "runs")), 4096, min_len=1),
    "aggregate": Obj({"throughput": Obj({"values": _NUMBERS}, required=("values",)),
                      "p99_ms": Obj({"values": _NUMBERS}, required=("values",))},
                     required=("throughput", "p99_ms")),
}, required=("schema", "instances", "aggregate"))


def load_document(path: str) -> dict[str, Any]:
    doc = safejson.load_file(path, finite=False, max_bytes=256 * 2**20)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise HosttuneError(f"not a {SCHEMA} result", where=path)
    safejson.check(doc, RESULT_SCHEMA, path)
    return doc


def hog_cpus(plan: dict[str, Any] | None) -> list[int] | None:
    """Where a confined hog goes: the plan's housekeeping CPUs that this process may use."""
    if not plan:
        return None
    cpus = sorted(plan.get("housekeeping") or [])
    if not cpus:
        raise HosttuneError("the plan has no housekeeping CPUs to confine the hogs to", where="--noise")
    return cpus

