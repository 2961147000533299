"""The MOUNT version 3 program (RFC 1813 §5): NULL, MNT, DUMP, UMNT, UMNTALL, EXPORT.

MNT looks the path up among the volumes' exports, checks the caller's address against the
export's CIDR allow-list and returns the export root's file handle; the mount list it keeps
for DUMP is advisory (NFS itself is stateless and re-checks the client on every call).
"""

from __future__ import annotations

import logging

from nasblade.nfs import types as t
from nasblade.nfs.volume import Volume
from nasblade.rpc import xdr
from nasblade.rpc.dispatch import Call, Procedure, Program
from nasblade.rpc.message import AuthFlavor

log = logging.getLogger(__name__)


class Mount:
    def __init__(self, volumes: dict[int, Volume]) -> None:
        self.volumes = volumes
        self.mounts: set[tuple[str, bytes]] = set()

    def null(self, call: Call, args: None) -> None:
        return None

    def mnt(self, call: Call, path: bytes) -> tuple[int, t.MountOk | None]:
        try:
            text = path.decode()
        except UnicodeDecodeError:
            return t.MountStat.NOENT, None
        for vol in self.volumes.values():
            exp = vol.export_by_path(text)
            if exp is None:
                continue
            if not exp.allows(call.client):
                log.info("MNT %s refused for %s", text, call.client)
                return t.MountStat.ACCES, None
            fh = vol.handle(exp.export_id, vol.roots[exp.export_id])
            self.mounts.add((call.client, path))
            return t.MountStat.OK, t.MountOk(fh, [AuthFlavor.AUTH_SYS, AuthFlavor.AUTH_NONE])
        return t.MountStat.NOENT, None

    def dump(self, call: Call, args: None) -> list[t.MountBody]:
        return [t.MountBody(c.encode(), p) for c, p in sorted(self.mounts)]

    def umnt(self, call: Call, path: bytes) -> None:
        self.mounts.discard((call.client, path))

    def umntall(self, call: Call, args: None) -> None:
        self.mounts = {m for m in self.mounts if m[0] != call.client}

    def export(self, call: Call, args: None) -> list[t.ExportNode]:
        out = []
        for vol in self.volumes.values():
            for exp in vol.exports.values():
                out.append(t.ExportNode(exp.path.encode(), [str(n).encode() for n in exp.clients]))
        return out

    def program(self) -> Program:
        P = Procedure
        procs = {
            0: P("NULL", xdr.Void, xdr.Void, self.null),
            1: P("MNT", t.DIRPATH, t.MOUNT_RES, self.mnt),
            2: P("DUMP", xdr.Void, t.MOUNTLIST, self.dump),
            3: P("UMNT", t.DIRPATH, xdr.Void, self.umnt),
            4: P("UMNTALL", xdr.Void, xdr.Void, self.umntall),
            5: P("EXPORT", xdr.Void, t.EXPORTS, self.export),
        }
        return Program(t.MOUNT_PROGRAM, {t.MOUNT_V3: procs})
