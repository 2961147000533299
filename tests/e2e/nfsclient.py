#!/usr/bin/env python3
"""Long-running NFS writer of the end-to-end suite, run inside the client pod.

Built into the NFS client image (tests/e2e/nfs-client/Dockerfile) and started by
tests/e2e/test_e2e.py with ``kubectl exec``. It uses libnfs's Python binding, so it talks
NFSv3 to the file system's Service exactly as an application with the file open would:

* ``writer``: opens one file once and keeps that handle; every ``--interval`` it writes one
  fixed-size record (sequence number + padding) and flushes it to stable storage. An
  operation that fails is retried on the *same* handle until it succeeds. When the run ends
  it prints one JSON line: records acknowledged, failed attempts, and the longest time
  between two acknowledged records (the interruption the client saw).
* ``verify``: reads the file back and checks that records 0..N-1 are all there, intact.

Record format: ``b"%012d" % seq`` followed by ``-`` padding to ``RECORD`` bytes, at offset
``seq * RECORD``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

RECORD = 64


def record(seq: int) -> bytes:
    head = b"%012d" % seq
    return head + b"-" * (RECORD - len(head) - 1) + b"\n"


def _connect(url: str):  # type: ignore[no-untyped-def]
    import libnfs

    return libnfs.NFS(url)


def writer(*, url: str, path: str, duration: float, interval: float) -> dict[str, object]:
    nfs = None
    deadline = time.monotonic() + 120
    while nfs is None:
        try:
            nfs = _connect(url)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    fh = nfs.open(path, "w+")
    acked, failures, seq = 0, 0, 0
    last_ok = time.monotonic()
    max_gap = 0.0
    errors: list[str] = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        try:
            fh.seek(seq * RECORD, 0)
            fh.write(record(seq))
            fh.flush()
        except Exception as exc:  # libnfs raises ValueError/IOError on NFS errors
            failures += 1
            if len(errors) < 20:
                errors.append(f"{time.time():.3f} seq {seq}: {exc!r}")
            time.sleep(0.05)
            continue
        now = time.monotonic()
        max_gap = max(max_gap, now - last_ok)
        last_ok = now
        seq += 1
        acked = seq
        time.sleep(interval)
    fh.close()
    return {"acked": acked, "failedAttempts": failures, "maxGapSeconds": round(max_gap, 3),
            "errors": errors}


def verify(*, url: str, path: str, count: int) -> dict[str, object]:
    nfs = _connect(url)
    fh = nfs.open(path, "r")
    data = fh.read(count * RECORD)
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
    v = sub.add_parser("verify")
    v.add_argument("--url", required=True)
    v.add_argument("--path", required=True)
    v.add_argument("--count", type=int, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "writer":
        out = writer(url=a.url, path=a.path, duration=a.duration, interval=a.interval)
    else:
        out = verify(url=a.url, path=a.path, count=a.count)
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
