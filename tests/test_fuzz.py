"""Issue 13's fuzz suite: hypothesis over policies (documents and raw YAML text), cpulists and
masks, capture tarballs and state files. Whatever the input, the outcome is a value or one
HosttuneError - the exception the CLI prints as one line with exit 2 - never another exception,
never a write outside the root. Sized to run in well under 30 s."""

import base64
import collections
import functools
import io
import json
import os
import tarfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hosttune import cpulist, engine, policy, safeyaml, state
from hosttune.areas.kernel_args import KERNEL_ARG
from hosttune.areas.sysctls import SYSCTL_NAME
from hosttune.errors import HosttuneError
from hosttune.sysfs import HostFS, TarHostFS

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def one_line(exc):
    """One line per mistake (a policy's every mistake at once: PolicyErrors, a line each), none long."""
    text = str(exc)
    lines = text.split("\n")
    assert len(lines) == len(getattr(exc, "errors", [exc])), text
    assert all(line and len(line) < 600 for line in lines), text
    return text


# Each test names the branches of its outcome; after its examples it asserts that every one was
# reached (a branch no example reaches tests nothing: the accepted-policy branch once called a
# function that no longer existed and nobody saw).
REACHED: collections.Counter = collections.Counter()


def reach(branch):
    REACHED[branch] += 1


def branches(*names):
    def decorate(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            REACHED.clear()
            test(*args, **kwargs)
            missing = [n for n in names if not REACHED[n]]
            assert not missing, f"no example reached {missing} (reached: {dict(REACHED)})"
        return run
    return decorate


# -- policies ---------------------------------------------------------------------------------------
SECTIONS = {k: sorted(v) if isinstance(v, dict) else [] for k, v in policy.DEFAULTS.items()}
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True), st.text(max_size=40),
                    st.sampled_from(["all", "base", "off", "never", "ban", "0-3", "0-100000000000", "127.0.0.1",
                                     "$(id)", "a\nb", "vm.swappiness", "managed_irq", "sample"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)


@st.composite
def policies(draw):
    """Mostly known sections and keys (so validation goes deep), with hostile values."""
    doc = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS) + ["bogus"]), max_size=5, unique=True)):
        keys = SECTIONS.get(section, [])
        if keys and draw(st.booleans()):
            doc[section] = {k: draw(values) for k in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))}
        else:
            doc[section] = draw(values)
    return doc


# Kernel arguments and sysctls, valid ones alone or mixed with hostile ones, so that accepted
# policies carry some (a document of random sections is almost never valid as a whole).
good_kernel_args = st.sampled_from(["nosoftlockup", "intel_idle.max_cstate=1", "console=ttyS0,115200n8",
                                    "root=UUID=ab-cd", "mitigations=off"])
kernel_args = st.one_of(good_kernel_args, st.sampled_from(["a=$(id)", "x;y", "-x", "a b", "٣=1", "a=\nb"]),
                        st.text(max_size=12))
good_sysctls = st.dictionaries(st.sampled_from(["net.ipv4.conf.eth0.rp_filter", "net.core.somaxconn", "vm.dirty_ratio",
                                                "kernel.sched_rt_runtime_us"]),
                               st.one_of(st.integers(0, 100), st.just("4096\t87380")), min_size=1, max_size=3)
sysctl_names = st.one_of(st.sampled_from(["vm.swappiness", "net.ipv4.conf.eth0.rp_filter", "vm.*",
                                          "net.ipv4.conf.*.rp_filter", "vm.?", "vm.[a]", "vm..x", "vm/x"]),
                         st.text(alphabet="abvm._*-?/", max_size=16))
sysctls = st.dictionaries(sysctl_names, st.one_of(st.integers(0, 100), st.sampled_from(["1", "a\nb", ""])), max_size=3)


@st.composite
def mostly_valid_policies(draw):
    if draw(st.booleans()):  # clean: accepted, with kernel args and sysctls
        return {"isolation": {"extra_kernel_args": draw(st.lists(good_kernel_args, min_size=1, max_size=3))},
                "sysctls": draw(good_sysctls)}
    return {"isolation": {"extra_kernel_args": draw(st.lists(kernel_args, max_size=4))}, "sysctls": draw(sysctls)}


