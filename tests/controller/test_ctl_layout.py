"""Unit tests of extent allocation, striping and the superblock/LU table encoding."""

from __future__ import annotations

import itertools

import pytest
from nasblade.controller import layout

MiB = layout.MiB


def test_allocation_stripes_over_all_devices() -> None:
    sizes = [256 * MiB] * 3
    segs = layout.allocate(sizes, [], 96 * MiB)
    assert len(segs) == 1
    assert sorted(d for d, _ in segs[0].members) == [0, 1, 2]
    assert segs[0].length == 96 * MiB
    pieces = layout.map_range(segs, 0, 3 * MiB)
    assert [p.device for p in pieces] == [0, 1, 2]


def test_allocations_do_not_overlap_and_exhaust_cleanly() -> None:
    sizes = [64 * MiB, 40 * MiB]
    taken: list[layout.Segment] = []
    while True:
        try:
            taken += layout.allocate(sizes, taken, 7 * MiB)
        except layout.NoSpace:
            break
    used: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
    for s in taken:
        for d, off in s.members:
            assert off >= layout.META_SIZE and off + s.member_length <= sizes[d]
            used[d].append((off, off + s.member_length))
    for runs in used.values():
        runs.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(runs))
    free = layout.free_runs(sizes, taken)
    assert sum(e - s for r in free for s, e in r) < 7 * MiB


def test_no_space_allocates_nothing() -> None:
    with pytest.raises(layout.NoSpace):
        layout.allocate([32 * MiB], [], 64 * MiB)


def test_map_range_crosses_segments_and_units() -> None:
    segs = [layout.Segment(((0, 8 * MiB), (1, 8 * MiB)), 2 * MiB), layout.Segment(((1, 10 * MiB),), MiB)]
    pieces = layout.map_range(segs, MiB - 10, 4 * MiB)
    assert [(p.device, p.device_offset, p.length) for p in pieces] == [
        (0, 9 * MiB - 10, 10), (1, 8 * MiB, MiB), (0, 9 * MiB, MiB), (1, 9 * MiB, MiB),
        (1, 10 * MiB, MiB - 10),
    ]
    assert sum(p.length for p in pieces) == 4 * MiB
    with pytest.raises(ValueError):
        layout.map_range(segs, 5 * MiB, 1)


def test_superblock_round_trip_and_corruption() -> None:
    state = layout.ArrayState(uuid="u", device_sizes=[100 * MiB, 100 * MiB])
    state.lus["a"] = layout.LURecord("a", 5 * MiB, layout.allocate(state.device_sizes, [], 5 * MiB),
                                     created="t", holder="h", epoch=3, last_epoch=3)
    raw = layout.encode_record(7, state.payload(1))
    seq, payload = layout.decode_record(raw)  # type: ignore[misc]
    assert seq == 7 and payload["device"] == 1
    back = layout.ArrayState.from_payload(seq, payload)
    assert back.lus["a"] == state.lus["a"] and back.device_sizes == state.device_sizes
    torn = bytearray(raw)
    torn[100] ^= 1
    assert layout.decode_record(bytes(torn)) is None
    assert layout.decode_record(bytes(4096)) is None
    assert layout.slot_offset(7) != layout.slot_offset(8)
