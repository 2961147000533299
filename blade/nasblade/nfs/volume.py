"""A ``Volume``: one mounted file system plus its exports, as the RPC programs see it.

``nasblade.fileproc.server.FileProcessor`` creates a Volume when it adds a file system
(mounting it recovers it) and hands it to the NFS and MOUNT programs. The Volume resolves
export paths to root inodes once, and mints file handles (``nasblade.nfs.handles``).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os

from nasblade.fs import fs as fsmod
from nasblade.nfs import handles
from nasblade.nfs.exports import Export

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Volume:
    name: str
    fs: fsmod.FileSystem
    exports: dict[int, Export] = dataclasses.field(default_factory=dict)
    roots: dict[int, int] = dataclasses.field(default_factory=dict)
    write_verifier: bytes = dataclasses.field(default_factory=lambda: os.urandom(8))

    @classmethod
    def open(cls, name: str, fs: fsmod.FileSystem, exports: list[Export]) -> Volume:
        """Mount-time: the file system with ``exports``. An export whose directory is missing
        (a directory volume deleted while its export was still being dropped from the spec) is
        left out with an error in the log: one stale export never keeps the file system, and its
        other exports, from being served. At least one export must resolve."""
        vol = cls(name, fs)
        problems = []
        for exp in exports:
            try:
                vol.add_export(exp)
            except fsmod.FsError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    raise
                problems.append(exc)
                log.error("%s: export %s is not served: %s is missing or not a directory", name, exp.path, exp.subdir)
        if exports and not vol.exports:
            raise problems[0]
        return vol

    def add_export(self, exp: Export) -> None:
        ino = fsmod.ROOT_INO
        for part in (p for p in exp.subdir.split("/") if p):
            ino = self.fs.lookup(ino, part.encode(), fsmod.ROOT)
        if self.fs.getattr(ino).type != fsmod.FType.DIR:
            raise fsmod.FsError(errno.ENOTDIR, f"export {exp.path}: {exp.subdir} is not a directory")
        self.exports[exp.export_id] = exp
        self.roots[exp.export_id] = ino

    def set_exports(self, exports: list[Export]) -> None:
        """Serve ``exports`` instead of the current ones, at once for every later call (each
        MOUNT and NFS call looks its export up here): a client no longer allowed is refused at
        its next call, and handles of an export that is gone are stale. Every new export is
        resolved before anything changes, so a bad one leaves the table as it was."""
        staged = Volume(self.name, self.fs)
        for exp in exports:
            staged.add_export(exp)
        self.exports, self.roots = staged.exports, staged.roots

    def export_by_path(self, path: str) -> Export | None:
        path = path.rstrip("/") or "/"
        for exp in self.exports.values():
            if exp.path == path:
                return exp
        return None

    def handle(self, export_id: int, ino: int, gen: int | None = None) -> bytes:
        if gen is None:
            gen = self.fs.generation(ino)
            if gen is None:
                raise fsmod.FsError(errno.ESTALE)
        return handles.encode(handles.Handle(export_id, self.fs.fsid, ino, gen), self.fs.secret)

    def regenerate_verifier(self) -> bytes:
        self.write_verifier = os.urandom(8)
        return self.write_verifier
