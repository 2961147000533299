"""The degraded write hole of a parity set, closed by the stripe journal (controller/journal.py).

A parity set with a failed device is written a part of one stripe whose *other* data unit
lives on the failed device: that unit exists only as the parity. The controller is made to
stop dead after each device write of that stripe write in turn (the point a kill -9 or a
power cut lands on), the array is opened again from the device files, and every byte of the
stripe must read back as before the write or as written -- in particular the unit on the
failed device, which the write did not touch and which is rebuilt from a parity that the
crash may have left half updated. Without the journal (the same run with
``ParityVDev.journal`` set to ``None``) the unit comes back wrong at the crash point between
the data unit and the parity.

In process, no controller: ``Array.open`` over sparse files, a crash is an exception out of
``Member.pwrite`` that nothing catches and an array dropped without closing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from nasblade.controller import journal as jn
from nasblade.controller import layout, vdev
from nasblade.controller.array import Array
from nasblade.controller.parity import UNIT, ParityVDev

MiB = 1 << 20
SIZE = 40 * MiB
LEVELS = {"parity-1": (3, [1]), "parity-2": (4, [1, 3])}


class Crash(BaseException):
    """The controller stops here (not an ``OSError``: no handler takes it for a device error)."""


def _drop(array: Array) -> None:
    """The process died: file descriptors gone, nothing synced or cleaned."""
    for d in array.devices:
        if d.fd >= 0:
            os.close(d.fd)
            d.fd = -1


@pytest.fixture()
def crash_after(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int | None]]:
    """``crash_after[0] = n``: the n+1-th ``Member.pwrite`` from now raises ``Crash``;
    ``None``: never (the writes are counted in ``crash_after[1]``)."""
    state: list[int | None] = [None, 0]
    real = vdev.Member.pwrite

    def pwrite(self: vdev.Member, data: memoryview, offset: int, *, dsync: bool = False) -> None:
        n = state[1]
        assert n is not None
        if state[0] is not None and n >= state[0]:
            raise Crash(f"stopped before device write {n}")
        state[1] = n + 1
        real(self, data, offset, dsync=dsync)

    monkeypatch.setattr(vdev.Member, "pwrite", pwrite)
    yield state


def _stripe_with_other_unit_on(v: ParityVDev, failed: list[int]) -> int:
    """A stripe whose data share 0 is on a device in use and whose data share 1 is on a failed one."""
    for s in range(v.stripes):
        if v.members.index(v.member(s, 0)) not in failed and v.members.index(v.member(s, 1)) in failed:
            return s
    raise AssertionError("no such stripe")


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
@pytest.mark.parametrize("level", sorted(LEVELS))
def test_a_crash_at_any_device_write_of_a_degraded_stripe_write_loses_nothing(
        tmp_path: Path, crash_after: list[int | None], level: str, journal: bool) -> None:
    n, failed = LEVELS[level]
    base = tmp_path / "base"
    base.mkdir()
    specs = [(str(base / f"d{i}"), SIZE) for i in range(n)]
    array = Array.open(specs, level)
    v = array.vdevs[0]
    assert isinstance(v, ParityVDev) and v.journal is not None
    assert array.state.journal == jn.SIZE
    s = _stripe_with_other_unit_on(v, failed)
    width = v.k * UNIT
    start = layout.META_SIZE + s * width
    before = os.urandom(width)
    v.write(start, memoryview(before))  # the whole stripe, acknowledged: every unit durable
    array.sync()
    for i in failed:
        array.fail_device(i, "test: pulled")
    array.close()
    new = os.urandom(8 << 10)  # 8 KiB into data unit 0: unit 1 (on a failed device) untouched
    # how many device writes the stripe write makes
    crash_after[0], crash_after[1] = None, 0
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    a = Array.open([(str(probe / f"d{i}"), None) for i in range(n)])
    if not journal:
        a.vdevs[0].journal = None  # type: ignore[attr-defined]
    crash_after[1] = 0
    a.vdevs[0].write(start, memoryview(new))
    writes = crash_after[1]
    a.close()
    assert writes and writes >= 2
    wrong: list[int] = []
    for point in range(writes + 1):
        run = tmp_path / f"crash-{point}"
        shutil.copytree(base, run)
        specs_run = [(str(run / f"d{i}"), None) for i in range(n)]
        crash_after[0], crash_after[1] = None, 0
        a = Array.open(specs_run)
        if not journal:
            a.vdevs[0].journal = None  # type: ignore[attr-defined]
        crash_after[0], crash_after[1] = point, 0
        with contextlib.suppress(Crash):
            a.vdevs[0].write(start, memoryview(new))
        crash_after[0] = None
        _drop(a)
        a = Array.open(specs_run)  # resync (and the journal's replay) before it serves
        got = bytearray(width)
        a.vdevs[0].read(start, memoryview(got))
        a.close()
        written = new + before[len(new):]
        if got[UNIT:] != before[UNIT:]:  # the untouched unit, on the failed device
            wrong.append(point)
        assert got[:UNIT] in (before[:UNIT], written[:UNIT]) or all(
            got[o : o + 4096] in (before[o : o + 4096], written[o : o + 4096]) for o in range(0, UNIT, 4096)), \
            f"crash point {point}: the written unit holds data never written there"
        shutil.rmtree(run)
    if journal:
        assert wrong == [], f"crash points {wrong} of {writes}: the failed device's unit came back wrong"
    else:
        # the hole the journal closes: without it some crash point loses the untouched unit
        assert wrong, "no crash point showed the write hole: this test cannot tell the journal's work"


def test_the_journal_format_takes_only_whole_entries_of_its_epoch() -> None:
    """``decode_entries`` reads entries of the header's epoch in order and stops at the first
    block that is not one: a torn entry (its payload checksum wrong), an entry of an older
    epoch (what a reset leaves behind), garbage."""
    unit = os.urandom(8 << 10)

    def entries(epoch: int, seq: int) -> bytes:
        blocks = jn.encode_entry(epoch, seq, kind=jn.DATA, stripe=7, count=1, d0=layout.META_SIZE, length=len(unit),
                                 mask=0b10, units=[unit])
        blocks += jn.encode_entry(epoch, seq + 1, kind=jn.ZERO, stripe=9, count=3, d0=layout.META_SIZE, length=UNIT,
                                  mask=0b101)
        return b"".join(bytes(b) for b in blocks)

    assert jn.decode_header(jn.encode_header(5)) == 5
    assert jn.decode_header(b"\0" * 4096) is None
    corrupt = bytearray(jn.encode_header(5))
    corrupt[9] ^= 1
    assert jn.decode_header(corrupt) is None
    log = entries(5, 1) + entries(4, 3)  # after a reset: the new epoch's entries, then old ones
    got = jn.decode_entries(log, 5)
    assert [(e.seq, e.kind, e.stripe, e.count, e.positions()) for e in got] == [(1, jn.DATA, 7, 1, [1]), (2, jn.ZERO, 9, 3, [0, 2])]
    assert got[0].units == (unit,)
    torn = bytearray(entries(5, 1))
    torn[4096 + 100] ^= 0xFF  # the first entry's payload
    assert jn.decode_entries(torn, 5) == []
    assert jn.decode_entries(entries(5, 1)[: 4096 + 4096], 5) == []  # cut short
    assert jn.decode_entries(os.urandom(1 << 16), 5) == []
    with pytest.raises(ValueError, match="whole blocks"):
        jn.encode_entry(1, 1, kind=jn.DATA, stripe=0, count=1, d0=0, length=4096, mask=1, units=[b"x" * 100])


def test_a_journalled_array_is_refused_by_a_controller_that_knows_no_journal(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal moves the end of the data area: a parity array with one says superblock
    version 3, which a controller knowing versions 1 and 2 only refuses (a rollback must not
    read checksums from the wrong place); mirror and none arrays stay version 2."""
    specs = [(str(tmp_path / f"p{i}"), SIZE) for i in range(3)]
    Array.open(specs, "parity-1").close()
    mirror = [(str(tmp_path / f"m{i}"), SIZE) for i in range(2)]
    Array.open(mirror, "mirror-2").close()
    a = Array.open([(p, None) for p, _ in specs])
    assert (a.state.version, a.state.journal) == (layout.JOURNAL_VERSION, jn.SIZE)
    a.close()
    m = Array.open([(p, None) for p, _ in mirror])
    assert (m.state.version, m.state.journal) == (layout.FORMAT_VERSION, 0)
    m.close()
    monkeypatch.setattr(layout, "VERSIONS", (1, 2))  # the controller before the journal
    with pytest.raises(layout.LayoutError, match="unsupported superblock version 3"):
        Array.open([(p, None) for p, _ in specs])
    Array.open([(p, None) for p, _ in mirror]).close()