@branches("refused", "accepted", "accepted extra_kernel_args", "accepted sysctls")
@FUZZ
@given(st.one_of(policies(), mostly_valid_policies()))
def test_policy_documents(doc):
    try:
        result = policy.validate(doc)
    except HosttuneError as exc:
        one_line(exc)
        reach("refused")
        return
    reach("accepted")
    # accepted: what reaches other programs' files keeps to the grammar
    if result["isolation"]["extra_kernel_args"]:
        reach("accepted extra_kernel_args")
    assert all(KERNEL_ARG.fullmatch(a) for a in result["isolation"]["extra_kernel_args"])
    if set(result["sysctls"]) - set(policy.DEFAULTS["sysctls"]):
        reach("accepted sysctls")
    # no glob: systemd-sysctl would expand it at boot (issue 32 class 9)
    assert all(SYSCTL_NAME.fullmatch(n) and not set(n) & set("*?[]") for n in result["sysctls"])
    assert all("\n" not in str(v) for v in result["sysctls"].values())
    json.dumps(result)  # the plan embeds it


def tokens(items, max_size):
    """Strings made of the given pieces (a piece may be longer than one character)."""
    return st.lists(st.sampled_from(items), max_size=max_size).map("".join)


yaml_text = st.one_of(
    tokens(list("ab:{}[],&*!|>-'\"#\n\t 0123456789%@`") + ["\x00", "é", "<<", "&a ", "*a", "profile", "sysctls"], 120),
    st.binary(max_size=200))


@branches("refused", "accepted")
@FUZZ
@given(yaml_text)
def test_policy_yaml_text(data):
    try:
        doc = safeyaml.loads(data, where="p.yaml", error=policy.PolicyError)
        policy.from_document(doc, "p.yaml")
    except HosttuneError as exc:
        one_line(exc)
        reach("refused")
        return
    reach("accepted")


# -- cpulists ---------------------------------------------------------------------------------------
@branches("refused", "accepted")
@FUZZ
@given(tokens(list("0123456789-,: \n+_x") + ["٣", "²", "３", "99999999999"], 40))
def test_cpulists(text):
    try:
        ids = cpulist.parse(text, where="f")
    except HosttuneError as exc:
        assert one_line(exc).startswith("f: invalid cpulist")
        reach("refused")
        return
    reach("accepted")
    assert all(0 <= i < cpulist.MAX_CPUS for i in ids) and ids == sorted(set(ids))


@branches("refused", "accepted")
@FUZZ
@given(tokens(list("0123456789abcdefABCDEF,x \n") + ["f" * 20000], 30))
def test_cpumasks(text):
    try:
        ids = cpulist.parse_mask(text, where="f")
    except HosttuneError as exc:
        one_line(exc)
        reach("refused")
        return
    reach("accepted")
    assert all(0 <= i < cpulist.MAX_CPUS for i in ids)


# -- capture tarballs -------------------------------------------------------------------------------
members = st.lists(st.tuples(st.sampled_from(["proc/cmdline", "sys/devices/system/cpu/online", "../x", "/abs",
                                              "sys", "a/b/c", ".", "sys/devices/system/cpu/cpu0/online"]),
                             st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.FIFOTYPE,
                                              tarfile.CHRTYPE, tarfile.LNKTYPE]),
                             st.binary(max_size=64)), max_size=6)


@branches("refused", "opened")
@FUZZ
@given(members, st.sampled_from(["w:gz", "w:", "w:bz2", "w:xz"]), st.integers(min_value=0, max_value=4000),
       st.lists(st.integers(min_value=0, max_value=4000), max_size=3))
