"""A libnfs writer that keeps writing through failovers: FILE_SYNC records, every ack counted.

Used by the supervision and power-fencing tests (``test_chassis.py``). libnfs's Python binding
is the client: the file is opened once with ``O_SYNC``, so libnfs sends FILE_SYNC writes (it
sends UNSTABLE otherwise, and does not compare COMMIT verifiers, which would let it "acknowledge"
a write the failed blade never stored). Each record is written with ``nfs_pwrite`` and counts as
acknowledged only when the call returns the full length (the binding's file-object methods drop
libnfs's return codes, so the raw calls are used); a failed call is retried on the same handle,
and libnfs reconnects to the file system's address by itself, wherever it is served from.

``ChildWriter`` runs one in a child process: libnfs's binding keeps the GIL inside its calls,
and its reconnect loop can spin for ever once the server is gone (a test that failed and tore
its array down), which in a thread would freeze the whole test run. ``verify(url, path,
count)`` reads the file back and returns the indexes of the records that are not there intact.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from typing import Any

import libnfs

RECORD = 4096


def record(seq: int) -> bytes:
    head = b"%012d\n" % seq
    return (head * (RECORD // len(head) + 1))[:RECORD]


def _check(what: str, status: int) -> int:
    if status < 0:
        raise OSError(-status, f"{what}: {os.strerror(-status)}")
    return status


class SyncWriter(threading.Thread):
    """Writes record ``n`` at ``n * RECORD`` until ``stop()``; ``acked`` counts acknowledged ones."""

    def __init__(self, url: str, path: str, *, interval: float = 0.01) -> None:
        super().__init__(daemon=True, name="syncwriter")
        self.url = url
        self.path = path
        self.interval = interval
        self.acked = 0
        self.failed = 0
        self.errors: list[str] = []
        self.max_gap = 0.0
        self._halt = threading.Event()
        self.finished = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            nfs: Any = libnfs.NFS(self.url)
            ctx = nfs._nfs
            handle = libnfs.new_NFSFileHandle()
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_SYNC
            _check("create", libnfs.nfs_create(ctx, self.path, flags, 0o644, handle))
            raw = libnfs.NFSFileHandle_value(handle)
            last = time.monotonic()
            while not self._halt.is_set():
                data = bytearray(record(self.acked))
                try:
                    n = _check("write", libnfs.nfs_pwrite(ctx, raw, self.acked * RECORD, len(data), data))
                    if n != len(data):
                        raise OSError(f"short write: {n} of {len(data)} bytes")
                except OSError as exc:
                    self.failed += 1
                    if len(self.errors) < 20:
                        self.errors.append(f"record {self.acked}: {exc}")
                    time.sleep(0.05)
                    continue
                now = time.monotonic()
                self.max_gap = max(self.max_gap, now - last)
                last = now
                self.acked += 1
                time.sleep(self.interval)
            libnfs.nfs_close(ctx, raw)
        except (OSError, ValueError) as exc:  # open failed: reported by the test
            self.errors.append(f"writer stopped: {exc}")
        finally:
            self.finished.set()


def verify(url: str, path: str, count: int) -> list[int]:
    """Indexes of records ``0..count-1`` that are not intact in ``path``."""
    nfs: Any = libnfs.NFS(url)
    fh = nfs.open(path, "rb")
    data = bytes(fh.read(count * RECORD))
    fh.close()
    return [i for i in range(count) if data[i * RECORD : (i + 1) * RECORD] != record(i)]


def write_in_child(url: str, path: str, figures: Any, halt: Any, out: Any) -> None:
    """A child process's target: run a ``SyncWriter`` and publish ``[acked, failed, max_gap]``
    into ``figures`` (a shared array) until ``halt`` is set, then send its errors on ``out``.

    libnfs's binding keeps the GIL inside its calls, so a writer stuck in a call (a server
    that is gone) stops every thread of its process; run apart, it cannot freeze the test.
    It lives here, in a module that imports nothing of the tests, because a spawned child
    imports its target's module by name (``tests/cluster/test_protection_nfs.py``)."""
    w = SyncWriter(url, path)
    w.start()
    while not halt.wait(0.05) and not w.finished.is_set():
        figures[:] = [w.acked, w.failed, w.max_gap]
    w.stop()
    stopped = w.finished.wait(60)
    figures[:] = [w.acked, w.failed, w.max_gap]
    out.send(w.errors + ([] if stopped else ["the writer did not stop within 60s"]))


class _Done:
    """``ChildWriter.finished``: set once the child has exited."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc

    def is_set(self) -> bool:
        return self.proc.pid is not None and not self.proc.is_alive()


class ChildWriter:
    """A ``SyncWriter`` in a child process (``write_in_child``), with the same figures and the
    same ``start`` / ``stop`` / ``finished`` / ``errors``, and ``kill`` for a test's teardown.

    The child imports only this module (a spawned child imports its target's module by name;
    a test module imports ``conftest``, a name every test folder has)."""

    def __init__(self, url: str, path: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.figures = ctx.Array("d", 3)
        self.halt = ctx.Event()
        self._errors: list[str] | None = None  # None: not reported yet
        self._recv, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=write_in_child, args=(url, path, self.figures, self.halt, send), daemon=True)
        self.finished = _Done(self.proc)

    def start(self) -> None:
        self.proc.start()

    @property
    def acked(self) -> int:
        return int(self.figures[0])

    @property
    def failed(self) -> int:
        return int(self.figures[1])

    @property
    def max_gap(self) -> float:
        return float(self.figures[2])

    @property
    def errors(self) -> list[str]:
        """What the child reported when it stopped (empty while it runs)."""
        if self._errors is None and self._recv.poll(0):
            try:
                self._errors = self._recv.recv()
            except EOFError:  # it died without a report (killed)
                self._errors = ["the writer was killed before it reported"]
        return self._errors or []

    def running(self) -> bool:
        return self.proc.is_alive()

    def stop(self) -> None:
        """Ask the child to stop (it reports its errors and exits: ``finished``)."""
        self.halt.set()

    def kill(self) -> None:
        """Stop it for good: a child stuck in a libnfs call is killed."""
        self.halt.set()
        if self.proc.pid is None:
            return
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
