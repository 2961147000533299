"""nfs-ganesha as a reference NFSv3 server for differential tests (see BASELINES.md).

``Ganesha(workdir)`` runs Debian's ``ganesha.nfsd`` (FSAL VFS) exporting ``workdir/export``
(MOUNT path ``export_path``) with no root squash, inside ``unshare -m`` with private ``/run`` and ``/var/lib/nfs``
bind-mounted from ``workdir``, so the machine's own are untouched. ganesha refuses to start
without an rpcbind to register with: one runs in that mount namespace but in a network
namespace of its own (``unshare -n``), so it never takes the machine's port 111; ganesha
registers through the private ``/run/rpcbind.sock``. Clients use the explicit NFS and MOUNT
ports (``nfs_port``, ``mount_port``) and never need a portmapper.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Ganesha:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.export_dir = work / "export"
        self.export_path = str(self.export_dir)
        for d in ("run", "varlib", "export"):
            (work / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.export_dir, 0o777)
        self.nfs_port, self.mount_port = _free_port(), _free_port()
        (work / "ganesha.conf").write_text(f"""
NFS_CORE_PARAM {{
    Bind_addr = 127.0.0.1; NFS_Port = {self.nfs_port}; MNT_Port = {self.mount_port};
    Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; Protocols = 3;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
    Export_Id = 1; Path = {self.export_dir}; Pseudo = {self.export_dir};
    Access_Type = RW; Squash = No_Root_Squash; SecType = sys; Protocols = 3; Transports = TCP;
    FSAL {{ Name = VFS; }}
}}
""")
        script = (
            f"mount --bind {work / 'run'} /run && mount --bind {work / 'varlib'} /var/lib/nfs && "
            f"(unshare -n rpcbind -f -w & echo $! > {work / 'rpcbind.pid'}) && "
            "while [ ! -S /run/rpcbind.sock ]; do sleep 0.1; done && "
            f"exec ganesha.nfsd -F -f {work / 'ganesha.conf'} -L {work / 'ganesha.log'} -p {work / 'ganesha.pid'}"
        )
        with open(work / "ganesha.out", "wb") as log:
            self.proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=subprocess.DEVNULL, stderr=log)
        # ganesha prints no ready line: wait (bounded) for both ports to accept connections.
        deadline = time.monotonic() + 60
        while not (_listening(self.nfs_port) and _listening(self.mount_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"ganesha.nfsd did not start: {self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        out = []
        for name in ("ganesha.out", "ganesha.log"):
            p = self.work / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        pidfile = self.work / "rpcbind.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
