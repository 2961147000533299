"""The portmapper version 2 program (RFC 1833 §3): NULL, GETPORT and DUMP.

It answers only for the programs of its own file system's listeners: over TCP NFS v3, MOUNT v3,
and NLM v4 and NSM v1 on the NFS port; over UDP (``nasblade.fileproc.server`` opens a datagram
endpoint on each TCP port number) the same but NFS, which is TCP-only (``nasblade.nfs.nfs3``):
GETPORT for NFS over UDP answers 0 and DUMP lists no such entry. It is not a general rpcbind and
accepts no SET/UNSET. Run on a configurable port (111 by default) so clients that do not pass
explicit ports can find NFS and MOUNT, and a client's ``sm-notify`` (which asks over UDP) finds
NSM.
"""

from __future__ import annotations

from nasblade.nfs import types as t
from nasblade.rpc import xdr
from nasblade.rpc.dispatch import Call, Procedure, Program


class Portmap:
    def __init__(self) -> None:
        self.mappings: list[t.Mapping] = []

    def set_ports(self, *, nfs: int, mount: int, portmap: int, also: tuple[tuple[int, int], ...] = ()) -> None:
        """``also``: more ``(program, version)`` pairs served on the NFS port (NLM, NSM), over
        TCP and UDP; NFS itself is mapped over TCP only."""
        tcp, udp = t.IPPROTO_TCP, t.IPPROTO_UDP
        self.mappings = [
            t.Mapping(t.PMAP_PROGRAM, t.PMAP_V2, tcp, portmap),
            t.Mapping(t.NFS_PROGRAM, t.NFS_V3, tcp, nfs),
            t.Mapping(t.MOUNT_PROGRAM, t.MOUNT_V3, tcp, mount),
            *(t.Mapping(prog, vers, tcp, nfs) for prog, vers in also),
            t.Mapping(t.PMAP_PROGRAM, t.PMAP_V2, udp, portmap),
            t.Mapping(t.MOUNT_PROGRAM, t.MOUNT_V3, udp, mount),
            *(t.Mapping(prog, vers, udp, nfs) for prog, vers in also),
        ]

    def null(self, call: Call, args: None) -> None:
        return None

    def getport(self, call: Call, m: t.Mapping) -> int:
        for known in self.mappings:
            if (known.prog, known.vers, known.prot) == (m.prog, m.vers, m.prot):
                return known.port
        return 0

    def dump(self, call: Call, args: None) -> list[t.Mapping]:
        return list(self.mappings)

    def program(self) -> Program:
        P = Procedure
        procs = {
            0: P("NULL", xdr.Void, xdr.Void, self.null),
            3: P("GETPORT", t.MAPPING, xdr.UInt, self.getport),
            4: P("DUMP", xdr.Void, t.PMAPLIST, self.dump),
        }
        return Program(t.PMAP_PROGRAM, {t.PMAP_V2: procs}, name="portmap")
