import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from tests.treegen import Spec, write_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
HOSTTUNE = [sys.executable, "-m", "hosttune"]


def run_cli(*args, check=None, **kw):
    """Run the real `hosttune` CLI in a subprocess; returns CompletedProcess (text)."""
    proc = subprocess.run([*HOSTTUNE, *args], capture_output=True, text=True, cwd=REPO, timeout=120, **kw)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def fixture_names():
    if not os.path.isdir(FIXTURES):
        return []
    return sorted(f[: -len(".tar.gz")] for f in os.listdir(FIXTURES) if f.endswith(".tar.gz"))


def extract_fixture(name, dest):
    with tarfile.open(os.path.join(FIXTURES, name + ".tar.gz")) as archive:
        archive.extractall(dest, filter="data")
    return str(dest)


@pytest.fixture(scope="session")
def cpu_float_precision():
    """What OpenVINO's CPU plugin runs a floating-point model in here by default: "FP32", or
    "BF16" on CPUs with AVX512-BF16 / AMX (its INFERENCE_PRECISION_HINT default)."""
    import openvino as ov

    from hosttune.model.precision import FLOAT_PRECISIONS

    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    return FLOAT_PRECISIONS[hint]


@pytest.fixture
def tree(tmp_path):
    """A writable synthetic 2-socket host tree (intel_pstate, 16 IRQs)."""
    return write_tree(str(tmp_path / "host"), Spec())


@pytest.fixture
def make_tree(tmp_path):
    def make(**kw):
        root = tmp_path / f"host{len(list(tmp_path.iterdir()))}"
        return write_tree(str(root), Spec(**kw))
    return make


@pytest.fixture
def live_copy(tmp_path):
    """A writable copy of this machine's own capture (the machine the tests run on)."""
    out = tmp_path / "live.tar.gz"
    run_cli("capture", "-o", str(out), check=0)
    dest = tmp_path / "live"
    dest.mkdir()
    with tarfile.open(out) as archive:
        archive.extractall(dest, filter="data")
    os.makedirs(dest / "etc" / "default", exist_ok=True)
    (dest / "etc" / "default" / "grub").write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    return str(dest)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """No silent skips: everything the tests need is installed by scripts/bootstrap, so a skipped
    test means something is missing, and that is a failure. HOSTTUNE_ALLOW_SKIPS=1 relaxes it
    for a developer's partial setup."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get("HOSTTUNE_ALLOW_SKIPS") != "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, which the suite does not allow (set HOSTTUNE_ALLOW_SKIPS=1 to permit): {reason}"


def pytest_collection_modifyitems(session, config, items):
    """The guest tests first, the longest (Molecule scenarios) leading: pytest-xdist hands out its
    first work units round-robin, so each long guest run starts at once on a worker of its own
    while the short tests fill the others (scripts/test)."""
    def rank(item):
        if item.get_closest_marker("guest") is None:
            return 2
        return 0 if item.module.__name__.endswith("test_molecule") else 1
    items.sort(key=rank)  # stable: the order within each rank is pytest's
