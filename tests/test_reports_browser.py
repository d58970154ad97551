"""The HTML reports (bench, bench compare, fleet bench) in a real browser: headless Chromium from the
Debian archive (packages chromium and chromium-driver, installed by scripts/bootstrap) driven by
Selenium. Each report is made from real `hosttune bench` results; the page must load without a
console error and show its charts. A full-page screenshot of each stays in the test's tmp dir."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest

pytest.importorskip("openvino")
webdriver = pytest.importorskip("selenium.webdriver")

from hosttune.fleet import bench as fleet_bench  # noqa: E402
from hosttune.fleet import report as fleet_report  # noqa: E402
from hosttune.fleet.inventory import FleetHost  # noqa: E402
from hosttune.fleet.runner import HostResult  # noqa: E402
from hosttune.model import repo as model_repo  # noqa: E402
from tests.serverproc import HOSTTUNE  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
RUNS = ["--runs", "3", "--duration", "0.3", "--warmup", "0.1"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """bench.html (one result), compare.html (two), fleet/report.html (both results as two hosts and
    an unreachable one), all from real in-process benchmark runs of two small models."""
    out = tmp_path_factory.mktemp("reports")
    models = out / "models"
    model_repo.sample(str(models), variant="tiny", int8=False)
    model_repo.sample(str(models), variant="trivial", int8=False)
    cpu = sorted(os.sched_getaffinity(0))[-1]
    plan = {"schema": "hosttune.plan/1", "hostname": "test", "profile": "latency", "housekeeping": [cpu],
            "isolated": [], "instances": [{
                "name": "node0", "node": 0, "cpus": [cpu], "cpus_list": str(cpu), "mems": [0], "mems_list": "0",
                "cores": 1, "port": 9000, "bind": "127.0.0.1", "probe_host": "127.0.0.1",
                "probe_url": "http://127.0.0.1:9000", "model": "tiny", "streams": 1,
                "openvino": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}, "ovms": {"nireq": 1}}]}
    (out / "plan.json").write_text(json.dumps(plan))
    docs = {}
    for model in ("tiny", "trivial"):
        args = ["bench", "--plan", str(out / "plan.json"), "--repo", str(models), "--model", model, *RUNS,
                "--label", model, "-o", str(out / f"{model}.json")]
        if model == "tiny":
            args += ["--html", str(out / "bench.html")]
        r = subprocess.run([*HOSTTUNE, *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        docs[model] = json.loads((out / f"{model}.json").read_text())
    r = subprocess.run([*HOSTTUNE, "bench", "compare", str(out / "tiny.json"), str(out / "trivial.json"),
                        "--html", str(out / "compare.html")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    results = [HostResult(FleetHost(name=f"host-{m}", address="127.0.0.1"), "ok", elapsed_s=2.0, exit_code=0,
                          result=doc, detail={"bench": fleet_bench.summarize(doc)}) for m, doc in docs.items()]
    results.append(HostResult(FleetHost(name="gone", address="192.0.2.1"), "unreachable",
                              reason="cannot connect: timed out"))
    rep = fleet_report.build("bench", results, False, inventory=["inv.yml"], limit=None, started=0,
                             elapsed_s=3.0, forks=5, connect_timeout=10, timeout=None)
    fleet_report.write(rep, str(out / "fleet"))
    pages = {"bench": out / "bench.html", "compare": out / "compare.html", "fleet": out / "fleet" / "report.html"}
    # the runtime comparison (hosttune bench --runtime), where its extras are installed; found, not
    # imported, so TVM stays out of this pytest worker
    if any(importlib.util.find_spec(m) is None for m in ("onnxruntime", "tvm")):
        return pages
    r = subprocess.run([*HOSTTUNE, "bench", "--plan", str(out / "plan.json"), "--repo", str(models), "--model", "tiny",
                        "--runtime", "openvino,onnxruntime,tvm", *RUNS, "--cache-dir", str(out / "cache"),
                        "--html", str(out / "runtimes.html")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pages["runtimes"] = out / "runtimes.html"
    return pages


@pytest.fixture(scope="module")
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


def start_browser():
    """Headless Chromium (also for the tune report's test in tests/test_tune.py)."""
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # both paths given: Selenium Manager never looks for (or downloads) a driver
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def load(driver, path) -> list[dict]:
    """Open a file, wait for the load to finish, return what the page logged to the console."""
    driver.get_log("browser")  # drop what an earlier page left
    driver.get(path.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    return driver.get_log("browser")


def screenshot(driver, path) -> None:
    driver.set_window_size(1280, 600)  # the page's own height, not the last page's window
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height, 600), 8000))
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not an empty canvas


def charts(driver) -> list[dict]:
    """Every inline SVG as the browser laid it out: its size and how many marks it draws."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('svg')).map(svg => {
            const box = svg.getBoundingClientRect();
            return {width: box.width, height: box.height,
                    lines: svg.querySelectorAll('polyline').length, bars: svg.querySelectorAll('rect').length,
                    text: svg.textContent};
        });""")


def test_console_errors_are_caught(browser, tmp_path):
    """The check below can fail: a page that loads a missing file logs a SEVERE console entry."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="missing.png"></body></html>')
    assert [e for e in load(browser, page) if e["level"] == "SEVERE"]


@pytest.mark.parametrize("kind, svgs, cdfs, titles", [
    ("bench", 5, 2, ["Latency CDF per instance", "Throughput per run", "Tail latency per run: p99.9 and max"]),
    ("compare", 6, 3, ["Latency CDF per instance", "p99 latency per run", "Tail latency per run: p99.9 and max"]),
    ("fleet", 3, 0, ["p99.9 latency (ms, lower is better)"]),
    # the comparison figure, then the usual pictures with one instance per runtime (3 per-run CDFs)
    ("runtimes", 8, 4, ["Comparison: latency and throughput per runtime", "Pairwise significance",
                        "Latency CDF per instance", "tvm (untuned)", "outputs agree"]),
])
def test_report_renders_in_chromium(browser, reports, tmp_path, kind, svgs, cdfs, titles):
    if kind not in reports:
        pytest.skip("the runtime comparison needs hosttune[onnxruntime,tvm]")
    errors = [e for e in load(browser, reports[kind]) if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    found = charts(browser)
    assert len(found) == svgs
    assert all(c["width"] > 100 and c["height"] > 50 for c in found), found  # laid out, not collapsed
    assert sum(c["lines"] > 0 for c in found) == cdfs  # CDF curves
    assert all(c["lines"] > 0 or c["bars"] > 1 for c in found)  # every chart draws something
    body = browser.find_element("tag name", "body").text
    for title in titles:
        assert title in body
    if kind == "fleet":
        assert "host-tiny node0" in body and "gone" in body and "n/a" in found[0]["text"]
    if kind == "runtimes":  # the comparison figure: one group of p50/p99/p99.9 bars per runtime
        assert all(name in found[0]["text"] for name in ("openvino", "onnxruntime", "tvm"))
        assert found[0]["bars"] == 1 + 3 * 3 + 3  # the frame, the bars, the legend's keys
        assert "/s" in found[0]["text"]
    screenshot(browser, tmp_path / f"{kind}.png")
