import errno
import json
import os
import subprocess
import sys
import time

import pytest

from hosttune import discovery, engine, plan, policy, state
from hosttune.errors import HosttuneError
from hosttune.sysfs import HostFS
from tests.conftest import REPO, run_cli


def make_plan(root, pol=None):
    return plan.make_plan(discovery.discover(HostFS.open(root)), policy.validate(pol or {}))


def snapshot(root):
    """Every regular file under root (the touched files are among them), content with trailing newline stripped."""
    snap = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if rel.startswith("var/lib/hosttune"):
                continue
            with open(path) as handle:
                snap[rel] = handle.read().rstrip("\n")
    return snap


def normalized(snap):
    # the fake tree keeps what was written literally; the kernel shows THP's choice in brackets
    out = dict(snap)
    key = "sys/kernel/mm/transparent_hugepage/enabled"
    if key in out and "[" in out[key]:
        out[key] = out[key].split("[")[1].split("]")[0]
    return out


def test_apply_verify_restore_cycle(tree):
    before = snapshot(tree)
    p = make_plan(tree)
    fs = HostFS.open(tree)
    assert engine.verify(p, fs)["status"] == "drift"
    report = engine.apply(p, fs)
    assert report["changed"] and report["reboot_required"]
    fs.forget()
    with open(os.path.join(tree, "sys/devices/system/cpu/cpufreq/policy1/scaling_governor")) as f:
        assert f.read() == "performance"
    with open(os.path.join(tree, "proc/irq/25/smp_affinity_list")) as f:
        assert f.read() == "4"
    with open(os.path.join(tree, "etc/default/grub.d/hosttune.cfg")) as f:
        assert "isolcpus=managed_irq,domain,1-3,5-7 nohz_full=1-3,5-7" in f.read()
    with open(os.path.join(tree, "etc/default/irqbalance")) as f:
        assert f.read() == "#IRQBALANCE_ONESHOT=\n# managed by hosttune; `hosttune restore` removes it\nIRQBALANCE_BANNED_CPULIST=1-3,5-7\n"
    v = engine.verify(p, fs)
    assert v["status"] == "pending-reboot" and v["counts"]["drift"] == 0
    # second apply: nothing to do
    again = engine.apply(p, fs)
    assert not again["changed"] and again["changes"] == []
    # the reboot happens: the kernel now has the args and the isolated CPUs
    with open(os.path.join(tree, "proc/cmdline"), "w") as f:
        f.write("BOOT_IMAGE=/vmlinuz ro quiet " + " ".join(p["kernel_args"]))
    with open(os.path.join(tree, "sys/devices/system/cpu/isolated"), "w") as f:
        f.write("1-3,5-7")
    fs.forget()
    assert engine.verify(p, fs)["status"] == "ok"
    result = engine.restore(fs)
    assert not result["failed"] and not os.path.exists(os.path.join(tree, "var/lib/hosttune/state.json"))
    after = snapshot(tree)
    for key in ("proc/cmdline", "sys/devices/system/cpu/isolated"):  # changed by the "reboot", not by us
        after.pop(key), before.pop(key)
    assert normalized(after) == normalized(before)


def test_dry_run_changes_nothing_and_shows_diffs(tree):
    before = snapshot(tree)
    report = engine.apply(make_plan(tree), HostFS.open(tree), dry_run=True)
    assert report["dry_run"] and report["changed"]
    assert snapshot(tree) == before
    diffs = {c["path"]: c["diff"] for c in report["changes"]}
    assert "+GRUB_CMDLINE_LINUX_DEFAULT=" in diffs["/etc/default/grub.d/hosttune.cfg"]
    assert diffs["/sys/devices/system/cpu/intel_pstate/no_turbo"].endswith("'0' -> '1'")


def test_only_limits_areas(tree):
    report = engine.apply(make_plan(tree), HostFS.open(tree), only=["sysctls"])
    assert {c["area"] for c in report["changes"]} == {"sysctls"}
    assert not report["reboot_required"]


def test_refusals_recorded_by_an_older_hosttune_are_still_honoured(tree):
    """State files on hosts were written with extras.immovable_irqs (a list of paths, no reason):
    read as refusals (shown by verify, not retried), written back as extras.refused."""
    target = "/proc/irq/30/smp_affinity_list"
    path = os.path.join(tree, state.STATE_FILE.lstrip("/"))
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as handle:
        json.dump({"schema": state.SCHEMA, "originals": {}, "run": None,
                   "extras": {"immovable_irqs": [target], "services": {}}}, handle)
    fs = HostFS.open(tree)
    p = make_plan(tree)
    assert state.load(fs).refused == {target: state.LEGACY_REFUSAL}
    row = next(r for r in engine.verify(p, fs)["settings"] if r["name"].startswith("irq 30"))
    assert (row["status"], row["reason"]) == ("unsupported", f"{state.LEGACY_REFUSAL} (write refused, not retried)")
    with open(os.path.join(tree, target.lstrip("/"))) as f:
        before = f.read()
    report = engine.apply(p, fs)
    assert target not in {c["path"] for c in report["changes"]}
    with open(os.path.join(tree, target.lstrip("/"))) as f:
        assert f.read() == before  # not retried
    with open(path) as handle:
        extras = json.load(handle)["extras"]
    assert extras == {"refused": {target: state.LEGACY_REFUSAL}, "services": {}}


