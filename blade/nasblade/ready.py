"""The one-line readiness announcement every long-running role prints on stdout.

Tests and tools start a role and read its stdout until they see this line, instead of
sleeping and polling::

    {"event": "ready", "role": "controller", "pid": 1234, "endpoints": {"nbd": "127.0.0.1:10809"}}

``wait_ready`` is the reader side, used by tests, the standalone array and benchmarks.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import Any


def announce(role: str, endpoints: dict[str, Any], **extra: Any) -> None:
    """Print the ready line for ``role`` and flush it."""
    line = {"event": "ready", "role": role, "pid": os.getpid(), "endpoints": endpoints, **extra}
    sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
    sys.stdout.flush()


class NotReady(RuntimeError):
    """The process exited or timed out before announcing readiness."""


def wait_ready(proc: subprocess.Popen[bytes], *, timeout: float = 30.0) -> dict[str, Any]:
    """Read ``proc``'s stdout until its ready line; return the decoded line.

    Other output lines before it are ignored. Raises ``NotReady`` if the process exits or the
    timeout passes first.
    """
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotReady(f"no ready line within {timeout}s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            raise NotReady(f"process exited with {proc.wait()} before it was ready")
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("event") == "ready":
                return msg
