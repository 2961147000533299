"""NFS slots (``diskarray.nfsslots``): each file system of an array keeps its own container
ports for as long as it exists, whichever blade serves it, so one blade pod serves several."""

from __future__ import annotations

import pytest
from nasblade_operator import naming
from nasblade_operator.diskarray import nfsslots


def test_a_file_system_keeps_its_slot_and_a_new_one_takes_the_lowest_free() -> None:
    first = nfsslots.assign({}, ["a", "b", "c"])
    assert first == {"a": 0, "b": 1, "c": 2}
    # b deleted, d added: a and c keep theirs (their Services and served ports do not move)
    assert nfsslots.assign({"a": 0, "c": 2}, ["a", "c", "d"]) == {"a": 0, "c": 2, "d": 1}
    # a record claiming a slot another name already holds (hand-edited status): the later one moves
    assert nfsslots.assign({"a": 3, "b": 3}, ["a", "b"]) == {"a": 3, "b": 0}
    with pytest.raises(ValueError, match="NFS slots"):
        nfsslots.assign({}, [f"f{i}" for i in range(naming.NFS_SLOTS + 1)])


def test_slots_are_read_from_the_status_and_bad_records_ignored() -> None:
    status = {"fileSystems": [{"name": "a", "nfsSlot": 4}, {"name": "b"}, {"name": "c", "nfsSlot": True},
                              {"name": "d", "nfsSlot": naming.NFS_SLOTS}, "junk"]}
    assert nfsslots.recorded(status) == {"a": 4}
    assert nfsslots.recorded({}) == {}


def test_every_slot_has_its_own_ports_below_the_ephemeral_range() -> None:
    ports = [p for s in range(naming.NFS_SLOTS) for p in naming.nfs_container_ports(s)]
    assert len(ports) == len(set(ports)) == 3 * naming.NFS_SLOTS
    assert naming.nfs_container_ports(0) == (2049, 20048, 10111)
    assert all(1024 <= p < 32768 for p in ports)
    taken = {naming.BLADE_API_PORT, naming.NBD_PORT, naming.CONTROL_PORT}
    assert not taken & set(ports)
    with pytest.raises(ValueError):
        naming.nfs_container_ports(naming.NFS_SLOTS)
