"""Unit tests of protection levels (``redundancy``) and of mirrored, checksummed arrays
(``array`` + ``vdev``) over real device files: self-healing reads, degraded mode, replace and
rebuild, scrub, crash resync, version-1 compatibility."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from nasblade.controller import layout, vdev
from nasblade.controller import redundancy as rd
from nasblade.controller.array import Array

MiB = 1 << 20
SIZE = 64 * MiB


def test_parse_levels_and_device_rules() -> None:
    assert rd.parse("none") == rd.Protection("none", 1)
    assert rd.parse("mirror") == rd.Protection("mirror", 2)
    assert rd.parse("mirror-3") == rd.Protection("mirror", 3)
    assert rd.parse({"level": "mirror", "copies": 3}).name == "mirror-3"
    for bad, msg in (("raid5", "unknown protection level"), ("mirror-4", "2 or 3 copies"), ("mirror-\u00b2", "2 or 3 copies"),
                     ({"level": "none", "copies": 2}, "exactly one copy"), (5, "string or a mapping")):
        with pytest.raises(rd.ProtectionError, match=msg):
            rd.parse(bad)
    rd.parse("mirror").check(4)
    with pytest.raises(rd.ProtectionError, match="multiple of 2 devices"):
        rd.parse("mirror").check(3)
    with pytest.raises(rd.ProtectionError, match="multiple of 3 devices"):
        rd.parse("mirror-3").check(2)
    assert rd.parse("mirror").sets(4) == [(0, 1), (2, 3)]
    assert rd.parse("none").sets(3) == [(0,), (1,), (2,)]


def test_parity_levels_rules_and_records() -> None:
    assert rd.parse("parity-1") == rd.parse("parity") == rd.Protection("parity", 1, 1)
    assert rd.parse({"level": "parity", "copies": 1, "parity": 2}).name == "parity-2"
    for level, fewest in (("parity-1", 3), ("parity-2", 4)):
        p = rd.parse(level)
        assert rd.parse(p.to_json()) == p and p.survives == p.parity
        p.check(fewest)
        with pytest.raises(rd.ProtectionError, match=f"at least {fewest} devices"):
            p.check(fewest - 1)
        assert p.sets(5) == [(0, 1, 2, 3, 4)] and p.data_devices(5) == 5 - p.parity
    with pytest.raises(rd.ProtectionError, match="1 or 2 parity"):
        rd.parse("parity-3")
    # the superblock records of none and mirror arrays are what they were before parity
    assert rd.parse("none").to_json() == {"level": "none", "copies": 1}
    assert rd.parse("mirror-3").to_json() == {"level": "mirror", "copies": 3}
    assert rd.parse("mirror").data_devices(4) == 2 and rd.parse("none").data_devices(3) == 3


def test_geometry_and_checksums() -> None:
    g = rd.Geometry.for_size(SIZE + 12345)
    assert g.vsize % MiB == 0 and g.csum_offset == g.vsize
    assert g.bitmap_offset >= g.csum_offset + g.blocks * rd.CSUM_SIZE
    assert g.bitmap_offset + g.regions <= SIZE
    assert (g.journal_offset, g.journal_size) == (0, 0)  # none and mirror arrays: no journal, geometry unchanged
    j = rd.Geometry.for_size(SIZE + 12345, journal=4 * MiB)  # a parity array's stripe journal ends the tail
    assert j.vsize <= g.vsize - 4 * MiB and j.journal_offset >= j.bitmap_offset + j.regions
    assert j.journal_offset + j.journal_size <= SIZE
    assert g.overhead < SIZE // 32
    assert rd.checksum(bytes(rd.BLOCK)) == 0
    assert rd.checksum(b"x" * rd.BLOCK) != 0
    assert rd.checksums(bytes(2 * rd.BLOCK)) == [0, 0]
    assert rd.align(4095, 2) == (0, 8192)
    assert list(rd.regions_of(rd.REGION - 1, 2)) == [0, 1]


def test_choose() -> None:
    good, bad = b"a" * rd.BLOCK, b"b" * rd.BLOCK
    s = rd.checksum(good)
    assert rd.choose([(bad, s), (good, s)], trust_unverified=False) == 1
    assert rd.choose([(None, s), (good, s)], trust_unverified=False) == 1
    assert rd.choose([(bad, s), (bad, s)], trust_unverified=False) is None
    assert rd.choose([(None, s), (bad, s)], trust_unverified=True) == 1


def _open(tmp: Path, n: int = 2, protection: str | None = "mirror") -> Array:
    return Array.open([(str(tmp / f"d{i}"), SIZE) for i in range(n)], protection)


def _payload(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def _read(a: Array, lu: str, off: int, n: int) -> bytes:
    buf = bytearray(n)
    a.read_into(a.state.lus[lu], off, memoryview(buf))
    return bytes(buf)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_mirror_capacity_is_half(tmp_path: Path) -> None:
    plain = Array.open([(str(tmp_path / f"p{i}"), SIZE) for i in range(2)], "none")
    mirror = _open(tmp_path)
    assert len(plain.vsizes) == 2 and len(mirror.vsizes) == 1
    assert sum(mirror.usable_bytes()) * 2 == sum(plain.usable_bytes())
    with pytest.raises(layout.LayoutError, match="multiple of 2"):
        Array.open([(str(tmp_path / f"x{i}"), SIZE) for i in range(3)], "mirror")


def test_bit_flip_is_repaired_on_read_and_by_scrub(tmp_path: Path) -> None:
    a = _open(tmp_path)
    lu = a.create_lu("lu", 8 * MiB)
    data = _payload(random.Random(1), 2 * MiB)
    a.write_from(lu, 0, memoryview(data))
    a.sync()
    off = lu.segments[0].members[0][1]
    for i in range(2):  # a flip on each copy, different blocks
        _flip(tmp_path / f"d{i}", off + (10 + 100 * i) * 4096 + 7)
    assert _read(a, "lu", 0, 2 * MiB) == data
    st = a.status()
    assert st["repairedBlocks"] >= 1 and st["lostBlocks"] == 0  # the read hit one of them
    repaired, lost = a.scrub()
    assert repaired + int(st["repairedBlocks"]) == 2 and lost == 0  # type: ignore[call-overload]
    assert a.scrub() == (0, 0)
    raw = [(tmp_path / f"d{i}").read_bytes()[off : off + 2 * MiB] for i in range(2)]
    assert raw[0] == raw[1] == data


def test_none_detects_corruption(tmp_path: Path) -> None:
    a = Array.open([(str(tmp_path / "d0"), SIZE)], "none")
    lu = a.create_lu("lu", MiB)
    a.write_from(lu, 0, memoryview(b"z" * MiB))
    a.sync()
    _flip(tmp_path / "d0", lu.segments[0].members[0][1] + 5)
    with pytest.raises(OSError, match="match no copy"):
        _read(a, "lu", 0, 4096)
    assert _read(a, "lu", 4096, 4096) == b"z" * 4096
    assert a.status()["lostBlocks"] == 1


def test_unaligned_writes_keep_checksums(tmp_path: Path) -> None:
    a = _open(tmp_path)
    lu = a.create_lu("lu", 4 * MiB)
    model = bytearray(4 * MiB)
    rng = random.Random(2)
    for _ in range(200):
        off, n = rng.randrange(4 * MiB - 9000), rng.randrange(1, 9000)
        d = rng.randbytes(n)
        a.write_from(lu, off, memoryview(d))
        model[off : off + n] = d
        if rng.random() < 0.1:
            zo, zn = rng.randrange(4 * MiB - 70000), rng.randrange(1, 70000)
            a.zero(lu, zo, zn)
            model[zo : zo + zn] = bytes(zn)
    a.sync()
    a.close()
    b = _open(tmp_path)
    assert _read(b, "lu", 0, 4 * MiB) == model
    assert b.scrub() == (0, 0)
    assert b.status()["checksumErrors"] == 0


def test_degraded_missing_device_then_replace_and_rebuild(tmp_path: Path) -> None:
    a = _open(tmp_path, 4)
    lu = a.create_lu("lu", 40 * MiB)
    data = _payload(random.Random(3), 40 * MiB)
    a.write_from(lu, 0, memoryview(data))
    a.sync()
    a.close()
    os.unlink(tmp_path / "d1")
    b = Array.open([(str(tmp_path / f"d{i}"), None) for i in range(4)])  # no size: stays missing
    st = b.status()
    assert st["state"] == "degraded" and st["devices"][1]["state"] == "failed"  # type: ignore[index]
    assert _read(b, "lu", 0, 40 * MiB) == data
    more = _payload(random.Random(4), MiB)
    b.write_from(b.state.lus["lu"], 5 * MiB, memoryview(more))
    data = data[: 5 * MiB] + more + data[6 * MiB :]
    b.sync()
    m = b.replace(1)
    assert m.state == "rebuilding"
    while b.rebuild_step(4 * MiB):
        pass
    assert b.status()["state"] == "ok"
    b.close()
    # the rebuilt device alone: its partner fails (deleted)
    os.unlink(tmp_path / "d0")
    c = Array.open([(str(tmp_path / f"d{i}"), None) for i in range(4)])
    assert c.devices[0].state == "failed" and c.devices[1].state == "ok"
    assert _read(c, "lu", 0, 40 * MiB) == data


def test_blank_device_in_place_is_rebuilt_and_state_survives_restart(tmp_path: Path) -> None:
    a = _open(tmp_path)
    lu = a.create_lu("lu", 16 * MiB)
    data = _payload(random.Random(5), 16 * MiB)
    a.write_from(lu, 0, memoryview(data))
    a.sync()
    a.close()
    os.unlink(tmp_path / "d0")
    b = _open(tmp_path)  # recreates d0 blank
    assert b.devices[0].state == "rebuilding"
    b.rebuild_step(2 * MiB)
    b.checkpoint()
    b.rebuild_step(2 * MiB)  # not checkpointed: redone after the restart
    done = b.devices[0].rebuilt_durable
    assert done == b.devices[0].rebuilt - 2 * MiB
    b.close()
    c = _open(tmp_path)  # resumes where it was
    assert c.devices[0].state == "rebuilding" and c.devices[0].rebuilt == done
    assert _read(c, "lu", 0, 16 * MiB) == data
    while c.rebuild_step(8 * MiB):
        pass
    c.close()
    (tmp_path / "d1").unlink()
    d = Array.open([(str(tmp_path / f"d{i}"), None) for i in range(2)])
    assert _read(d, "lu", 0, 16 * MiB) == data


def test_injected_errors_fail_a_device_and_io_goes_on(tmp_path: Path) -> None:
    a = _open(tmp_path)
    lu = a.create_lu("lu", 8 * MiB)
    a.write_from(lu, 0, memoryview(b"q" * 8 * MiB))
    a.sync()
    a.devices[1].faults.append((0, SIZE, frozenset({"read"})))
    for i in range(40):  # reads rotate over the copies; errors on d1 are repaired, then it fails
        assert _read(a, "lu", (i % 8) * MiB, MiB) == b"q" * MiB
    assert a.devices[1].state == "failed" and a.devices[1].read_errors >= 16
    a.write_from(lu, 0, memoryview(b"r" * MiB))
    assert _read(a, "lu", 0, MiB) == b"r" * MiB
    a.close()
    b = _open(tmp_path)
    assert b.devices[1].state == "failed"  # a failed device is not trusted again
    assert _read(b, "lu", 0, MiB) == b"r" * MiB


def test_write_error_fails_the_device_at_once(tmp_path: Path) -> None:
    a = _open(tmp_path)
    lu = a.create_lu("lu", MiB)
    a.devices[0].faults.append((0, SIZE, frozenset({"write"})))
    a.write_from(lu, 0, memoryview(b"w" * 4096))
    assert a.devices[0].state == "failed"
    assert _read(a, "lu", 0, 4096) == b"w" * 4096


def test_crash_resync_makes_copies_agree(tmp_path: Path) -> None:
    """A write whose data reached one copy but whose checksums did not (the bitmap bit is
    set): the region is reconciled on open, copies agree, nothing is reported lost."""
    a = _open(tmp_path)
    lu = a.create_lu("lu", 4 * MiB)
    a.write_from(lu, 0, memoryview(b"o" * 4 * MiB))
    a.sync()
    a.clean_bitmaps()
    off = lu.segments[0].members[0][1]
    a.write_from(lu, 0, memoryview(b"n" * MiB))  # bit set, checksum pages not written
    with open(tmp_path / "d1", "r+b") as f:  # as if the copy to d1 never happened
        f.seek(off)
        f.write(b"o" * MiB)
    os.close(a.devices[0].fd)
    os.close(a.devices[1].fd)  # "kill -9": no sync, no clean
    b = _open(tmp_path)
    assert b.status()["virtualDevices"][0]["resyncedRegions"] >= 1  # type: ignore[index]
    got = _read(b, "lu", 0, MiB)
    assert got in (b"o" * MiB, b"n" * MiB)
    raw = [(tmp_path / f"d{i}").read_bytes()[off : off + MiB] for i in range(2)]
    assert raw[0] == raw[1] == got
    assert b.scrub() == (0, 0)
    assert b.status()["lostBlocks"] == 0


def test_version1_array_still_opens(tmp_path: Path) -> None:
    """An array made before protection levels: version-1 superblock, no tail."""
    paths = [tmp_path / "d0", tmp_path / "d1"]
    for p in paths:
        with open(p, "wb") as f:
            f.truncate(SIZE)
    seg = layout.Segment(((0, layout.META_SIZE), (1, layout.META_SIZE)), MiB)
    lu = layout.LURecord("old", 2 * MiB, [seg], "2026-01-01T00:00:00Z")
    payload = {"version": 1, "uuid": "u1", "devices": [SIZE, SIZE], "unit": MiB,
               "lus": [lu.to_json()], "copyJobs": []}
    for i, p in enumerate(paths):
        rec = layout.encode_record(3, {**payload, "device": i})
        with open(p, "r+b") as f:
            f.seek(layout.slot_offset(3))
            f.write(rec)
            f.seek(layout.META_SIZE)
            f.write(b"A" * MiB)
    a = Array.open([(str(p), None) for p in paths])
    assert a.state.version == 1 and a.protection.name == "none"
    assert _read(a, "old", 0, MiB) == b"A" * MiB
    a.write_from(a.state.lus["old"], MiB, memoryview(b"B" * MiB))
    a.create_lu("new", MiB)
    a.close()
    b = Array.open([(str(p), None) for p in paths])
    assert b.state.version == 1 and _read(b, "old", MiB, MiB) == b"B" * MiB
    rec = layout.decode_record(paths[0].read_bytes()[layout.slot_offset(b.state.seq):][: layout.SLOT_SIZE])
    assert rec is not None and rec[1]["version"] == 1
    with pytest.raises(layout.LayoutError, match="formatted with protection none"):
        Array.open([(str(p), None) for p in paths], "mirror")


def test_a_gone_last_copy_is_kept_and_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With no redundancy a device whose file is deleted holds the only copy: it is kept in use
    (its open descriptor still reads), and the error is logged once, not at every look (the
    controller looks for gone device files every second)."""
    arr = Array.open([(str(tmp_path / "only"), SIZE)], "none")
    os.unlink(tmp_path / "only")
    with caplog.at_level("ERROR", logger="nasblade.controller.vdev"):
        for _ in range(5):
            assert arr.check_devices() == []
    kept = [r for r in caplog.records if "last copy: kept" in r.getMessage()]
    assert len(kept) == 1, [r.getMessage() for r in caplog.records]
    assert arr.vdevs[0].members[0].state == "ok"


