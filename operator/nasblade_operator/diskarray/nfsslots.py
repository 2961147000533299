"""Which NFS slot each file system of a DiskArray has: the decision, without I/O.

A blade pod has one network address, so the file systems it serves (its own and those it
took over from a failed peer) cannot all listen on the standard NFS ports: each file system
listens on the container ports of its slot (``naming.nfs_container_ports``), the same on
every blade of its group, and its Service maps the standard ports onto them. The slot is
given once, when the DiskArray handler first records the file system
(``handlers.ensure_formatted``), and kept in ``status.fileSystems[].nfsSlot`` for as long as
the file system is in the spec: moving a file system between blades never changes its ports.
Blades are given a file system only once it has a slot (``clustergroup/daemon.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nasblade_operator import naming


def recorded(status: Mapping[str, Any]) -> dict[str, int]:
    """The slots ``status.fileSystems`` records, by file-system name (invalid ones left out)."""
    out: dict[str, int] = {}
    for f in status.get("fileSystems") or []:
        if not isinstance(f, Mapping):
            continue
        slot = f.get("nfsSlot")
        if isinstance(slot, int) and not isinstance(slot, bool) and 0 <= slot < naming.NFS_SLOTS:
            out[str(f.get("name"))] = slot
    return out


def assign(previous: Mapping[str, int], names: Sequence[str]) -> dict[str, int]:
    """A slot for each of ``names``: the one ``previous`` gave it if no earlier name holds it,
    else the lowest free one. Raises ``ValueError`` when there are more names than slots."""
    if len(set(names)) > naming.NFS_SLOTS:
        raise ValueError(f"{len(set(names))} file systems, but only {naming.NFS_SLOTS} NFS slots")
    out: dict[str, int] = {}
    taken: set[int] = set()
    for name in names:
        slot = previous.get(name)
        if slot is not None and slot not in taken and name not in out:
            out[name] = slot
            taken.add(slot)
    free = (s for s in range(naming.NFS_SLOTS) if s not in taken)
    for name in names:
        if name not in out:
            out[name] = next(free)
    return out
