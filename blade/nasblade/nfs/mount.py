"""The MOUNT version 3 program (RFC 1813 §5): NULL, MNT, DUMP, UMNT, UMNTALL, EXPORT.

MNT looks the path up among the volumes' exports (a path below an export mounts that
sub-directory of it, like knfsd and Ganesha do), checks the caller's address against the
export's CIDR allow-list and returns the export root's file handle; the mount list it keeps
for DUMP is advisory (NFS itself is stateless and re-checks the client on every call).
"""

from __future__ import annotations

import errno
import logging

from nasblade.fs.fs import FsError, FType
from nasblade.nfs import types as t
from nasblade.nfs.exports import Export
from nasblade.nfs.volume import Volume
from nasblade.rpc import xdr
from nasblade.rpc.dispatch import Call, Procedure, Program
from nasblade.rpc.message import AuthFlavor

log = logging.getLogger(__name__)
_MNT_ERR = {
    errno.ENOENT: t.MountStat.NOENT,
    errno.EACCES: t.MountStat.ACCES,
    errno.ENOTDIR: t.MountStat.NOTDIR,
    errno.ENAMETOOLONG: t.MountStat.NAMETOOLONG,
}


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
        found = self._find(text)
        if found is None:
            return t.MountStat.NOENT, None
        vol, exp, rest = found
        if not exp.allows(call.client):
            log.info("MNT %s refused for %s", text, call.client)
            return t.MountStat.ACCES, None
        ino = vol.roots[exp.export_id]
        cred = exp.cred(call.cred)
        try:
            for part in rest:
                ino = vol.fs.lookup(ino, part.encode(), cred)
            if vol.fs.getattr(ino).type != FType.DIR:
                return t.MountStat.NOTDIR, None
        except FsError as e:
            return _MNT_ERR.get(e.errno, t.MountStat.IO), None
        fh = vol.handle(exp.export_id, ino)
        self.mounts.add((call.client, path))
        return t.MountStat.OK, t.MountOk(fh, [AuthFlavor.AUTH_SYS, AuthFlavor.AUTH_NONE])

    def _find(self, path: str) -> tuple[Volume, Export, list[str]] | None:
        """The export whose path is the longest prefix of ``path``, and the rest of it."""
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            return None
        for n in range(len(parts), -1, -1):
            prefix = "/" + "/".join(parts[:n])
            for vol in self.volumes.values():
                exp = vol.export_by_path(prefix)
                if exp is not None:
                    return vol, exp, parts[n:]
        return None

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
        return Program(t.MOUNT_PROGRAM, {t.MOUNT_V3: procs}, name="mount")
