"""Which LUs an NBD client may open: the rule and its file.

The controller applies it per connection when TLS is on (``nasblade.controller.nbdserver``),
to the identity in the client certificate (``nasblade.tls.Identity``):

- ``admin`` (the operator, the terminal) opens every LU;
- ``group:G`` (the blades of cluster group G) opens the LUs the access file lists for G
  (its file systems' LUs, ``fs-NAME``) and the array-wide LUs every blade needs
  (``shared``: ``program``, ``procinfo``, ``backup`` unless the file says otherwise);
- ``csi`` (the CSI driver's controller plugin) opens the LUs of the CSI driver's volumes,
  snapshots and catalog (``nasblade.lunames.is_csi_lu``: ``pv-…``, ``fs-pv-…``, ``sn-…``,
  ``csi-catalog``), read-write and whole, and nothing else (no file system of a group, no
  shared LU); the access file does not change that;
- any other certificate opens nothing.

A group opens the ``readOnly`` shared LUs (default: ``program``, the blade software, which only
the operator and the terminal install) read-only: the export carries ``NBD_FLAG_READ_ONLY``
and the controller answers ``EPERM`` to a write, so a blade cannot plant software for every
blade of the array.

A group's ``windows`` narrow a shared LU to byte ranges: the array-wide ``procinfo`` and
``backup`` LUs hold one portion per group, and a group reads and writes only its own and
those of the groups it backs up (cross-group backup; a request outside gets ``EPERM``,
through the control API ``403``). A shared LU without a window
is the whole LU (access files written before windows).

Refused names get ``NBD_REP_ERR_POLICY`` and do not appear in ``NBD_OPT_LIST``. Without TLS
(the documented switch for benchmarks) there is no identity and no rule: every client opens
every LU.

The access file is JSON written by whoever knows the groups (the operator, ``nasblade up``)::

    {"groups": {"g1": ["fs-home", "fs-scratch"], "g2": ["fs-data"]},
     "shared": ["program", "procinfo", "backup"], "readOnly": ["program"],
     "windows": {"g1": {"procinfo": [[0, 1048576]], "backup": [[0, 1048576]]},
                 "g2": {"procinfo": [[1048576, 1048576]], "backup": [[1048576, 1048576]]}}}

``AccessFile`` re-reads it when its modification time or size changes, so a moved file
system takes effect on the next connection without a restart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasblade import lunames
from nasblade.tls import Identity

#: LUs every blade reaches: software, processor information, backups
DEFAULT_SHARED = frozenset(lunames.SHARED)
#: shared LUs blades only read: the software catalog
DEFAULT_READ_ONLY = frozenset({lunames.PROGRAM})

#: byte ranges (offset, length) of an LU
Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class AccessPolicy:
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    shared: frozenset[str] = DEFAULT_SHARED
    read_only: frozenset[str] = DEFAULT_READ_ONLY
    windows: Mapping[str, Mapping[str, Ranges]] = field(default_factory=dict)
    """group → LU → the byte ranges of the LU the group may reach (absent: all of it)"""

    def window(self, identity: Identity | None, lu: str) -> Ranges | None:
        """The byte ranges of ``lu`` that ``identity`` may reach, ``None`` for all of it."""
        if identity is None or identity.admin or identity.csi or identity.group is None:
            return None
        return self.windows.get(identity.group, {}).get(lu)

    def read_only_for(self, identity: Identity | None, lu: str) -> bool:
        """Whether ``identity`` may open ``lu`` for reading only (a group and a read-only
        shared LU)."""
        return identity is not None and not identity.admin and not identity.csi and lu in self.read_only

    def permits(self, identity: Identity | None, lu: str) -> bool:
        if identity is None:
            return False
        if identity.admin:
            return True
        if identity.csi:
            return lunames.is_csi_lu(lu)
        group = identity.group
        if group is None:
            return False
        return lu in self.shared or lu in self.groups.get(group, frozenset())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"groups": {g: sorted(lus) for g, lus in sorted(self.groups.items())},
                               "shared": sorted(self.shared), "readOnly": sorted(self.read_only)}
        if self.windows:
            out["windows"] = {g: {lu: [list(r) for r in ranges] for lu, ranges in sorted(w.items())}
                              for g, w in sorted(self.windows.items())}
        return out

    @classmethod
    def from_json(cls, data: object) -> AccessPolicy:
        if not isinstance(data, dict):
            raise ValueError("access file: expected a JSON object")
        groups = data.get("groups", {})
        if not isinstance(groups, dict) or not all(
                isinstance(g, str) and _names(v) for g, v in groups.items()):
            raise ValueError("access file: 'groups' maps group names to lists of LU names")
        shared = data.get("shared", sorted(DEFAULT_SHARED))
        if not _names(shared):
            raise ValueError("access file: 'shared' is a list of LU names")
        read_only = data.get("readOnly", sorted(DEFAULT_READ_ONLY))
        if not _names(read_only):
            raise ValueError("access file: 'readOnly' is a list of LU names")
        windows = data.get("windows", {})
        if not isinstance(windows, dict) or not all(
                isinstance(g, str) and isinstance(w, dict) and all(isinstance(lu, str) and _ranges(r) for lu, r in w.items())
                for g, w in windows.items()):
            raise ValueError("access file: 'windows' maps group names to {LU: [[offset, length], ...]}")
        return cls({g: frozenset(v) for g, v in groups.items()}, frozenset(shared), frozenset(read_only),
                   {g: {lu: tuple((int(o), int(n)) for o, n in r) for lu, r in w.items()} for g, w in windows.items()})

    @classmethod
    def of_groups(cls, groups: Mapping[str, Iterable[str]], *, shared: Iterable[str] = DEFAULT_SHARED,
                  portions: Mapping[str, tuple[int, int]] | None = None,
                  cross_group: Mapping[str, Iterable[str]] | None = None) -> AccessPolicy:
        """The policy of each group's file-system LUs; with ``portions`` (group → (offset,
        length) of its portion), each group reaches only its portion of the
        processor-information LU and the same range of the backup LU -- and the portions of
        the groups it backs up (``cross_group``: group → the groups whose portions its blades
        copy to the backup LU, the invention's cross-group backup)."""
        portions = portions or {}
        cross = cross_group or {}
        windows: dict[str, dict[str, Ranges]] = {}
        for g, own in portions.items():
            ranges = (own, *(portions[t] for t in cross.get(g, ()) if t in portions and t != g))
            windows[g] = {lu: ranges for lu in (lunames.PROCINFO, lunames.BACKUP)}
        return cls({g: frozenset(lus) for g, lus in groups.items()}, frozenset(shared), windows=windows)


def inside(ranges: Ranges | None, offset: int, length: int) -> bool:
    """Whether ``[offset, offset + length)`` lies inside one of ``ranges`` (``None``: anywhere)."""
    if ranges is None:
        return True
    return any(o <= offset and offset + length <= o + n for o, n in ranges)


def _ranges(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(r, list) and len(r) == 2 and all(type(x) is int and x >= 0 for x in r) for r in value)


def _names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def write(path: str | os.PathLike[str], policy: AccessPolicy) -> None:
    """Write the access file atomically (readers never see half a file)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(policy.to_json(), indent=2) + "\n")
    os.replace(tmp, target)


class AccessFile:
    """The access file, re-read when it changes; a missing file is the empty policy
    (admin opens everything, groups open only the shared LUs)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self._stamp: tuple[int, int] | None = None
        self._policy = AccessPolicy()

    def policy(self) -> AccessPolicy:
        if self.path is None:
            return self._policy
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._policy = None, AccessPolicy()
            return self._policy
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            # a broken file keeps the last good policy (fail closed on first load: empty)
            try:
                self._policy = AccessPolicy.from_json(json.loads(self.path.read_text()))
            except (ValueError, OSError):
                if self._stamp is None:
                    self._policy = AccessPolicy()
            self._stamp = stamp
        return self._policy
