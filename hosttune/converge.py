"""`hosttune converge -i INVENTORY [PLAYBOOK]`: run hosttune's Ansible playbooks through ansible-runner.

    hosttune converge -i inventory/example site --limit xeon_2s --check --diff
    hosttune converge -i localhost tune -e hosttune_kernel_reboot_ok=true

PLAYBOOK is a stage (site, tune, deploy, verify, restore: playbooks/<stage>.yml) or a playbook path;
-i takes an inventory path or the name of one under <project>/inventory. The run's artifacts
(events, stdout, status, rc) are kept under --artifacts DIR/artifacts/<ident>/; a live view of the
run built from runner events goes to stderr. The exit code is ansible-playbook's (0 ok, 2 failed
hosts, 4 unreachable hosts, ...), 130 when cancelled with Ctrl-C.

Import-light: ansible_runner is imported inside the handler.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import time
from typing import Any, TextIO

from hosttune.errors import HosttuneError

STAGES = ("site", "tune", "deploy", "verify", "restore")
EXIT_CANCELLED = 130


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "converge", help="run hosttune's Ansible playbooks (ansible-runner) with a live progress view",
        description="Run playbooks/<stage>.yml (site, tune, deploy, verify, restore) or a playbook path "
                    "through ansible-runner. Progress goes to stderr, the run's artifacts are kept, the "
                    "exit code is ansible-playbook's; Ctrl-C cancels the run cleanly.")
    p.add_argument("-i", "--inventory", required=True,
                   help="inventory file or directory, or the name of one under <project>/inventory "
                        "(example, localhost)")
    p.add_argument("playbook", nargs="?", default="site",
                   help=f"a stage ({', '.join(STAGES)}; default site) or a playbook file")
    p.add_argument("-l", "--limit", help="limit to these hosts or groups (ansible-playbook --limit)")
    p.add_argument("-C", "--check", action="store_true", help="dry run: hosttune apply --dry-run, nothing changed")
    p.add_argument("-D", "--diff", action="store_true", help="show what changes (before/after)")
    p.add_argument("-e", "--extra-vars", action="append", default=[], metavar="K=V|JSON|@FILE",
                   help="extra variables (repeatable); values of K=V are read as YAML (true, 3, [a, b])")
    p.add_argument("-t", "--tags", help="only roles/tasks with these tags (tune, agent, kernel, cpu, irq, "
                                        "deploy, docker, instances, verify, bench)")
    p.add_argument("--skip-tags", help="skip roles/tasks with these tags")
    p.add_argument("--artifacts", default=os.path.join("artifacts", "converge"), metavar="DIR",
                   help="ansible-runner private data dir; each run's artifacts go to DIR/artifacts/<ident> "
                        "(default: ./artifacts/converge)")
    p.add_argument("--ansible-dir", "--project", dest="project", metavar="DIR",
                   help="hosttune's Ansible content: a checkout, or an installed hosttune.tuning collection "
                        "(default: $HOSTTUNE_ANSIBLE_DIR, this source checkout, or the collection installed "
                        "in ANSIBLE_COLLECTIONS_PATH, ~/.ansible/collections, /usr/share/ansible/collections)")
    p.add_argument("--output", action="store_true", help="also print Ansible's own output (stdout)")
    p.set_defaults(func=cmd_converge)


# -- resolving the project, inventory, playbook, extra vars --------------------------------------
# The Ansible content (playbooks/, inventory/, ansible.cfg and the collection hosttune.tuning) is not
# in the hosttune wheel: it comes from a checkout, or from the collection installed by ansible-galaxy,
# whose tarball carries playbooks/, inventory/ and ansible.cfg beside roles/ and plugins/.
COLLECTION = os.path.join("collections", "ansible_collections", "hosttune", "tuning")
INSTALLED = ("ansible_collections", "hosttune", "tuning")  # <collections path>/ansible_collections/...
NOT_A_PROJECT = f"no playbooks/site.yml and {COLLECTION} there (nor an installed hosttune.tuning)"
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # a source checkout, if this is one
ENV = "HOSTTUNE_ANSIBLE_DIR"


def collections_path(path: str) -> str | None:
    """The collections path that makes hosttune.tuning resolve for the Ansible content at `path`: the
    checkout's own collections/, or the path an installed collection sits in; None: not the content."""
    if not os.path.isfile(os.path.join(path, "playbooks", "site.yml")):
        return None
    if os.path.isdir(os.path.join(path, COLLECTION, "roles")):
        return os.path.join(os.path.abspath(path), "collections")
    parts = os.path.abspath(path).split(os.sep)
    if tuple(parts[-3:]) == INSTALLED and os.path.isdir(os.path.join(path, "roles")):
        return os.sep.join(parts[:-3])
    return None


