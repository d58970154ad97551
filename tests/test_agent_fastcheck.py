"""The agent's fast check (hosttune.agent.fastcheck) against engine.verify on a synthetic tree.

A check whose inputs read as at the last full verify repeats that verify's summary without
running it; these tests inject drift in place, as a process on the host would, and compare what
the agent reports with what engine.verify says of the same tree: same counts, same per-area
statuses, same drifted rows.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import time
import zlib

import pytest

from hosttune import cpulist, engine, state
from hosttune.agent import fastcheck, worker
from hosttune.agent.daemon import Agent
from hosttune.agent.log import JsonLog
from hosttune.sdnotify import Notifier
from hosttune.sysfs import HostFS
from tests.treegen import Spec, write_tree


def _write(root: str, path: str, value: str) -> None:
    with open(os.path.join(root, path.lstrip("/")), "w") as handle:  # in place, as the kernel's files change
        handle.write(value + "\n")


@pytest.fixture
def agent(tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    write_tree(root, Spec(sockets=2, cores_per_node=4, threads=2, irqs=32, hostname="fast"))
    os.makedirs(os.path.join(root, "etc/default"), exist_ok=True)
    _write(root, "/etc/default/grub", 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"')
    os.makedirs(os.path.join(root, "etc/hosttune"))
    with open(os.path.join(root, "etc/hosttune/hosttune.yaml"), "w") as handle:
        # monitor only: drift stays on the host, so the fast path has drift rows to repeat
        json.dump({"policy": {"profile": "latency"}, "agent": {"port": 0, "reapply": False}}, handle)
    notifier = Notifier()
    a = Agent(argparse.Namespace(root=root, config=None), JsonLog(level="error"), notifier)
    # what each fast check answered: True, the summary was repeated; False, a full verify ran
    answers = []
    real = a.fast.unchanged
    monkeypatch.setattr(a.fast, "unchanged", lambda: answers.append(real()) or answers[-1])
    a.answers = answers
    yield a
    a.fast.close()
    a.server.stop()


def _verify(agent: Agent) -> dict:
    plan = agent.plan if agent.plan is not None else json.loads(agent.plan_json)
    return engine.verify(plan, HostFS(root=agent.fs.root))


def _same_as_verify(agent: Agent) -> dict:
    report = _verify(agent)
    snap = agent.snapshot
    areas: dict = {}
    for row in report["settings"]:
        areas.setdefault(row["area"], {}).setdefault(row["status"], 0)
        areas[row["area"]][row["status"]] += 1
    assert snap["counts"] == report["counts"]
    assert snap["areas"] == areas
    assert snap["status"] == report["status"]
    assert snap["drifted"] == [r for r in report["settings"] if r["status"] == "drift"][:worker.MAX_ROWS]
    return report


def test_fast_check_reports_what_engine_verify_reports(agent):
    root = agent.fs.root
    agent.check("start")
    _same_as_verify(agent)
    assert agent.fast.spec is not None and len(agent.fast.fds) > 100  # every /sys and /proc value held

    assert agent.check("interval") in ("ok", "drift")
    assert agent.answers == [True], "nothing changed: the fast path, no full verify"
    before = _same_as_verify(agent)

    # drift injected in place: an IRQ's affinity, a sysctl
    row = next(r for r in before["settings"] if r["area"] == "irqs" and r["name"].startswith("irq "))
    irq = row["name"]
    outside = min(set(range(16)) - set(cpulist.parse(row["expected"])))  # a CPU the plan keeps IRQs off
    _write(root, f"/proc/irq/{irq.split()[1]}/smp_affinity_list", str(outside))
    _write(root, "/proc/sys/vm/swappiness", "77")
    assert agent.check("interval") == "drift"
    assert agent.answers[-1] is False, "an input changed: a full verify"
    report = _same_as_verify(agent)
    drifted = {r["name"] for r in report["settings"] if r["status"] == "drift"}
    assert {irq, "vm.swappiness"} <= drifted

    # the same drift again: fast path, the same rows as engine.verify
    assert agent.check("interval") == "drift"
    assert agent.answers[-1] is True
    _same_as_verify(agent)

    # back to the planned value: a full verify again, which finds it ok
    _write(root, "/proc/sys/vm/swappiness", "10")
    agent.check("interval")
    assert agent.answers[-1] is False
    report = _same_as_verify(agent)
    assert "vm.swappiness" not in {r["name"] for r in report["settings"] if r["status"] == "drift"}


def test_state_file_and_other_inputs_force_a_full_check(agent):
    root = agent.fs.root
    agent.check("start")
    agent.check("interval")
    assert agent.answers == [True]
    # a file outside /sys and /proc that verify reads (the sysctl drop-in), written by hand
    os.makedirs(os.path.join(root, "etc/sysctl.d"), exist_ok=True)
    _write(root, "/etc/sysctl.d/90-hosttune.conf", "vm.swappiness = 10")
    agent.check("interval")
    assert agent.answers[-1] is False
    _same_as_verify(agent)
    fs = HostFS(root=root)
    state.save(fs, state.load(fs))  # a state file appears (monitor only: the agent wrote none)
    agent.check("interval")
    assert agent.answers[-1] is False
    agent.check("interval")
    assert agent.answers[-1] is True
    state_file = os.path.join(root, "var/lib/hosttune/state.json")
    with open(state_file, "rb") as handle:
        data = handle.read()
    with open(state_file + ".new", "wb") as handle:
        handle.write(data)
    os.replace(state_file + ".new", state_file)  # replaced as state.save does: a new inode
    agent.check("interval")
    assert agent.answers[-1] is False
    _same_as_verify(agent)


def _held_path(agent: Agent, suffix: str) -> str:
    """After a first check: a /sys or /proc file the fast check holds, whose path ends with `suffix`."""
    agent.check("start")
    held = [p for p in _record(agent)["held"] if p.endswith(suffix)]
    assert held, f"no held file ends with {suffix}"
    return held[0]


def _record(agent: Agent) -> dict:
    """The record of a full verify on the agent's tree, as the worker makes it (held paths decoded)."""
    plan = agent.plan if agent.plan is not None else json.loads(agent.plan_json)
    fs = HostFS(root=agent.fs.root)
    with state.Lock(fs, wait=0):
        _, inputs = worker._verify(plan, fs)
    inputs["held"] = zlib.decompress(base64.b64decode(inputs["held"])).decode().split("\n")
    return inputs


