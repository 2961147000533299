"""The kill soak: random failures under checksummed writers, every acknowledged byte verified.

Used by ``tests/cluster/test_soak.py`` (a short run in ``make test``) and ``bench/soak/run``
(a thousand cycles or more). Against a running ``nasblade up`` (``conftest.ArrayUp``):

- two writers run all the time on the file system's own address, each on its own file: one
  writes FILE_SYNC (what an application's O_SYNC writes become), one writes UNSTABLE and
  COMMITs every few writes, sending again whatever the COMMIT's write verifier says was lost
  (RFC 1813 §3.3.21: a new verifier means the server restarted). Both overwrite random 16 KiB
  chunks of a 16 MiB region and keep the digest of the last acknowledged (FILE_SYNC) or
  committed (UNSTABLE) content of each chunk. Their client retries every call on a new
  connection to the same address (a hard mount) and never gives up before ``deadline``.
- each cycle, after a random pause, SIGKILLs one of: the owning blade's file processor, its
  block processor, both (the whole blade), or the controller (not again within
  ``STABLE_AFTER`` of its last restart: the chassis would hold a crash loop back, by design,
  and the soak measures recoveries, not that throttle); times a FILE_SYNC probe write on
  the same address until it is answered (the recovery time), waits until ``nasblade up`` has
  restarted what was killed and the whole group is alive again (half the time also until the
  file system is given back to its home blade, so the next kill can land on either blade and in
  the middle of a give-back), then pauses the writers and reads both files back in full.
- at the end the file system is released, reserved for the checker, and ``nasblade fsck`` runs.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conftest import ArrayUp, wait_for
from nasblade.nfs import types as t
from nasblade.standalone.supervisor import STABLE_AFTER
from rawnfs import Client

KINDS = ("fp", "bp", "blade", "controller")
CHUNK = 16 << 10
CHUNKS = 1024
NASBLADE = [sys.executable, "-m", "nasblade"]


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(eq=False)
class Writer(threading.Thread):
    client: Client
    fh: bytes
    stable: bool
    seed: int
    commit_every: int = 8
    durable: dict[int, bytes] = field(default_factory=dict)
    """Chunk index → digest of its last acknowledged-as-stable content."""
    pending: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    error: BaseException | None = None
    ops: int = 0
    resends: int = 0
    verifiers: set[bytes] = field(default_factory=set)

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True, name=f"soak-writer-{'sync' if self.stable else 'unstable'}")
        self.rng = random.Random(self.seed)
        self.run_evt = threading.Event()
        self.run_evt.set()
        self.idle = threading.Event()
        self.stop_evt = threading.Event()

    def commit_all(self) -> None:
        while self.pending:
            verf = self.client.commit(self.fh)
            self.verifiers.add(verf)
            lost = {i: d for i, (d, v) in self.pending.items() if v != verf}
            if not lost:
                self.durable.update({i: digest(d) for i, (d, _v) in self.pending.items()})
                self.pending.clear()
                return
            for i, data in lost.items():  # the server restarted since: send them again
                self.resends += 1
                _c, v = self.client.write(self.fh, i * CHUNK, data, stable=t.StableHow.UNSTABLE)
                self.pending[i] = (data, v)

    def run(self) -> None:
        try:
            while not self.stop_evt.is_set():
                if not self.run_evt.is_set():
                    self.commit_all()
                    self.idle.set()
                    self.run_evt.wait()
                    self.idle.clear()
                    continue
                i = self.rng.randrange(CHUNKS)
                data = os.urandom(CHUNK)
                if self.stable:
                    committed, verf = self.client.write(self.fh, i * CHUNK, data, stable=t.StableHow.FILE_SYNC)
                    if committed != t.StableHow.FILE_SYNC:
                        raise AssertionError(f"FILE_SYNC write answered {committed}")
                    self.durable[i] = digest(data)
                else:
                    _c, verf = self.client.write(self.fh, i * CHUNK, data, stable=t.StableHow.UNSTABLE)
                    self.pending[i] = (data, verf)
                    if len(self.pending) >= self.commit_every:
                        self.commit_all()
                self.verifiers.add(verf)
                self.ops += 1
            self.commit_all()
        except BaseException as exc:  # reported by the soak
            self.error = exc
        finally:
            self.idle.set()

    def pause(self, timeout: float) -> None:
        self.run_evt.clear()
        if not self.idle.wait(timeout):
            raise TimeoutError(f"{self.name} did not pause within {timeout}s")

    def resume(self) -> None:
        self.run_evt.set()

    def verify(self, reader: Client) -> list[int]:
        """Chunks whose content is not the last stable one (the writer is paused)."""
        content = reader.read_all(self.fh, CHUNKS * CHUNK, chunk=1 << 20)
        return [i for i, d in self.durable.items() if digest(content[i * CHUNK : (i + 1) * CHUNK]) != d]


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, -(-int(p * len(s) * 1000) // 1000) - 1)] if s else 0.0


def kill(arr: ArrayUp, owner: str, kind: str) -> dict[str, int]:
    """SIGKILL ``kind`` of ``owner`` (or the controller); the pids, by part."""
    if kind == "controller":
        pid = int(arr.chassis()["controller"]["pid"])
        os.kill(pid, signal.SIGKILL)
        return {"controller": pid}
    parts = ("fp", "bp") if kind == "blade" else (kind,)
    pids: dict[str, int] = {}
    for part in parts:
        # the supervisor may be restarting the part right now (the fencing after the previous
        # cycle powers a blade off and on): the pid it reported is gone; kill the next one
        deadline = time.monotonic() + 30
        while True:
            pid = arr.part_status(owner, part).get("pid")
            try:
                if pid:
                    os.kill(int(pid), signal.SIGKILL)
                    pids[part] = int(pid)
                    break
            except ProcessLookupError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{owner}-{part}: no live process to kill for 30 s (last pid {pid})")
            time.sleep(0.1)
    return pids


def wait_restarted(arr: ArrayUp, owner: str, killed: dict[str, int], *, timeout: float = 180.0) -> None:
    def back() -> bool:
        chassis = arr.chassis()
        for part, pid in killed.items():
            st = chassis["controller"] if part == "controller" else \
                chassis["blades"][owner]["blockProcessor" if part == "bp" else "fileProcessor"]
            if st["state"] != "running" or st["pid"] == pid:
                return False
        return True

    wait_for(back, timeout=timeout)
    wait_for(lambda: all(m["alive"] for m in arr.cluster(owner)["members"]), timeout=timeout)


def run(arr: ArrayUp, *, cycles: int, seed: int, failure_timeout: float,
        log: Callable[[str], None] = lambda _m: None, kinds: tuple[str, ...] = KINDS,
        home: str = "g1-0") -> dict[str, Any]:
    """Run the soak (module doc); the figures, including every defect seen."""
    rng = random.Random(seed)
    ep = arr.nfs

    def client(deadline: float = 120.0, timeout: float = 5.0) -> Client:
        return Client(ep["host"], nfs_port=ep["nfsPort"], mount_port=ep["mountPort"], deadline=deadline,
                      timeout=timeout)

    setup = client()
    root = setup.mount(ep["export"])
    files = {}
    for name in ("soak-sync", "soak-unstable", "soak-probe"):
        files[name] = setup.create(root, name)
    zero = bytes(CHUNK)
    for name in ("soak-sync", "soak-unstable"):  # the whole region exists from the start
        for i in range(0, CHUNKS, 64):
            setup.write(files[name], i * CHUNK, zero * 64, stable=t.StableHow.FILE_SYNC)
    setup.close()
    writers = [Writer(client(), files["soak-sync"], True, seed + 1),
               Writer(client(), files["soak-unstable"], False, seed + 2)]
    for w in writers:
        w.start()
    recovery: dict[str, list[float]] = {k: [] for k in kinds}
    served_by: dict[str, dict[str, int]] = {k: {"peer": 0, "same": 0} for k in kinds}
    late: list[dict[str, Any]] = []
    lost: list[dict[str, Any]] = []
    limit = failure_timeout + 2.0
    t_start = time.monotonic()
    try:
        for cycle in range(cycles):
            owner = wait_for(arr.owner)[0]
            kind = rng.choice(kinds)
            if kind == "controller" and time.time() - float(arr.chassis()["controller"]["startedAt"]) < STABLE_AFTER:
                # a controller that crashes again within STABLE_AFTER of its restart is held back
                # by the chassis's crash-loop back-off (by design): that measures the throttle,
                # not a recovery, so another part is killed this time
                kind = rng.choice([k for k in kinds if k != "controller"] or [kind])
            time.sleep(rng.uniform(0.0, 1.0))
            probe = client(deadline=90.0, timeout=0.5)
            t0 = time.monotonic()
            killed = kill(arr, owner, kind)
            probe.write(files["soak-probe"], 0, os.urandom(4096), stable=t.StableHow.FILE_SYNC)
            seconds = time.monotonic() - t0
            probe.close()
            now_owner = wait_for(arr.owner)[0]
            recovery[kind].append(seconds)
            served_by[kind]["same" if now_owner == owner else "peer"] += 1
            if seconds > limit:
                late.append({"cycle": cycle, "kind": kind, "seconds": round(seconds, 3)})
            wait_restarted(arr, owner, killed)
            if rng.random() < 0.5:
                wait_for(lambda: (o := arr.owner()) is not None and o[0] == home, timeout=180)
            for w in writers:
                if w.error is not None:
                    raise AssertionError(f"cycle {cycle}: writer failed: {w.error!r}")
                w.pause(180.0)
            reader = client()
            for w in writers:
                bad = w.verify(reader)
                if bad:
                    lost.append({"cycle": cycle, "kind": kind, "writer": w.name, "chunks": bad[:8], "count": len(bad)})
            reader.close()
            for w in writers:
                w.resume()
            log(f"cycle {cycle + 1}/{cycles}: {kind} of {owner} -> served by {now_owner} in {seconds:.3f}s"
                f"{' LATE' if seconds > limit else ''}; writes {sum(w.ops for w in writers)}")
    finally:
        for w in writers:
            w.stop_evt.set()
            w.run_evt.set()
        for w in writers:
            w.join(180)
    errors = [repr(w.error) for w in writers if w.error is not None]
    reader = client()
    for w in writers:
        bad = w.verify(reader)
        if bad:
            lost.append({"cycle": "end", "writer": w.name, "chunks": bad[:8], "count": len(bad)})
    reader.close()
    fsck = check(arr)
    dist = {}
    for kind, values in recovery.items():
        if values:
            dist[kind] = {"count": len(values), "min": round(min(values), 3),
                          "median": round(statistics.median(values), 3), "p95": round(_pct(values, 0.95), 3),
                          "max": round(max(values), 3), "servedBy": served_by[kind]}
    return {
        "cycles": cycles, "seed": seed, "seconds": round(time.monotonic() - t_start, 1),
        "failureTimeout": failure_timeout, "recoveryLimit": limit, "recovery": dist,
        "late": late, "lost": lost, "writerErrors": errors,
        "writes": {w.name: w.ops for w in writers}, "resentAfterVerifierChange": sum(w.resends for w in writers),
        "verifiersSeen": {w.name: len(w.verifiers) for w in writers},
        "fsck": fsck,
    }


def check(arr: ArrayUp, fs: str = "fs1") -> dict[str, Any]:
    """Release ``fs``, fence everyone off with a checker reservation, run ``nasblade fsck``.

    The chassis may still have a give-back pending from the last restart: it takes ``fs`` back
    with a new epoch and so fences the checker (its writes refused, EPERM) -- the fencing
    working as it should, not a finding. Then the check is made again once ``fs`` is served."""
    out: subprocess.CompletedProcess[str] | None = None
    for _attempt in range(3):
        owner = wait_for(lambda: (o := arr.owner()) is not None and arr.served_by(o[0], fs) and o[0],
                         timeout=180)
        arr.api(owner, "POST", f"/v1/cluster/filesystems/{fs}/release")
        res = arr.control.reserve(f"fs-{fs}", "fsck")
        url = arr.nbd_url(f"fs-{fs};holder=fsck;epoch={res['epoch']}")
        out = subprocess.run([*NASBLADE, "fsck", url], capture_output=True, text=True, timeout=600, check=False)
        if "Operation not permitted" not in out.stdout + out.stderr:
            break
        time.sleep(2.0)
    assert out is not None
    return {"exitCode": out.returncode, "output": (out.stdout + out.stderr).strip()[-2000:]}