def _is_project(path: str) -> bool:
    return collections_path(path) is not None


def installed_collections() -> list[str]:
    """Where ansible-galaxy installs collections, in Ansible's order: $ANSIBLE_COLLECTIONS_PATH
    (or its old name), else ~/.ansible/collections and /usr/share/ansible/collections."""
    env = os.environ.get("ANSIBLE_COLLECTIONS_PATH") or os.environ.get("ANSIBLE_COLLECTIONS_PATHS")
    paths = env.split(os.pathsep) if env else ["~/.ansible/collections", "/usr/share/ansible/collections"]
    return [os.path.expanduser(p) for p in paths if p]


def find_project(explicit: str | None = None) -> str:
    """The directory with playbooks/, inventory/, ansible.cfg and the collection hosttune.tuning:
    --ansible-dir, else $HOSTTUNE_ANSIBLE_DIR, else this source checkout, else the collection
    installed by ansible-galaxy (see installed_collections)."""
    for value, where in ((explicit, explicit), (os.environ.get(ENV), f"{ENV}={os.environ.get(ENV)}")):
        if value:
            if not _is_project(value):
                raise HosttuneError(NOT_A_PROJECT, where=where)
            return os.path.abspath(value)
    if _is_project(CHECKOUT):
        return CHECKOUT
    for path in installed_collections():
        candidate = os.path.join(path, *INSTALLED)
        if _is_project(candidate):
            return os.path.abspath(candidate)
    raise HosttuneError(f"hosttune's playbooks and roles are not here: install the collection hosttune.tuning "
                        f"(ansible-galaxy collection install), or pass --ansible-dir DIR or set {ENV} "
                        f"(a hosttune checkout)", where="--ansible-dir")


def find_inventory(project: str, name: str) -> str:
    if os.path.exists(name):
        return os.path.abspath(name)
    candidate = os.path.join(project, "inventory", name)
    if os.path.exists(candidate):
        return candidate
    known = sorted(os.listdir(os.path.join(project, "inventory"))) if os.path.isdir(
        os.path.join(project, "inventory")) else []
    raise HosttuneError(f"no such inventory (a path, or one of: {', '.join(known) or 'none'})", where=name)


def find_playbook(project: str, name: str) -> str:
    if name in STAGES:
        return os.path.join(project, "playbooks", f"{name}.yml")
    if os.path.isfile(name):
        return os.path.abspath(name)
    candidate = os.path.join(project, "playbooks", name if name.endswith((".yml", ".yaml")) else f"{name}.yml")
    if os.path.isfile(candidate):
        return candidate
    raise HosttuneError(f"no such playbook (a stage: {', '.join(STAGES)}, or a playbook file)", where=name)


def parse_extra_vars(items: list[str]) -> dict[str, Any]:
    """-e K=V (V read as YAML), -e '{"k": ...}' (JSON/YAML mapping) or -e @FILE, merged in order;
    all through hosttune.safeyaml (bounded size, aliases and nesting; one-line errors)."""
    from hosttune import safeyaml

    out: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            path = item[1:]
            data = safeyaml.load_file(path)
            if not isinstance(data, dict):
                raise HosttuneError("extra vars file must hold a mapping", where=path)
            out.update(data)
        elif item.lstrip().startswith("{"):
            data = safeyaml.loads(item, where=f"-e {safeyaml.brief(item, 40)}")
            if not isinstance(data, dict):
                raise HosttuneError("must be a mapping", where=f"-e {item}")
            out.update(data)
        else:
            try:
                words = shlex.split(item)
            except ValueError:
                raise HosttuneError("unbalanced quotes", where=f"-e {item}") from None
            for word in words:
                key, sep, value = word.partition("=")
                if not sep or not key.isidentifier():
                    raise HosttuneError("expected NAME=VALUE, a JSON mapping or @FILE", where=f"-e {item}")
                try:
                    out[key] = safeyaml.loads(value, where=f"-e {key}") if value else ""
                except HosttuneError:
                    out[key] = value  # not YAML: the plain string, as ansible-playbook takes it
    return out


