"""Runs in the kernel-client guest: fcntl/flock locks on an NFS file, with the times things happened.

``hold``: take an exclusive ``fcntl`` lock on ``[start, start+len)`` (blocking), touch
``--ready``, keep it until the file ``--until`` exists (the NFS mount should use
``lookupcache=none`` so a file another client creates is seen), then unlock; writes
``{"locked": t, "unlocked": t}``.

``probe``: non-blocking attempts, each ``kind:start:len`` (``fcntl`` or ``flock``; flock is
whole-file), recorded as ``true`` (got it, released at once) or ``false`` (EAGAIN/EACCES); then
touches ``--signal`` and, with ``--wait``, takes ``kind:start:len`` blocking and records when it
got it (``{"attempts": [...], "signalled": t, "blocked_from": t, "acquired": t}``).
Times are ``time.time()`` (UML shares the host's clock).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import time


def try_lock(fd: int, spec: str, *, block: bool) -> bool:
    kind, start, length = spec.split(":")
    try:
        if kind == "flock":
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            if not block:
                fcntl.flock(fd, fcntl.LOCK_UN)
        else:
            fcntl.lockf(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB), int(length), int(start))
            if not block:
                fcntl.lockf(fd, fcntl.LOCK_UN, int(length), int(start))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["hold", "probe"])
    ap.add_argument("--path", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--len", type=int, default=0)
    ap.add_argument("--ready")
    ap.add_argument("--until")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--attempt", action="append", default=[])
    ap.add_argument("--signal")
    ap.add_argument("--wait")
    a = ap.parse_args()
    fd = os.open(a.path, os.O_RDWR | os.O_CREAT, 0o666)
    out: dict[str, object] = {}
    if a.action == "hold":
        fcntl.lockf(fd, fcntl.LOCK_EX, a.len, a.start)
        out["locked"] = time.time()
        open(a.ready, "w").close()
        deadline = time.monotonic() + a.timeout
        while not os.path.exists(a.until):
            if time.monotonic() > deadline:
                out["error"] = f"{a.until} never appeared"
                break
            time.sleep(0.2)
        time.sleep(1.0)
        out["unlocked"] = time.time()
        fcntl.lockf(fd, fcntl.LOCK_UN, a.len, a.start)
    else:
        out["attempts"] = [try_lock(fd, spec, block=False) for spec in a.attempt]
        if a.signal:
            open(a.signal, "w").close()
            out["signalled"] = time.time()
        if a.wait:
            out["blocked_from"] = time.time()
            try_lock(fd, a.wait, block=True)
            out["acquired"] = time.time()
    os.close(fd)
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
