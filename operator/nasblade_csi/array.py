"""What the controller service does to the array: LUs, file systems on them, copies.

One volume is one LU holding one nasblade file system: ``create`` makes the LU through the
controller's control API and formats it over NBD (``nasblade.fs.fs.mkfs``); ``copy`` fills an
LU with a point-in-time image of another through the controller's copy engine (snapshots and
clones); ``grow`` grows the LU and then the file system on it (``nasblade.fs.grow``, offline:
the writes are refused while a blade holds the LU's reservation). Synchronous, like the
control-API client; the gRPC servicers call it from their worker threads.
"""

from __future__ import annotations

import errno
import time
from typing import Any

from nasblade.controller.apiclient import ControlAPIError, ControlClient
from nasblade.fs import fs as fsmod
from nasblade.fs import layout
from nasblade.fs.grow import grow
from nasblade.nbd.client import NBDBlockDevice

from nasblade_csi.errors import ArrayError

MIN_SIZE = layout.MIN_SIZE
ALIGN = 1 << 20  # LU sizes are whole MiB: the file-system layout aligns its regions so


def _kind(exc: ControlAPIError) -> str:
    """The ``ArrayError`` kind of a refusal: no space by the error's reason (``409``
    ``NoSpace``, or an older controller's ``507``), before any other ``409`` (busy)."""
    if exc.no_space:
        return "nospace"
    return {409: "busy", 404: "missing"}.get(exc.status, "failed")


class Array:
    def __init__(self, control: ControlClient, nbd: str, *, copy_timeout: float = 600.0,
                 rate_limit: int = 0) -> None:
        self.control = control
        self.nbd = nbd.rstrip("/")
        self.copy_timeout = copy_timeout
        self.rate_limit = rate_limit  # bytes/s of each snapshot or clone copy (0: unlimited)

    def free(self) -> int:
        return int(self.control.array()["free"])

    def lu(self, name: str) -> dict[str, Any] | None:
        try:
            return self.control.get_lu(name)
        except ControlAPIError as exc:
            if exc.status == 404:
                return None
            raise ArrayError(_kind(exc), f"LU {name}: {exc.message}") from exc

    def create_lu(self, name: str, size: int) -> dict[str, Any]:
        """Create ``name`` of ``size`` bytes, or return it if it exists with that size."""
        try:
            return self.control.create_lu(name, size)
        except ControlAPIError as exc:
            if exc.status == 409 and not exc.no_space:  # it exists (a retried call): with that size?
                have = self.lu(name)
                if have is not None and int(have["size"]) == size:
                    return have
            raise ArrayError(_kind(exc), f"creating LU {name} ({size} bytes): {exc.message}") from exc

    def delete_lu(self, name: str) -> None:
        try:
            self.control.delete_lu(name)
        except ControlAPIError as exc:
            if exc.status != 404:
                raise ArrayError(_kind(exc), f"deleting LU {name}: {exc.message}") from exc

    def wait_unreserved(self, name: str, *, timeout: float = 60.0) -> None:
        """Wait until no blade holds ``name``'s reservation (it released the file system);
        ``in-use`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (lu := self.lu(name)) is not None and (lu.get("reservation") or {}).get("holder"):
            if time.monotonic() > deadline:
                raise ArrayError("in-use", f"LU {name} is still reserved by {lu['reservation']['holder']}")
            time.sleep(0.5)

    def set_read_only(self, name: str) -> None:
        self.control.update_lu(name, read_only=True)

    def _device(self, lu: str) -> NBDBlockDevice:
        return NBDBlockDevice.connect(f"{self.nbd}/{lu}")

    def mkfs(self, lu: str, *, root_mode: int = 0o777) -> None:
        with self._device(lu) as dev:
            fsmod.mkfs(dev, root_mode=root_mode)

    def fs_size(self, lu: str) -> int:
        """Bytes of data the file system on ``lu`` can hold (its data region)."""
        with self._device(lu) as dev:
            sb = layout.read_superblock(dev)
        return sb.data_blocks * sb.block

    def grow(self, lu: str, size: int) -> None:
        """Grow ``lu`` to ``size`` bytes (if smaller) and its file system into it."""
        have = self.lu(lu)
        if have is None:
            raise ArrayError("missing", f"LU {lu} does not exist")
        if int(have["size"]) < size:
            try:
                self.control.update_lu(lu, size=size)
            except ControlAPIError as exc:
                raise ArrayError(_kind(exc), f"growing LU {lu} to {size}: {exc.message}") from exc
        try:
            with self._device(lu) as dev:
                grow(dev)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                raise ArrayError("in-use", f"LU {lu} is reserved by a blade serving it: expand it "
                                 "while no pod uses the volume (offline expansion)") from exc
            raise

    def start_copy(self, source: str, target: str, length: int) -> str:
        """Start a copy job of ``length`` bytes of ``source`` into ``target``: the image is the
        source as of now (the copy engine keeps it while writes go on); returns the job id."""
        try:
            return str(self.control.create_copy_job(source, target, length, rate_limit=self.rate_limit)["id"])
        except ControlAPIError as exc:
            raise ArrayError(_kind(exc), f"copying {source} to {target}: {exc.message}") from exc

    def copy_state(self, job_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        """The copy job (``state``: running, succeeded, failed, cancelled), after waiting up to
        ``wait`` seconds for it to finish; a job the controller no longer knows is ``failed``."""
        try:
            if wait > 0:
                try:
                    return self.control.wait_copy_job(job_id, timeout=wait)
                except TimeoutError:
                    pass
            return self.control.get_copy_job(job_id)
        except ControlAPIError as exc:
            if exc.status == 404:
                return {"id": job_id, "state": "failed", "error": "the controller has no such copy job"}
            raise ArrayError(_kind(exc), f"copy job {job_id}: {exc.message}") from exc

    def cancel_copy(self, job_id: str) -> None:
        try:
            self.control.cancel_copy_job(job_id)
        except ControlAPIError as exc:
            if exc.status != 404:
                raise ArrayError(_kind(exc), f"cancelling copy job {job_id}: {exc.message}") from exc

    def copy(self, source: str, target: str, length: int) -> dict[str, Any]:
        """Copy ``length`` bytes of ``source`` (a point-in-time image) into ``target``; waits."""
        try:
            job = self.control.create_copy_job(source, target, length, rate_limit=self.rate_limit)
            done = self.control.wait_copy_job(str(job["id"]), timeout=self.copy_timeout)
        except ControlAPIError as exc:
            raise ArrayError(_kind(exc), f"copying {source} to {target}: {exc.message}") from exc
        if done["state"] != "succeeded":
            raise ArrayError("failed", f"copy {source} -> {target} {done['state']}: {done.get('error')}")
        return done
