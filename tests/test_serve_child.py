"""hosttune.serve.child: the one reader of `hosttune serve`'s start banner (tune's candidates, the
tests' and benchmarks' servers), on stand-in children that print what serve prints, and on a real
serve that refuses its arguments."""

from __future__ import annotations

import sys
import time

import pytest

from hosttune.errors import HosttuneError
from hosttune.serve.child import ServeChild

BANNERS = [
    # REST and gRPC, the first model's streams and nireq
    ("hosttune serve: listening on http://127.0.0.1:8001 and grpc://127.0.0.1:9001 pid 7 - "
     "m:1 (streams 4, nireq 8), n:2 (streams 1, nireq 2)", 8001, 9001, {"streams": 4, "nireq": 8}),
    # gRPC only, over TLS, IPv6
    ("hosttune serve: listening on grpcs://[::1]:9443 pid 7 - m:1 (streams 2, nireq 3), basic auth (1 users)",
     None, 9443, {"streams": 2, "nireq": 3}),
    ("hosttune serve: listening on https://0.0.0.0:443 pid 7 - m:1 (streams 1, nireq 1)", 443, None,
     {"streams": 1, "nireq": 1}),
]


def stand_in(stderr_lines: list[str], then: str = "time.sleep(60)") -> list[str]:
    code = "import sys, time\n" + "".join(f"print({line!r}, file=sys.stderr, flush=True)\n"
                                          for line in stderr_lines) + then
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("banner,port,grpc_port,served", BANNERS)
def test_the_banner_gives_ports_and_the_first_models_settings(banner, port, grpc_port, served):
    child = ServeChild(stand_in(["compiling m:1 ...", banner]))
    try:
        child.wait(time.monotonic() + 30)
        assert (child.port, child.grpc_port, child.served) == (port, grpc_port, served)
        assert child.banner.strip() == banner and child.output.endswith(banner + "\n")
        assert child.proc.poll() is None  # still serving
    finally:
        child.terminate()
        assert child.reap() == -15


def test_a_child_that_exits_first_is_named_by_its_last_line():
    child = ServeChild(stand_in(["hosttune serve: listening soon", "hosttune serve: --nireq: must be ..."],
                                then="sys.exit(2)"))
    with pytest.raises(HosttuneError) as err:
        child.wait(time.monotonic() + 30)
    assert err.value.message == "hosttune serve did not start: hosttune serve: --nireq: must be ..."
    assert child.proc.returncode == 2 and child.proc.stderr.closed


def test_a_silent_child_is_stopped_at_the_deadline():
    child = ServeChild(stand_in([]))
    t0 = time.monotonic()
    with pytest.raises(HosttuneError, match="did not start: no output"):
        child.wait(t0 + 1.0)
    assert 1.0 <= time.monotonic() - t0 < 20 and child.proc.returncode == -15


def test_a_real_serve_refusing_its_arguments():
    child = ServeChild([sys.executable, "-m", "hosttune", "serve", "--rest_port", "0", "--nireq", "x1"])
    with pytest.raises(HosttuneError) as err:
        child.wait(time.monotonic() + 60)
    assert "--nireq" in err.value.message and child.proc.returncode == 2
