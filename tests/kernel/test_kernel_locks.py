"""Locks between two Linux kernel clients (two User-Mode Linux guests) through NLM v4 and NSM.

Both guests mount the array's ``kfs`` export the way a default ``mount -t nfs -o vers=3`` does
(no ``nolock``: the kernel's lockd talks NLM to the server, found through the server's
portmapper, and the guest's rpc.statd monitors it). Each guest has its own host address
(``uml.Guest.run(address=...)``), so the server sees two clients and can call each back.

Guest A holds an exclusive ``fcntl`` lock on bytes 0..99 of a file. Guest B, while A holds it:
a non-overlapping range is granted, an overlapping range and a whole-file ``flock`` are refused
(EAGAIN), and then B waits for the overlapping range (F_SETLKW). A releases once B signalled
through the file system; B must get the lock after A's unlock, and soon after it (the server's
GRANTED callback, not the client's 30 s poll).
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uml
from conftest import NFSTarget

pytestmark = pytest.mark.kernel
LOCKER = Path(__file__).with_name("guest_locker.py")
GRANT_LATENCY = 10.0
"""How long after A's unlock B may get the lock (the client's own poll would take 30 s)."""


def guest_address() -> str:
    return f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"


def mount_line(target: NFSTarget, extra: str = "") -> str:
    opts = f"vers=3,proto=tcp,mountproto=tcp,port={target.nfs_port},mountport={target.mount_port}{extra}"
    return f"mkdir -p /mnt/n && mount -t nfs -o {opts} 10.0.2.2:{target.export} /mnt/n"


def start(guest: uml.Guest, target: NFSTarget, script: str, box: dict[str, Any], key: str,
          shares: dict[str, Path]) -> threading.Thread:
    address = guest_address()

    def go() -> None:
        box[key] = guest.run(script, forwards=target.forwards, files={"guest_locker.py": LOCKER},
                             timeout=600, address=address, started=lambda p: shares.__setitem__(key, p))

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def wait_file(path_of: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = path_of()
        if p is not None and p.exists():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_locks_conflict_between_two_kernel_clients(guest: uml.Guest, nasblade_nfs: NFSTarget) -> None:
    name = f"lock-{random.randint(0, 1 << 30)}"
    holder = f"""set -e
hostname guest-a
{mount_line(nasblade_nfs, ",lookupcache=none")}
grep " /mnt/n " /proc/mounts > /share/mounts.txt
python3 /share/guest_locker.py hold --path /mnt/n/{name} --start 0 --len 100 --ready /share/held \\
    --until /mnt/n/{name}.tried --out /share/hold.json
rm -f /mnt/n/{name}.tried
umount /mnt/n
"""
    prober = f"""set -e
hostname guest-b
{mount_line(nasblade_nfs)}
python3 /share/guest_locker.py probe --path /mnt/n/{name} --attempt fcntl:200:100 --attempt fcntl:50:10 \\
    --attempt flock:0:0 --signal /mnt/n/{name}.tried --wait fcntl:0:100 --out /share/probe.json
umount /mnt/n
"""
    box: dict[str, Any] = {}
    shares: dict[str, Path] = {}
    ta = start(guest, nasblade_nfs, holder, box, "a", shares)
    wait_file(lambda: shares.get("a") and shares["a"] / "held", 300, "guest A holding its lock")
    tb = start(guest, nasblade_nfs, prober, box, "b", shares)
    ta.join(700)
    tb.join(700)
    a: uml.GuestResult = box["a"]
    b: uml.GuestResult = box["b"]
    assert a.rc == 0, a.explain()
    assert b.rc == 0, b.explain()
    opts = (a.share / "mounts.txt").read_text()
    assert "nolock" not in opts and "local_lock=none" in opts, opts
    held = json.loads((a.share / "hold.json").read_text())
    probe = json.loads((b.share / "probe.json").read_text())
    print(f"two-guest locks: hold {held} probe {probe} "
          f"(B got the lock {probe['acquired'] - held['unlocked']:.2f} s after A's unlock)")
    assert "error" not in held, held
    assert probe["attempts"] == [True, False, False], probe
    assert probe["acquired"] >= held["unlocked"] - 0.05, (held, probe)
    assert probe["acquired"] - held["unlocked"] < GRANT_LATENCY, (held, probe)