def test_tarballs(tmp_path_factory, entries, mode, cut, flips):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/proc/self/environ" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    raw = bytearray(buffer.getvalue())
    for at in flips:  # corrupt a few bytes, then maybe cut the file short
        if raw:
            raw[at % len(raw)] ^= 0x5A
    if cut < len(raw):
        del raw[len(raw) - cut:]
    path = tmp_path_factory.mktemp("tar") / "c.tar.gz"
    path.write_bytes(bytes(raw))
    try:
        fs = HostFS.open(str(path))
    except HosttuneError as exc:
        one_line(exc)
        reach("refused")
        return
    reach("opened")
    assert isinstance(fs, TarHostFS)
    for name in ("/proc/cmdline", "/sys/devices/system/cpu/online", "/a/b/c"):
        text = fs.read(name)
        assert text is None or len(text) <= 64


# -- state files ------------------------------------------------------------------------------------
paths = st.sampled_from(["/proc/sys/vm/swappiness", "/etc/sysctl.d/90-hosttune.conf", "/../escape",
                         "relative", "/a/../../escape", "/etc/x\x00y", 5, None])
wild_records = st.fixed_dictionaries(
    {"kind": st.sampled_from(["sysfs", "file", "service", "grubby", "bogus", None, 3])},
    optional={"path": paths, "value": st.one_of(st.none(), st.text(max_size=20), st.integers()),
              "before": st.one_of(st.none(), st.text(max_size=20)),
              "data": st.sampled_from(["aGk=", "!!", 5, None]), "mode": st.sampled_from([0o640, -1, "0644", 2**40]),
              "uid": st.sampled_from([0, -5, "root", None]), "gid": st.sampled_from([1, None, True]),
              "service": st.sampled_from(["irqbalance", "--now", "", 4]), "entries": values, "area": values})
# well-formed records (what apply writes), so that restore runs on part of the examples
good_paths = st.sampled_from(["/proc/sys/vm/swappiness", "/etc/sysctl.d/90-hosttune.conf", "/etc/new/dir/file",
                              "/sys/devices/system/cpu/cpu0/online"])
good_records = st.one_of(
    st.fixed_dictionaries({"kind": st.just("sysfs"), "path": good_paths, "value": st.one_of(st.none(), st.text(max_size=20))}),
    st.fixed_dictionaries({"kind": st.just("file"), "path": good_paths, "value": st.one_of(st.none(), st.text(max_size=20))},
                          optional={"data": st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()),
                                    "mode": st.integers(0, 0o7777), "uid": st.just(0), "gid": st.just(0)}))
records = st.one_of(good_records, good_records, wild_records)
good_run = st.fixed_dictionaries({"changes": st.lists(good_records, max_size=3)}, optional={"pid": st.integers()})
state_docs = st.fixed_dictionaries(
    {"schema": st.sampled_from([state.SCHEMA] * 6 + ["other", None]),
     "originals": st.one_of(st.dictionaries(st.text(max_size=8), good_records, max_size=3),
                            st.dictionaries(st.text(max_size=8), records, max_size=3), values)},
    optional={"run": st.one_of(st.none(), good_run, st.fixed_dictionaries({}, optional={"changes": st.one_of(
                  st.lists(records, max_size=3), values), "pid": values}), values),
              "extras": st.one_of(st.fixed_dictionaries({}, optional={"immovable_irqs": st.lists(good_paths)}),
                                  values)})


@branches("refused", "loaded", "restored")
@settings(FUZZ, max_examples=100)
@given(st.one_of(state_docs.map(json.dumps), st.binary(max_size=100).map(lambda b: b.decode("latin-1"))))
def test_state_files(tmp_path_factory, text):
    base = tmp_path_factory.mktemp("state")
    root = base / "root"
    path = root / state.STATE_FILE.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    fs = HostFS(str(root))
    try:
        state.load(fs)
    except HosttuneError as exc:
        assert "state file" in one_line(exc)
        reach("refused")
        return
    reach("loaded")
    # a state file that loads can be restored, with nothing written outside the root
    try:
        engine.restore(fs, lock_wait=1)
        reach("restored")
    except HosttuneError as exc:
        one_line(exc)
    assert sorted(os.listdir(base)) == ["root"]