# -- the live view -------------------------------------------------------------------------------
COUNTERS = ("ok", "changed", "failed", "unreachable", "skipped")


class Progress:
    """Builds the progress view from ansible-runner events; writes it to `out` (stderr).

    On a terminal one status line is redrawn in place (totals, current task); changes, failures,
    unreachable hosts and warnings are printed as lines above it. Otherwise every play and task
    start is a line too, so a log shows where the run was."""

    def __init__(self, out: TextIO | None = None, tty: bool | None = None):
        self.out = out or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.hosts: dict[str, dict[str, int]] = {}
        self.play = ""
        self.task = ""
        self.events = 0
        self.failures: list[dict[str, str]] = []
        self.unreachable: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self._status_shown = False
        self.pid: int | None = None  # ansible-playbook's, from the events

    # counts
    def host(self, name: str) -> dict[str, int]:
        return self.hosts.setdefault(name, dict.fromkeys(COUNTERS, 0))

    def totals(self) -> dict[str, int]:
        return {k: sum(h[k] for h in self.hosts.values()) for k in COUNTERS}

    # output
    def _line(self, text: str) -> None:
        if self.tty and self._status_shown:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self._status_shown = False
        self._status()

    def _status(self) -> None:
        if not self.tty:
            return
        t = self.totals()
        text = (f"[{len(self.hosts)} host(s) ok={t['ok']} changed={t['changed']} failed={t['failed']} "
                f"unreachable={t['unreachable']}] {self.task}")
        width = _terminal_width()
        self.out.write("\r\033[K" + text[: width - 1])
        self.out.flush()
        self._status_shown = True

    def finish(self) -> None:
        if self.tty and self._status_shown:
            self.out.write("\r\033[K")
            self.out.flush()
            self._status_shown = False

    # events
    def on_event(self, event: dict[str, Any]) -> bool:
        with self.lock:
            self.events += 1
            if event.get("pid"):
                self.pid = event["pid"]
            try:
                self._handle(event)
            except Exception as exc:  # a view must never break the run
                self._line(f"hosttune converge: cannot show event {event.get('event')}: {exc}")
        return True  # keep the event in the artifacts

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host") or data.get("remote_addr") or ""
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        if kind == "playbook_on_play_start":
            self.play = data.get("name") or data.get("play") or ""
            self._line(f"PLAY {self.play}")
        elif kind == "playbook_on_task_start":
            role = data.get("role")
            self.task = f"{role} : {data.get('task', '')}" if role else data.get("task", "")
            if not self.tty:
                self.out.write(f"  TASK {self.task}\n")
                self.out.flush()
            else:
                self._status()
        elif kind == "runner_on_ok":
            counts = self.host(host)
            counts["ok"] += 1
            if res.get("changed"):
                counts["changed"] += 1
                self._line(f"  changed   {host}: {self._label(data)}")
            self._warnings(host, res)
        elif kind == "runner_on_failed":
            counts = self.host(host)
            if data.get("ignore_errors"):
                counts["ok"] += 1
                return
            counts["failed"] += 1
            msg = _message(res)
            self.failures.append({"host": host, "task": self._label(data), "msg": msg})
            self._line(f"  FAILED    {host}: {self._label(data)}: {msg}")
        elif kind == "runner_on_unreachable":
            counts = self.host(host)
            counts["unreachable"] += 1
            msg = _message(res)
            self.unreachable.append({"host": host, "task": self._label(data), "msg": msg})
            self._line(f"  UNREACHABLE {host}: {self._label(data)}: {msg}")
        elif kind == "runner_on_skipped":
            self.host(host)["skipped"] += 1
            self._status()
        elif kind == "playbook_on_no_hosts_remaining":
            self._line("  no hosts left: the rollout stopped")
        elif kind == "warning":
            self._line(f"  WARNING   {event.get('stdout', '').strip()}")

    def _label(self, data: dict[str, Any]) -> str:
        role = data.get("role")
        task = data.get("task") or self.task
        return f"{role} : {task}" if role else task

    def _warnings(self, host: str, res: dict[str, Any]) -> None:
        for warning in res.get("warnings") or []:
            text = warning.get("message") if isinstance(warning, dict) else str(warning)
            self._line(f"  WARNING   {host}: {text}")


