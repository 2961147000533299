#!/usr/bin/env python3
"""An fsx-style file exerciser, run *inside* the kernel-client guest (``test_kernel_nfs.py``).

Like fsx (the file-system exerciser of the BSD and Linux test suites; none is packaged for the
guest, so this is our own, standard library only): one file on the NFS mount and a model of its
content in memory; a seeded random sequence of operations on both, every read checked against
the model. The operations are the ones through which the kernel client's page cache, its
write-back and the server's size and data handling meet:

  write      pwrite of random bytes at a random offset (often beyond the end: a hole)
  read       pread through the page cache
  dread      pread through an O_DIRECT descriptor (the server's data, no cache)
  mapwrite   write through a shared mmap of the file, then msync
  mapread    read through an mmap
  truncate   ftruncate to a random size (shrink, or grow with zeros)
  fsync      fsync (the client's write-back and a COMMIT)
  reopen     close and open again (close-to-open: cached data is revalidated)

At the end the whole file is read back both ways and compared; the size too, after every
operation. The result is one JSON object in ``--out``: the seed, counts per operation and, on
a mismatch, the operation, offset and the last operations before it, so that the same seed
replays it. Exit status 0 only when nothing differed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import random
import sys

OPS = ("write", "write", "write", "read", "read", "dread", "mapwrite", "mapread", "truncate", "fsync", "reopen")


class Mismatch(Exception):
    pass


class Exerciser:
    def __init__(self, path: str, *, seed: int, max_size: int, max_len: int, direct: bool = True) -> None:
        self.path, self.max_size, self.max_len = path, max_size, max_len
        self.direct_flag = os.O_DIRECT if direct else 0  # off: a local file system's O_DIRECT wants alignment
        self.rng = random.Random(seed)
        self.model = bytearray()
        self.counts = {op: 0 for op in OPS}
        self.history: list[str] = []
        self.steps = 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.dfd = os.open(path, os.O_RDONLY | self.direct_flag)

    def _check(self, what: str, offset: int, got: bytes) -> None:
        want = bytes(self.model[offset : offset + len(got)])
        if got != want:
            bad = next((i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w),
                       min(len(got), len(want)))
            raise Mismatch(f"{what} at {offset}+{len(got)}: first difference at byte {offset + bad} "
                           f"(got {got[bad:bad + 8].hex()}, model {want[bad:bad + 8].hex()}), "
                           f"file size in model {len(self.model)}")

    def _span(self) -> tuple[int, int]:
        offset = self.rng.randrange(self.max_size)
        return offset, self.rng.randrange(1, self.max_len + 1)

    def write(self) -> str:
        offset, length = self._span()
        data = self.rng.randbytes(length)
        os.pwrite(self.fd, data, offset)
        if offset > len(self.model):
            self.model.extend(bytes(offset - len(self.model)))
        self.model[offset : offset + length] = data
        return f"write {offset}+{length}"

    def read(self, *, direct: bool = False) -> str:
        if not self.model:
            return "read (empty)"
        offset = self.rng.randrange(len(self.model))
        length = min(self.rng.randrange(1, self.max_len + 1), len(self.model) - offset)
        got = os.pread(self.dfd if direct else self.fd, length, offset)
        self._check("dread" if direct else "read", offset, got)
        return f"{'d' if direct else ''}read {offset}+{length}"

    def mapwrite(self) -> str:
        if not self.model:
            return "mapwrite (empty)"
        offset = self.rng.randrange(len(self.model))
        length = min(self.rng.randrange(1, self.max_len + 1), len(self.model) - offset)
        data = self.rng.randbytes(length)
        with mmap.mmap(self.fd, len(self.model)) as m:
            m[offset : offset + length] = data
            m.flush()
        self.model[offset : offset + length] = data
        return f"mapwrite {offset}+{length}"

    def mapread(self) -> str:
        if not self.model:
            return "mapread (empty)"
        with mmap.mmap(self.fd, len(self.model), prot=mmap.PROT_READ) as m:
            offset = self.rng.randrange(len(self.model))
            length = min(self.rng.randrange(1, self.max_len + 1), len(self.model) - offset)
            got = m[offset : offset + length]
        self._check("mapread", offset, got)
        return f"mapread {offset}+{length}"

    def truncate(self) -> str:
        size = self.rng.randrange(self.max_size)
        os.ftruncate(self.fd, size)
        if size < len(self.model):
            del self.model[size:]
        else:
            self.model.extend(bytes(size - len(self.model)))
        return f"truncate {size}"

    def reopen(self) -> str:
        os.close(self.fd)
        os.close(self.dfd)
        self.fd = os.open(self.path, os.O_RDWR)
        self.dfd = os.open(self.path, os.O_RDONLY | self.direct_flag)
        return "reopen"

    def step(self) -> None:
        op = self.rng.choice(OPS)
        self.counts[op] += 1
        if op == "fsync":
            os.fsync(self.fd)
            done = "fsync"
        elif op == "dread":
            done = self.read(direct=True)
        else:
            done = getattr(self, op)()
        self.history = [*self.history, done][-40:]
        self.steps += 1
        size = os.fstat(self.fd).st_size
        if size != len(self.model):
            raise Mismatch(f"size {size} after {done}, model {len(self.model)}")

    def final_check(self) -> None:
        os.fsync(self.fd)
        self.reopen()
        for name, fd in (("final read", self.fd), ("final dread", self.dfd)):
            got = bytearray()
            while len(got) < len(self.model):
                chunk = os.pread(fd, min(1 << 20, len(self.model) - len(got)), len(got))
                if not chunk:
                    break
                got += chunk
            self._check(name, 0, bytes(got))
            if len(got) != len(self.model):
                raise Mismatch(f"{name}: {len(got)} bytes, model {len(self.model)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", required=True)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-size", type=int, default=1 << 20)
    ap.add_argument("--max-len", type=int, default=64 << 10)
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-direct", action="store_true", help="dread without O_DIRECT (a local file system)")
    args = ap.parse_args(argv)
    ex = Exerciser(args.path, seed=args.seed, max_size=args.max_size, max_len=args.max_len,
                   direct=not args.no_direct)
    result: dict[str, object] = {"seed": args.seed, "ops": args.ops}
    try:
        for _ in range(args.ops):
            ex.step()
        ex.final_check()
        result["ok"] = True
    except (Mismatch, OSError) as exc:
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}", at_op=ex.steps + 1, last_ops=ex.history)
    result.update(counts=ex.counts, size=len(ex.model), sha256=hashlib.sha256(ex.model).hexdigest())
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