def _data_offsets(path: str) -> int:
    """Bytes of ``path`` that are allocated (not holes)."""
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("corrupt", [False, True], ids=["clean", "bit-flip-on-a-source"])
def test_rebuild_of_a_replaced_device_gives_back_every_unit(tmp_path: Path, corrupt: bool) -> None:
    """A replaced device of a parity-2 set is rebuilt step by step (``rebuild_step``, the
    batched rows); afterwards the two other devices may fail and the LU reads back intact from
    the rebuilt one and one survivor. A bit flip on a source device makes the batched pass
    step back to the row-by-row one, which repairs it; a span the LU never wrote stays a hole
    on the new device."""
    specs = [(str(tmp_path / f"d{i}"), SIZE) for i in range(4)]
    array = Array.open(specs, "parity-2")
    lu = array.create_lu("lu", 16 * MiB)
    data = os.urandom(8 * MiB)  # the second half of the LU is never written
    array.write_from(lu, 0, memoryview(data))
    array.sync()
    v = array.vdevs[0]
    assert isinstance(v, ParityVDev)
    if corrupt:  # flip a byte of a written unit on device 0, behind the controller's back
        off = v.meta + 2 * UNIT + 100
        with open(specs[0][0], "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0xFF]))
    array.fail_device(1, "test: pulled")
    array.replace(1)
    repaired_before = v.stats.repaired_blocks
    while array.rebuilding():
        array.rebuild_step(MiB)
    assert array.devices[1].state == "ok"
    assert (v.stats.repaired_blocks > repaired_before) == corrupt
    # the rebuilt device holds about a quarter of the LU's 8 MiB of data plus parity shares,
    # not the whole device: the unwritten span stayed holes
    assert _data_offsets(specs[1][0]) < SIZE // 2
    for i in (2, 3):  # two other devices gone: devices 0 and 1 (rebuilt) carry the LU alone
        array.fail_device(i, "test: pulled")
    got = bytearray(len(data))
    array.read_into(lu, 0, memoryview(got))
    assert got == data
    rest = bytearray(MiB)
    array.read_into(lu, 12 * MiB, memoryview(rest))
    assert rest == bytes(MiB)
