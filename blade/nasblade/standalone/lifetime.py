"""Children of ``nasblade up`` never outlive it, however it dies.

``nasblade up`` starts the controller and every blade process in a session of its own (so the
chassis can signal a blade's whole process group), which also means nothing ties them to it: a
``kill -9`` of ``nasblade up`` used to leave the controller and four blade processes running as
orphans. Linux's parent-death signal ties them: ``Array.launch`` marks each child's environment
with the supervisor's pid (``child_env``); the child's first act (``nasblade.cli.main`` calls
``bind_to_parent``) is ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, then a check that its parent is still
that pid (it may have died before the prctl). The kernel then SIGKILLs the child the moment its
parent ends -- by any signal, SIGKILL included. The mark is removed from the environment so the
child's own children are not bound to the wrong parent; the death signal survives the boot
shim's ``execve`` (it is cleared only for set-user-ID programs).

SIGKILL, like a chassis losing power: every acknowledged write is on the devices already (stable
writes and COMMITs are made durable before they are acknowledged), so nothing a client was told
is lost; the next ``nasblade up`` recovers the file systems.

The death signal follows the parent *thread* that forked the child: the supervisor starts every
child from its main thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

ENV = "NASBLADE_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def child_env(parent_pid: int | None = None) -> dict[str, str]:
    """The environment for a child that must die with this process."""
    return dict(os.environ, **{ENV: str(os.getpid() if parent_pid is None else parent_pid)})


def bind_to_parent() -> None:
    """In a child started with ``child_env``: die with the parent (module doc). No-op otherwise."""
    raw = os.environ.pop(ENV, None)
    if raw is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != int(raw):  # the parent died before the prctl took effect
        os._exit(1)