@pytest.mark.parametrize(("level", "n", "lost"), [("parity-1", 3, (1,)), ("parity-2", 4, (1,)), ("parity-2", 4, (0, 2))])
def test_parity_rebuild_gives_each_device_back_byte_for_byte(tmp_path: Path, level: str, n: int,
                                                             lost: tuple[int, ...]) -> None:
    """A parity rebuild over data, partial holes and whole 4 MiB spans of holes (skipped in one
    punch) gives each replaced device back byte for byte, holes as holes; where parity is left,
    a bit flip on a survivor met on the way is repaired; the rebuilt devices alone (as many
    others failed as the parity allows) serve the data."""
    from nasblade.controller import parity

    a = _open(tmp_path, n, level)
    lu = a.create_lu("lu", 24 * MiB)
    rng = random.Random(7)
    data = bytearray(24 * MiB)
    for off, size in ((0, 9 * MiB), (12 * MiB + (64 << 10), 64 << 10), (16 * MiB, 7 * MiB)):  # holes between
        data[off : off + size] = _payload(rng, size)
        a.write_from(lu, off, memoryview(data)[off : off + size])
    a.sync()
    before = {i: (tmp_path / f"d{i}").read_bytes() for i in lost}
    v = a.vdevs[0]
    assert isinstance(v, parity.ParityVDev)
    end = v.device_end
    for i in lost:
        v.fail(a.devices[i], "test")
        a.replace(i)
    if len(lost) < a.protection.parity:
        survivor = next(i for i in range(n) if i not in lost)
        _flip(tmp_path / f"d{survivor}", layout.META_SIZE + 8 * (64 << 10) + 100)
    while a.rebuild_step(4 * MiB):
        pass
    assert a.status()["state"] == "ok"
    for i in lost:
        after = (tmp_path / f"d{i}").read_bytes()
        assert after[layout.META_SIZE : end] == before[i][layout.META_SIZE : end], f"device {i} differs"
        holes = vdev.device_holes(a.devices[i].fd, layout.META_SIZE + 32 * MiB, end)
        assert holes and holes[-1][1] == end, "the unwritten tail is not a hole"
    assert _read(a, "lu", 0, 24 * MiB) == bytes(data)
    a.close()
    for i in [i for i in range(n) if i not in lost][: len(lost)]:
        os.unlink(tmp_path / f"d{i}")
    b = Array.open([(str(tmp_path / f"d{i}"), None) for i in range(n)])
    assert all(b.devices[i].state == "ok" for i in lost)
    assert _read(b, "lu", 0, 24 * MiB) == bytes(data)
    b.close()


