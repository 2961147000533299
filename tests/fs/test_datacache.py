"""The read cache (``nasblade.fs.datacache``): served reads equal what the device holds, through
random writes, overwrites, truncates, removes and block reuse, with evictions, with and without
write-behind; a remount starts empty; the caches of a file processor's file systems share one
budget (least recently used first across them, pages returned at unmount)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from nasblade.blockdev import FileBlockDevice
from nasblade.fs import fs as fsmod
from nasblade.fs import fsck
from nasblade.fs.datacache import PAGE, Budget, DataCache
from nasblade.fs.fs import ROOT, ROOT_INO, FsError


def test_pages_keep_one_known_range() -> None:
    c = DataCache(4 * PAGE)
    assert c.read(0, 10) is None
    c.fill(PAGE + 100, b"a" * PAGE)  # the end of page 1, the start of page 2
    assert c.read(PAGE + 100, PAGE) == b"a" * PAGE
    assert c.read(PAGE, 200) is None  # bytes before the known range
    c.fill(PAGE + 100 + PAGE, b"b" * 50)  # adjoining: page 2 grows
    assert c.read(2 * PAGE + 90, 20) == b"a" * 10 + b"b" * 10
    c.write(PAGE + 90, b"xyz" * 4)  # overlapping the start of page 1's range: it grows
    assert c.read(PAGE + 90, 14) == b"xyz" * 4 + b"aa"
    c.write(PAGE + 10, b"q")  # disjoint from page 1's range: the new byte replaces it
    assert c.read(PAGE + 10, 1) == b"q"
    assert c.read(PAGE + 100, 1) is None
    c.fill(5 * PAGE, bytes(3 * PAGE))  # pages 5..7: the least recently used (2) goes
    assert len(c._pages) == 4
    assert c.read(2 * PAGE, 10) is None
    assert c.read(PAGE + 10, 1) == b"q"
    assert DataCache(0).read(0, 1) is None
    assert DataCache(128 << 20).capacity_bytes == 128 << 20
    d = DataCache(PAGE)
    d.fill(0, b"x" * 10)
    d.write(11, b"y" * 9)  # one unknown byte between: never filled in
    assert d.read(0, 20) is None
    assert d.read(11, 9) == b"y" * 9


def test_caches_of_one_budget_evict_the_least_recently_used_page_of_any() -> None:
    budget = Budget(4 * PAGE)
    a, b = DataCache(budget=budget), DataCache(budget=budget)
    assert a.capacity_bytes == b.capacity_bytes == 4 * PAGE
    a.fill(0, b"a" * (3 * PAGE))  # a: pages 0, 1, 2
    assert a.read(0, 10) == b"a" * 10  # a's page 0 is now the most recently used
    b.fill(0, b"b" * (2 * PAGE))  # b: pages 0, 1 -> the least recently used of all goes: a's 1
    assert budget.pages == 4
    assert sorted(a._pages) == [0, 2] and sorted(b._pages) == [0, 1]
    assert a.read(PAGE, 10) is None and a.read(0, 10) == b"a" * 10  # a's 0 last again
    assert a.used_bytes + b.used_bytes == 4 * PAGE
    b.fill(10 * PAGE, b"c" * (2 * PAGE))  # b's 10, 11: the two oldest of all go (a's 2, b's 0)
    assert sorted(b._pages) == [1, 10, 11] and sorted(a._pages) == [0]
    b.close()  # b's file system is unmounted: its pages leave the budget
    assert budget.pages == 1 and not b._pages
    a.fill(PAGE, b"d" * (3 * PAGE))  # a alone may now fill the whole budget
    assert sorted(a._pages) == [0, 1, 2, 3] and a.read(0, 4 * PAGE) == b"a" * PAGE + b"d" * (3 * PAGE)
    off = DataCache(budget=Budget(0))
    off.fill(0, b"x")
    assert off.read(0, 1) is None and not off._pages


def test_file_systems_of_one_budget_hold_its_bytes_together(tmp_path: Path) -> None:
    """Two mounted file systems (as one file processor serves them) read files larger than the
    budget: together they never keep more than it, and both read correct data."""
    budget = Budget(1 << 20)
    mounts = []
    for i in range(2):
        dev = FileBlockDevice(tmp_path / f"lu{i}.img", size=64 << 20)
        fsmod.mkfs(dev)
        mounts.append(fsmod.FileSystem(dev, cache_budget=budget))
    data = [os.urandom(3 << 19), os.urandom(3 << 19)]
    inos = []
    for f, d in zip(mounts, data, strict=True):
        ino, _ = f.create(ROOT_INO, b"big", ROOT)
        f.write(ino, 0, d, stable=True)
        inos.append(ino)
    for _ in range(3):
        for f, ino, d in zip(mounts, inos, data, strict=True):
            for off in range(0, len(d), 1 << 16):
                assert f.read(ino, off, 1 << 16)[0] == d[off : off + (1 << 16)]
            assert budget.pages * PAGE <= budget.capacity_bytes
            assert sum(m.cache.used_bytes for m in mounts) <= budget.capacity_bytes
    assert all(m.cache.used_bytes > 0 for m in mounts[1:])
    mounts[1].close()
    assert budget.pages * PAGE == mounts[0].cache.used_bytes
    mounts[0].close()
    assert budget.pages == 0


@pytest.mark.parametrize("writebehind", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_reads_through_the_cache_match_the_device(tmp_path: Path, seed: int, writebehind: bool) -> None:
    rng = random.Random(seed)
    dev = FileBlockDevice(tmp_path / "lu.img", size=64 << 20)
    fsmod.mkfs(dev)
    wb = FileBlockDevice(tmp_path / "lu.img") if writebehind else None
    f = fsmod.FileSystem(dev, writebehind=wb, cache_bytes=256 << 10)  # small: evictions happen
    model: dict[str, bytes] = {}
    inos: dict[str, int] = {}
    for _ in range(300):
        op = rng.choice(["create", "write", "write", "write", "read", "read", "truncate", "remove"])
        name = f"f{rng.randrange(8)}"
        try:
            if op == "create" and name not in model:
                inos[name], _ = f.create(ROOT_INO, name.encode(), ROOT)
                model[name] = b""
            elif op == "write" and name in model:
                data = os.urandom(rng.choice([10, 4096, 5000, 70000, 200000]))
                off = rng.randrange(0, 300000)
                f.write(inos[name], off, data, stable=rng.random() < 0.3)
                old = model[name].ljust(off + len(data), b"\0")
                model[name] = old[:off] + data + old[off + len(data):]
            elif op == "truncate" and name in model:
                size = rng.randrange(0, 300000)
                f.setattr(inos[name], fsmod.SetAttr(size=size), ROOT)
                model[name] = model[name][:size].ljust(size, b"\0")
            elif op == "remove" and name in model:
                f.remove(ROOT_INO, name.encode(), ROOT)  # its blocks go back to the free list
                del model[name], inos[name]
            elif op == "read" and name in model:
                off = rng.randrange(0, max(1, len(model[name])))
                n = rng.choice([100, 4096, 65536, 1 << 20])
                got, _eof, _a = f.read(inos[name], off, n)
                assert got == model[name][off : off + n]
        except FsError:
            pass
        if rng.random() < 0.1:
            f.commit()
    for name, want in model.items():
        assert f.read(inos[name], 0, len(want) + 1)[0] == want
    assert f.cache.hits > 0
    f.close()
    g = fsmod.FileSystem(dev, cache_bytes=256 << 10)  # a new mount: empty cache, same bytes
    assert g.cache.used_bytes == 0
    for name, want in model.items():
        assert g.read(inos[name], 0, len(want) + 1)[0] == want
    g.close()
    assert fsck.check(dev).clean
