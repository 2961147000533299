#!/usr/bin/env python3
"""Long-running NFS writer of the end-to-end suite, run inside the client pod.

Built into the NFS client image (tests/e2e/nfs-client/Dockerfile) and started by
tests/e2e/test_e2e_suite.py with ``kubectl exec``. It uses libnfs's Python binding, so it
talks NFSv3 to the file system's Service exactly as an application with the file open would:

* ``writer``: a *session* (a child process) mounts once, opens one file once (``O_SYNC``) and
  keeps that handle; every ``--interval`` it writes one fixed-size record (sequence number +
  padding) with ``nfs_pwrite`` and calls ``nfs_fsync`` (NFSv3 COMMIT); a record counts as
  acknowledged only when both return success (the binding's file-object methods drop
  libnfs's return codes, so the raw calls are used). A failed operation is retried on the
  same handle; libnfs reconnects by itself while the Service moves to another blade.

  ``O_SYNC`` makes libnfs send FILE_SYNC writes. Without it libnfs sends UNSTABLE writes and
  does not compare the COMMIT reply's verifier with the WRITE replies' (RFC 1813 3.3.7 and
  3.3.21 ask a client to resend when it changes), so a record written UNSTABLE to a blade
  that fails before the COMMIT would count as acknowledged after the survivor's COMMIT
  although the survivor never saw it: a loss the client library causes, which a kernel
  client would not. A FILE_SYNC write is on the devices before its reply.

  libnfs 4.0 (Debian 12) sometimes never leaves its reconnect loop after a server went away
  (it reconnects on every readable event without reading the reply; seen with strace), and
  its synchronous calls hold the GIL meanwhile, so no thread of the same process can even
  notice. The parent process therefore watches the session: when no record has been
  acknowledged for ``--stall`` seconds it kills the session and starts a new one (a new
  mount; the file handle it looks up is the same one, the server's handles being stable),
  which continues with the first unacknowledged record. Such restarts are counted
  (``remounts``) and are part of the interruption (``maxGapSeconds``).

  When the run ends it prints one JSON line: records acknowledged, failed attempts, remounts,
  the longest time between two acknowledged records (the interruption the client saw), and
  the first errors.
* ``verify``: reads the file back and checks that records 0..N-1 are all there, intact.
* ``scan``: reads the whole file as it is now and says how many records it holds, whether
  each one is intact and whether the file ends inside a record (what a copy of the file
  system taken while the writer ran -- a snapshot -- must hold: a prefix of the records,
  whole).

Record format: ``b"%012d" % seq`` followed by ``-`` padding to ``RECORD`` bytes, at offset
``seq * RECORD``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection

RECORD = 64


def record(seq: int) -> bytes:
    head = b"%012d" % seq
    return head + b"-" * (RECORD - len(head) - 1) + b"\n"


def _connect(url: str):  # type: ignore[no-untyped-def]
    import libnfs

    return libnfs.NFS(url)


def _check(what: str, status: int) -> int:
    if status < 0:
        raise OSError(-status, f"{what}: {os.strerror(-status)}")
    return status


def _session(url: str, path: str, first: int, end: float, interval: float, out: Connection) -> None:
    """Child process: mount, open ``path`` once, write records ``first``, ``first + 1``, ... until
    ``end`` (wall clock); report ``("ack", seq)`` and ``("error", text)`` through ``out``."""
    import libnfs

    nfs = None
    while nfs is None:
        try:
            nfs = _connect(url)
        except (OSError, ValueError) as exc:
            out.send(("error", f"mount: {exc!r}"))
            time.sleep(0.5)
    ctx = nfs._nfs
    handle = libnfs.new_NFSFileHandle()
    flags = os.O_RDWR | os.O_SYNC
    while True:
        if first == 0:
            status = libnfs.nfs_create(ctx, path, flags | os.O_CREAT | os.O_TRUNC, 0o644, handle)
        else:
            status = libnfs.nfs_open(ctx, path, flags, handle)
        if status == 0:
            break
        out.send(("error", f"open: {os.strerror(-status)}"))
        time.sleep(0.5)
    raw = libnfs.NFSFileHandle_value(handle)
    seq = first
    while time.time() < end:
        try:
            data = bytearray(record(seq))
            n = _check("write", libnfs.nfs_pwrite(ctx, raw, seq * RECORD, len(data), data))
            if n != len(data):
                raise OSError(f"short write: {n} of {len(data)} bytes")
            _check("commit", libnfs.nfs_fsync(ctx, raw))
        except (OSError, ValueError) as exc:
            out.send(("error", f"seq {seq}: {exc!r}"))
            time.sleep(0.05)
            continue
        out.send(("ack", seq))
        seq += 1
        time.sleep(interval)
    libnfs.nfs_close(ctx, raw)
    out.send(("done", seq))


def writer(*, url: str, path: str, duration: float, interval: float, stall: float) -> dict[str, object]:
    """Write for ``duration`` seconds; the figures of the run (see the module docstring)."""
    mp = multiprocessing.get_context("fork")
    end = time.time() + duration
    end_mono = time.monotonic() + duration
    acked, failed, remounts, max_gap = 0, 0, 0, 0.0
    errors: list[str] = []
    last_ok = time.monotonic()
    while time.time() < end:
        receiver, sender = mp.Pipe(duplex=False)
        child = mp.Process(target=_session, args=(url, path, acked, end, interval, sender), daemon=True)
        child.start()
        sender.close()
        started = time.monotonic()
        finished = False
        while not finished:
            if not receiver.poll(0.2):
                if time.monotonic() - max(last_ok, started) > stall:
                    # stuck in libnfs: a new session (or, past the end, none); the time without
                    # progress until now (or until the end of the run) is an interruption too
                    max_gap = max(max_gap, min(time.monotonic(), end_mono) - last_ok)
                    break
                if not child.is_alive() and not receiver.poll(0):
                    break
                continue
            try:
                kind, value = receiver.recv()
            except EOFError:
                break
            now = time.monotonic()
            if kind == "ack":
                max_gap = max(max_gap, now - last_ok)
                last_ok = now
                acked = int(value) + 1
            elif kind == "error":
                failed += 1
                if len(errors) < 20:
                    errors.append(f"{time.time():.3f} {value}")
            else:
                finished = True
        if child.is_alive():
            child.kill()
        child.join(5)
        receiver.close()
        if finished:
            break
        if time.time() < end:
            remounts += 1
            if len(errors) < 20:
                errors.append(f"{time.time():.3f} no progress for {stall:.0f}s: new session from record {acked}")
    return {"acked": acked, "failedAttempts": failed, "remounts": remounts,
            "maxGapSeconds": round(max_gap, 3), "errors": errors}


def verify(*, url: str, path: str, count: int) -> dict[str, object]:
    nfs = _connect(url)
    fh = nfs.open(path, "rb")
    data = bytes(fh.read(count * RECORD))
    fh.close()
    bad = [i for i in range(count) if data[i * RECORD:(i + 1) * RECORD] != record(i)]
    return {"records": count, "bytes": len(data), "missing": len(bad), "firstMissing": bad[:5]}


def scan(*, url: str, path: str) -> dict[str, object]:
    nfs = _connect(url)
    fh = nfs.open(path, "rb")
    data = bytes(fh.read())
    fh.close()
    count = len(data) // RECORD
    bad = [i for i in range(count) if data[i * RECORD:(i + 1) * RECORD] != record(i)]
    return {"records": count, "bytes": len(data), "partial": len(data) % RECORD, "bad": len(bad),
            "firstBad": bad[:5]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("writer")
    w.add_argument("--url", required=True, help="nfs://HOST/EXPORT?version=3")
    w.add_argument("--path", required=True)
    w.add_argument("--duration", type=float, required=True)
    w.add_argument("--interval", type=float, default=0.05)
    w.add_argument("--stall", type=float, default=6.0,
                   help="seconds without an acknowledged record before a new session")
    v = sub.add_parser("verify")
    v.add_argument("--url", required=True)
    v.add_argument("--path", required=True)
    v.add_argument("--count", type=int, required=True)
    s = sub.add_parser("scan")
    s.add_argument("--url", required=True)
    s.add_argument("--path", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "writer":
        out = writer(url=a.url, path=a.path, duration=a.duration, interval=a.interval, stall=a.stall)
    elif a.cmd == "scan":
        out = scan(url=a.url, path=a.path)
    else:
        out = verify(url=a.url, path=a.path, count=a.count)
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