def _message(res: dict[str, Any]) -> str:
    """The gist of a failed result: its msg (hosttune's own message for the hosttune modules)."""
    msg = res.get("msg") or res.get("reason") or ""
    if not msg and res.get("stderr"):
        msg = str(res["stderr"]).strip().splitlines()[-1]
    if not msg and res.get("results"):
        failed = [r for r in res["results"] if isinstance(r, dict) and r.get("failed")]
        msg = _message(failed[0]) if failed else ""
    text = " ".join(str(msg).split())
    return text[:500] + ("..." if len(text) > 500 else "")


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except OSError:
        return 120


def render_recap(stats: dict[str, Any] | None, progress: Progress) -> str:
    """Per-host recap from the run's stats (playbook_on_stats), naming failed and unreachable hosts."""
    lines = []
    hosts: dict[str, dict[str, int]] = {}
    if stats:
        for key, field in (("ok", "ok"), ("changed", "changed"), ("failures", "failed"),
                           ("dark", "unreachable"), ("skipped", "skipped")):
            for host, count in (stats.get(key) or {}).items():
                hosts.setdefault(host, dict.fromkeys(COUNTERS, 0))[field] = count
    else:
        hosts = progress.hosts
    width = max([len(h) for h in hosts] + [4])
    lines.append(f"{'host':<{width}}  {'ok':>4} {'changed':>7} {'failed':>6} {'unreachable':>11} {'skipped':>7}")
    for host in sorted(hosts):
        c = hosts[host]
        lines.append(f"{host:<{width}}  {c['ok']:>4} {c['changed']:>7} {c['failed']:>6} {c['unreachable']:>11} "
                     f"{c['skipped']:>7}")
    failed = sorted(h for h, c in hosts.items() if c["failed"])
    unreachable = sorted(h for h, c in hosts.items() if c["unreachable"])
    if failed:
        lines.append(f"failed: {', '.join(failed)}")
        for f in progress.failures:
            lines.append(f"  {f['host']}: {f['task']}: {f['msg']}")
    if unreachable:
        lines.append(f"unreachable: {', '.join(unreachable)}")
        for u in progress.unreachable:
            lines.append(f"  {u['host']}: {u['msg']}")
    return "\n".join(lines)


