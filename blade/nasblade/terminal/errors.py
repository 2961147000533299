"""Errors of the management terminal, each with the exit code the command returns.

Raised by ``target``, the sources and ``commands``; caught once in ``cli.run`` which prints
``nasblade <command>: <message>`` on stderr and exits with ``exit_code``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4


class TerminalError(RuntimeError):
    """A failure to report to the administrator; ``exit_code`` is the command's exit status."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(TerminalError):
    """Bad arguments or an unknown name (array, group, blade, file system, namespace)."""

    exit_code = EXIT_USAGE


class NotAvailable(TerminalError):
    """The operation exists in the terminal but not (yet) in the system it talks to."""

    exit_code = EXIT_USAGE


class Unreachable(TerminalError):
    """An endpoint (controller, blade, API server) did not answer."""

    exit_code = EXIT_UNREACHABLE


class Timeout(TerminalError):
    """Following an operation (backup, rollout) took longer than ``--timeout``."""

    exit_code = EXIT_TIMEOUT
