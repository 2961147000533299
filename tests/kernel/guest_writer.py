"""A checksummed writer that runs INSIDE the kernel-client guest, on an NFS mount.

Runs with the guest's python3 (standard library only). Writes 64 KiB records one after another
to one file for ``--duration`` seconds, either with ``O_SYNC`` (the kernel client sends
FILE_SYNC writes) or buffered with an ``fsync`` every ``--sync-every`` records (UNSTABLE writes
and a COMMIT; the kernel client compares the COMMIT's write verifier with the WRITEs' and sends
again what a server restart lost). A record counts as acknowledged when its ``write`` returned
(O_SYNC) or when the ``fsync`` after it returned. Every record carries its sequence number and
the SHA-256 of its payload, so the read-back (``--verify``, after a remount) checks every
acknowledged byte.

``--progress FILE`` is rewritten with the number of acknowledged records every 0.1 s (the host
watches it to kill the owner at a random point). The result is one JSON object in ``--out``:
records acknowledged, the longest time one write (or fsync) call took (the stall the
application saw), errors (any I/O error is one: a hard mount must never surface one), and what
the read-back found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import time

RECORD = 64 << 10
HEADER = struct.Struct(">Q32s")


def record(seq: int) -> bytes:
    payload = os.urandom(RECORD - HEADER.size)
    return HEADER.pack(seq, hashlib.sha256(payload).digest()) + payload


def verify(path: str, count: int) -> dict[str, int]:
    bad = missing = 0
    with open(path, "rb") as f:
        for seq in range(count):
            data = f.read(RECORD)
            if len(data) < RECORD:
                missing += 1
                continue
            got_seq, digest = HEADER.unpack_from(data)
            if got_seq != seq or hashlib.sha256(data[HEADER.size:]).digest() != digest:
                bad += 1
    return {"bad": bad, "missing": missing}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", required=True)
    ap.add_argument("--verify", type=int, metavar="COUNT",
                    help="only read back COUNT records (after a remount: nothing from the page cache)")
    ap.add_argument("--mode", choices=("sync", "unstable"), default="sync")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--sync-every", type=int, default=8)
    ap.add_argument("--progress")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.verify is not None:
        with open(args.out, "w") as out:
            json.dump(verify(args.path, args.verify), out)
        return 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_SYNC if args.mode == "sync" else 0)
    fd = os.open(args.path, flags, 0o644)
    acked = written = 0
    longest = 0.0
    errors: list[str] = []
    last_progress = 0.0
    start = time.monotonic()
    try:
        while time.monotonic() - start < args.duration:
            t0 = time.monotonic()
            os.write(fd, record(written))
            written += 1
            if args.mode == "unstable" and written % args.sync_every == 0:
                os.fsync(fd)
            took = time.monotonic() - t0
            longest = max(longest, took)
            if args.mode == "sync" or written % args.sync_every == 0:
                acked = written
            now = time.monotonic()
            if args.progress and now - last_progress > 0.1:
                with open(args.progress + ".tmp", "w") as p:
                    p.write(str(acked))
                os.replace(args.progress + ".tmp", args.progress)
                last_progress = now
        t0 = time.monotonic()
        os.fsync(fd)
        longest = max(longest, time.monotonic() - t0)
        acked = written
    except OSError as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        os.close(fd)
    result = {"mode": args.mode, "acked": acked, "written": written, "longestCallSeconds": round(longest, 3),
              "errors": errors, "seconds": round(time.monotonic() - start, 3)}
    with open(args.out, "w") as out:
        json.dump(result, out)
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