def test_raw_bytes_are_compared(agent):
    """A change HostFS.read would hide (a second trailing newline, an invalid UTF-8 byte) still
    counts as a changed input, and a value longer than one read (READ_SIZE) is compared whole."""
    root = agent.fs.root
    path = _held_path(agent, "/smp_affinity_list")
    agent.check("interval")
    assert agent.answers == [True]
    with open(os.path.join(root, path), "rb") as handle:
        original = handle.read()
    for changed in (original + b"\n", original.rstrip(b"\n") + b"\xff\n"):
        with open(os.path.join(root, path), "wb") as handle:
            handle.write(changed)
        agent.check("interval")
        assert agent.answers[-1] is False, f"{changed!r}: a full verify"
        agent.check("interval")
        assert agent.answers[-1] is True, f"{changed!r} again: the fast path"
        _same_as_verify(agent)
    long_value = b"0," * (fastcheck.READ_SIZE + 100) + b"0\n"  # wider than one pread
    with open(os.path.join(root, path), "wb") as handle:
        handle.write(long_value)
    agent.check("interval")
    assert agent.answers[-1] is False
    agent.check("interval")
    assert agent.answers[-1] is True, "the long value reads the same in the daemon as in the child"
    with open(os.path.join(root, path), "r+b") as handle:  # one byte past the first read changes
        handle.seek(fastcheck.READ_SIZE + 3)
        handle.write(b"1")
    agent.check("interval")
    assert agent.answers[-1] is False, "a change past the first READ_SIZE bytes is seen"
    _same_as_verify(agent)


def test_a_tested_path_going_away_is_seen(agent):
    """verify tests that each CPU's cpufreq policy directory exists; the fast check looks them up in
    one listing of their parent. One gone (or a new one appearing) is a full check."""
    root = agent.fs.root
    agent.check("start")
    exists = agent.fast.spec["exists"]
    parents: dict = {}
    for key in exists:
        parents.setdefault(key.rpartition("/")[0], []).append(key)
    parent, keys = max(parents.items(), key=lambda item: len(item[1]))
    assert len(keys) >= fastcheck.LIST_FROM, "the synthetic host has enough policies for a listing"
    agent.check("interval")
    assert agent.answers == [True]
    shutil.rmtree(os.path.join(root, keys[-1]))
    agent.check("interval")
    assert agent.answers[-1] is False
    _same_as_verify(agent)
    agent.check("interval")
    assert agent.answers[-1] is True


