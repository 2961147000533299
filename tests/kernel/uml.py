"""Run a shell script in a Linux guest whose kernel is the NFS or NBD client under test.

``Guest`` is the one interface the kernel-client tests use (``conftest.py`` hands one out as
the ``guest`` fixture); ``UMLGuest`` implements it with User-Mode Linux (Debian's
``user-mode-linux``: the kernel as an ordinary process), so a QEMU/KVM guest can be put behind
the same interface on machines where KVM runs a stock kernel. A run:

1. ``build-guest.sh`` made the root tree (cached, never written); the run puts an overlayfs
   in front of it in a private mount namespace and boots it with ``rootfstype=hostfs``.
2. The network is a private network namespace holding ``lo`` and a tap device
   (``tap0``, 10.0.2.2/24) that UML's ``eth0=tuntap,tap0`` driver plugs the guest (10.0.2.15)
   into. Nothing else is in that namespace, so the guest reaches only what the test forwards:
   for each ``Forward``, a ``socat`` listening on 10.0.2.2:<guest_port> inside the namespace
   relays to a Unix socket (Unix sockets cross network namespaces), and a ``socat`` on the
   host relays that socket to the server's loopback address and port. All traffic stays on
   this machine. With ``address`` (a host loopback address, one per guest), the guest also
   *has* an address on the host: the host forwarders connect from it, so servers see each
   guest as its own client, and the guest's portmapper (111), lock manager
   (``GUEST_NLM_PORT``) and status monitor (``GUEST_STATD_PORT``) answer on it (a host
   ``socat`` on ``address:port`` relays through a Unix socket to a ``socat`` in the namespace
   that connects to 10.0.2.15), so NLM GRANTED callbacks and SM_NOTIFY reach the guest.
3. Our own init (``init=/nasblade-init``) mounts /proc, /sys, /dev, the run's shared host
   directory (hostfs) on ``/share``, brings up the network, loads the modules (lockd on
   ``GUEST_NLM_PORT``), starts ``rpcbind`` and ``rpc.statd`` (on ``GUEST_STATD_PORT``) so NFS
   mounts lock through NLM unless they say ``nolock``, runs the script with bash in ``/share`` and writes its stdout, stderr and exit code there, then
   powers off.
4. Whatever happens, the run ends with no process left: the boot wrapper leads its own
   process group (linux.uml, its helper processes and the namespace's forwarders are in
   it), which is killed on timeout, then every process still carrying the run's marker in its
   environment is killed by PID; the host forwarders are killed by PID; the namespaces die
   with their last process (so do the tap device and the overlay mount); the temporary
   directory is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build-guest.sh"
GUEST_ADDR = "10.0.2.15"
SERVER_ADDR = "10.0.2.2"
#: the relays' TCP_USER_TIMEOUT towards the cluster (see ``UMLGuest.run``)
UPSTREAM_USER_TIMEOUT_MS = 20_000
MODULES = ("sunrpc", "lockd", "nfs", "nfsv3", "nbd")
MARKER = "NASBLADE_GUEST_RUN"
GUEST_NLM_PORT = 4045
GUEST_STATD_PORT = 4046
CALLBACK_PORTS = (111, GUEST_NLM_PORT, GUEST_STATD_PORT)


@dataclass(frozen=True)
class Forward:
    """The guest's ``10.0.2.2:guest_port`` reaches the host's ``host:port``."""

    guest_port: int
    host: str
    port: int


@dataclass
class GuestResult:
    """What a run left: ``rc`` is the script's exit code, ``None`` if it never finished."""

    rc: int | None
    stdout: str
    stderr: str
    console: str
    init_log: str
    dmesg: str
    share: Path
    seconds: float
    timed_out: bool

    def explain(self) -> str:
        """Everything a failing assertion should show."""
        return (f"rc={self.rc} timed_out={self.timed_out} seconds={self.seconds:.1f}\n"
                f"--- stdout\n{self.stdout[-6000:]}\n--- stderr\n{self.stderr[-6000:]}\n"
                f"--- init log\n{self.init_log[-3000:]}\n--- kernel log (tail, copied every 2 s)\n{self.dmesg[-4000:]}\n"
                f"--- console (tail)\n{self.console[-2000:]}")


