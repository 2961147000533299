"""Crash test: the file processor is killed with SIGKILL in the middle of a stream of writes,
repeatedly. After each kill ``nasblade fsck`` must find the file system clean, a restarted file
processor must serve every write that was acknowledged as FILE_SYNC or covered by a
successful COMMIT, and each instance must have a new write verifier."""

from __future__ import annotations

import os
import random
import subprocess
import threading
from collections.abc import Callable

import pytest
from nasblade.nfs import types as t
from nfs_harness import Controller, FileProcessor, export, nasblade
from nfs_rpcclient import RawClient

pytestmark = [pytest.mark.component, pytest.mark.slow]


class Writer:
    """Writes files through a raw client and records what the server acknowledged as stable."""

    def __init__(self, fp: FileProcessor, acked: dict[bytes, bytes], rng: random.Random, tag: str) -> None:
        self.c = RawClient("127.0.0.1", fp.nfs_port, timeout=30)
        self.acked = acked
        self.rng = rng
        self.tag = tag
        self.count = 0
        self.uncertain: set[bytes] = set()
        self.verifiers: set[bytes] = set()
        stat, ok = self.c.mnt(b"/admin")
        assert stat == 0
        self.root = bytes(ok.fhandle)  # type: ignore[attr-defined]

    def handle(self, name: bytes) -> bytes:
        stat, ok = self.c.nfs(3, t.DIROPARGS, t.DirOpArgs(self.root, name), t.LOOKUP_RES)  # type: ignore[misc]
        assert stat == 0
        return bytes(ok.object)

    def run(self, reached: threading.Event, kill_after: int) -> None:
        try:
            while True:
                self.one()
                self.count += 1
                if self.count == kill_after:
                    reached.set()
        except (ConnectionError, OSError, AssertionError):
            reached.set()

    def one(self) -> None:
        rng = self.rng
        if self.acked and rng.random() < 0.3:
            name = rng.choice(sorted(self.acked))
            fh = self.handle(name)
        else:
            name = f"{self.tag}-{self.count}".encode()
            self.uncertain.add(name)
            args = t.CreateArgs(t.DirOpArgs(self.root, name), (t.CreateMode.GUARDED, t.Sattr(mode=0o644)))
            stat, ok = self.c.nfs(8, t.CREATE_ARGS, args, t.CREATE_RES)  # type: ignore[misc]
            assert stat == 0
            fh = bytes(ok.obj)
            self.acked[name] = b""
            self.uncertain.discard(name)
        old = self.acked[name]
        off = rng.randrange(0, len(old) + 1)
        data = os.urandom(rng.choice([1000, 4096, 65536, 300_000]))
        new = old[:off] + data + old[off + len(data) :]
        self.uncertain.add(name)
        stable = rng.random() < 0.5
        how = t.StableHow.FILE_SYNC if stable else t.StableHow.UNSTABLE
        stat, w = self.c.nfs(7, t.WRITE_ARGS, t.WriteArgs(fh, off, len(data), how, memoryview(data)), t.WRITE_RES)  # type: ignore[misc]
        assert stat == 0
        self.verifiers.add(bytes(w.verf))
        if not stable:
            stat, cm = self.c.nfs(21, t.COMMIT_ARGS, t.CommitArgs(fh, 0, 0), t.COMMIT_RES)  # type: ignore[misc]
            assert stat == 0 and bytes(cm.verf) == bytes(w.verf)
        self.acked[name] = new
        self.uncertain.discard(name)


def read_all(c: RawClient, fh: bytes, size: int) -> bytes:
    out = bytearray()
    while len(out) < size + 1:
        stat, rd = c.nfs(6, t.READ_ARGS, t.ReadArgs(fh, len(out), 1 << 20), t.READ_RES)  # type: ignore[misc]
        assert stat == 0
        out += bytes(rd.data)
        if rd.eof:
            break
    return bytes(out)


def test_kill_9_during_writes_loses_nothing_acknowledged(
    controller: Controller, fp_factory: Callable[..., FileProcessor]
) -> None:
    url = controller.new_lu(512 << 20)
    rng = random.Random(1234)
    acked: dict[bytes, bytes] = {}
    verifiers: list[bytes] = []
    for rnd in range(4):
        fp = fp_factory(url, [export("/admin", rootSquash=False)])
        w = Writer(fp, acked, rng, f"r{rnd}")
        for name, want in acked.items():
            if name in w.uncertain:
                continue
            assert read_all(w.c, w.handle(name), len(want)) == want, name
        reached = threading.Event()
        th = threading.Thread(target=w.run, args=(reached, rng.randrange(5, 40)), daemon=True)
        th.start()
        assert reached.wait(120)
        fp.kill()
        th.join(60)
        w.c.close()
        verifiers.extend(w.verifiers)
        for name in w.uncertain:
            acked.pop(name, None)
        check = subprocess.run(nasblade("fsck", url), capture_output=True, timeout=300)
        assert check.returncode == 0, check.stdout + check.stderr
    fp = fp_factory(url, [export("/admin", rootSquash=False)])
    c = RawClient("127.0.0.1", fp.nfs_port)
    stat, ok = c.mnt(b"/admin")
    root = bytes(ok.fhandle)  # type: ignore[attr-defined]
    for name, want in acked.items():
        stat, lk = c.nfs(3, t.DIROPARGS, t.DirOpArgs(root, name), t.LOOKUP_RES)  # type: ignore[misc]
        assert stat == 0, name
        assert read_all(c, bytes(lk.object), len(want)) == want, name
    c.close()
    assert len(acked) >= 4
    assert len(set(verifiers)) == len(verifiers) == 4  # one verifier per instance, all different
