"""The export table: which clients may use which part of a file system, and as whom.

An ``Export`` comes from the file processor's configuration (``nasblade.fileproc.config``):
a client-visible ``path`` (what MOUNT is asked for), the directory inside the file system
it exposes (``subdir``), a CIDR allow-list checked on every MOUNT *and* NFS call, ``ro``/``rw``
and the squashing rules applied to AUTH_SYS credentials: ``root_squash`` (default on) maps
uid 0 to ``anonuid``/``anongid``; ``all_squash`` maps everybody; AUTH_NONE callers are
always anonymous.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import zlib
from collections.abc import Sequence

from nasblade.fs.fs import Cred
from nasblade.rpc.message import AuthSys

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class Export:
    path: str
    clients: tuple[Network, ...]
    subdir: str = "/"
    readonly: bool = False
    root_squash: bool = True
    all_squash: bool = False
    anonuid: int = 65534
    anongid: int = 65534

    @classmethod
    def build(
        cls,
        path: str,
        clients: Sequence[str],
        *,
        subdir: str = "/",
        access: str = "rw",
        root_squash: bool = True,
        all_squash: bool = False,
        anonuid: int = 65534,
        anongid: int = 65534,
    ) -> Export:
        if not path.startswith("/"):
            raise ValueError(f"export path {path!r} must be absolute")
        if access not in ("rw", "ro"):
            raise ValueError(f"export access must be 'rw' or 'ro', not {access!r}")
        if not clients:
            raise ValueError(f"export {path!r} needs at least one client CIDR")
        nets = tuple(ipaddress.ip_network(c, strict=False) for c in clients)
        return cls(
            path=path.rstrip("/") or "/",
            clients=nets,
            subdir=subdir,
            readonly=access == "ro",
            root_squash=root_squash,
            all_squash=all_squash,
            anonuid=anonuid,
            anongid=anongid,
        )

    @property
    def export_id(self) -> int:
        return zlib.crc32(self.path.encode())

    def allows(self, client: str) -> bool:
        try:
            addr = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.clients)

    def cred(self, auth: AuthSys | None) -> Cred:
        anon = Cred(self.anonuid, self.anongid)
        if auth is None or self.all_squash:
            return anon
        if auth.uid == 0 and self.root_squash:
            return anon
        gids = tuple(auth.gids)
        gid = auth.gid
        if self.root_squash and gid == 0:
            gid = self.anongid
            gids = tuple(g for g in gids if g != 0)
        return Cred(auth.uid, gid, gids)