# -- cancelling ----------------------------------------------------------------------------------
class Canceller:
    """Ctrl-C: stop ansible-playbook and every process it started, then let ansible-runner finish.

    ansible-runner alone SIGKILLs ansible-playbook's process group, but Ansible's workers run in
    sessions of their own and would carry on (a module running on localhost keeps running). So:
    remember the whole process tree, SIGINT ansible-playbook (it stops scheduling and cleans up its
    workers), after `grace` seconds SIGTERM whatever of the tree is left, then SIGKILL."""

    def __init__(self, progress: Progress, grace: float = 10.0):
        self.progress = progress
        self.grace = grace
        self.requested = threading.Event()  # Ctrl-C pressed
        self.done = threading.Event()  # the tree is stopped: ansible-runner may stop waiting

    def is_cancelled(self) -> bool:
        return self.done.is_set()

    def request(self) -> None:
        if self.requested.is_set():
            self.done.set()
            return
        self.requested.set()
        threading.Thread(target=self._stop, name="hosttune-converge-cancel", daemon=True).start()

    def _stop(self) -> None:
        try:
            import psutil
        except ImportError:  # ansible-runner's own SIGKILL of the process group is all there is
            self.done.set()
            return
        pid = self.progress.pid
        try:
            root = psutil.Process(pid) if pid else None
        except psutil.Error:
            root = None
        if root is None:
            self.done.set()
            return
        tree = {p.pid: p for p in [root, *_children(root)]}
        try:
            root.send_signal(signal.SIGINT)
        except psutil.Error:
            pass
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and any(_alive(p) for p in tree.values()):
            tree.update({p.pid: p for p in _children(root)})
            time.sleep(0.2)
        left = [p for p in tree.values() if _alive(p)]
        for proc in left:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(left, timeout=5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.done.set()


def _children(proc: Any) -> list[Any]:
    try:
        return proc.children(recursive=True)
    except Exception:
        return []


def _alive(proc: Any) -> bool:
    try:
        return proc.is_running() and proc.status() != "zombie"
    except Exception:
        return False


# -- the command ---------------------------------------------------------------------------------
def _search_path() -> str:
    """PATH with the directory of the Python running hosttune first: its venv's ansible-playbook
    is the one that runs (ansible-runner finds ansible-playbook on PATH)."""
    here = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", os.defpath)
    if os.access(os.path.join(here, "ansible-playbook"), os.X_OK):
        return os.pathsep.join([here] + [p for p in path.split(os.pathsep) if p != here])
    return path


def cmd_converge(args: argparse.Namespace) -> int:
    project = find_project(args.project)
    inventory = find_inventory(project, args.inventory)
    playbook = find_playbook(project, args.playbook)
    extravars = parse_extra_vars(args.extra_vars)
    private = os.path.abspath(args.artifacts)
    extravars.setdefault("hosttune_bench_report_dir", os.path.join(private, "bench"))
    try:
        import ansible_runner
    except ImportError:
        raise HosttuneError("ansible-runner is not installed (pip install 'hosttune[fleet]')",
                            where="converge") from None
    os.makedirs(private, exist_ok=True)
    ident = time.strftime("%Y%m%d-%H%M%S") + f"-{os.path.splitext(os.path.basename(playbook))[0]}-{os.getpid()}"
    cmdline = " ".join(flag for flag, on in (("--check", args.check), ("--diff", args.diff)) if on)
    envvars = {
        "ANSIBLE_CONFIG": os.path.join(project, "ansible.cfg"),
        # hosttune.tuning from where the content was found first (the checkout's collections/, or
        # where it is installed), then Ansible's usual places
        "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(dict.fromkeys(
            [collections_path(project) or "", *installed_collections()])),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": _search_path(),
    }
    progress = Progress()
    canceller = Canceller(progress)

    def on_sigint(signum: int, frame: Any) -> None:
        if not canceller.requested.is_set():
            progress._line("hosttune converge: cancelling: stopping ansible-playbook and its workers "
                           "(Ctrl-C again to kill them now)...")
        canceller.request()

    kwargs: dict[str, Any] = dict(
        private_data_dir=private,
        project_dir=project,
        playbook=playbook,
        inventory=inventory,
        extravars=extravars,
        envvars=envvars,
        ident=ident,
        event_handler=progress.on_event,
        cancel_callback=canceller.is_cancelled,
        quiet=not args.output,
    )
    if args.limit:
        kwargs["limit"] = args.limit
    if args.tags:
        kwargs["tags"] = args.tags
    if args.skip_tags:
        kwargs["skip_tags"] = args.skip_tags
    if cmdline:
        kwargs["cmdline"] = cmdline
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    shown = os.path.relpath(playbook, project) if playbook.startswith(project + os.sep) else playbook
    print(f"hosttune converge: {shown} on {inventory}"
          f"{' (check mode)' if args.check else ''}", file=sys.stderr)
    try:
        runner = ansible_runner.run(**kwargs)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        progress.finish()
    artifacts = getattr(runner.config, "artifact_dir", None) or os.path.join(private, "artifacts", ident)
    print(render_recap(runner.stats, progress), file=sys.stderr)
    if canceller.requested.is_set():
        canceller.done.wait(canceller.grace + 10)  # the rest of the process tree is being stopped
    if canceller.requested.is_set() or runner.status == "canceled":
        print(f"hosttune converge: cancelled; artifacts: {artifacts}", file=sys.stderr)
        return EXIT_CANCELLED
    rc = runner.rc if isinstance(runner.rc, int) else 1
    print(f"hosttune converge: {runner.status} (exit {rc}); artifacts: {artifacts}", file=sys.stderr)
    _write_summary(artifacts, progress, runner, rc)
    return rc


def _write_summary(artifacts: str, progress: Progress, runner: Any, rc: int) -> None:
    """A small JSON next to ansible-runner's own artifacts: what the live view showed."""
    try:
        with open(os.path.join(artifacts, "hosttune-converge.json"), "w", encoding="utf-8") as handle:
            json.dump({"status": runner.status, "rc": rc, "hosts": progress.hosts,
                       "failures": progress.failures, "unreachable": progress.unreachable}, handle, indent=2)
    except OSError:
        pass
