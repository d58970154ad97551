"""The one Prometheus text writer (hosttune.exposition) and the one sd_notify (hosttune.sdnotify),
through the agent's and the server's metrics, read back by prometheus_client's parser and by
tests/promtext.py."""

from __future__ import annotations

import math
import os
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hosttune import exposition, sdnotify
from hosttune.agent.metrics import Registry
from hosttune.serve import metrics as serve_metrics
from tests import promtext

AWKWARD = 'back\\slash "quoted"\nnext line é'


@pytest.mark.parametrize("value,text", [
    (0, "0"), (3.0, "3"), (-7, "-7"), (0.25, "0.25"), (1e20, "1e+20"),
    (math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"),
])
def test_numbers_as_the_format_spells_them(value, text):
    assert exposition.number(value) == text


def test_escapes():
    assert exposition.escape_label(AWKWARD) == 'back\\\\slash \\"quoted\\"\\nnext line é'
    assert exposition.escape_help("a\\b\nc \"q\"") == 'a\\\\b\\nc "q"'  # HELP keeps its quotes
    assert exposition.labels([]) == ""
    assert exposition.sample("x", [("a", "1"), ("b", "2")], 1) == 'x{a="1",b="2"} 1'


def _reference(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_agent_registry_round_trips_awkward_values():
    r = Registry()
    g = r.gauge("hosttune_test_value", "help with \\ and\na second line", ["what"])
    g.set(math.nan, what=AWKWARD)
    g.set(math.inf, what="up")
    g.set(-math.inf, what="down")
    text = r.render()
    fam = _reference(text)["hosttune_test_value"]
    assert fam.documentation == "help with \\ and\na second line"
    got = {s.labels["what"]: s.value for s in fam.samples}
    assert math.isnan(got[AWKWARD]) and got["up"] == math.inf and got["down"] == -math.inf
    ours = promtext.parse(text)["hosttune_test_value"].samples
    assert {labels["what"] for _, labels, _ in ours} == {AWKWARD, "up", "down"}


def test_server_metrics_write_nan_and_inf():
    """The server's writer had no NaN/Inf guard: a gauge read at scrape time that returned NaN
    raised ValueError (int(nan)) and the whole scrape failed."""
    m = serve_metrics.Metrics()
    m.model("m", 1, streams=1, nireq=1, active_fn=lambda: math.nan)
    m.current.labels(name=AWKWARD, version="1").set(math.inf)
    m.request_time.labels(interface="REST", name="m", version="1").observe(12.5)
    body, content_type = m.render()
    assert content_type == exposition.CONTENT_TYPE
    text = body.decode()
    assert 'ovms_infer_req_active{name="m",version="1"} NaN' in text.splitlines()
    fams = promtext.parse(text)  # keeps OVMS's bare counter names
    current = {labels["name"]: v for _, labels, v in fams["ovms_current_requests"].samples}
    assert current[AWKWARD] == math.inf
    hist = {(s, labels.get("le")): v for s, labels, v in fams["ovms_request_time_us"].samples}
    assert hist[("ovms_request_time_us_count", None)] == 1 and hist[("ovms_request_time_us_sum", None)] == 12.5
    assert hist[("ovms_request_time_us_bucket", "+Inf")] == 1 and hist[("ovms_request_time_us_bucket", "10")] == 0
    ref = _reference(text)
    assert math.isnan(next(s.value for s in ref["ovms_infer_req_active"].samples))


def test_notify_sends_one_datagram_and_takes_the_variable(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify("READY=1", "STATUS=up") is True
        assert listener.recv(4096) == b"READY=1\nSTATUS=up"
    assert "NOTIFY_SOCKET" not in os.environ  # children do not inherit it


def test_notify_outside_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_notify_reports_a_socket_nobody_listens_on(tmp_path):
    n = sdnotify.Notifier({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert n.enabled and n.send("READY=1") is False
    assert n.error and n.error.startswith("sd_notify failed:")
    n.close()
