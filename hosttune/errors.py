"""Errors a user can cause. The CLI prints their message and exits with their code; never a traceback."""


class HosttuneError(Exception):
    """A user-facing error: bad input, unreadable file, unsupported request.

    `where` names the field or file at fault, so the message can point at it.
    """

    exit_code = 2

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


class TopologyError(HosttuneError):
    """The root cannot be read as a Linux host (missing /sys, unreadable capture)."""