class Guest(Protocol):
    """A Linux guest that runs a bash script as root with the given servers reachable."""

    def run(self, script: str, *, forwards: Sequence[Forward] = (),
            files: Mapping[str, Path | bytes] | None = None, timeout: float = 600,
            started: Callable[[Path], None] | None = None, address: str | None = None) -> GuestResult:
        """Boot, run ``script`` in ``/share`` (which holds ``files``), power off.

        ``address``: the host address the guest appears as and answers callbacks on (see the
        module docstring); without it the guest's connections come from 127.0.0.1 and nothing
        on the host can call it.

        The returned ``share`` directory holds what the script wrote in ``/share``; it lives
        until the guest is closed (``UMLGuest`` keeps the last ``keep`` runs' directories).
        ``started(share)`` is called before the guest boots, so a test running ``run`` in a
        thread can watch what the script writes there while it runs.
        """
        ...

    def leftovers(self) -> list[str]:
        """Processes of this guest's runs still alive (one line each: PID and command)."""
        ...


def guest_tree(*, build: bool) -> Path:
    """The cached root tree (``build-guest.sh``); built first when ``build`` and missing."""
    args = [str(BUILD)] if build else [str(BUILD), "--print-path"]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


INIT = r"""#!/bin/sh
# init of the kernel-client guest (tests/kernel/uml.py); runs as PID 1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t hostfs hostfs /share -o @SHARE@
exec >/share/init.log 2>&1
echo "init: up at $(cut -d' ' -f1 /proc/uptime) s"
hostname nasblade-guest
ip link set lo up
ip addr add @GUEST@/24 dev eth0
ip link set eth0 up
echo "options lockd nlm_tcpport=@NLMPORT@ nlm_udpport=@NLMPORT@" >/etc/modprobe.d/nasblade-lockd.conf
for m in @MODULES@; do modprobe "$m" || echo "init: modprobe $m failed"; done
# statd's records on tmpfs: on hostfs a file statd (uid statd) creates belongs to the host's
# root, and statd could not open it again (the second SM_MON of a server failed)
mount -t tmpfs -o mode=0755 tmpfs /var/lib/nfs
mkdir -p /var/lib/nfs/sm /var/lib/nfs/sm.bak
chown statd /var/lib/nfs/sm /var/lib/nfs/sm.bak || echo "init: no statd user"
rpcbind || echo "init: rpcbind failed"
# the kernel's log, copied out every 2 s: what a run that never ends (a hung mount) said
(while :; do dmesg >/share/dmesg.part 2>&1 && mv /share/dmesg.part /share/dmesg; sleep 2; done) &
rpc.statd --no-notify --port @STATDPORT@ || echo "init: rpc.statd failed"
echo "init: script starts at $(cut -d' ' -f1 /proc/uptime) s"
cd /share
bash /share/script.sh >/share/stdout 2>/share/stderr </dev/null
echo $? >/share/rc.part && mv /share/rc.part /share/rc
echo "init: script ended at $(cut -d' ' -f1 /proc/uptime) s"
sync
echo o >/proc/sysrq-trigger
sleep 5
echo 'init: sysrq power-off failed'
"""

BOOT = r"""#!/bin/bash
# runs in private mount and network namespaces (unshare -m -n), leader of its process group
set -eu
listening() {  # wait (bounded) until a forwarder listens on 10.0.2.2:$1
  for _ in $(seq 200); do ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.05; done
  echo "boot: nothing listens on port $1" >&2; return 1
}
ip link set lo up
ip tuntap add dev tap0 mode tap
ip addr add @SERVER@/24 dev tap0
ip link set tap0 up
@FORWARDS@
mount -t overlay overlay -o lowerdir=@TREE@,upperdir=@DIR@/upper,workdir=@DIR@/work @DIR@/root
install -m 0755 @DIR@/init @DIR@/root/nasblade-init
set +e
linux.uml mem=@MEM@ root=/dev/root rootfstype=hostfs rootflags=@DIR@/root rw init=/nasblade-init \
  uml_dir=@DIR@/uml umid=guest eth0=tuntap,tap0 con=null ssl=null con0=null,fd:1 </dev/null >@DIR@/console.log 2>&1
echo $? >@DIR@/uml.rc
"""


@dataclass
class _ActiveRun:
    """What ``close`` must kill if a run is still going (a test abandoned it in a thread)."""

    marker: str
    host_forwarders: list[subprocess.Popen[bytes]]
    boot: subprocess.Popen[bytes] | None = None
    sessions: set[int] = field(default_factory=set)

    def kill(self) -> None:
        if self.boot is not None:
            kill_run(self.boot.pid, self.sessions, self.marker)
            self.boot.wait()
        for p in self.host_forwarders:
            p.kill()
            p.wait()


