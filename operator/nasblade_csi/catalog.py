"""The driver's records of volumes and snapshots, kept on the array in one LU.

CSI names (the PVC's ``pvc-…``, the VolumeSnapshotContent's ``snapshot-…``) map to LU names,
sizes, sources and creation times; a replica of the controller service reads the same
catalog, and a restarted one finds every volume again. The LU ``csi-catalog`` holds at offset
0 an 8-byte big-endian length and that many bytes of JSON; every change is a read, a change
in memory and a compare-and-write of the whole 256 KiB record through the controller's
control API (docs/control-api.md), retried when another writer got there first, so two
replicas never lose each other's change. Reads go over NBD, through the same controller.
The record's layout is ``nasblade.csicatalog``'s, which the management terminal reads too.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from nasblade import csicatalog, lunames
from nasblade.controller.apiclient import ControlAPIError, ControlClient
from nasblade.nbd.client import NBDBlockDevice

from nasblade_csi.errors import CatalogFull

LU = lunames.CSI_CATALOG
RECORD = csicatalog.RECORD  # the controller's compare-and-write limit
LU_SIZE = 1 << 20
_LEN = csicatalog.HEADER
empty = csicatalog.empty
decode = csicatalog.decode
T = TypeVar("T")


def encode(doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    if len(body) + _LEN.size > RECORD:
        raise CatalogFull(f"the catalog needs {len(body)} bytes; its record holds {RECORD - _LEN.size}")
    return (_LEN.pack(len(body)) + body).ljust(RECORD, b"\0")


class Catalog:
    """``read()`` the records; ``change(fn)`` applies ``fn`` to them atomically and returns
    what ``fn`` returned (``fn`` may run more than once, on fresher records)."""

    def __init__(self, control: ControlClient, nbd: str) -> None:
        self.control = control
        self.nbd = nbd.rstrip("/")
        self._ready = False

    def _ensure(self) -> None:
        if self._ready:
            return
        try:
            self.control.create_lu(LU, LU_SIZE)
        except ControlAPIError as exc:
            if exc.status != 409 or exc.no_space:  # 409: it exists, made by us earlier or by another replica
                raise
        self._ready = True

    def _raw(self) -> bytes:
        self._ensure()
        with NBDBlockDevice.connect(f"{self.nbd}/{LU}") as dev:
            return dev.pread(0, RECORD)

    def read(self) -> dict[str, Any]:
        return decode(self._raw())

    def change(self, fn: Callable[[dict[str, Any]], T], *, attempts: int = 20) -> T:
        raw = self._raw()
        for _ in range(attempts):
            doc = decode(raw)
            result = fn(doc)
            data = encode(doc)
            if data == raw:
                return result
            try:
                self.control.compare_and_write(LU, compare_offset=0, compare_length=RECORD,
                                               expect_sha256=hashlib.sha256(raw).hexdigest(),
                                               write_offset=0, data=data)
                return result
            except ControlAPIError as exc:
                if exc.status != 409 or "current" not in exc.body:
                    raise

                raw = base64.b64decode(exc.body["current"])
        raise RuntimeError(f"the catalog changed under {attempts} attempts in a row")