def test_lexists_all_agrees_with_lexists(tmp_path):
    base = tmp_path / "d"
    base.mkdir()
    for i in range(12):
        (base / f"f{i}").write_text("x")
    (base / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    keys = [f"d/f{i}" for i in range(0, 16)] + ["d/dangling", "nowhere/a", "file/x"] + [f"file/{i}" for i in range(9)]
    prefix = str(tmp_path) + "/"
    assert fastcheck._lexists_all(prefix, keys) == [os.path.lexists(prefix + k) for k in keys]


def test_replan_interval_bounds_the_time_between_rediscoveries(agent, monkeypatch):
    """Interval checks verify the current plan until agent.replan_interval has passed since it was
    made; then the host is discovered and planned again. The same plan needs no full check (the
    fast path goes on); a different one (here: the host renamed) gets one."""
    import dataclasses

    root = agent.fs.root
    agent.check("start")
    assert agent.check_mode == "replan"
    agent.check("interval")
    assert agent.check_mode == "unchanged"
    agent.config.agent = dataclasses.replace(agent.config.agent, replan_interval=60.0)
    monkeypatch.setattr(agent, "planned_at", agent.planned_at - 61)
    agent.check("interval")
    assert agent.check_mode == "rediscovered_unchanged"
    assert agent.snapshot["last_check"]["mode"] == "rediscovered_unchanged"
    assert time.time() - agent.planned_at < 5
    agent.check("interval")
    assert agent.check_mode == "unchanged"
    assert agent.status()["check_modes"] == {"replan": 1, "unchanged": 2, "rediscovered_unchanged": 1}

    _write(root, "/proc/sys/kernel/hostname", "renamed")
    monkeypatch.setattr(agent, "planned_at", agent.planned_at - 61)
    agent.check("interval")
    assert agent.check_mode == "replan", "a different plan: a full check with it"
    assert agent.snapshot["hostname"] == "renamed"
    assert json.loads(agent.plan_json)["hostname"] == "renamed"
    _same_as_verify(agent)


def test_a_new_plan_whose_check_fails_leaves_no_old_plan(agent, monkeypatch):
    """A periodic re-discovery that finds a different plan checks with it; when that check fails,
    the agent must not go on verifying (or re-applying) the plan it replaced: the next check plans
    from scratch."""
    import dataclasses

    from hosttune.errors import HosttuneError

    agent.check("start")
    agent.check("interval")
    agent.config.agent = dataclasses.replace(agent.config.agent, replan_interval=60.0)
    _write(agent.fs.root, "/proc/sys/kernel/hostname", "renamed")
    monkeypatch.setattr(agent, "planned_at", agent.planned_at - 61)
    real = worker.check

    def failing(*args, **kwargs):
        raise HosttuneError("apply child died")

    monkeypatch.setattr(worker, "check", failing)
    assert agent.check("interval") == "error"
    assert agent.plan_json is None and agent.plan is None and agent.last_out is None
    monkeypatch.setattr(worker, "check", real)
    assert agent.check("interval") == "drift"
    assert agent.check_mode == "replan"
    assert json.loads(agent.plan_json)["hostname"] == "renamed"


def test_a_held_file_that_fails_is_opened_again(agent):
    """A held descriptor that stops working (on a live kernel: ENODEV once its IRQ or CPU went away,
    though a new one may come back under the same path) makes that check a full one, and the
    files are opened again, so the fast path resumes instead of failing for good."""
    agent.check("start")
    agent.check("interval")
    assert agent.answers == [True]
    stale = agent.fast.fds[len(agent.fast.fds) // 2]
    os.close(stale)  # the descriptor number now reads EBADF, as a removed sysfs file reads ENODEV
    agent.check("interval")
    assert agent.answers[-1] is False
    assert agent.list_irqs, "a check the fast path did not answer: the next fast check lists /proc/irq"
    agent.fast_check()
    assert not agent.list_irqs
    agent.check("interval")
    assert agent.answers[-1] is True, "opened again: the fast path is back"
    _same_as_verify(agent)
