"""Wall time of each Molecule playbook run and of its slowest tasks.

Enabled by the scenarios' ansible.cfg (callbacks_enabled = hosttune_timer). At the end of every
ansible-playbook run it prints one line

    hosttune-timing: converge.yml 812.4 s (slowest: Reboot into the new kernel arguments 151.0 s, ...)

and appends a JSON record to $HOSTTUNE_TIMINGS_FILE (default:
$MOLECULE_EPHEMERAL_DIRECTORY/timings.jsonl; tests/test_molecule.py reads it): {"playbook", "start", "seconds", "failed", "tasks": [{"name", "host", "start", "seconds"}, ... slowest 10]}
(a task's start: when its first host began it, epoch seconds, to line it up with other logs).
The second converge.yml record of a `molecule test` is the idempotence run.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: hosttune_timer
    type: aggregate
    short_description: wall time per playbook and its slowest tasks (Molecule scenarios)
    description: Prints one line per playbook run and appends it to timings.jsonl in the Molecule
      ephemeral directory.
    requirements: [enable in callbacks_enabled]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "hosttune_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._playbook = "?"
        self._start = time.time()
        self._tasks: dict[str, dict] = {}

    def v2_playbook_on_start(self, playbook) -> None:
        self._playbook = os.path.basename(playbook._file_name)
        self._start = time.time()

    def _task_start(self, task) -> None:
        self._tasks.setdefault(task._uuid, {"name": task.get_name(), "seconds": 0.0, "hosts": {}})

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._task_start(task)

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._task_start(task)

    def v2_runner_on_start(self, host, task) -> None:
        self._task_start(task)
        entry = self._tasks[task._uuid]
        now = time.time()
        entry["hosts"][host.get_name()] = now
        entry.setdefault("start", round(now, 1))

    def _done(self, result, *args, **kwargs) -> None:
        entry = self._tasks.get(result._task._uuid)
        if entry is None:
            return
        started = entry["hosts"].pop(result._host.get_name(), None)
        if started is not None:
            entry["seconds"] += time.time() - started
            entry["host"] = result._host.get_name()

    v2_runner_on_ok = v2_runner_on_failed = v2_runner_on_skipped = v2_runner_on_unreachable = _done

    def v2_playbook_on_stats(self, stats) -> None:
        seconds = time.time() - self._start
        slowest = sorted(self._tasks.values(), key=lambda t: t["seconds"], reverse=True)[:10]
        tasks = [{"name": t["name"], "host": t.get("host"), "start": t.get("start"),
                  "seconds": round(t["seconds"], 1)}
                 for t in slowest if t["seconds"] >= 0.05]
        failed = any(stats.failures.values()) or any(stats.dark.values())
        text = ", ".join(f"{t['name']} {t['seconds']:.0f} s" for t in tasks[:5])
        self._display.display(f"hosttune-timing: {self._playbook} {seconds:.1f} s"
                              f"{' FAILED' if failed else ''} (slowest: {text})")
        # HOSTTUNE_TIMINGS_FILE (tests/test_molecule.py) outlives the run: `molecule test` empties
        # the ephemeral directory at its final destroy
        path = os.environ.get("HOSTTUNE_TIMINGS_FILE")
        directory = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
        if not path and directory and os.path.isdir(directory):
            path = os.path.join(directory, "timings.jsonl")
        if path:
            record = {"playbook": self._playbook, "start": round(self._start, 1),
                      "seconds": round(seconds, 1), "failed": failed, "tasks": tasks}
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
