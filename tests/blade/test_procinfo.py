"""The processor-information portion format: two copies, sequence numbers, checksums."""

from __future__ import annotations

import pytest
from nasblade.blockdev import FileBlockDevice
from nasblade.procinfo import record
from nasblade.procinfo.portion import (
    SLOT_COPY,
    BladeStatus,
    GroupRecord,
    Ownership,
    PortionError,
    PortionStore,
    portion_offset,
    slot_region,
)

PORTION = 1 << 20


def store(device: FileBlockDevice, index: int = 0) -> PortionStore:
    return PortionStore(device, offset=portion_offset(index, PORTION), size=PORTION)


def test_record_roundtrip_and_rejects_damage() -> None:
    data = record.encode(kind=record.Kind.BLADE_SLOT, seq=7, payload={"a": 1}, size=4096)
    rec = record.decode(data, kind=record.Kind.BLADE_SLOT)
    assert rec is not None and rec.seq == 7 and rec.payload == {"a": 1}
    assert record.decode(data, kind=record.Kind.GROUP) is None
    damaged = bytearray(data)
    damaged[60] ^= 0xFF
    assert record.decode(bytes(damaged), kind=record.Kind.BLADE_SLOT) is None
    assert record.decode(bytes(4096), kind=record.Kind.BLADE_SLOT) is None
    with pytest.raises(record.RecordTooLarge):
        record.encode(kind=record.Kind.BLADE_SLOT, seq=1, payload={"x": "y" * 5000}, size=4096)


def test_format_and_header(device: FileBlockDevice) -> None:
    s = store(device, 1)
    with pytest.raises(PortionError):
        s.header()
    s.open(group="cg-a", index=1)
    h = s.header()
    assert (h.group, h.index, h.portion_size) == ("cg-a", 1, PORTION)
    assert h.slot_count == s.slot_count > 2
    with pytest.raises(PortionError, match="belongs to group 'cg-a'"):
        s.open(group="cg-b", index=1)
    # another portion of the same LU is untouched
    assert not store(device, 0).is_formatted()


def test_slot_write_read_alternates_copies(device: FileBlockDevice) -> None:
    s = store(device)
    s.format(group="g", index=0)
    assert s.read_slot(0) is None
    for counter in range(1, 6):
        s.write_slot(0, BladeStatus(blade="b0", heartbeat_counter=counter, file_systems=["fs1"]))
        choice = s.slot_copies(0)
        assert choice.current is not None and choice.current.seq == counter
        assert choice.current_copy == (counter - 1) % 2
    got = s.read_slot(0)
    assert got is not None and got.heartbeat_counter == 5 and got.file_systems == ["fs1"]
    assert s.find_slot("b0") == 0 and s.find_slot("nobody") is None


def test_corrupting_one_copy_keeps_the_other(device: FileBlockDevice) -> None:
    s = store(device)
    s.format(group="g", index=0)
    s.write_slot(2, BladeStatus(blade="b2", heartbeat_counter=1))
    s.write_slot(2, BladeStatus(blade="b2", heartbeat_counter=2))  # now in copy B
    base = slot_region(2).offset
    device.pwrite(base + SLOT_COPY + 100, b"\xde\xad\xbe\xef")  # corrupt copy B (newest)
    got = s.read_slot(2)
    assert got is not None and got.heartbeat_counter == 1
    # the next write goes to the damaged copy's partner rule: never over the current good one
    s.write_slot(2, BladeStatus(blade="b2", heartbeat_counter=3))
    got = s.read_slot(2)
    assert got is not None and got.heartbeat_counter == 3
    # the damaged copy B was the one rewritten; good copy A (counter 1) was left alone
    assert s.slot_copies(2).current_copy == 1
    assert s.slot_copies(2).valid == (True, True)


def test_torn_write_of_half_a_record_loses_nothing(device: FileBlockDevice) -> None:
    s = store(device)
    s.format(group="g", index=0)
    s.write_slot(1, BladeStatus(blade="b1", heartbeat_counter=10, exports=[{"path": "/x"}]))
    # simulate a crash halfway through the next write: half of the new copy reaches the device
    choice = s.slot_copies(1)
    nxt = record.encode(
        kind=record.Kind.BLADE_SLOT,
        seq=choice.next_seq,
        payload=BladeStatus(blade="b1", heartbeat_counter=11, exports=[{"path": "/y" * 900}]).to_json(),
        size=SLOT_COPY,
    )
    target = slot_region(1).offset + choice.next_copy * SLOT_COPY
    used = len(nxt.rstrip(b"\0"))
    device.pwrite(target, nxt[: used // 2])
    got = s.read_slot(1)
    assert got is not None and got.heartbeat_counter == 10 and got.exports == [{"path": "/x"}]


def test_group_record_roundtrip(device: FileBlockDevice) -> None:
    s = store(device)
    s.format(group="g", index=0)
    assert s.read_group().ownership == {}
    s.write_group(GroupRecord(ownership={"fs1": Ownership(blade="b0", epoch=3)}))
    assert s.read_group().ownership["fs1"] == Ownership(blade="b0", epoch=3)


def test_store_rejects_bad_geometry(device: FileBlockDevice) -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        PortionStore(device, offset=0, size=64 * 1024)
    with pytest.raises(ValueError, match="past the end"):
        PortionStore(device, offset=4 * PORTION, size=PORTION)
    s = store(device)
    s.format(group="g", index=0)
    with pytest.raises(IndexError):
        s.write_slot(s.slot_count, BladeStatus(blade="x"))