class UMLGuest:
    """``Guest`` on User-Mode Linux (see the module docstring). Runs may overlap (each has its
    own namespaces and directory); ``close`` kills the runs still going."""

    def __init__(self, tree: Path, *, mem: str = "512M", keep: int = 8) -> None:
        if not (tree / ".nasblade-guest").is_file():
            raise FileNotFoundError(f"{tree} is not a built guest tree (run tests/kernel/build-guest.sh)")
        self.tree = tree
        self.mem = mem
        self.keep = keep
        # short: Unix socket paths must fit in 108 bytes
        self.base = Path(tempfile.mkdtemp(prefix="nbk-", dir="/tmp"))
        self._runs = itertools.count(1)
        self._lock = threading.Lock()
        self._active: dict[int, _ActiveRun] = {}

    def close(self) -> None:
        with self._lock:
            active = list(self._active.values())
        for run in active:
            run.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Live processes of this guest's runs (``ps``-like lines); none once closed."""
        return leftovers(str(self.base))

    def run(self, script: str, *, forwards: Sequence[Forward] = (),
            files: Mapping[str, Path | bytes] | None = None, timeout: float = 600,
            started: Callable[[Path], None] | None = None, address: str | None = None) -> GuestResult:
        with self._lock:
            n = next(self._runs)
        d = self.base / f"r{n}"
        share = d / "share"
        for sub in ("upper", "work", "root", "share"):
            (d / sub).mkdir(parents=True)
        for name, content in (files or {}).items():
            target = share / name
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
        (share / "script.sh").write_text(script)
        if started is not None:
            started(share)
        marker = uuid.uuid4().hex
        (d / "init").write_text(INIT.replace("@SHARE@", str(share)).replace("@GUEST@", GUEST_ADDR)
                                .replace("@MODULES@", " ".join(MODULES))
                                .replace("@NLMPORT@", str(GUEST_NLM_PORT)).replace("@STATDPORT@", str(GUEST_STATD_PORT)))
        host_fwd: list[subprocess.Popen[bytes]] = []
        logs: list[IO[bytes]] = []
        active = _ActiveRun(marker, host_fwd)
        with self._lock:
            self._active[n] = active
        ns_fwd = []
        start = time.monotonic()
        timed_out = False
        boot: subprocess.Popen[bytes] | None = None
        try:
            for i, f in enumerate(forwards):
                sock = d / f"f{i}.sock"
                logs.append(open(d / f"f{i}.host.log", "wb"))  # noqa: SIM115  closed in finally
                source = f",bind={address}" if address else ""
                # TCP_USER_TIMEOUT (IPPROTO_TCP 6, option 18) on the upstream side: data unacknowledged
                # for 20 s resets it, and the relay closes the guest's side, as the guest kernel's own
                # TCP_USER_TIMEOUT would on a node. Without it a connection DNATed to a blade pod that
                # is gone retransmits for 15 minutes while the relay keeps the guest's side alive, and
                # the guest's NFS client waits ("server not responding, still trying") instead of
                # reconnecting through the Service to the blade that took over.
                host_fwd.append(subprocess.Popen(
                    ["socat", f"UNIX-LISTEN:{sock},fork",
                     f"TCP:{f.host}:{f.port}{source},setsockopt-int=6:18:{UPSTREAM_USER_TIMEOUT_MS}"],
                    stdout=subprocess.DEVNULL, stderr=logs[-1], preexec_fn=_die_with_parent))
                ns_fwd.append(f"socat TCP-LISTEN:{f.guest_port},bind={SERVER_ADDR},fork,reuseaddr "
                              f"UNIX-CONNECT:{sock} 2>{d}/f{i}.ns.log &\n"
                              f"listening {f.guest_port}")
            for i, p in enumerate(host_fwd):
                _wait_for(lambda i=i: (d / f"f{i}.sock").exists(), p, f"host forwarder {forwards[i]}")
            for port in CALLBACK_PORTS if address else ():
                # the namespace side listens on the socket, the host side on address:port
                sock = d / f"b{port}.sock"
                ns_fwd.append(f"socat UNIX-LISTEN:{sock},fork TCP:{GUEST_ADDR}:{port} 2>{d}/b{port}.ns.log &")
                logs.append(open(d / f"b{port}.host.log", "wb"))  # noqa: SIM115  closed in finally
                host_fwd.append(subprocess.Popen(
                    ["socat", f"TCP-LISTEN:{port},bind={address},fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
                    stdout=subprocess.DEVNULL, stderr=logs[-1], preexec_fn=_die_with_parent))
            (d / "boot.sh").write_text(
                BOOT.replace("@FORWARDS@", "\n".join(ns_fwd)).replace("@SERVER@", SERVER_ADDR)
                .replace("@TREE@", shlex.quote(str(self.tree))).replace("@DIR@", str(d)).replace("@MEM@", self.mem))
            with open(d / "boot.log", "wb") as log:
                boot = subprocess.Popen(["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
                                         "--mount-proc", "--propagation", "private",
                                         "bash", str(d / "boot.sh")],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env={**os.environ, MARKER: marker},
                                        preexec_fn=_die_with_parent)
                active.boot = boot
            # linux.uml makes itself a session leader: remember the sessions of the run's
            # processes while it runs, so they can be found once they are orphans
            deadline = time.monotonic() + timeout
            while boot.poll() is None:
                active.sessions |= run_sessions(run_processes(boot.pid, active.sessions, marker))
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.25)
        finally:
            active.kill()
            with self._lock:
                del self._active[n]
            for log in logs:
                log.close()
        seconds = time.monotonic() - start
        rc_file = share / "rc"
        result = GuestResult(
            rc=int(rc_file.read_text()) if rc_file.exists() else None,
            stdout=_read(share / "stdout"), stderr=_read(share / "stderr"),
            console=_read(d / "console.log") + _read(d / "boot.log"), init_log=_read(share / "init.log"), dmesg=_read(share / "dmesg"),
            share=share, seconds=seconds, timed_out=timed_out)
        # the overlay's upper layer is the guest's scratch: drop it now, keep share for the test
        for sub in ("upper", "work", "root"):
            shutil.rmtree(d / sub, ignore_errors=True)
        old = self.base / f"r{n - self.keep}"
        if self.keep and old.exists():
            shutil.rmtree(old, ignore_errors=True)
        return result


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started us ends (so a run
    abandoned by a dying test process leaves no forwarder or guest behind)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _wait_for(cond: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not listening after {timeout}s")
        time.sleep(0.02)


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    env: bytes


def _processes() -> list[Proc]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            env = b""
            with contextlib.suppress(OSError):
                env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out.append(Proc(int(entry), int(fields[1]), int(fields[3]), env))
    return out


def run_processes(root: int, sessions: set[int], marker: str) -> list[Proc]:
    """The run's live processes: ``root``'s descendants, members of ``sessions``, and the
    processes whose environment carries the run's marker."""
    procs = _processes()
    needle = f"{MARKER}={marker}".encode()
    mine = {p.pid for p in procs if p.pid == root or p.sid in sessions or needle in p.env.split(b"\0")}
    mine.discard(os.getpid())
    grew = True
    while grew:
        more = {p.pid for p in procs if p.ppid in mine and p.pid not in mine}
        grew = bool(more)
        mine |= more
    return [p for p in procs if p.pid in mine]


def run_sessions(procs: list[Proc]) -> set[int]:
    """Sessions the run's processes lead (linux.uml calls setsid); never the caller's own."""
    own = os.getsid(0)
    return {p.sid for p in procs if p.sid == p.pid and p.sid != own}


def kill_run(root: int, sessions: set[int], marker: str) -> None:
    """SIGKILL, by PID, every process of a run until none is left."""
    for _ in range(100):
        procs = run_processes(root, sessions, marker)
        # a zombie root stays listed until the caller reaps it
        procs = [p for p in procs if not _is_zombie(p.pid)]
        if not procs:
            return
        sessions |= run_sessions(procs)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        time.sleep(0.1)
    raise RuntimeError(f"processes of a guest run survive SIGKILL: {run_processes(root, sessions, marker)}")


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def leftovers(where: str = "/nbk-") -> list[str]:
    """Live ``linux.uml`` processes, boot wrappers and forwarders of guest runs whose command
    line names ``where`` (default: any run on this machine), for a final check."""
    out = []
    for p in _processes():
        try:
            cmd = Path(f"/proc/{p.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if _is_zombie(p.pid):
            continue
        if where in cmd and Path(cmd.split(" ", 1)[0]).name in ("linux.uml", "socat", "unshare", "bash"):
            out.append(f"{p.pid} {cmd}")
    return out
