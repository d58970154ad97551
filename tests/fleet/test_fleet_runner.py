"""The fleet runner's process-level behaviour, without SSH."""

from __future__ import annotations

import logging
import threading

from hosttune.fleet import runner


def test_a_helper_thread_dying_is_logged_not_printed(capsys, caplog, monkeypatch):
    """Paramiko's transport thread may die with EOFError when a timed-out connection is closed:
    no traceback on the console (the host's result says what happened), a debug log line instead."""
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    runner._log_stray_thread_errors()

    def die():
        raise EOFError("channel closed")

    with caplog.at_level(logging.DEBUG, logger="hosttune.fleet.runner"):
        t = threading.Thread(target=die, name="paramiko-transport")
        t.start()
        t.join()
    assert "Traceback" not in capsys.readouterr().err
    assert any("paramiko-transport ended with EOFError: channel closed" in r.getMessage() for r in caplog.records)


def test_someone_elses_thread_hook_is_kept(monkeypatch):
    def theirs(args):
        pass

    monkeypatch.setattr(threading, "excepthook", theirs)
    runner._log_stray_thread_errors()
    assert threading.excepthook is theirs
