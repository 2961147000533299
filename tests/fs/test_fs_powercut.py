"""Power-cut tests: a random workload on a ``CrashDevice``, power lost at a random device
call (inside operations, inside commits), then mount + fsck. The recovered tree must be the
last committed one (or the one whose commit was in progress), with the data of files not
written after that commit intact, and fsck must find nothing."""

from __future__ import annotations

import copy
import os
import random

import pytest
from fs_crashdev import Crash, CrashDevice
from nasblade.fs import fs as fsmod
from nasblade.fs import fsck
from nasblade.fs.fs import ROOT, ROOT_INO, FsError

SIZE = 64 << 20
Model = dict[str, bytes | None]  # path -> file content (None for a directory)


def tree(f: fsmod.FileSystem, ino: int = ROOT_INO, prefix: str = "") -> Model:
    out: Model = {}
    for e in f.iter_dir(ino):
        path = prefix + "/" + e.name.decode()
        a = f.getattr(e.ino)
        if a.type == fsmod.FType.DIR:
            out[path] = None
            out.update(tree(f, e.ino, path))
        else:
            out[path] = f.read(e.ino, 0, a.size)[0] if a.size else b""
    return out


def resolve(f: fsmod.FileSystem, path: str) -> int:
    ino = ROOT_INO
    for part in path.strip("/").split("/"):
        ino = f.lookup(ino, part.encode(), ROOT)
    return ino


def step(f: fsmod.FileSystem, model: Model, rng: random.Random, touched: set[int]) -> None:
    """One random operation on ``f`` and the same change on ``model``.

    ``touched`` collects the inodes written or truncated since the last commit: an in-place
    overwrite of an already allocated block may reach the disk before the commit, so after a
    crash their bytes may be old, new or mixed (their sizes and names may not).
    """
    dirs = [""] + [p for p, v in model.items() if v is None]
    files = [p for p, v in model.items() if v is not None]
    op = rng.choice(["create", "write", "write", "truncate", "remove", "mkdir", "rename"])
    parent = rng.choice(dirs)
    name = f"n{rng.randrange(30)}"
    path = f"{parent}/{name}"
    try:
        if op == "create" and path not in model:
            f.create(resolve(f, parent) if parent else ROOT_INO, name.encode(), ROOT)
            model[path] = b""
        elif op == "mkdir" and path not in model:
            f.mkdir(resolve(f, parent) if parent else ROOT_INO, name.encode(), ROOT)
            model[path] = None
        elif op == "write" and files:
            p = rng.choice(files)
            data = os.urandom(rng.choice([100, 4096, 5000, 70000, 300000]))
            off = rng.randrange(0, 200000)
            ino = resolve(f, p)
            touched.add(ino)
            f.write(ino, off, data, stable=rng.random() < 0.3)  # stable: FUA data, no FLUSH
            old = model[p] or b""
            buf = bytearray(old.ljust(off + len(data), b"\0")) if len(old) < off + len(data) else bytearray(old)
            buf[off : off + len(data)] = data
            model[p] = bytes(buf)
        elif op == "truncate" and files:
            p = rng.choice(files)
            size = rng.randrange(0, 100000)
            ino = resolve(f, p)
            touched.add(ino)
            f.setattr(ino, fsmod.SetAttr(size=size), ROOT)
            old = model[p] or b""
            model[p] = old[:size].ljust(size, b"\0")
        elif op == "remove" and files:
            p = rng.choice(files)
            d, _, n = p.rpartition("/")
            f.remove(resolve(f, d) if d else ROOT_INO, n.encode(), ROOT)
            del model[p]
        elif op == "rename" and files and path not in model:
            p = rng.choice(files)
            d, _, n = p.rpartition("/")
            f.rename(resolve(f, d) if d else ROOT_INO, n.encode(), resolve(f, parent) if parent else ROOT_INO, name.encode(), ROOT)
            model[path] = model.pop(p)
    except FsError:
        pass


@pytest.mark.parametrize("seed", range(24))
def test_power_cut_at_a_random_moment(seed: int) -> None:
    power_cut(seed, checkpoint_rate=0.0)


@pytest.mark.parametrize("seed", range(12))
def test_power_cut_after_the_wal_restarted(seed: int) -> None:
    """Checkpoints after commits make SQLite restart the WAL from its start, so the WAL region
    holds frames of earlier generations past the live ones, inside the size its header records
    (rounded up to a step): recovery must stop at the live frames' end."""
    power_cut(seed + 500, checkpoint_rate=0.5)


def power_cut(seed: int, *, checkpoint_rate: float) -> None:
    rng = random.Random(seed)
    dev = CrashDevice(SIZE)
    fsmod.mkfs(dev)
    dev.flush()
    f = fsmod.FileSystem(dev)
    committed: Model = {}
    model: Model = {}
    touched: set[int] = set()
    in_commit: Model | None = None
    dev.arm(rng.randrange(50, 3000), random.Random(seed + 1000))
    try:
        for _ in range(400):
            step(f, model, rng, touched)
            if rng.random() < 0.15:
                in_commit = copy.deepcopy(model)
                f.commit()
                committed, in_commit = in_commit, None
                touched = set()
                if rng.random() < checkpoint_rate:
                    f.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except Crash:
        pass
    image = dev.image if dev.image is not None else dev.crash_image(random.Random(seed))
    dev.countdown = None  # the abandoned mount's teardown must not cut power a second time
    dev2 = CrashDevice(SIZE, image)
    rep = fsck.check(dev2)
    assert rep.clean, rep.problems
    g = fsmod.FileSystem(dev2)
    got = tree(g)
    candidates = [committed] + ([in_commit] if in_commit is not None else [])
    ok = False
    for want in candidates:
        if set(got) != set(want):
            continue
        if all(
            (got[p] is None) == (want[p] is None)
            and (want[p] is None or resolve(g, p) in touched or got[p] == want[p])
            and (want[p] is None or len(got[p] or b"") == len(want[p] or b""))
            for p in want
        ):
            ok = True
    if not ok:
        diffs = []
        for want in candidates:
            diffs.append(sorted(set(got) ^ set(want)))
            diffs.append(
                [(p, len(got.get(p) or b""), len(want[p] or b"")) for p in want if p in got and got[p] != want[p]]
            )
        raise AssertionError(f"recovered tree matches no committed state: {diffs}")
    g.close()