def test_original_is_kept_across_applies(tree):
    fs = HostFS.open(tree)
    engine.apply(make_plan(tree), fs)
    engine.apply(make_plan(tree, {"sysctls": {"vm.swappiness": 1}}), fs)
    st = state.load(fs)
    assert st.originals["/proc/sys/vm/swappiness"]["value"] == "60"
    engine.restore(fs)
    with open(os.path.join(tree, "proc/sys/vm/swappiness")) as f:
        assert f.read().strip() == "60"


@pytest.mark.parametrize("err", [errno.EPERM, errno.EBUSY, errno.EINVAL])
def test_failed_write_rolls_back_the_run(tree, monkeypatch, err):
    before = snapshot(tree)
    fs = HostFS.open(tree)
    real_write = HostFS.write
    target = "/proc/irq/30/smp_affinity_list"

    def failing(self, path, value):
        if path == target:
            raise OSError(err, os.strerror(err), path)
        return real_write(self, path, value)

    monkeypatch.setattr(HostFS, "write", failing)
    p = make_plan(tree)
    if err == errno.EINVAL:  # EINVAL on an IRQ means "cannot be moved": unsupported, not a failure
        report = engine.apply(p, fs)
        assert any(u.get("name", "").startswith("irq 30") for u in report["unsupported"])
        # kept with the area's reason, shown by verify and not retried by the next apply
        assert state.load(fs).refused == {target: "IRQ cannot be moved there"}
        row = next(r for r in engine.verify(p, fs)["settings"] if r["name"].startswith("irq 30"))
        assert (row["status"], row["reason"]) == ("unsupported", "IRQ cannot be moved there (write refused, not retried)")
        assert engine.verify(p, fs)["counts"]["drift"] == 0
        assert not any(c["path"] == target for c in engine.apply(p, fs, dry_run=True)["changes"])
        return
    with pytest.raises(engine.ApplyFailed) as info:
        engine.apply(p, fs)
    assert target in str(info.value) and f"errno {err}" in str(info.value)
    assert normalized(snapshot(tree)) == normalized(before)
    st = state.load(fs)  # intact, no journal left, nothing recorded as changed
    assert st.run is None and st.originals == {}


def test_interrupted_run_is_rolled_back_on_next_start(tree):
    fs = HostFS.open(tree)
    path = "/proc/sys/vm/swappiness"
    # what a SIGKILL between the journal and the end of the writes leaves behind
    st = state.State(originals={path: {"path": path, "kind": "sysfs", "value": "60"}},
                     run={"pid": 1, "started": 0, "changes": [{"path": path, "kind": "sysfs", "before": "60"}]})
    state.save(fs, st)
    with open(os.path.join(tree, "proc/sys/vm/swappiness"), "w") as f:
        f.write("10")
    report = engine.apply(make_plan(tree), fs, only=["thp"])
    assert report["recovered"] == [path]
    with open(os.path.join(tree, "proc/sys/vm/swappiness")) as f:
        assert f.read() == "60"
    assert state.load(fs).run is None


