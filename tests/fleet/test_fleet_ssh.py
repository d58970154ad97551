"""Fleet over real SSH: sshd endpoints on 127.0.0.1 ports (tests/fleet/sshd.py), each "host" with its own
hosttune_root, the remote hosttune being this checkout's. Needs root and openssh-server."""

from __future__ import annotations

import glob
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests.fleet import sshd as sshd_mod
from tests.fleet.conftest import REPO, ssh_vars, write_inventory

pytestmark = pytest.mark.skipif(sshd_mod.missing() is not None, reason=sshd_mod.missing() or "")


def fleet(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "hosttune", "fleet", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def script(path, body: str) -> str:
    """An executable shell script (used as a host's hosttune_command)."""
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return str(path)


def temp_files(prefix: str) -> set[str]:
    return set(glob.glob(f"/tmp/{prefix}.*"))


def forced_logins(server: sshd_mod.Sshd) -> int:
    """Sessions that reached the server's ForceCommand so far (each notes its pid)."""
    try:
        with open(server.forced_pids) as handle:
            return len(handle.read().split())
    except FileNotFoundError:
        return 0


def test_verify_statuses_unreachable_hung_and_bad_key(tmp_path, sshd_factory, ssh_keys, host_roots, silent_listener):
    a, b = sshd_factory("a"), sshd_factory("b")
    sleepy = sshd_factory("sleepy", force_command="sleep 600")  # logs in, then never answers
    good, wrong = ssh_keys["good"], ssh_keys["wrong"]
    inv = write_inventory(tmp_path / "inv", {
        "ok": ssh_vars(a, good, host_roots["ok"]),
        "pending": ssh_vars(a, good, host_roots["pending"]),
        "drift": ssh_vars(b, good, host_roots["drift"]),
        "tarball": ssh_vars(b, good, host_roots["tarball"]),
        "closed": ssh_vars(sshd_mod.closed_port(), good, host_roots["ok"]),
        "silent": ssh_vars(silent_listener.port, good, host_roots["ok"]),
        "badkey": ssh_vars(a, wrong, host_roots["ok"]),
        "hung": ssh_vars(sleepy, good, host_roots["ok"]),
    })
    out = tmp_path / "report"
    # timeouts generous enough for a loaded 2-CPU machine to log in to 6 sshd sessions at once
    proc = fleet("verify", "-i", inv, "--forks", "8", "--connect-timeout", "5", "--timeout", "5",
                 "--json", "--report", str(out))
    assert proc.returncode == 1, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["schema"] == "hosttune.fleet/1" and rep["command"] == "verify"
    hosts = {h["host"]: h for h in rep["hosts"]}
    status = {name: h["status"] for name, h in hosts.items()}
    assert status == {"ok": "ok", "pending": "pending-reboot", "drift": "drift", "tarball": "drift",
                      "closed": "unreachable", "silent": "unreachable", "badkey": "unreachable", "hung": "failed"}
    assert hosts["ok"]["result"]["schema"] == "hosttune.verify/1" and hosts["ok"]["result"]["hostname"] == "alpha"
    assert hosts["ok"]["exit_code"] == 0 and hosts["drift"]["exit_code"] == 1 and hosts["pending"]["exit_code"] == 3
    assert hosts["tarball"]["result"]["hostname"] == "delta"
    assert "drift:" in hosts["drift"]["reason"]
    assert "Connection refused" in hosts["closed"]["reason"]
    assert "no SSH handshake" in hosts["silent"]["reason"] and "within 5s" in hosts["silent"]["reason"]
    assert "authentication failed" in hosts["badkey"]["reason"] and "id_wrong" in hosts["badkey"]["reason"]
    assert hosts["hung"]["reason"].startswith("timed out after 5s running: hosttune verify")
    # a hung host costs its own timeout and blocks nobody: each timeout fired (never before its 5 s),
    # long before the 600 s hung command or a handshake that never comes (bounds a loaded machine meets)
    assert 5 <= hosts["silent"]["elapsed_s"] < 60 and 5 <= hosts["hung"]["elapsed_s"] < 60
    assert rep["elapsed_s"] < sum(h["elapsed_s"] for h in rep["hosts"])  # hosts overlapped
    assert rep["counts"] == {"ok": 1, "drift": 2, "pending-reboot": 1, "unreachable": 3, "failed": 1,
                             "invalid": 0, "cancelled": 0}
    assert json.loads((out / "report.json").read_text()) == rep
    assert "<table>" in (out / "report.html").read_text()
    # progress on stderr, n/N
    assert "fleet verify: 8 host(s), forks 8" in proc.stderr and "8/8 done" in proc.stderr
    assert "Traceback" not in proc.stderr and "paramiko" not in proc.stderr


def test_verify_uploads_the_inventory_policy(tmp_path, sshd_factory, ssh_keys, host_roots):
    a = sshd_factory("a")
    before = temp_files("hosttune-policy")
    inv = write_inventory(tmp_path / "inv", {
        "same": ssh_vars(a, ssh_keys["good"], host_roots["ok"]),
        "madvise": ssh_vars(a, ssh_keys["good"], host_roots["ok"]),
    }, groups={"default": ["same"], "other": ["madvise"]},
        group_vars={"other": {"hosttune_policy": {"thp": "madvise"}}})
    proc = fleet("verify", "-i", inv, "--json", "-q", "--connect-timeout", "5")
    rep = json.loads(proc.stdout)
    hosts = {h["host"]: h for h in rep["hosts"]}
    assert hosts["same"]["status"] == "ok"  # no hosttune_policy: the host's default
    assert hosts["madvise"]["status"] == "drift"  # the same tree, judged by the inventory's policy
    assert "thp" in hosts["madvise"]["reason"] and "'madvise'" in hosts["madvise"]["reason"]
    assert hosts["madvise"]["policy_source"].endswith(".yml:2") and "group_vars/other.yml" in hosts["madvise"]["policy_source"]
    assert proc.returncode == 1 and proc.stderr == ""
    assert temp_files("hosttune-policy") == before  # the uploaded policy was removed


def test_capture_then_plan_offline(tmp_path, sshd_factory, ssh_keys, host_roots):
    a, b = sshd_factory("a"), sshd_factory("b")
    before = temp_files("hosttune-capture")
    inv = write_inventory(tmp_path / "inv", {
        "alpha.example": ssh_vars(a, ssh_keys["good"], host_roots["ok"]),
        "delta.example": ssh_vars(b, ssh_keys["good"], host_roots["tarball"]),
        "gone.example": ssh_vars(sshd_mod.closed_port(), ssh_keys["good"]),
    }, group_vars={"fleet": {"hosttune_policy": {"profile": "throughput"}}})
    caps = tmp_path / "caps"
    proc = fleet("capture", "-i", inv, "--out", str(caps), "--json", "--connect-timeout", "5")
    assert proc.returncode == 1, proc.stderr  # one host unreachable
    hosts = {h["host"]: h for h in json.loads(proc.stdout)["hosts"]}
    assert hosts["alpha.example"]["status"] == "ok" and hosts["alpha.example"]["hostname"] == "alpha"
    assert hosts["delta.example"]["capture"] == str(caps / "delta.example.tar.gz")
    assert hosts["gone.example"]["status"] == "unreachable"
    assert sorted(os.listdir(caps)) == ["alpha.example.tar.gz", "delta.example.tar.gz"]
    assert temp_files("hosttune-capture") == before  # remote temp captures removed
    # plan from the captures, hosts untouched (the unreachable one has no capture)
    proc = fleet("plan", "-i", inv, "--captures", str(caps), "--limit", "alpha.example:delta.example", "--json")
    assert proc.returncode == 0, proc.stderr
    plans = {h["host"]: h["result"] for h in json.loads(proc.stdout)["hosts"]}
    assert plans["alpha.example"]["hostname"] == "alpha" and plans["delta.example"]["hostname"] == "delta"
    assert len(plans["delta.example"]["nodes"]) == 4 and plans["delta.example"]["profile"] == "throughput"
    # the same plan as `hosttune plan` run on the host itself
    (tmp_path / "p.yml").write_text("profile: throughput\n")
    local = subprocess.run([sys.executable, "-m", "hosttune", "plan", "--root", host_roots["tarball"],
                            "--policy", str(tmp_path / "p.yml"), "--json"], capture_output=True, text=True,
                           cwd=REPO, check=True)
    assert json.loads(local.stdout)["instances"] == plans["delta.example"]["instances"]


def test_forks_caps_concurrency(tmp_path, sshd_factory, ssh_keys, host_roots):
    a = sshd_factory("a")
    log = tmp_path / "concurrency.log"
    # each host holds its slot until a second one runs beside it (or all 5 have started, for the
    # last one): with --forks 2 two always overlap, however slow the logins are; 60 s deadline
    wrapper = script(tmp_path / "hosttune-wrapper", f"""
echo "start $(date +%s.%N)" >> {log}
i=0
while [ $i -lt 600 ]; do
    started=$(grep -c start {log}); ended=$(grep -c end {log})
    [ $((started - ended)) -ge 2 ] || [ "$started" -ge 5 ] && break
    sleep 0.1; i=$((i + 1))
done
echo "end $(date +%s.%N)" >> {log}
exec {sshd_mod.hosttune_command()} "$@"
""")
    hosts = {f"h{i}": ssh_vars(a, ssh_keys["good"], host_roots["ok"], command=wrapper) for i in range(5)}
    inv = write_inventory(tmp_path / "inv", hosts)
    proc = fleet("verify", "-i", inv, "--forks", "2", "-q", "--connect-timeout", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = sorted((float(t), +1 if kind == "start" else -1)
                    for kind, t in (line.split() for line in log.read_text().splitlines()))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert len(events) == 10 and peak == 2


def test_ctrl_c_reports_what_finished(tmp_path, sshd_factory, ssh_keys, host_roots, silent_listener):
    a = sshd_factory("a")
    sleepy = sshd_factory("sleepy", force_command="sleep 600")
    inv = write_inventory(tmp_path / "inv", {
        "fast": ssh_vars(a, ssh_keys["good"], host_roots["ok"]),
        "quiet": ssh_vars(silent_listener.port, ssh_keys["good"], host_roots["ok"]),  # stuck in the handshake
        **{f"slow{i}": ssh_vars(sleepy, ssh_keys["good"], host_roots["ok"]) for i in range(4)},
    })
    logins_before = forced_logins(sleepy)
    proc = subprocess.Popen([sys.executable, "-m", "hosttune", "fleet", "verify", "-i", inv, "--forks", "3",
                             "--timeout", "600", "--connect-timeout", "600", "--json"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 60
    for line in proc.stderr:  # wait until the fast host is done ...
        seen.append(line)
        if "fast ok" in line or time.monotonic() > deadline:
            break
    # ... and its slot went to a second slow host: both slow sessions logged in and hanging
    while forced_logins(sleepy) < logins_before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert forced_logins(sleepy) == logins_before + 2, "".join(seen)
    interrupted_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    stopped_in = time.monotonic() - interrupted_at
    assert proc.returncode == 130, "".join(seen) + err
    assert stopped_in < 60  # not the 600 s command or connect timeouts
    rep = json.loads(out)
    status = {h["host"]: h["status"] for h in rep["hosts"]}
    assert status["fast"] == "ok"
    assert status["quiet"] == "cancelled"
    assert all(status[f"slow{i}"] == "cancelled" for i in range(4))
    assert rep["interrupted"] is True and rep["exit_code"] == 130
    reasons = {h["host"]: h["reason"] for h in rep["hosts"]}
    assert sum("before it started" in reasons[f"slow{i}"] for i in range(4)) == 2  # the two never logged in
    assert "interrupted: 1/6 host(s) finished" in err and "Traceback" not in err


def test_bench_collects_throughput_and_p99(tmp_path, sshd_factory, ssh_keys):
    """The collector and the HTML report, with stand-in `hosttune bench` commands (fixed numbers)."""
    a = sshd_factory("a")

    def fake_bench(name, tput, p99, verdict, code, tails=False):
        doc = {"schema": "hosttune.bench/1", "verdict": verdict, "instances": [
            {"name": "node0", "throughput": tput, "p99_ms": p99, "verdict": verdict},
            {"name": "node1", "throughput": tput * 0.9, "p99_ms": p99 * 1.2, "verdict": verdict}],
            "aggregate": {"throughput": {"mean": tput * 1.9}, "p99_ms": {"mean": p99 * 1.1}}}
        if tails:  # p99.9 and max only from this host (an older hosttune bench on the other reports none)
            for inst in doc["instances"]:
                inst.update(p999_ms=inst["p99_ms"] * 2, max_ms=inst["p99_ms"] * 4)
        args_log = tmp_path / f"{name}.args"
        return script(tmp_path / f"bench-{name}",
                      f"echo \"$@\" > {args_log}\ncat <<'EOF'\n{json.dumps(doc)}\nEOF\nexit {code}\n")

    inv = write_inventory(tmp_path / "inv", {
        "fast": ssh_vars(a, ssh_keys["good"], command=fake_bench("fast", 900.0, 3.5, "stable", 0, tails=True)),
        "slow": ssh_vars(a, ssh_keys["good"], command=fake_bench("slow", 450.0, 9.0, "unstable", 1)),
    })
    out = tmp_path / "report"
    proc = fleet("bench", "-i", inv, "--no-policy", "--report", str(out), "-q", "--", "--fail-unstable")
    assert proc.returncode == 1, proc.stderr  # `hosttune bench --fail-unstable` failed on one host
    assert (tmp_path / "fast.args").read_text().split() == ["bench", "--json", "--fail-unstable"]
    assert "node0 900.0/s p99 3.50ms p99.9 7.00ms max 14.00ms stable" in proc.stdout
    assert "node0 450.0/s p99 9.00ms unstable" in proc.stdout
    assert "hosttune bench exited 1: verdict unstable (node0 unstable, node1 unstable)" in proc.stdout
    rep = json.loads((out / "report.json").read_text())
    fast = next(h for h in rep["hosts"] if h["host"] == "fast")
    assert fast["status"] == "ok" and fast["bench"]["throughput"] == 1710.0
    assert fast["bench"]["instances"][1] == {"name": "node1", "throughput": 810.0, "p99_ms": 4.2,
                                             "p999_ms": 8.4, "max_ms": 16.8, "verdict": "stable"}
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 3 and "fast node0" in page and "slow node1" in page and "900.00" in page
    assert "p99.9 latency (ms, lower is better)" in page and "8.40 ms" in page


def test_bench_real_hosttune_bench(tmp_path, sshd_factory, ssh_keys, host_roots):
    """`hosttune bench` itself on two hosts (OpenVINO, a trivial model, one short run each)."""
    pytest.importorskip("openvino")
    from hosttune.model import repo as model_repo

    models = tmp_path / "models"
    model_repo.sample(str(models), variant="trivial", int8=False)
    live = tmp_path / "live.tar.gz"  # this machine: the plan's instance CPUs must exist here
    subprocess.run([sys.executable, "-m", "hosttune", "capture", "-o", str(live)], check=True, cwd=REPO,
                   capture_output=True)
    a, b = sshd_factory("a"), sshd_factory("b")
    inv = write_inventory(tmp_path / "inv", {
        "one": ssh_vars(a, ssh_keys["good"], str(live)),
        "two": ssh_vars(b, ssh_keys["good"], str(live)),
    }, group_vars={"fleet": {"hosttune_policy": {"instances": {"model": "trivial"}}}})
    out = tmp_path / "report"
    proc = fleet("bench", "-i", inv, "--forks", "1", "--json", "--report", str(out), "--",
                 "--repo", str(models), "--runs", "1", "--duration", "0.3", "--warmup", "0.1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = json.loads(proc.stdout)
    for host in rep["hosts"]:
        assert host["status"] == "ok", host["reason"]
        assert host["result"]["schema"] == "hosttune.bench/1"
        inst = host["bench"]["instances"][0]
        assert inst["name"] == "node0" and inst["throughput"] > 0 and 0 < inst["p99_ms"] <= inst["p999_ms"]
        assert inst["max_ms"] == host["result"]["instances"][0]["max_ms"] >= inst["p999_ms"]
        assert inst["verdict"] == "unsure"  # one run: never stable, and no spread to call unstable
        assert host["result"]["instances"][0]["model"] == "trivial"  # the inventory policy reached bench
    assert (out / "report.html").read_text().count("<svg") == 3  # throughput, p99, p99.9


def test_host_keys(tmp_path, sshd_factory, ssh_keys, host_roots):
    """A changed host key is refused; --strict-host-keys also refuses unknown hosts (HOME's known_hosts)."""
    a, b = sshd_factory("a"), sshd_factory("b")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key_a = open(a.host_key + ".pub").read().split()[:2]
    key_b = open(b.host_key + ".pub").read().split()[:2]
    (home / ".ssh" / "known_hosts").write_text(
        f"[127.0.0.1]:{a.port} {' '.join(key_a)}\n"
        f"[127.0.0.1]:{b.port} {' '.join(key_a)}\n")  # b is recorded with a's key: a mismatch
    c = sshd_factory("c")  # not in known_hosts
    inv = write_inventory(tmp_path / "inv", {
        "known": ssh_vars(a, ssh_keys["good"], host_roots["ok"]),
        "changed": ssh_vars(b, ssh_keys["good"], host_roots["ok"]),
        "new": ssh_vars(c, ssh_keys["good"], host_roots["ok"]),
    })
    env = dict(os.environ, HOME=str(home))
    for strict, new_status in ((False, "ok"), (True, "unreachable")):
        args = [sys.executable, "-m", "hosttune", "fleet", "verify", "-i", inv, "--json", "-q",
                "--connect-timeout", "5"] + (["--strict-host-keys"] if strict else [])
        proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
        hosts = {h["host"]: h for h in json.loads(proc.stdout)["hosts"]}
        assert hosts["known"]["status"] == "ok"
        assert hosts["changed"]["status"] == "unreachable" and "host key mismatch" in hosts["changed"]["reason"]
        assert hosts["new"]["status"] == new_status
        if strict:
            assert "not in known_hosts" in hosts["new"]["reason"]
    assert key_b != key_a
    assert (home / ".ssh" / "known_hosts").read_text().count("\n") == 2  # nothing was added


def test_remote_problems_are_failed_with_the_reason(tmp_path, sshd_factory, ssh_keys, host_roots):
    a = sshd_factory("a")
    good = ssh_keys["good"]
    inv = write_inventory(tmp_path / "inv", {
        "nohosttune": ssh_vars(a, good, host_roots["ok"], command="/nonexistent/bin/hosttune"),
        "badroot": ssh_vars(a, good, "/nonexistent/root"),
        "local": dict(ssh_vars(a, good, host_roots["ok"]), ansible_connection="local"),
        "fine": ssh_vars(a, good, host_roots["ok"]),
    })
    proc = fleet("verify", "-i", inv, "--json", "-q", "--connect-timeout", "5")
    assert proc.returncode == 1
    hosts = {h["host"]: h for h in json.loads(proc.stdout)["hosts"]}
    assert {n: h["status"] for n, h in hosts.items()} == {
        "nohosttune": "failed", "badroot": "failed", "local": "failed", "fine": "ok"}
    assert "hosttune_command '/nonexistent/bin/hosttune' not found on the host" in hosts["nohosttune"]["reason"]
    assert hosts["nohosttune"]["exit_code"] == 127 and hosts["badroot"]["exit_code"] == 2
    assert hosts["badroot"]["reason"].startswith("hosttune verify exited 2:")
    assert "/nonexistent/root" in hosts["badroot"]["reason"]
    assert "ansible_connection=local is not supported" in hosts["local"]["reason"]
