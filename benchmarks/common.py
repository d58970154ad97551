"""What the benchmark scripts share, above all the serve_* comparison scripts (serve_peer, serve_lane,
serve_grpc): their command-line options, the timed load of `concurrency` streams, the interleaved
rounds with their printed line, the per-case summary and the A-against-B comparison over the
rounds, and the report page (CDF of all rounds, p50 and throughput per round).

Importing it puts the checkout on sys.path (hosttune, tests.serverproc). Only the standard library
is imported here at the top: serve_timeline.py imports this module into the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

HOSTTUNE = [sys.executable, "-m", "hosttune"]
LATENCY = '{"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}'


# -- command line ------------------------------------------------------------------------------
def command_line() -> str:
    """How this script was run, for summary.json and the report."""
    return " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def int_list(text: str) -> list[int]:
    """--concurrency: comma-separated positive counts."""
    try:
        values = [int(c) for c in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"comma-separated positive counts, got {text!r}")
    return values


def json_object(text: str) -> str:
    """--config: a JSON object (kept as text: it is passed on to `hosttune serve --config`)."""
    try:
        ok = isinstance(json.loads(text), dict)
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"a JSON object, got {text[:60]!r}")
    return text


def add_pinning(ap: argparse.ArgumentParser, config_help: str = "OpenVINO properties of the server") -> None:
    """--server-cpu, --client-cpu and the server's --config."""
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--config", type=json_object, default=LATENCY, help=config_help)


def add_plan_options(ap: argparse.ArgumentParser) -> None:
    """--plan and --max-load, for the scripts that run `hosttune bench` on a plan's instance."""
    ap.add_argument("--plan", help="plan JSON (default: hosttune plan --json of this host)")
    ap.add_argument("--max-load", type=float, help="before each round, wait (up to 10 min) until the 1-minute "
                                                   "load average is below this (shared machines)")