def test_sigkill_mid_apply_leaves_a_consistent_state(make_tree):
    root = make_tree(sockets=2, cores_per_node=8, irqs=3000)
    before = snapshot(root)
    proc = subprocess.Popen([sys.executable, "-m", "hosttune", "apply", "--root", root], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = os.path.join(root, "var/lib/hosttune/state.json")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once the journal is on disk and writes are under way
        if os.path.exists(state_file) and json.load(open(state_file)).get("run"):
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    fs = HostFS.open(root)
    st = state.load(fs)  # parses: the state file was written atomically
    assert st.run and st.run["changes"], "the kill must land mid-run: the journal is still there"
    engine.recover(fs, st)  # what the next start does
    engine.restore(fs)
    assert normalized(snapshot(root)) == normalized(before)


def test_concurrent_apply_refuses_with_clear_message(tree):
    fs = HostFS.open(tree)
    with state.Lock(fs):
        proc = run_cli("apply", "--root", tree, "--wait", "0.3")
    assert proc.returncode == 4
    assert "another hosttune run" in proc.stderr and "holds the lock" in proc.stderr
    assert not os.path.exists(os.path.join(tree, "etc/sysctl.d/90-hosttune.conf"))


def test_corrupt_or_foreign_state_file(tree):
    os.makedirs(os.path.join(tree, "var/lib/hosttune"))
    before = snapshot(tree)
    sf = os.path.join(tree, "var/lib/hosttune/state.json")
    for content, words in [("{not json", "state file is corrupt"), ('{"schema": "other/1"}', "not a hosttune state file")]:
        with open(sf, "w") as f:
            f.write(content)
        proc = run_cli("apply", "--root", tree)
        assert proc.returncode == 2 and words in proc.stderr and sf in proc.stderr and "Traceback" not in proc.stderr
        assert snapshot(tree) == before
        assert run_cli("restore", "--root", tree).returncode == 2


def test_without_a_boot_loader_kernel_args_are_unsupported_and_the_rest_applies(tree, tmp_path):
    """A host with no GRUB defaults file, no systemd-boot and no grubby (a VM booted directly, a
    container): kernel_args is unsupported with the reason, dry run and apply still do every
    runtime area, and `required: [kernel_args]` makes it the error it was."""
    os.remove(os.path.join(tree, "etc/default/grub"))
    before = snapshot(tree)
    plan_text = run_cli("plan", "--root", tree, check=0).stdout
    assert "kernel_args unsupported: no boot loader hosttune can manage" in plan_text
    dry = json.loads(run_cli("apply", "--root", tree, "--dry-run", "--json", check=0).stdout)
    assert {"area": "kernel_args", "reason": dry["unsupported"][0]["reason"]} in dry["unsupported"]
    assert "sysctls" in {c["area"] for c in dry["changes"]} and snapshot(tree) == before
    policy_file = tmp_path / "required.yaml"
    policy_file.write_text("required: [kernel_args]\n")
    proc = run_cli("apply", "--root", tree, "--policy", str(policy_file))
    assert proc.returncode == 2 and "required" in proc.stderr and "no boot loader" in proc.stderr
    assert snapshot(tree) == before
    proc = run_cli("apply", "--root", tree, check=0)  # exit 0: nothing staged, so no reboot pending
    assert "unsupported: kernel_args" in proc.stdout
    assert not os.path.exists(os.path.join(tree, "etc/default/grub.d/hosttune.cfg"))
    with open(os.path.join(tree, "proc/sys/vm/swappiness")) as f:
        assert f.read() == "10"
    verify = json.loads(run_cli("verify", "--root", tree, "--json", check=0).stdout)
    assert [r["status"] for r in verify["settings"] if r["area"] == "kernel_args"] == ["unsupported"]


def test_cli_exit_codes(tree):
    assert run_cli("verify", "--root", tree).returncode == 1  # drift before apply
    proc = run_cli("apply", "--root", tree, "--json")
    assert proc.returncode == 3 and json.loads(proc.stdout)["reboot_required"] is True
    proc = run_cli("verify", "--root", tree)
    assert proc.returncode == 3 and "pending-reboot" in proc.stdout
    assert "nothing to change" in run_cli("apply", "--root", tree).stdout
    with open(os.path.join(tree, "proc/sys/kernel/numa_balancing"), "w") as f:
        f.write("1")
    proc = run_cli("verify", "--root", tree, "--quiet")
    assert proc.returncode == 1
    assert [l.split()[:3] for l in proc.stdout.splitlines()[1:-1]] == [
        ["drift", "sysctls", "kernel.numa_balancing"], ["pending-reboot", "kernel_args", "running"],
        ["pending-reboot", "kernel_args", "isolated"]]


def test_apply_on_this_machines_capture(live_copy):
    """Apply/verify/restore on a copy of the machine the tests run on."""
    before = snapshot(live_copy)
    run_cli("apply", "--root", live_copy, check=3)
    out = run_cli("verify", "--root", live_copy).stdout
    assert "drift" not in out.splitlines()[-1].split("(")[0]
    run_cli("restore", "--root", live_copy, check=3)  # the GRUB drop-in is gone: reboot
    assert normalized(snapshot(live_copy)) == normalized(before)


def test_irq_narrowed_within_its_planned_cpus_is_not_drift(tree):
    """irqbalance (ban mode) moves an IRQ onto one CPU of the set the plan allows it: that is no
    drift, and apply leaves it; an IRQ moved outside the set is drift and apply puts it back."""
    p = make_plan(tree)
    pin = next(pin for pin in p["settings"]["irqs"]["pin"] if len(pin["cpus"]) > 1)
    rel = f"proc/irq/{pin['irq']}/smp_affinity_list"
    fs = HostFS.open(tree)
    engine.apply(p, fs)

    def set_affinity(text):
        with open(os.path.join(tree, rel), "w") as f:
            f.write(text)
        fs.forget()

    def row():
        v = engine.verify(p, fs)
        return next(r for r in v["settings"] if r["name"].startswith(f"irq {pin['irq']} ("))

    set_affinity(str(pin["cpus"][-1]))
    assert row()["status"] == "ok"
    assert engine.apply(p, fs)["changes"] == []
    with open(os.path.join(tree, rel)) as f:
        assert f.read() == str(pin["cpus"][-1])
    isolated = p["isolated"][0]
    set_affinity(f"{pin['cpus'][0]},{isolated}")
    assert row()["status"] == "drift"
    report = engine.apply(p, fs)
    assert [c["path"] for c in report["changes"]] == ["/" + rel]
    with open(os.path.join(tree, rel)) as f:
        assert f.read() == ",".join(map(str, pin["cpus"]))
