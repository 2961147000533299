"""Crash safety of file-system formatting (diskarray/handlers.py ``ensure_formatted``).

Component test: a real ``nasblade controller`` process (the ``controller`` fixture), the
operator's real step over the real control API and NBD, no Kubernetes. kopf's part -- applying
``patch.status`` to the DiskArray, also when the handler raised -- is played by carrying the
patch's status into the next call, as the next reconcile would read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from conftest import Controller
from nasblade.fs import fs as fsmod
from nasblade.fs.fs import ROOT, ROOT_INO
from nasblade.nbd.client import NBDBlockDevice
from nasblade_operator import arrayapi, sessions, state
from nasblade_operator.diskarray import handlers as da_handlers
from nasblade_operator.diskarray import spec as da_spec

SPEC = da_spec.parse({
    "devices": {"count": 1, "size": "1Gi"},
    "areas": {"programSize": "16Mi", "processorInfoSize": "8Mi", "backupSize": "8Mi", "portions": 4},
    "fileSystems": [{"name": "home", "size": "48Mi", "clusterGroup": "g1"},
                    {"name": "scratch", "size": "48Mi", "clusterGroup": "g1"}],
})


def reconcile_step(controller: Controller, status: dict[str, Any]) -> tuple[dict[str, Any], Exception | None]:
    """One pass of LU creation + formatting; returns the status kopf would store, and the error."""
    patch = kopf.Patch()

    async def run() -> None:
        http = sessions.Sessions()
        try:
            api = arrayapi.ArrayAPI(http, controller.api, token=controller.token)
            ensured = await api.ensure_lus({f"fs-{f.name}": f.size for f in SPEC.file_systems})
            await da_handlers.ensure_formatted(SPEC, nbd=controller.nbd, lus=ensured.lus, status=status, patch=patch,
                                               locks=state.KeyedLocks())
        finally:
            await http.close()

    error: Exception | None = None
    try:
        asyncio.run(run())
    except arrayapi.ArrayUnavailable as exc:
        error = exc
    return {**status, **dict(patch.status)}, error


def head(controller: Controller, lu: str) -> bytes:
    with NBDBlockDevice.connect(f"nbd://{controller.nbd}/{lu}") as dev:
        return dev.pread(0, 4096)


def put_file(controller: Controller, lu: str, name: bytes, data: bytes) -> None:
    with NBDBlockDevice.connect(f"nbd://{controller.nbd}/{lu}") as dev:
        fsys = fsmod.FileSystem(dev)
        try:
            ino, _ = fsys.create(ROOT_INO, name, ROOT)
            fsys.write(ino, 0, data)
            fsys.commit()
        finally:
            fsys.close()


def get_file(controller: Controller, lu: str, name: bytes) -> bytes:
    with NBDBlockDevice.connect(f"nbd://{controller.nbd}/{lu}") as dev:
        fsys = fsmod.FileSystem(dev)
        try:
            data, _, _ = fsys.read(fsys.lookup(ROOT_INO, name, ROOT), 0, 1 << 20)
            return data
        finally:
            fsys.close()


@pytest.fixture()
def mkfs_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every LU the operator runs mkfs on; mkfs of fs-home fails the first time (the "crash")."""
    calls: list[str] = []
    real = arrayapi._mkfs_sync

    def mkfs(nbd: str, lu: str, *, root_mode: int) -> None:
        calls.append(lu)
        if lu == "fs-home" and calls.count(lu) == 1:
            raise ConnectionResetError("operator crashed before mkfs")
        real(nbd, lu, root_mode=root_mode)

    monkeypatch.setattr(arrayapi, "_mkfs_sync", mkfs)
    yield calls


def test_lu_left_unformatted_by_a_crash_is_formatted_by_the_next_reconcile(
    controller: Controller, mkfs_calls: list[str],
) -> None:
    status, error = reconcile_step(controller, {})
    assert error is not None and "operator crashed before mkfs" in str(error)
    # The LU exists, holds nothing, and is not recorded as formatted: no blade may get it.
    assert head(controller, "fs-home") == bytes(4096)
    home = {f["name"]: f for f in status["fileSystems"]}["home"]
    assert home["formatted"] is False and home["ready"] is False
    status, error = reconcile_step(controller, status)
    assert error is None
    assert {f["name"]: f["formatted"] for f in status["fileSystems"]} == {"home": True, "scratch": True}
    assert status["fileSystemsReady"] == "2/2"
    assert sorted(mkfs_calls) == ["fs-home", "fs-home", "fs-scratch"]
    put_file(controller, "fs-home", b"kept", b"acknowledged data")  # the file system works
    assert get_file(controller, "fs-home", b"kept") == b"acknowledged data"


def test_a_formatted_lu_is_never_formatted_again(
    controller: Controller, mkfs_calls: list[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    status, error = reconcile_step(controller, {})
    status, error = reconcile_step(controller, status)
    assert error is None and status["fileSystemsReady"] == "2/2"
    put_file(controller, "fs-home", b"kept", b"acknowledged data")
    put_file(controller, "fs-scratch", b"kept", b"more data")
    n = len(mkfs_calls)
    # Recorded: not even read.
    async def no_read(*_: Any, **__: Any) -> bytes:
        raise AssertionError("a recorded LU was probed")
    with monkeypatch.context() as m:
        m.setattr(arrayapi, "read_lu_head", no_read)
        again, error = reconcile_step(controller, status)
    assert error is None and again["fileSystems"] == status["fileSystems"]
    # Record lost (crash after mkfs, before the status patch; or a DiskArray recreated over
    # retained devices): the superblock is found, recorded, and nothing is formatted.
    found, error = reconcile_step(controller, {})
    assert error is None and {f["name"]: f["formatted"] for f in found["fileSystems"]} == {"home": True, "scratch": True}
    assert len(mkfs_calls) == n
    assert get_file(controller, "fs-home", b"kept") == b"acknowledged data"
    assert get_file(controller, "fs-scratch", b"kept") == b"more data"


def test_an_lu_holding_foreign_data_is_refused_and_left_alone(controller: Controller) -> None:
    http = sessions.Sessions()
    api = arrayapi.ArrayAPI(http, controller.api, token=controller.token)

    async def create() -> None:
        try:
            await api.ensure_lus({"fs-scratch": 48 << 20})
        finally:
            await http.close()

    asyncio.run(create())
    foreign = b"someone else's data".ljust(4096, b"x")
    with NBDBlockDevice.connect(f"nbd://{controller.nbd}/fs-scratch") as dev:
        dev.pwrite(0, foreign, fua=True)
    status, error = reconcile_step(controller, {})
    assert error is None
    assert {f["name"]: f["formatted"] for f in status["fileSystems"]} == {"home": True, "scratch": False}
    assert status["fileSystemsReady"] == "1/2"
    assert head(controller, "fs-scratch") == foreign