def comparison_parser(doc: str, *, rounds: int, duration: float, concurrency_help: str, config_help: str,
                      repo_help: str = "model repository (default: built into --out)",
                      variant: bool = True) -> argparse.ArgumentParser:
    """The options of a serve_* comparison script; the script adds its own before `start`."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", help=repo_help)
    if variant:
        ap.add_argument("--variant", default="sample", help="the sample model variant to serve: sample, tiny, trivial")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--duration", type=float, default=duration, help="measured seconds per case and round")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int_list, default="1,4", help=concurrency_help)
    add_pinning(ap, config_help)
    ap.add_argument("--out", default=None)
    return ap


def start(ap: argparse.ArgumentParser, prefix: str) -> tuple[argparse.Namespace, str, str]:
    """Parse and check the options, let SIGTERM end the run through the scripts' `finally` (which
    stop their servers), make the output directory (a new temporary one without --out) and the
    model repository (--repo, else built into the output directory): (args, out, repo)."""
    args = ap.parse_args()
    if args.rounds < 1 or args.duration <= 0:
        ap.error("--rounds and --duration must be positive")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = args.out or tempfile.mkdtemp(prefix=f"hosttune-{prefix}-")
    os.makedirs(out, exist_ok=True)
    return args, out, model_repo(args.repo or os.path.join(out, "models"), getattr(args, "variant", "sample"))


# -- models, plans, tools ----------------------------------------------------------------------
def model_repo(repo: str, *variants: str) -> str:
    """`repo`, with each sample model variant it lacks (default: sample) built into it first."""
    for variant in variants or ("sample",):
        if not os.path.isdir(os.path.join(repo, variant)):
            run_tool([*HOSTTUNE, "model", "sample", "--repo", repo, "--variant", variant, "--no-int8"], ok=(0,))
    return repo


def run_tool(cmd: list[str], cpus: list[int] | None = None, ok: tuple[int, ...] = (0, 1)) -> None:
    """A command (pinned to `cpus`), its output kept; exits with its stderr on an exit status not in
    `ok` (by default 1 passes too: `hosttune bench`'s verdict, no failure)."""
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    if r.returncode not in ok:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")


def load_plan(path: str | None, out: str) -> tuple[str, dict]:
    """The plan at `path`, or this host's (`hosttune plan --json`, saved into `out`): its path and content."""
    if not path:
        path = os.path.join(out, "plan.json")
        with open(path, "w") as f:
            subprocess.run([*HOSTTUNE, "plan", "--json"], stdout=f, check=True)
    with open(path) as f:
        return path, json.load(f)


def wait_quiet(max_load: float | None, timeout: float = 600.0) -> float:
    """On a shared machine: wait (at most `timeout` s) until the 1-minute load average is below
    `max_load`; returns the load average when the round starts (recorded beside the figures)."""
    deadline = time.monotonic() + timeout
    while max_load is not None and os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


# -- statistics --------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile by the rule `hosttune bench` reports (numpy's linear one); None for no values."""
    from hosttune.bench import stats

    return stats.percentile(sorted(values), q) if values else None


# -- load --------------------------------------------------------------------------------------
def result(samples: list[float], errors: int, seconds: float) -> dict:
    """One case's run: latencies (ms) measured within `seconds`, and the requests that failed."""
    from hosttune.bench import stats

    samples = sorted(samples)
    p50, p99 = (stats.percentile(samples, 50), stats.percentile(samples, 99)) if samples else (None, None)
    return {"requests": len(samples), "errors": errors, "throughput": len(samples) / seconds,
            "p50_ms": p50, "p99_ms": p99, "max_ms": samples[-1] if samples else None, "samples_ms": samples}


async def measure(connect: Callable[[], contextlib.AbstractAsyncContextManager], concurrency: int, seconds: float,
                  warmup: float) -> dict:
    """`concurrency` streams, each opened by `connect()` (an async context that gives a `send()`
    returning whether the request succeeded), sending back to back; latencies of the requests that
    start after the warm-up and end within the measured window."""
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds
    samples: list[float] = []
    errors = 0

    async def stream() -> None:
        nonlocal errors
        async with connect() as send:
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                ok = await send()
                t1 = time.perf_counter()
                if not ok:
                    errors += 1
                elif t0 >= t_start and t1 <= t_end:
                    samples.append((t1 - t0) * 1e3)

    await asyncio.gather(*(stream() for _ in range(concurrency)))
    return result(samples, errors, seconds)


async def load(port: int, path: str, body: bytes, headers: dict, concurrency: int, seconds: float,
               warmup: float) -> dict:
    """`measure` over HTTP: one keep-alive connection per stream POSTing `body` (200: success)."""
    from hosttune.bench.httpclient import Connection

    @contextlib.asynccontextmanager
    async def connect():
        conn = Connection("127.0.0.1", port)

        async def send() -> bool:
            status, _, _ = await conn.request("POST", path, body, headers)
            return status == 200

        try:
            yield send
        finally:
            await conn.close()

    return await measure(connect, concurrency, seconds, warmup)


# -- rounds, summary, comparison ---------------------------------------------------------------
def interleaved(cases: list, rounds: int) -> Iterator[tuple[int, tuple]]:
    """(round, case) for every case in every round, the order alternating between rounds, so that a
    shared machine's changing load falls on all cases alike."""
    for k in range(rounds):
        for case in cases if k % 2 == 0 else cases[::-1]:
            yield k, case


def round_line(k: int, rounds: int, name: str, r: dict, width: int = 20, digits: int = 3, extra: str = "") -> str:
    return (f"round {k + 1}/{rounds} {name:<{width}} {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:7.{digits}f} ms  "
            f"p99 {r['p99_ms']:7.{digits}f} ms  errors {r['errors']}{extra}  load {os.getloadavg()[0]:.1f}")


def case_summary(runs: list[dict]) -> dict:
    """One case over the rounds: throughput, p50 and p99 per round and their medians, the errors."""
    out: dict = {f"{key}_per_round": [r[key] for r in runs] for key in ("throughput", "p50_ms", "p99_ms")}
    out["errors"] = sum(r["errors"] for r in runs)
    out.update({key: median(out[f"{key}_per_round"]) for key in ("throughput", "p50_ms", "p99_ms")})
    return out


def compare(a_runs: list[dict], b_runs: list[dict], a: str, b: str, label: str) -> dict:
    """A against B over the rounds: per-round differences (keys `<a>_minus_<b>`), the spreads, and
    whether the difference is beyond the rounds' spread (Mann-Whitney U over the per-round values,
    two-sided, 5 %): the verdict says "<label> better" or "<label> worse" then."""
    from hosttune.bench import stats

    out = {}
    for key, better in (("p50_ms", -1), ("p99_ms", -1), ("throughput", 1)):
        va, vb = [r[key] for r in a_runs], [r[key] for r in b_runs]
        diffs = [x - y for x, y in zip(va, vb)]
        test = stats.mann_whitney_u(va, vb)
        verdict = ("within the per-round spread" if test["p"] >= stats.ALPHA
                   else f"{label} better" if median(diffs) * better > 0 else f"{label} worse")
        out[key] = {f"{a}_minus_{b}_per_round": diffs, f"{a}_minus_{b}": median(diffs),
                    "relative": median(diffs) / median(vb) if median(vb) else None,
                    f"spread_{a}": max(va) - min(va), f"spread_{b}": max(vb) - min(vb),
                    "p": test["p"], "verdict": verdict}
    return out


def verdicts_pre(comparisons: dict[str, dict], diff_key: str) -> str:
    """The medians of the per-round differences and the verdicts of `compare`s, as an HTML <pre>."""
    return "<pre>" + json.dumps({k: {m: {diff_key: v[diff_key], "verdict": v["verdict"]} for m, v in c.items()}
                                 for k, c in comparisons.items()}, indent=1) + "</pre>"


# -- output ------------------------------------------------------------------------------------
def write_json(out: str, summary: dict) -> None:
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


def write_page(out: str, title: str, page: list[str]) -> None:
    """report.html: the parts of `page` (HTML) one after the other."""
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write(f"<!doctype html><meta charset='utf-8'><title>{title}</title><body style='font-family:sans-serif'>"
                + "\n".join(page) + "</body>")


def write_rounds_report(out: str, title: str, intro: list[str], results: dict[str, list[dict]]) -> None:
    """report.html of a comparison: `intro`, then the latency CDF of all rounds and p50 and
    throughput per round of every case in `results`."""
    from hosttune.bench import report

    series = list(results.items())
    write_page(out, title, [
        *intro,
        "<h2>Latency CDF (all rounds)</h2>",
        report.svg_cdf([(name, sorted(v for r in runs for v in r["samples_ms"])) for name, runs in series]),
        "<h2>p50 per round</h2>",
        report.svg_bars([(name, [r["p50_ms"] for r in runs]) for name, runs in series], "p50 ms"),
        "<h2>Throughput per round</h2>",
        report.svg_bars([(name, [r["throughput"] for r in runs]) for name, runs in series], "requests/s")])
