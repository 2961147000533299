#!/usr/bin/env python3
"""Long-running NFS writer of the end-to-end suite, run inside the client pod.

Built into the NFS client image (tests/e2e/nfs-client/Dockerfile) and started by
tests/e2e/test_e2e.py with ``kubectl exec``. It uses libnfs's Python binding, so it talks
NFSv3 to the file system's Service exactly as an application with the file open would:

* ``writer``: opens one file once (``O_SYNC``) and keeps that handle; every ``--interval`` it
  writes one fixed-size record (sequence number + padding) with ``nfs_pwrite`` and calls
  ``nfs_fsync`` (NFSv3 COMMIT); a record counts as acknowledged only when both return
  success (the binding's file-object methods drop libnfs's return codes, so the raw calls
  are used). ``O_SYNC`` makes libnfs send FILE_SYNC writes: without it libnfs sends UNSTABLE
  writes and does not compare the COMMIT reply's verifier with the WRITE replies' (RFC 1813
  3.3.7 and 3.3.21 ask a client to resend when it changes), so a record written UNSTABLE to a
  blade that fails before the COMMIT would be "acknowledged" by libnfs after the survivor's
  COMMIT although the survivor never saw it -- a loss the client library causes, which a
  kernel client would not. A FILE_SYNC write is on the devices before its reply. An operation that fails is retried on the *same* handle until it succeeds;
  libnfs reconnects by itself while the Service moves to another blade. When the run ends
  it prints one JSON line: records acknowledged, failed attempts, and the longest time
  between two acknowledged records (the interruption the client saw).
* ``verify``: reads the file back and checks that records 0..N-1 are all there, intact.

Record format: ``b"%012d" % seq`` followed by ``-`` padding to ``RECORD`` bytes, at offset
``seq * RECORD``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

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


def writer(*, url: str, path: str, duration: float, interval: float,
           grace: float) -> dict[str, object]:
    """Write for ``duration`` seconds; the figures of the run (see the module docstring).

    libnfs's synchronous calls have no timeout (it reconnects for ever), so the loop runs in a
    thread: if an operation is still blocked ``grace`` seconds after the run should have
    ended, the result says so (``stuckSeconds``) instead of hanging the test.
    """
    import libnfs

    state: dict[str, object] = {"acked": 0, "failedAttempts": 0, "maxGapSeconds": 0.0,
                                "errors": [], "stuckSeconds": 0.0}
    errors: list[str] = []
    state["errors"] = errors
    progress = {"last_ok": time.monotonic()}
    end = time.monotonic() + duration

    def loop() -> None:
        nfs = None
        deadline = time.monotonic() + 120
        while nfs is None:
            try:
                nfs = _connect(url)
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        ctx = nfs._nfs
        handle = libnfs.new_NFSFileHandle()
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_SYNC
        _check("create", libnfs.nfs_create(ctx, path, flags, 0o644, handle))
        raw = libnfs.NFSFileHandle_value(handle)
        seq = 0
        progress["last_ok"] = time.monotonic()
        max_gap = 0.0
        while time.monotonic() < end:
            try:
                data = bytearray(record(seq))
                n = _check("write", libnfs.nfs_pwrite(ctx, raw, seq * RECORD, len(data), data))
                if n != len(data):
                    raise OSError(f"short write: {n} of {len(data)} bytes")
                _check("commit", libnfs.nfs_fsync(ctx, raw))
            except (OSError, ValueError) as exc:
                state["failedAttempts"] = int(str(state["failedAttempts"])) + 1
                if len(errors) < 20:
                    errors.append(f"{time.time():.3f} seq {seq}: {exc!r}")
                time.sleep(0.05)
                continue
            now = time.monotonic()
            max_gap = max(max_gap, now - progress["last_ok"])
            progress["last_ok"] = now
            seq += 1
            state["acked"] = seq
            state["maxGapSeconds"] = round(max_gap, 3)
            time.sleep(interval)
        libnfs.nfs_close(ctx, raw)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    worker.join(timeout=duration + grace)
    if worker.is_alive():
        stuck = time.monotonic() - progress["last_ok"]
        state["stuckSeconds"] = round(stuck, 3)
        state["maxGapSeconds"] = max(float(str(state["maxGapSeconds"])), round(stuck, 3))
    return state


def verify(*, url: str, path: str, count: int) -> dict[str, object]:
    nfs = _connect(url)
    fh = nfs.open(path, "rb")
    data = bytes(fh.read(count * RECORD))
    fh.close()
    bad = [i for i in range(count) if data[i * RECORD:(i + 1) * RECORD] != record(i)]
    return {"records": count, "bytes": len(data), "missing": len(bad), "firstMissing": bad[:5]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("writer")
    w.add_argument("--url", required=True, help="nfs://HOST/EXPORT?version=3")
    w.add_argument("--path", required=True)
    w.add_argument("--duration", type=float, required=True)
    w.add_argument("--interval", type=float, default=0.05)
    w.add_argument("--grace", type=float, default=30.0,
                   help="seconds an operation may stay blocked after the run before giving up")
    v = sub.add_parser("verify")
    v.add_argument("--url", required=True)
    v.add_argument("--path", required=True)
    v.add_argument("--count", type=int, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "writer":
        out = writer(url=a.url, path=a.path, duration=a.duration, interval=a.interval,
                     grace=a.grace)
    else:
        out = verify(url=a.url, path=a.path, count=a.count)
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
    sys.stdout.flush()
    os._exit(0)  # a writer thread blocked in libnfs must not keep the process alive


if __name__ == "__main__":
    sys.exit(main())
