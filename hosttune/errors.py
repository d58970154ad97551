"""Errors a user can cause, and the exit codes of every command. The CLI prints an error's message
and exits with its code; never a traceback. The table is in docs/ARCHITECTURE.md."""

EXIT_OK = 0
EXIT_FAILED = 1  # apply failed (rolled back), verify found drift, restore could not put a value back
EXIT_DRIFT = EXIT_FAILED
EXIT_USAGE = 2  # bad input: policy, root, state file, arguments; nothing was changed
EXIT_REBOOT = 3  # done, and a reboot is required (apply) or pending (verify)
EXIT_LOCKED = 4  # another hosttune run holds the state lock


class HosttuneError(Exception):
    """A user-facing error: bad input, unreadable file, unsupported request.

    `where` names the field or file at fault, so the message can point at it.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, where: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class PolicyError(HosttuneError):
    """The policy (YAML / inventory vars) is invalid; `where` is the dotted field path."""


class PolicyErrors(PolicyError):
    """Every mistake of one policy at once (hosttune.policy.validate): one line each, naming its field.
    `message` and `where` are the first one's, so a caller that reads one error still gets a whole one."""

    def __init__(self, errors: list[PolicyError]):
        self.errors = list(errors)
        super().__init__(self.errors[0].message, where=self.errors[0].where)

    @property  # type: ignore[override]
    def where(self) -> str | None:
        return self.errors[0].where

    @where.setter
    def where(self, value: str | None) -> None:
        # callers put a file or a section around an error's field (f"{file}: {exc.where}",
        # f"policy.{exc.where}"): the same for every line
        old = self.errors[0].where
        if value == old or value is None:
            return
        head, found, tail = value.rpartition(old) if old else ("", "", "")
        if not found:
            head, tail = f"{value}: ", ""
        for error in self.errors:
            error.where = f"{head}{error.where}{tail}" if error.where else value

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


class TopologyError(HosttuneError):
    """The root cannot be read as a Linux host (missing /sys, unreadable capture)."""


class LockHeld(HosttuneError):
    """Another hosttune run (an Ansible apply, the agent's check) holds the state lock."""

    exit_code = EXIT_LOCKED
