# Copyright: hosttune contributors
# Apache License 2.0 (see LICENSE at the collection root)
# The test beside the hosttune.tuning.systemd_* filters (docs/security.md, "Values in systemd units").
"""hosttune.tuning.systemd_safe: true when a value (every string in a list or mapping) has no control
character, so it may be written to a systemd unit with the systemd_* filters;
hosttune.tuning.systemd_executable: an absolute path systemd accepts as ExecStart's executable (no
control character, backslash or quote). The roles assert them before any change."""

from __future__ import annotations

from ansible_collections.hosttune.tuning.plugins.filter.systemd import systemd_executable, systemd_safe


class TestModule:
    def tests(self):
        return {"systemd_safe": systemd_safe, "systemd_executable": systemd_executable}