@pytest.mark.parametrize(("level", "n"), [("parity-1", 3), ("parity-2", 4)])
def test_parity_rebuild_pass_gives_every_share_back_from_stale_buffers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: str, n: int) -> None:
    """Each device in turn rebuilt by the one-pass path alone (``_rebuild_rows``: every
    rotation, so every data and parity share is decoded or encoded, half of each pass in the
    helper thread) from buffers a previous pass left full of other bytes: every byte and every
    checksum as before, rows of zeroes holes with zero checksums."""
    from nasblade.controller import parity

    a = _open(tmp_path, n, level)
    lu = a.create_lu("lu", 8 * MiB)
    rng = random.Random(11)
    data = bytearray(_payload(rng, 8 * MiB))
    for u in range(0, 8 * MiB, parity.UNIT):
        if (u // parity.UNIT // 4) % 3 == 0:  # whole stripes of zeroes, their parity too
            data[u : u + parity.UNIT] = bytes(parity.UNIT)
    a.write_from(lu, 0, memoryview(data))
    a.sync()
    v = a.vdevs[0]
    assert isinstance(v, parity.ParityVDev)
    meta, end = layout.META_SIZE, v.device_end

    def no_slow_path(m: vdev.Member, start: int, stop: int) -> None:
        raise AssertionError(f"row by row at {start}")

    monkeypatch.setattr(v, "_rebuild_row_by_row", no_slow_path)
    for i in range(n):
        m = a.devices[i]
        assert m.csum is not None
        before = (tmp_path / f"d{i}").read_bytes()[meta:end]
        sums = m.csum[meta // rd.BLOCK : end // rd.BLOCK]
        v.fail(m, "test")
        m = a.replace(i)
        v._batch_bufs = [bytearray(b"\xa5" * parity.BATCH) for _ in range(n + 1)]
        while a.rebuild_step(MiB):
            pass
        assert m.state == "ok" and m.csum is not None
        assert (tmp_path / f"d{i}").read_bytes()[meta:end] == before, f"device {i} differs"
        assert m.csum[meta // rd.BLOCK : end // rd.BLOCK] == sums, f"device {i}: checksums differ"
        zero_rows = [r for r in range(meta, end, parity.UNIT)
                     if before[r - meta : r - meta + parity.UNIT] == bytes(parity.UNIT)]
        holes = vdev.device_holes(m.fd, meta, end)
        assert any(r < 8 * MiB + meta for r in zero_rows)
        assert all(any(h0 <= r and r + parity.UNIT <= h1 for h0, h1 in holes) for r in zero_rows)
    assert _read(a, "lu", 0, 8 * MiB) == bytes(data)
    a.close()


@pytest.mark.parametrize(("level", "n"), [("mirror", 2), ("parity-1", 3)])
def test_rebuild_skips_long_holes_in_few_steps_and_stops_at_data(tmp_path: Path, level: str, n: int) -> None:
    """A span that is holes on the devices read is rebuilt in steps of up to ``HOLE_STEP``,
    never past the data after it (checked under the lock: a block in it whose checksum is not
    zero keeps the steps at their size), and the device comes back byte for byte."""
    a = _open(tmp_path, n, level)
    lu = a.create_lu("lu", 40 * MiB)
    rng = random.Random(13)
    first, last = _payload(rng, MiB), _payload(rng, MiB)
    a.write_from(lu, 0, memoryview(first))
    a.write_from(lu, 36 * MiB, memoryview(last))
    a.sync()
    v = a.vdevs[0]
    before = (tmp_path / "d1").read_bytes()
    survivor = a.devices[0]
    assert survivor.csum is not None
    gap = next((h0, h1) for h0, h1 in vdev.device_holes(survivor.fd, layout.META_SIZE, v.device_end)
               if h1 - h0 >= 8 * MiB and h1 < v.device_end)
    x = (gap[0] + 4 * MiB) // rd.BLOCK  # a block in the gap that says it holds data
    survivor.csum[x] = 12345
    v.fail(a.devices[1], "test")
    m = a.replace(1)
    steps: list[tuple[int, int]] = []
    while m.rebuilt + MiB <= x * rd.BLOCK:
        start = m.rebuilt
        steps.append((start, a.rebuild_step(MiB)))
    assert all(start + got <= x * rd.BLOCK for start, got in steps)
    survivor.csum[x] = 0
    while got := a.rebuild_step(MiB):
        steps.append((0, got))
    assert m.state == "ok"
    assert max(got for _, got in steps) > MiB
    assert len(steps) < (v.device_end // MiB) // 2
    after = (tmp_path / "d1").read_bytes()
    assert after[layout.META_SIZE : v.device_end] == before[layout.META_SIZE : v.device_end]
    assert _read(a, "lu", 0, MiB) == first and _read(a, "lu", 36 * MiB, MiB) == last
    a.close()


def _count_io(monkeypatch: pytest.MonkeyPatch, *, refuse_dsync: bool) -> tuple[list[int], list[int]]:
    """Record the flags of every ``pwritev`` and the fds of every ``fdatasync`` from here on."""
    flags_seen: list[int] = []
    synced: list[int] = []
    real_pwritev, real_fdatasync = os.pwritev, os.fdatasync

    def pwritev(fd: int, bufs: list[memoryview], offset: int, flags: int = 0) -> int:
        flags_seen.append(flags)
        if flags and refuse_dsync:
            raise OSError(95, "Operation not supported")
        return real_pwritev(fd, bufs, offset, flags)

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(vdev.os, "pwritev", pwritev)
    monkeypatch.setattr(vdev.os, "fdatasync", fdatasync)
    return flags_seen, synced


def _clean_mirror(tmp: Path) -> tuple[Array, layout.LURecord]:
    """A mirror array with an 8 MiB LU and no write-intent bit set."""
    a = _open(tmp)
    lu = a.create_lu("lu", 8 * MiB)
    a.sync()
    a.clean_bitmaps()
    return a, lu


def test_a_write_intent_bit_is_made_durable_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first write into a region sets its bit and makes the bitmap page durable before the
    data goes out: that page alone (``RWF_DSYNC``), once per copy, not an ``fdatasync`` of the
    device, which wrote back every dirty page of data written before (a sequential writer paid
    a full flush every 4 MiB). A second write into the region writes no bitmap at all."""
    a, lu = _clean_mirror(tmp_path)
    flags_seen, synced = _count_io(monkeypatch, refuse_dsync=False)
    a.write_from(lu, 0, memoryview(b"x" * MiB))
    assert synced == []
    assert flags_seen.count(os.RWF_DSYNC) == 2 and len(flags_seen) == 4  # bitmap page + data, per copy
    a.write_from(lu, MiB, memoryview(b"y" * MiB))
    assert flags_seen.count(os.RWF_DSYNC) == 2 and len(flags_seen) == 6
    assert _read(a, "lu", 0, 2 * MiB) == b"x" * MiB + b"y" * MiB


def test_a_device_that_refuses_rwf_dsync_gets_fdatasync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, lu = _clean_mirror(tmp_path)
    flags_seen, synced = _count_io(monkeypatch, refuse_dsync=True)
    a.write_from(lu, 0, memoryview(b"z" * MiB))
    assert sorted(synced) == sorted(m.fd for m in a.devices)  # the bit made durable the old way
    a.write_from(lu, 4 * MiB, memoryview(b"w" * MiB))  # a new region: no RWF_DSYNC tried again
    assert flags_seen.count(os.RWF_DSYNC) == 2 and len(synced) == 4
    assert _read(a, "lu", 0, MiB) == b"z" * MiB and _read(a, "lu", 4 * MiB, MiB) == b"w" * MiB


def _evict(a: Array) -> None:
    """Drop the device files' pages from the page cache (written back first)."""
    a.sync()
    for m in a.devices:
        os.posix_fadvise(m.fd, 0, 0, os.POSIX_FADV_DONTNEED)


def test_nowait_reads_come_from_the_page_cache_or_not_at_all(tmp_path: Path) -> None:
    """``vdev.nowait``: the event loop's attempt at a large read. Data not in the page cache,
    or a block that fails its checksum (a repair takes the region lock), raise ``NotCached``
    without touching anything; the same read outside ``nowait`` then reads (and repairs)."""
    a = _open(tmp_path)
    lu = a.create_lu("lu", 8 * MiB)
    data = _payload(random.Random(2), 2 * MiB)
    a.write_from(lu, 0, memoryview(data))
    _evict(a)
    buf = bytearray(2 * MiB)
    with pytest.raises(vdev.NotCached), vdev.nowait():
        a.read_into(lu, 0, memoryview(buf))
    assert _read(a, "lu", 0, 2 * MiB) == data  # outside nowait: from the devices
    with vdev.nowait():  # now cached
        a.read_into(lu, 0, memoryview(buf))
    assert buf == data
    off = lu.segments[0].members[0][1]
    _flip(tmp_path / "d0", off + 5 * 4096 + 9)  # the copy reads come from
    repaired = a.status()["repairedBlocks"]
    with pytest.raises(vdev.NotCached), vdev.nowait():
        a.read_into(lu, 0, memoryview(buf))
    assert a.status()["repairedBlocks"] == repaired  # nothing repaired in nowait mode
    assert _read(a, "lu", 0, 2 * MiB) == data
    assert a.status()["repairedBlocks"] == repaired + 1  # type: ignore[operator]
